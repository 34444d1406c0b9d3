"""Long conversations and hot customers: does a turn cost the same at turn 200 as at turn 1?

    .venv/bin/python load_tests/bench_hot_customer.py [--turns 200] [--in-flight 8]

Runs the whole service in this process on embedded PostgreSQL and Valkey, then:
1. one texter sends `--turns` texts with `--in-flight` of them outstanding at a time; the
   median latency of the first 20 and the last 20 turns, and their ratio;
2. the same number of requests from 12 texters with long conversations and from 3,000 texters
   with short ones, 16 in flight; requests per second of each and their ratio.
Client and server share one process and core here, so the absolute figures include the
client's cost; the ratios are the point. Results go in load_tests/REPORTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from service.app import create_app  # noqa: E402
from service.conversations.pacing import BURST  # noqa: E402
from service.infra.embedded import servers  # noqa: E402
from service.settings import Settings  # noqa: E402

TOKEN = "bench-token"
PUBLIC_URL = "http://127.0.0.1:8080"
SERVICE_NUMBER = "+15005550006"
WORDS = ("where is my parcel", "it still has not arrived", "can you check again",
         "the tracking page says nothing", "ok", "any news?", "what about tomorrow")


class Texter:
    """Signed inbound SMS of one customer, as Twilio posts them."""

    _sid = 0

    def __init__(self, client: TestClient, number: str):
        self.client, self.number = client, number
        self.validator = RequestValidator(TOKEN)

    async def text(self, body: str) -> float:
        Texter._sid += 1
        sid = f"SM{Texter._sid:032d}"
        params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32,
                  "From": self.number, "To": SERVICE_NUMBER, "Body": body, "NumMedia": "0"}
        headers = {"X-Twilio-Signature": self.validator.compute_signature(
            PUBLIC_URL + "/twilio/sms", params),
            "Content-Type": "application/x-www-form-urlencoded"}
        began = time.perf_counter()
        response = await self.client.post("/twilio/sms", data=urlencode(params), headers=headers)
        await response.read()
        assert response.status == 200, response.status
        return time.perf_counter() - began


async def one_hot_texter(client: TestClient, turns: int, in_flight: int) -> list[float]:
    texter = Texter(client, "+15557000001")
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = [0.0] * turns

    async def send(i: int) -> None:
        async with gate:
            latencies[i] = await texter.text(WORDS[i % len(WORDS)])

    await asyncio.gather(*(send(i) for i in range(turns)))
    return latencies


async def throughput(client: TestClient, customers: int, requests: int, prefix: str) -> float:
    texters = [Texter(client, f"+1{prefix}{i:06d}") for i in range(customers)]
    per_texter = [requests // customers + (i < requests % customers) for i in range(customers)]
    gate = asyncio.Semaphore(16)

    async def conversation(texter: Texter, count: int) -> None:
        for i in range(count):  # one customer's texts go one after another
            async with gate:
                await texter.text(WORDS[i % len(WORDS)])

    began = time.perf_counter()
    await asyncio.gather(*(conversation(t, n) for t, n in zip(texters, per_texter)))
    return requests / (time.perf_counter() - began)


async def bench(urls, data_dir: Path, turns: int, in_flight: int, requests: int) -> None:
    settings = Settings(public_url=PUBLIC_URL, database_url=urls.database_url,
                        redis_url=urls.redis_url, twilio_auth_token=TOKEN,
                        rules_dir=ROOT / "routing_rules", data_dir=data_dir,
                        log_format="json", log_level="warning")
    async with TestClient(TestServer(create_app(settings))) as client:
        latencies = await one_hot_texter(client, turns, in_flight)
        first = statistics.median(latencies[:20]) * 1000
        last = statistics.median(latencies[-20:]) * 1000
        print(f"one texter, {turns} texts, {in_flight} in flight: first 20 median {first:.1f} ms,"
              f" last 20 median {last:.1f} ms, ratio {last / first:.2f}")
        # Past BURST texts in BURST_WINDOW_S the texter is acknowledged quietly (pacing.py):
        # turns 7-26 and the last 20 are the same kind of turn, the first 20 are not.
        alike = statistics.median(latencies[BURST:BURST + 20]) * 1000
        print(f"  like for like (both acknowledged quietly): turns {BURST + 1}-{BURST + 20} "
              f"median {alike:.1f} ms, last 20 {last:.1f} ms, ratio {last / alike:.2f}")
        long_rps = await throughput(client, 12, requests, "555710")
        short_rps = await throughput(client, 3000, requests, "555720")
        print(f"{requests} requests: 12 texters {long_rps:,.0f}/s, 3,000 texters "
              f"{short_rps:,.0f}/s, ratio {long_rps / short_rps:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, servers(None, None, Path(tmp)) as urls:
        asyncio.run(bench(urls, Path(tmp) / "data", args.turns, args.in_flight, args.requests))


if __name__ == "__main__":
    main()
