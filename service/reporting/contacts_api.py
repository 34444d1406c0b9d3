"""Contact search and a contact's timeline over HTTP, read-only (ops or supervisor token).

    GET /api/contacts?customer=&contact_id=&from=&to=&channel=&contact_type=&outcome=
                     &agent=&before=&limit=           one page of contacts, newest first
    GET /api/contacts/{contact_id}                    the contact, its timeline, its
                                                      conversation and the customer's others
    GET /contacts                                     the page (static, service/web/contacts.*)

`customer`: a phone number in any common format, an email, a customer id or part of a name;
`contact_id`: an id or its first characters; `from`/`to` as every report takes them (a week to
now by default); `outcome`: a handling word of the reports (self_service, agent, abandoned,
queued, dropped, open), `escalated`, or an ended contact's outcome (agent_resolved...);
`agent`: an agent's id or name; `before`: the previous page's `next_before`; `limit` 1-100
(25). A bad parameter is a 400 naming it (`parameter`). An agent's console token is refused
(403): agents see their own contacts in the console, not everyone's.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from service.agents.desk import agent_for_token
from service.appkeys import PG, RULES
from service.channel_list import channel_names
from service.reporting import contact_search, contact_timeline, reports
from service.reporting.contact_search import BadParameter, Cursor, SearchQuery
from service.reporting.contact_timeline import Names
from service.reporting.ops_api import (
    NO_STORE,
    _require_role,
    _static,
    bearer_token,
    counted,
    json_error,
    report_rules,
)
from service.reporting.reports import BadWindow

READERS = ("ops", "supervisor")
UNAVAILABLE = "the event log cannot be read right now; try again"
MAX_CUSTOMER_CHARS = 200
OTHER_CONTACTS = 50


def routes() -> list[web.RouteDef]:
    return [web.get("/contacts", _static("contacts.html")),
            web.get("/contacts/contacts.js", _static("contacts.js")),
            web.get("/contacts/contacts.css", _static("contacts.css")),
            web.get("/api/contacts", search_contacts),
            web.get("/api/contacts/{contact_id}", one_contact)]


async def _require_reader(request: web.Request) -> None:
    """An ops or supervisor token; an agent's console token is a 403, not a 401."""
    try:
        await _require_role(request, READERS, "contacts")
    except web.HTTPUnauthorized:
        token = bearer_token(request)
        if token and await agent_for_token(request.app[PG], token) is not None:
            raise json_error(web.HTTPForbidden, "an agent's console token cannot search "
                             "contacts; use an ops or supervisor token") from None
        raise


def bad_parameter(exc: BadParameter) -> web.HTTPException:
    """A 400 whose JSON names the parameter as well as what is wrong with it."""
    return web.HTTPBadRequest(text=json.dumps({"error": str(exc), "parameter": exc.parameter}),
                              content_type="application/json", headers=NO_STORE)


@counted("contacts_search", UNAVAILABLE)
async def search_contacts(request: web.Request) -> web.Response:
    """One page of the contacts the query parameters describe."""
    await _require_reader(request)
    try:
        query = search_query(request.query)
        rules = report_rules(request.app)
        found = await contact_search.search(request.app[PG], query, rules)
    except BadParameter as exc:
        raise bad_parameter(exc) from None
    body: dict[str, Any] = {**query.window.as_dict(), "limit": query.limit,
            "contacts": [row.as_dict() for row in found.rows],
            "next_before": found.next_before}
    if found.customers_matched is not None:
        body["customers_matched"] = found.customers_matched
    body["choices"] = _choices(request.app)
    return web.json_response(body, headers=NO_STORE)


def _choices(app: web.Application) -> dict[str, Any]:
    """What the filters take, for the page's menus: channels, the catalog's types, outcomes."""
    types = sorted(app[RULES].current.catalog.types.values(), key=lambda t: t.label.lower())
    return {"channels": list(channel_names()),
            "contact_types": [{"id": t.id, "label": t.label} for t in types],
            "outcomes": list(contact_search.OUTCOME_WORDS)}


KNOWN = ("customer", "contact_id", "from", "to", "channel", "contact_type", "outcome", "agent",
         "before", "limit")


