"""Erasing a customer over HTTP (ops token, like every /api/reports/*).

    DELETE /api/customers/{customer_id}[?dry_run=true]   erase the customer's personal data
                                                         (conversations/erasure.py); 200 with
                                                         counts per place, 400 a malformed
                                                         id, 404 unknown or already erased,
                                                         409 open contacts (named; nothing
                                                         changed)
"""

from __future__ import annotations

import json

from aiohttp import web

from service.appkeys import PG, REDIS
from service.conversations import erasure
from service.conversations.erasure import ErasureError
from service.infra import tokens
from service.reporting.ops_api import NO_STORE, _json, bearer_token, json_error, ops_report

STATUS: dict[erasure.Reason, type[web.HTTPException]] = {
    "bad_input": web.HTTPBadRequest, "not_found": web.HTTPNotFound, "open": web.HTTPConflict}


def routes() -> list[web.RouteDef]:
    return [web.delete("/api/customers/{customer_id}", erase_customer)]


@ops_report("customers_erase", source="PostgreSQL or Redis", what="or erase customers")
async def erase_customer(request: web.Request) -> web.Response:
    """Erase one customer (or count what would go, `dry_run=true`), recorded under the token's
    name."""
    dry_run = request.query.get("dry_run", "false").lower()
    if dry_run not in ("true", "false"):
        raise json_error(web.HTTPBadRequest, f"dry_run is true or false, not {dry_run!r}")
    name = await tokens.name_of(request.app[PG], bearer_token(request) or "")
    try:
        done = await erasure.erase(request.app[PG], request.app[REDIS],
                                   request.match_info["customer_id"],
                                   by=f"api: {name or 'ops token'}", dry_run=dry_run == "true")
    except ErasureError as exc:
        body = {"error": str(exc)} | ({"open_contacts": list(exc.open_contacts)}
                                      if exc.open_contacts else {})
        raise STATUS[exc.reason](text=json.dumps(body), content_type="application/json",
                                 headers=NO_STORE) from None
    return _json(done.as_dict())
