"""Private notes over HTTP: a supervisor's whisper to the agent on a live contact.

    POST /api/contacts/{contact_id}/notes   JSON {"text": "..."}; 201 with the note as kept

An ops or supervisor token writes as the supervisor (named by the token's name); an agent's
own console token may write too (agents' tools), only on a contact that agent holds. 400 bad
text or id, 401 no or an unknown token, 403 another role or not the agent's contact, 404 no
such live contact, 409 the contact has ended; nothing is kept then (conversations/notes.py).
"""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web

from service.agents.desk import agent_for_token
from service.appkeys import AUTH_THROTTLE, HANDOFF, PG
from service.conversations.handoff import HandoffError
from service.conversations.notes import NoteAuthor
from service.infra import tokens
from service.reporting.ops_api import NO_STORE, bearer_token, counted, json_error, json_object

log = structlog.get_logger(__name__)

STATUS: dict[str, type[web.HTTPException]] = {
    "bad_frame": web.HTTPBadRequest, "not_assigned": web.HTTPForbidden,
    "unknown_contact": web.HTTPNotFound, "contact_closed": web.HTTPConflict}
WRITERS = ("ops", "supervisor")  # API token roles that whisper


def routes() -> list[web.RouteDef]:
    return [web.post("/api/contacts/{contact_id}/notes", add_note)]


@counted("contact_notes", "the contact cannot be reached right now; try again")
async def add_note(request: web.Request) -> web.Response:
    """Keep a private note on a live contact, pushed to the agent who holds it."""
    author = await asker(request, "write notes")
    contact_id = contact_id_of(request.match_info["contact_id"])
    text = (await json_object(request)).get("text")
    try:
        note = await request.app[HANDOFF].notes.add(contact_id, author, text,
                                                    holder_only=author.role == "agent")
    except HandoffError as exc:
        if exc.code == "unknown_contact" and await ended(request, contact_id):
            raise json_error(web.HTTPConflict, f"contact {contact_id} has ended; notes are "
                             "for live contacts") from None
        raise json_error(STATUS.get(exc.code, web.HTTPBadRequest), str(exc)) from None
    return web.json_response({"ok": True, "contact_id": contact_id, "note": note.line()},
                             status=201, headers=NO_STORE)


async def asker(request: web.Request, to_do: str) -> NoteAuthor:
    """Who asks, from the bearer token: a supervisor (ops or supervisor token) or an agent
    (their console token); 401/403/429 naming why not, `to_do` saying what was asked."""
    throttle = request.app[AUTH_THROTTLE]
    if await throttle.blocked(request.remote):
        raise json_error(web.HTTPTooManyRequests, "too many failed sign-ins from this address; "
                         f"try again in {throttle.window_s} s",
                         **{"Retry-After": str(throttle.window_s)})
    token = bearer_token(request) or ""
    pool = request.app[PG]
    role = await tokens.role_of(pool, token) if token else None
    if role in WRITERS:
        return NoteAuthor("supervisor", await tokens.name_of(pool, token) or "Supervisor")
    if role is not None:
        raise json_error(web.HTTPForbidden, f"tokens of role '{role}' cannot {to_do}; use "
                         "a supervisor, ops or agent token")
    agent = await agent_for_token(pool, token) if token else None
    if agent is not None:
        return NoteAuthor("agent", agent["name"], agent["id"])
    if token:
        await throttle.failed(request.remote)
    raise json_error(web.HTTPUnauthorized, "a supervisor, ops or agent token is required: "
                     "send 'Authorization: Bearer <token>'",
                     **{"WWW-Authenticate": 'Bearer realm="switchboard"'})


async def ended(request: web.Request, contact_id: str) -> bool:
    """A contact not live in Redis that the event log knows: it ended (Redis forgets a
    closed conversation at once)."""
    return bool(await request.app[PG].fetchval(
        "SELECT 1 FROM contact_facts WHERE contact_id = $1::uuid", contact_id, timeout=5))


def contact_id_of(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"not a contact id: {value!r}") from None
