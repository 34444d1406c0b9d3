"""Failed sign-ins per address: agent tokens on /agent/ws and bearer tokens on the APIs.

After `LIMIT` failures from one address within `WINDOW_S`, that address is refused without its
token being looked at until the window ends (HTTP 429 with Retry-After, or an error frame and
a closed socket). Counted in Redis, so every instance refuses it. Redis unreachable: nobody is
refused for it, since locking every agent out during an outage is worse than an unthrottled
minute. Behind a proxy the address is the proxy's unless aiohttp is told the real one.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger(__name__)

LIMIT = 20
WINDOW_S = 60


class AuthThrottle:
    def __init__(self, redis: Any, limit: int = LIMIT, window_s: int = WINDOW_S):
        self._redis = redis
        self.limit = limit
        self.window_s = window_s

    async def blocked(self, address: str | None) -> bool:
        """Too many recent failures from this address."""
        try:
            [count] = await self._redis.execute(("GET", _key(address)))
        except Exception as exc:  # Redis away: fail open, see the module's docstring
            log.warning("auth.throttle_unavailable", error=str(exc))
            return False
        return int(count or 0) >= self.limit

    async def failed(self, address: str | None) -> None:
        """Count one failed sign-in from this address."""
        log.info("auth.failed", address=address)
        try:
            await self._redis.execute(("SET", _key(address), 0, "NX", "EX", self.window_s),
                                      ("INCR", _key(address)))
        except Exception as exc:
            log.warning("auth.throttle_unavailable", error=str(exc))


def _key(address: str | None) -> str:
    return f"sb:{{authfail:{address or 'unknown'}}}"
