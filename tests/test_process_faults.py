"""A real `switchboard serve` process under traffic: SIGTERM finishes what is in flight and
flushes the spool; `kill -9` loses no answered contact (the spool is adopted on restart)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from service.conversations.prompts import RESOLVED
from tests.conftest import AUTH_TOKEN, PUBLIC_URL, _clean_tables
from tests.test_two_processes import ROOT, free_port, wait_until_ready
from tests.twilio_driver import messages, sign, sms_params


@asynccontextmanager
async def serving(database_url: str, redis_url: str, data_dir: Path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "SWITCHBOARD_PORT": str(port), "SWITCHBOARD_DATA_DIR": str(data_dir),
           "SWITCHBOARD_LOG_LEVEL": "warning", "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
           "SWITCHBOARD_PUBLIC_URL": PUBLIC_URL}
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until_ready(http, base, process)
            yield process, base, http
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


async def texted(http, base: str, number: str, body: str) -> list[str] | None:
    params = sms_params(body, number)
    headers = {"X-Twilio-Signature": sign("/twilio/sms", params),
               "Content-Type": "application/x-www-form-urlencoded"}
    try:
        async with http.post(f"{base}/twilio/sms", data=urlencode(params),
                             headers=headers) as response:
            assert response.status == 200, response.status
            return messages(await response.text())
    except aiohttp.ClientConnectionError:
        return None  # refused: the process was going away (Twilio would retry elsewhere)


async def contacts_started(db) -> int:
    return await db.fetchval("SELECT count(*) FROM contact_events WHERE kind = 'contact_started'")


async def test_sigterm_finishes_webhooks_in_flight_and_flushes_the_spool(
        database_url, redis_url, db, redis_client, tmp_path):
    await _clean_tables(database_url)
    async with serving(database_url, redis_url, tmp_path / "a") as (process, base, http):
        sends = [asyncio.create_task(texted(http, base, f"+155555504{n:02d}", "track my order"))
                 for n in range(40)]
        await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*sends)
        assert process.wait(timeout=60) == 0
    answered = [a for a in answers if a is not None]
    assert answered and all(a for a in answered)  # every answered webhook got its TwiML
    assert await contacts_started(db) == len(answered)  # flushed before exit, none lost
    assert list((tmp_path / "a" / "spool").glob("*.jsonl")) == []


async def test_kill_9_during_traffic_loses_no_answered_contact(database_url, redis_url, db,
                                                               redis_client, tmp_path):
    await _clean_tables(database_url)
    data = tmp_path / "shared"
    async with serving(database_url, redis_url, data) as (process, base, http):
        answers = [await texted(http, base, f"+155555505{n:02d}", "track my order")
                   for n in range(30)]
        assert all(answers)
        process.kill()  # SIGKILL: no shutdown, the spool stays on disk
        process.wait(timeout=10)
    async with serving(database_url, redis_url, data) as (process, base, http):
        for _ in range(100):  # the new process adopts the dead one's spool segments
            if await contacts_started(db) == 30:
                break
            await asyncio.sleep(0.1)
        assert await contacts_started(db) == 30
        # The conversation lives on in Redis: "yes" answers the first process's question.
        assert await texted(http, base, "+15555550500", "yes") == [RESOLVED["text"]]
