"""Two real `switchboard serve` processes sharing PostgreSQL and Redis: a chat customer on
one, their agent on the other."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from service.agents.desk import add_agent
from service.infra.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def serve(database_url: str, redis_url: str, data_dir: Path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "SWITCHBOARD_PORT": str(port), "SWITCHBOARD_DATA_DIR": str(data_dir),
           "SWITCHBOARD_LOG_LEVEL": "warning", "TWILIO_AUTH_TOKEN": "t"}
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until_ready(http, base, process)
            yield base, http
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()


async def wait_until_ready(http: aiohttp.ClientSession, base: str, process,
                           timeout_s: float = 30) -> None:
    """Poll /readyz until the serve process answers 200 (it must not exit meanwhile)."""
    for _ in range(int(timeout_s * 10)):
        assert process.poll() is None, "the server exited before it was ready: " + (
            process.stderr.read().decode()[-2000:] if process.stderr else "")
        try:
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server was not ready within {timeout_s:.0f} s")


async def next_frame(ws, kind: str) -> dict:
    while True:
        frame = await asyncio.wait_for(ws.receive_json(), 10)
        assert frame["type"] != "error", frame
        if frame["type"] == kind:
            return frame


async def test_customer_and_agent_on_different_processes(database_url, redis_url, db,
                                                         redis_client, tmp_path):
    await migrate(db)
    token = await add_agent(db, "Dana", ["accounts", "care"])
    async with serve(database_url, redis_url, tmp_path / "a") as (one, http), \
            serve(database_url, redis_url, tmp_path / "b") as (two, _):
        agent = await http.ws_connect(f"{two}/agent/ws")
        await agent.send_json({"type": "auth", "token": token})
        await next_frame(agent, "ready")
        await agent.send_json({"type": "presence", "status": "available"})
        await next_frame(agent, "presence")

        chat = await http.ws_connect(f"{one}/chat/ws")
        await chat.send_json({"type": "start", "session": None})
        await next_frame(chat, "session")
        assert (await next_frame(chat, "status"))["state"] == "self_service"  # the greeting
        await chat.send_json({"type": "message", "text": "I want to talk to a human"})
        assert (await next_frame(chat, "status"))["state"] == "queued"

        offer = await next_frame(agent, "offer")
        await agent.send_json({"type": "accept", "contact_id": offer["contact_id"]})
        await next_frame(agent, "assigned")
        assert (await next_frame(chat, "status"))["state"] == "with_agent"
        await agent.send_json({"type": "message", "contact_id": offer["contact_id"],
                               "text": "Hello from the other process"})
        while (frame := await next_frame(chat, "message"))["text"] != \
                "Hello from the other process":
            assert frame["from"] == "agent"
        await chat.send_json({"type": "message", "text": "great"})
        assert (await next_frame(agent, "message"))["text"] == "great"
        await chat.close()
        await agent.close()
