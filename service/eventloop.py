"""The event loop `switchboard serve` runs on: uvloop when installed, asyncio's own otherwise.

uvloop (libuv, in C) does the socket and callback work of every webhook turn with less CPU
than asyncio's selector loop; load_tests/README.md has the figures.
"""

from __future__ import annotations

import asyncio


class EventLoopUnavailable(RuntimeError):
    pass


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """kind: "auto" (uvloop if installed), "uvloop" or "asyncio"."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise EventLoopUnavailable(
                    "SWITCHBOARD_EVENT_LOOP=uvloop but uvloop is not installed "
                    "(pip install uvloop, or use auto)") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
