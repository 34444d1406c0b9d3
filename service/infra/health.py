"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.appkeys import EVENTS, PG, REDIS, RULES
from service.reporting import metrics


def routes() -> list[web.RouteDef]:
    return [web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/metrics", prometheus)]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "process": os.getpid()})  # which worker


async def readyz(request: web.Request) -> web.Response:
    """200 once this instance can answer (started, rules loaded). PostgreSQL and Redis are
    shared: when one is down every instance is, and each still gives the safe answer, so
    their state is reported in the body and never fails readiness (docs/architecture.md)."""
    app = request.app
    checks = {"postgres": _check(app[PG].fetchval("SELECT 1")) if PG in app else _absent(),
              "redis": _check(app[REDIS].ping()) if REDIS in app else _absent()}
    results = dict(zip(checks, await asyncio.gather(*checks.values())))
    ready = RULES in app
    return web.json_response({"ready": ready, "rules_loaded": ready, "checks": results,
                              "degraded": any(v != "ok" for v in results.values())},
                             status=200 if ready else 503)


async def _absent() -> str:
    return "error: not started"


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
