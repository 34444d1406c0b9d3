"""A customer's files over HTTP, for the agent console and supervisors.

    GET /api/contacts/{contact_id}/attachments/{n}   the bytes of the contact's n-th file
    POST /api/contacts/{contact_id}/files            an agent sends the customer a file

The provider's media URLs need the account's credentials, so browsers never see them: this
endpoint fetches the file through the contact's channel (`fetch_attachment`) and hands it on.
Who may: the agent who holds the contact (their console token) and supervisors (ops or
supervisor token; a contact that ended is found in the event log). 400 bad id or number,
401 no or an unknown token, 403 another role or another agent's contact, 404 no such contact
or file (or the provider no longer has it), 502 the provider failed, did not answer in time, or
the file is over the size cap; always JSON. The answer is `Cache-Control: private`, `nosniff`,
and only raster images are shown inline: anything else (HTML, SVG, PDF) is a download.

The POST takes the file as the body (its type in Content-Type, checked against its bytes for
images and PDFs; at most 5 MB) from the agent who holds the contact (their console token), and
`X-Message-Id`, the console's id for it (a UUID): sent again with the same id it is kept and
sent once. It answers with the file's number among the contact's files and where its sending
stands; 413 too large, 415 not the type claimed, 400 empty or a bad id, 409 a channel that
carries no files, 503 the file could not be kept; always JSON.
"""

from __future__ import annotations

import json
import re
import uuid

import structlog
from aiohttp import web

from service.appkeys import HANDOFF, PG
from service.conversations.handoff import HandoffError
from service.model import (
    MAX_FILE_BYTES,
    Attachment,
    AttachmentBody,
    AttachmentUnavailable,
    FileRefused,
    file_headers,
)
from service.reporting.notes_api import asker, contact_id_of, ended
from service.reporting.ops_api import counted, json_error

log = structlog.get_logger(__name__)

UNKNOWN_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,127}")
STATUS: dict[str, type[web.HTTPException]] = {
    "not_assigned": web.HTTPForbidden, "unknown_contact": web.HTTPNotFound,
    "no_attachment": web.HTTPNotFound, "gone": web.HTTPNotFound,
    "unsupported": web.HTTPNotFound, "unavailable": web.HTTPBadGateway,
    "too_large": web.HTTPBadGateway, "not_file": web.HTTPConflict,
    "contact_gone": web.HTTPNotFound, "not_recorded": web.HTTPServiceUnavailable,
    "outside_window": web.HTTPConflict, "too_many_files": web.HTTPConflict}


class TooLarge(web.HTTPClientError):
    status_code = 413  # aiohttp's own class wants the sizes, which a JSON error says in words


REFUSED: dict[str, type[web.HTTPException]] = {
    "empty": web.HTTPBadRequest, "too_large": TooLarge,
    "not_image": web.HTTPUnsupportedMediaType, "not_pdf": web.HTTPUnsupportedMediaType}
ENDED_ATTACHMENTS = """
    SELECT channel, data->'attachments' AS attachments FROM contact_events
    WHERE contact_id = $1::uuid AND kind IN ('received', 'agent_message')
      AND data ? 'attachments'"""


def routes() -> list[web.RouteDef]:
    return [web.get("/api/contacts/{contact_id}/attachments/{n}", attachment),
            web.post("/api/contacts/{contact_id}/files", send_file)]


