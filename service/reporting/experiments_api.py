"""Experiments and the canary over HTTP (ops token, like every /api/reports/*).

    GET  /api/reports/experiments?from=&to=   per arm figures, intervals and verdicts; the canary
    GET  /api/rules/canary                    the running canary (or the last) and its guardrails
    POST /api/rules/canary                    start one: {"directory", "share", "guardrails":
                                              ["true_deflection:-0.05"], "min_contacts"}
    POST /api/rules/canary/promote            the canary becomes the rules (this instance's
                                              rules directory), every instance reloads
    POST /api/rules/canary/abort              stop it by hand
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from aiohttp import web

from service.appkeys import PG, RULES
from service.infra import tokens
from service.reporting import experiments
from service.reporting.ops_api import (
    NO_STORE,
    _json,
    _report_rules,
    _window,
    bearer_token,
    json_error,
    json_object,
    ops_report,
)
from service.rules import canary
from service.rules.canary import BadCanary, Guardrail
from service.rules.loader import load_rules
from service.rules.yamlfile import ConfigError


def routes() -> list[web.RouteDef]:
    return [web.get("/api/reports/experiments", experiments_report),
            web.get("/api/rules/canary", canary_now),
            web.post("/api/rules/canary", canary_start),
            web.post("/api/rules/canary/promote", canary_promote),
            web.post("/api/rules/canary/abort", canary_abort)]


@ops_report("experiments")
async def experiments_report(request: web.Request) -> web.Response:
    window, rules = _window(request), _report_rules(request)
    pool = request.app[PG]
    return _json(await experiments.experiments_report(
        pool, window, rules, request.app[RULES].current.experiments, await canary.latest(pool)))


@ops_report("canary", source="PostgreSQL")
async def canary_now(request: web.Request) -> web.Response:
    pool = request.app[PG]
    found = await canary.latest(pool)
    return _json({"canary": await experiments.canary_result(pool, found, _report_rules(request))
                  if found else None})


@ops_report("canary_start", source="PostgreSQL")
async def canary_start(request: web.Request) -> web.Response:
    """Validate the directory's rules (422 with file:line problems), then start the canary."""
    body = await json_object(request)
    try:
        directory = Path(str(body["directory"]))
        share = float(body["share"])
        guardrails = [Guardrail.parse(str(raw)) for raw in body.get("guardrails", [])]
        least = int(body.get("min_contacts", 100))
        canary.check_settings(share, least)
    except (KeyError, TypeError, ValueError) as exc:
        raise json_error(web.HTTPBadRequest, f"expected {{'directory', 'share', 'guardrails', "
                         f"'min_contacts'}}: {exc}") from None
    if not directory.is_dir():
        raise json_error(web.HTTPBadRequest, f"no rules directory at {directory}")
    try:
        rules = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(load_rules, directory, with_classifier=False))
    except ConfigError as exc:
        return web.json_response({"ok": False, "errors": [str(i) for i in exc.issues]},
                                 status=422, headers=NO_STORE)
    async with request.app[PG].acquire() as conn:
        try:
            started = await canary.start(conn, rules, request.app[RULES].current, share=share,
                                         guardrails=guardrails, min_contacts=least,
                                         actor=await _actor(request))
        except BadCanary as exc:
            return web.json_response({"ok": False, "errors": [str(exc)]}, status=409,
                                     headers=NO_STORE)
    await request.app[RULES].sync_canary()
    return _json({"ok": True, "canary": started.as_dict()})


@ops_report("canary_promote", source="PostgreSQL")
async def canary_promote(request: web.Request) -> web.Response:
    directory = request.app[RULES].current.directory
    return await _ending(request, lambda conn, actor: canary.promote(conn, directory, actor))


@ops_report("canary_abort", source="PostgreSQL")
async def canary_abort(request: web.Request) -> web.Response:
    return await _ending(request, canary.abort)


async def _ending(request: web.Request, action) -> web.Response:
    async with request.app[PG].acquire() as conn:
        try:
            ended = await action(conn, await _actor(request))
        except BadCanary as exc:
            return web.json_response({"ok": False, "errors": [str(exc)]}, status=409,
                                     headers=NO_STORE)
    await request.app[RULES].sync_canary()
    return _json({"ok": True, "canary": ended.as_dict()})


async def _actor(request: web.Request) -> str:
    name = await tokens.name_of(request.app[PG], bearer_token(request) or "")
    return name or "ops token"


