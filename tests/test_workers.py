"""`switchboard serve --workers 2`: two processes answer on one port and stop together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.test_two_processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def test_two_workers_share_the_port_and_stop_on_sigterm(database_url, redis_url,
                                                              tmp_path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "SWITCHBOARD_PORT": str(port), "SWITCHBOARD_DATA_DIR": str(tmp_path),
           "SWITCHBOARD_LOG_LEVEL": "warning", "TWILIO_AUTH_TOKEN": "t"}
    process = subprocess.Popen([sys.executable, "-m", "service", "serve", "--workers", "2"],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    answered: set[int] = set()
    try:
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each request
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(600):
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        answered.add((await response.json())["process"])
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
                if len(answered) == 2:
                    break
        assert len(answered) == 2
        assert {parent_of(pid) for pid in answered} == {process.pid}
        assert process.pid not in answered
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stderr.read().decode()[-2000:]
        process.stderr.close()
    for pid in answered:
        assert not Path(f"/proc/{pid}").exists()


def test_a_bad_worker_count_is_refused(capsys):
    import pytest

    from service.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--workers", "0"])
    assert exit_.value.code == 2
    assert "must be a whole number from 1 to 256" in capsys.readouterr().err
