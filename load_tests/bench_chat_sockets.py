"""Many concurrent chat WebSockets on one `switchboard serve` process: memory and latency.

    .venv/bin/python load_tests/bench_chat_sockets.py [--sockets 10000] [--messages 1000]
                                                      [--compress both|on|off]

Starts embedded PostgreSQL and Valkey in a temporary folder and one `switchboard serve`, then,
for each compression setting: opens --sockets chat sockets from this process (200 at a time),
each starting a session (a real turn: the greeting), keeps them all open, sends --messages
customer messages on random sockets (20 at a time) and times each until its reply's `status`
frame, then closes them. Reports the server's resident memory before and with all sockets
open (per socket), how long opening took, and message latency percentiles. "on" means the
client offers permessage-deflate as browsers do (the server accepts it by default); "off"
offers none. Results go in load_tests/REPORTS.md. Needs a hard `ulimit -n` above --sockets
plus a few hundred.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from service.infra.embedded import servers  # noqa: E402
from tests.test_two_processes import free_port  # noqa: E402

TEXTS = ("where is my order", "I forgot my password", "cancel my order", "hello")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def until_status(ws: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        frame = await ws.receive_json(timeout=60)
        if frame.get("type") in ("status", "error"):
            return


async def open_one(http: aiohttp.ClientSession, url: str, compress: int):
    ws = await http.ws_connect(url, compress=compress, heartbeat=None, autoping=True)
    await ws.send_json({"type": "start"})
    await until_status(ws)
    return ws


async def run(base: str, pid: int, sockets: int, messages: int, compress: bool) -> dict:
    url = base.replace("http", "ws") + "/chat/ws"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        warm = [await open_one(http, url, 15 if compress else 0) for _ in range(20)]
        for ws in warm:
            await ws.close()
        await asyncio.sleep(1)
        before = rss_mib(pid)
        began = time.perf_counter()
        opened: list[aiohttp.ClientWebSocketResponse] = []
        for start in range(0, sockets, 200):
            opened += await asyncio.gather(*(open_one(http, url, 15 if compress else 0)
                                             for _ in range(min(200, sockets - start))))
        open_s = time.perf_counter() - began
        await asyncio.sleep(1)
        during = rss_mib(pid)
        latencies: list[float] = []
        rng = random.Random(6)
        busy: set[int] = set()

        async def one_message() -> None:
            index = rng.randrange(len(opened))
            while index in busy:
                index = rng.randrange(len(opened))
            busy.add(index)
            sent = time.perf_counter()
            await opened[index].send_json({"type": "message", "text": rng.choice(TEXTS)})
            await until_status(opened[index])
            latencies.append(time.perf_counter() - sent)
            busy.discard(index)

        for start in range(0, messages, 20):
            await asyncio.gather(*(one_message() for _ in range(min(20, messages - start))))
        await asyncio.gather(*(ws.close() for ws in opened))
    cuts = statistics.quantiles(latencies, n=100)
    return {"compress": "on" if compress else "off", "sockets": sockets,
            "rss_before_mib": before, "rss_open_mib": during,
            "kib_per_socket": (during - before) * 1024 / sockets, "open_s": open_s,
            "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "messages": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--compress", choices=("both", "on", "off"), default="both")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.compress]
    with tempfile.TemporaryDirectory() as folder, \
            servers(None, None, Path(folder)) as urls:
        port = free_port()
        env = {**os.environ, "DATABASE_URL": urls.database_url, "REDIS_URL": urls.redis_url,
               "SWITCHBOARD_PORT": str(port), "SWITCHBOARD_DATA_DIR": f"{folder}/service",
               "SWITCHBOARD_LOG_LEVEL": "warning", "TWILIO_AUTH_TOKEN": "t"}
        process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT,
                                   env=env)  # inherits the raised limit
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    import urllib.request
                    urllib.request.urlopen(base + "/readyz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            print(f"{'compress':<9}{'sockets':>8}{'RSS before':>12}{'RSS open':>10}"
                  f"{'KiB/socket':>12}{'open s':>8}{'p50 ms':>8}{'p99 ms':>8}")
            for compress in settings:
                r = asyncio.run(run(base, process.pid, args.sockets, args.messages, compress))
                print(f"{r['compress']:<9}{r['sockets']:>8,}{r['rss_before_mib']:>10.0f} M"
                      f"{r['rss_open_mib']:>8.0f} M{r['kib_per_socket']:>12.1f}"
                      f"{r['open_s']:>8.1f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}", flush=True)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