@counted("contact_attachments", "the contact cannot be reached right now; try again")
async def attachment(request: web.Request) -> web.Response:
    """The bytes of a contact's file, fetched through the channel that received it."""
    who = await asker(request, "open customers' files")
    contact_id = contact_id_of(request.match_info["contact_id"])
    n = _number(request.match_info["n"])
    attachments = request.app[HANDOFF].attachments
    try:
        found = await attachments.live(contact_id, n, who)
        if found is None:  # a supervisor asking about a contact that ended
            found = await _from_the_log(request, contact_id, n)
        channel, wanted = found
        body = await attachments.fetch(channel, wanted)
    except HandoffError as exc:
        raise json_error(STATUS.get(exc.code, web.HTTPBadRequest), str(exc)) from None
    except AttachmentUnavailable as exc:
        log.warning("attachments.fetch_failed", contact_id=contact_id, n=n, reason=exc.reason,
                    error=str(exc))
        raise json_error(STATUS.get(exc.reason, web.HTTPBadGateway),
                         f"the file could not be fetched: {exc}") from None
    return web.Response(body=body.data, headers=_headers(n, wanted, body))


@counted("contact_files", "the file could not be sent right now; try again in a moment")
async def send_file(request: web.Request) -> web.Response:
    """A file from the agent who holds the contact to its customer, through the outbox."""
    who = await asker(request, "send files")
    contact_id = contact_id_of(request.match_info["contact_id"])
    if who.role != "agent" or who.id is None:
        raise json_error(web.HTTPForbidden, "only the agent who holds the contact sends files")
    message_id = _message_id(request.headers.get("X-Message-Id", ""))
    try:  # the app's body cap is for forms and JSON; a file may be larger
        data = await request.clone(client_max_size=MAX_FILE_BYTES).read()
    except web.HTTPRequestEntityTooLarge:
        raise json_error(TooLarge, "the file is over 5 MB: send a smaller one") from None
    handoff = request.app[HANDOFF]
    try:
        repeat = await handoff.attachments.send({"id": who.id, "name": who.name}, contact_id,
                                                data, request.headers.get("Content-Type", ""),
                                                message_id)
    except FileRefused as exc:
        raise json_error(REFUSED.get(exc.reason, web.HTTPBadRequest), str(exc)) from None
    except HandoffError as exc:
        raise json_error(STATUS.get(exc.code, web.HTTPBadRequest), str(exc)) from None
    found = await handoff.conversation(contact_id)
    line = next((line for line in (found[1]["transcript"] if found else [])
                 if line.get("id") == message_id), {})
    return web.json_response({"message_id": message_id,
                              "state": (repeat or {}).get("state", "queued"),
                              "attachments": line.get("attachments", [])})


def _message_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise json_error(web.HTTPBadRequest, "X-Message-Id must be the console's id for the "
                         "file, a UUID") from None


async def _from_the_log(request: web.Request, contact_id: str, n: int
                        ) -> tuple[str, Attachment]:
    """A file of a contact that ended, as its `received` event kept it."""
    rows = await request.app[PG].fetch(ENDED_ATTACHMENTS, contact_id, timeout=5)
    for row in rows:
        for entry in json.loads(row["attachments"]) if row["attachments"] else ():
            if isinstance(entry, dict) and entry.get("n") == n and entry.get("ref"):
                return row["channel"], Attachment(entry.get("content_type") or UNKNOWN_TYPE,
                                                  entry["ref"])
    if rows:
        raise HandoffError("no_attachment", f"contact {contact_id} has no attachment {n}")
    if await ended(request, contact_id):
        raise HandoffError("no_attachment", f"contact {contact_id} has no attachments kept")
    raise HandoffError("unknown_contact", f"no contact {contact_id}")


def _number(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 0 < int(value) < 10_000:
        raise json_error(web.HTTPBadRequest, f"not an attachment number: {value[:20]!r} "
                         "(1 for the contact's first file)")
    return int(value)


def _headers(n: int, wanted: Attachment, body: AttachmentBody) -> dict[str, str]:
    """The file's type (the provider's, else the one the message named), never sniffed or
    cached by shared caches; inline only for raster images."""
    given = body.content_type.split(";", 1)[0].strip().lower()
    kind = given if _MEDIA_TYPE.fullmatch(given) and given != UNKNOWN_TYPE \
        else wanted.content_type
    return file_headers(kind, f"attachment-{n}")
