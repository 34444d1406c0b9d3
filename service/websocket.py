"""Small WebSocket helpers shared by the chat channel and the agent endpoint.

Neutral like service/model.py (it imports nothing of the service), so channels may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from typing import Any, AsyncContextManager, AsyncIterator

from aiohttp import WSMsgType, web


class RateLimit:
    """A token bucket: bursts are fine, floods are refused."""

    def __init__(self, per_second: float, burst: int):
        self._rate, self._burst = per_second, burst
        self._tokens, self._last = float(burst), time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def parse_frame(msg) -> Any:
    """The JSON value of a text frame, or None for anything else."""
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        return json.loads(msg.data)
    except ValueError:
        return None


async def open_socket(request: web.Request, sockets: "weakref.WeakSet",
                      max_frame_bytes: int) -> web.WebSocketResponse:
    """Accept a WebSocket and remember it, so shutdown can tell it to reconnect."""
    # No permessage-deflate: frames are a few hundred bytes of JSON it barely shrinks, and its
    # two deflate contexts cost about 90 KiB a socket (load_tests/REPORTS.md, chat sockets).
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=max_frame_bytes, compress=False)
    await ws.prepare(request)
    sockets.add(ws)
    return ws


# A frame on a socket's bus topic that closes the socket instead of going down it.
CLOSE_FRAME = "_close"


@contextlib.asynccontextmanager
async def relay(subscription: AsyncContextManager[asyncio.Queue],
                ws: web.WebSocketResponse) -> AsyncIterator[None]:
    """While the block runs, frames pushed from other instances go down this socket."""
    async with subscription as inbox:
        task = asyncio.create_task(_forward(inbox, ws))
        try:
            yield
        finally:
            task.cancel()


async def _forward(inbox: asyncio.Queue, ws: web.WebSocketResponse) -> None:
    while True:
        frame = await inbox.get()
        if ws.closed:
            return
        if frame.get("type") == CLOSE_FRAME:  # an instruction to this server, not a frame
            await close_socket(ws, frame["code"], frame["reason"])
            return
        await ws.send_json(frame)


async def close_socket(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    """Close with a code and reason the page can show."""
    if not ws.closed:
        await ws.close(code=code, message=reason.encode())


# Closing code 1012 (service restart): this server is going away, reconnect (to another).
RECONNECT = 1012


async def tell_to_reconnect(sockets: "weakref.WeakSet") -> None:
    """On shutdown: a `reconnect` frame down every socket, then each closed with RECONNECT;
    pages reconnect (to another instance) and re-sync. The frame says it even to a client
    whose closing handshake is cut short by the server going away."""
    async def tell(ws: web.WebSocketResponse) -> None:
        if not ws.closed:
            await ws.send_json({"type": "reconnect", "reason": "server restarting"})
        await close_socket(ws, RECONNECT, "server restarting: reconnect")

    await asyncio.gather(*(tell(ws) for ws in list(sockets)), return_exceptions=True)


async def send_error(ws: web.WebSocketResponse, code: str, message: str, **extra: Any) -> None:
    if not ws.closed:
        await ws.send_json({"type": "error", "code": code, "message": message, **extra})
