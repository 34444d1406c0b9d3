"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.appkeys import EVENTS, PG, REDIS
from service.reporting import metrics


def routes() -> list[web.RouteDef]:
    return [web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/metrics", prometheus)]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "process": os.getpid()})  # which worker


async def readyz(request: web.Request) -> web.Response:
    checks = {"postgres": _check(request.app[PG].fetchval("SELECT 1")),
              "redis": _check(request.app[REDIS].ping())}
    results = dict(zip(checks, await asyncio.gather(*checks.values())))
    ready = all(v == "ok" for v in results.values())
    return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)


async def _check(awaitable) -> str:
    try:
        await asyncio.wait_for(awaitable, timeout=2)
        return "ok"
    except Exception as exc:  # any failure means "not ready"; the message says which
        return f"error: {type(exc).__name__}: {exc}"[:200]


async def prometheus(request: web.Request) -> web.Response:
    metrics.EVENTS_WRITTEN.set(request.app[EVENTS].written)
    return web.Response(body=generate_latest(metrics.REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