def search_query(params) -> SearchQuery:
    """The search the query string asks for; BadParameter naming what is wrong."""
    unknown = sorted(set(params) - set(KNOWN))
    if unknown:
        raise BadParameter(unknown[0], f"unknown parameter {unknown[0]!r}; the search takes "
                           f"{', '.join(KNOWN)}")
    try:
        window = reports.parse_window(params.get("from"), params.get("to"))
    except BadWindow as exc:
        raise BadParameter("to" if str(exc).startswith("'to'") else "from", str(exc)) from None
    return SearchQuery(
        window=window, customer=_customer(params.get("customer")),
        contact_id=_contact_id(params.get("contact_id")),
        channel=_channel(params.get("channel")), contact_type=_type(params.get("contact_type")),
        outcome=contact_search.check_outcome(params["outcome"]) if params.get("outcome")
        else None,
        agent=_text(params.get("agent"), "agent"),
        before=Cursor.decode(params["before"]) if params.get("before") else None,
        limit=_limit(params.get("limit")))


def _text(raw: str | None, name: str) -> str | None:
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_CUSTOMER_CHARS:
        raise BadParameter(name, f"'{name}' is at most {MAX_CUSTOMER_CHARS} characters")
    return raw.strip()


def _customer(raw: str | None) -> str | None:
    text = _text(raw, "customer")
    if text is not None and len(text) < 2:
        raise BadParameter("customer", "'customer' needs at least 2 characters: a phone "
                           "number, an email, a customer id or part of a name")
    return text


def _contact_id(raw: str | None) -> str | None:
    text = _text(raw, "contact_id")
    if text is not None:
        contact_search.contact_id_range(text)  # checked now: a 400 before any query
    return text


def _channel(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    if raw.strip() not in channel_names():
        raise BadParameter("channel", f"'channel' is one of {', '.join(channel_names())}, "
                           f"not {raw!r}")
    return raw.strip()


def _type(raw: str | None) -> str | None:
    text = _text(raw, "contact_type")
    if text is not None and not contact_search.TYPE_ID.match(text):
        raise BadParameter("contact_type", f"'contact_type' is a contact type's id (e.g. "
                           f"track_order) or unclassified, not {raw!r}")
    return text


def _limit(raw: str | None) -> int:
    if raw is None:
        return contact_search.DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= contact_search.MAX_LIMIT:
        raise BadParameter("limit", f"'limit' is a whole number from 1 to "
                           f"{contact_search.MAX_LIMIT}, not {raw!r}")
    return value


@counted("contacts_one", UNAVAILABLE)
async def one_contact(request: web.Request) -> web.Response:
    """The contact's facts, timeline, conversation and the customer's other contacts."""
    await _require_reader(request)
    raw = request.match_info["contact_id"]
    try:
        contact_id = uuid.UUID(raw)
    except ValueError:
        raise bad_parameter(BadParameter("contact_id", f"not a contact id: {raw!r}")) from None
    pool, rules = request.app[PG], report_rules(request.app)
    row = await contact_search.contact(pool, contact_id, rules)
    if row is None:
        raise json_error(web.HTTPNotFound, f"no contact {contact_id} in the event log")
    events = await contact_timeline.events_of(pool, row.contact_id,
                                              reports.parse_moment(row.started_at, "started"))
    names = _names(request.app, await contact_timeline.agent_names(pool, events))
    told = contact_timeline.story(events, names)
    others = await contact_search.customer_contacts(pool, row.customer.id, rules,
                                                    OTHER_CONTACTS + 1) \
        if row.customer.id else ()
    others = tuple(o for o in others if o.contact_id != row.contact_id)[:OTHER_CONTACTS]
    return web.json_response({
        "contact": row.as_dict(),
        "queue_label": names.queue(row.queue) if row.queue else None,
        "timeline": [_entry(e) for e in told.timeline],
        "conversation": [b.as_dict() for b in told.bubbles],
        "other_contacts": [{"contact_id": o.contact_id, "started_at": o.started_at,
                            "channel": o.channel, "contact_type": o.contact_type,
                            "contact_type_label": o.contact_type_label,
                            "handling": o.handling, "outcome": o.outcome} for o in others],
    }, headers=NO_STORE)


def _entry(entry: contact_timeline.Entry) -> dict[str, Any]:
    return {"at": entry.at, "kind": entry.kind, "description": entry.description,
            "details": entry.details, "private": entry.private}


def _names(app: web.Application, agents: dict[str, str]) -> Names:
    rules = app[RULES].current
    types = rules.catalog.types.values()
    return Names(types={t.id: t.label for t in types},
                 queues={q.name: q.label for q in rules.tree.queues.values()},
                 answers={t.id: t.answer for t in types if t.answer}, agents=agents)
