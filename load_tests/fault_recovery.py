"""A bounded fault injection: Valkey or PostgreSQL stopped under a trickle of contacts on every
channel, then started again; how long until turns are answered normally again, how long until
the event spool is written, and how many contacts the report lost.

    .venv/bin/python load_tests/fault_recovery.py [--faults valkey,postgres] [--outage 30]

Each fault gets servers of its own (a dedicated Valkey and PostgreSQL from the pip-installed
binaries, tests/dedicated_servers.py) and the whole service in this process; the trickle is
tests/test_outages.py's: one new contact a second on each of SMS, WhatsApp, voice and chat.
Recovery is timed from the moment the server accepts connections again:
- answered normally: the first probe text (a new number every 0.2 s) answered with anything
  other than the apology;
- spool written: every event in PostgreSQL (the writer's back-off is at most 5 s).
Lost contacts: contacts sent minus the report's `contacts`. Results go in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.appkeys import EVENTS  # noqa: E402
from tests.dedicated_servers import dedicated_postgres, dedicated_valkey  # noqa: E402
from tests.test_outages import Trickle, all_written, reported, world  # noqa: E402
from tests.twilio_driver import messages, post_signed, sms_params  # noqa: E402

APOLOGY = "Sorry, something went wrong"


async def answered_normally(client, started: float) -> tuple[float, int]:
    """Seconds from `started` until a new texter gets a real answer; how many texters."""
    n = 0
    while True:
        n += 1
        response = await post_signed(client, "/twilio/sms",
                                     sms_params("where is my order", f"+1555990{n:04d}"))
        said = messages(await response.text())
        if said and not said[0].startswith(APOLOGY):
            return time.monotonic() - started, n
        await asyncio.sleep(0.2)


async def one_fault(fault: str, outage_s: float, workdir: Path) -> dict:
    async with AsyncExitStack() as stack:
        postgres = stack.enter_context(dedicated_postgres())
        valkey = stack.enter_context(dedicated_valkey(workdir / "valkey"))
        w = await stack.enter_async_context(world(postgres.url, valkey.url, workdir / "data"))
        trickle = Trickle(w.client, "77")
        await trickle.run(3)
        server = valkey if fault == "valkey" else postgres
        await asyncio.to_thread(server.stop)
        await trickle.run(outage_s)
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        probe = asyncio.create_task(answered_normally(w.client, back))
        traffic = asyncio.create_task(trickle.run(5))
        written = None
        while written is None:
            if await w.client.app[EVENTS].flush():
                written = time.monotonic() - back
            else:
                await asyncio.sleep(0.1)
        normal, probes = await probe
        await traffic
        await trickle.finished()
        await all_written(w)
        report = await reported(w)
        sent = sum(trickle.sent.values())
        return {"fault": fault, "outage_s": outage_s, "contacts_sent": sent + probes,
                "contacts_reported": report["totals"]["contacts"],
                "lost": sent + probes - report["totals"]["contacts"],
                "answered_normally_after_s": round(normal, 2),
                "spool_written_after_s": round(written, 2)}


async def main(faults: list[str], outage_s: float) -> None:
    for fault in faults:
        with tempfile.TemporaryDirectory() as tmp:
            print(await one_fault(fault, outage_s, Path(tmp)), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default="valkey,postgres")
    parser.add_argument("--outage", type=float, default=30.0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    asyncio.run(main(args.faults.split(","), args.outage))
