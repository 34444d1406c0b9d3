"""Agents: the directory in PostgreSQL and the agent WebSocket at /agent/ws.

The first frame authenticates (only a SHA-256 of each token is stored); then the socket
carries presence, offers, accept/decline, messages, message templates, private notes and
wrap-up (docs/interfaces.md). Frames for an agent reach it through the bus, whichever instance
produced them.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
import weakref
from datetime import datetime, timezone
from typing import Any, Callable

import asyncpg
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from service.agents.activity import STATE_FRAMES, ActivityLog
from service.agents.bus import Bus
from service.conversations.handoff import Handoff, HandoffError, offer_frame
from service.conversations.notes import NoteAuthor
from service.conversations.outbox import Outbox
from service.conversations.transfer import TransferRequest
from service.infra.auth_throttle import AuthThrottle
from service.infra.tokens import hash_token, new_token
from service.reporting.reports import iso
from service.rules.away_reasons import DEFAULT_REASONS, AwayReasons
from service.websocket import (
    CLOSE_FRAME,
    RateLimit,
    close_socket,
    open_socket,
    parse_frame,
    relay,
    send_error,
    tell_to_reconnect,
)

log = structlog.get_logger(__name__)

MAX_FRAME_BYTES = 16 * 1024
MAX_TEXT_CHARS = 2000
FRAMES_PER_SECOND = 20
AUTH_TIMEOUT_S = 10
RECHECK_S = 5  # how often open consoles are checked against disabled agents
REVOKED = 4401  # WebSocket close code: the agent's token no longer signs in
# A console's id for a message, note or template frame: as crypto.randomUUID() writes one, so
# the message_status frames that name it (the outbox job's id, as PostgreSQL prints it) match.
FRAME_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
WITH_IDS = ("message", "note", "template")


async def add_agent(conn: asyncpg.Connection, name: str, skills: list[str],
                    capacity: dict[str, int] | None = None, phone: str | None = None) -> str:
    """Store a new agent; return their token (shown once, only its hash is kept). Channels
    `capacity` leaves out take their default (ChannelTraits.default_capacity)."""
    token = new_token("agent")
    await conn.execute(
        "INSERT INTO agents (id, name, skills, capacity, phone, token_hash) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
        uuid.uuid4(), name, sorted(set(skills)), json.dumps(capacity or {}),
        phone, hash_token(token))
    return token


async def disable_agent(conn: asyncpg.Connection, name_or_id: str) -> str:
    """Disable one enabled agent, named or by id; their id. ValueError if not exactly one."""
    rows = await conn.fetch("SELECT id::text FROM agents WHERE disabled_at IS NULL AND "
                            "(name = $1 OR id::text = $1)", name_or_id)
    if len(rows) != 1:
        raise ValueError(f"no enabled agent is named {name_or_id!r}" if not rows else
                         f"{len(rows)} agents are named {name_or_id!r}: give the id")
    await conn.execute("UPDATE agents SET disabled_at = now() WHERE id = $1::uuid",
                       rows[0]["id"])
    return rows[0]["id"]


def revoked_frame() -> dict[str, Any]:
    """Published on an agent's topic when they are disabled: every console of theirs closes."""
    return {"type": CLOSE_FRAME, "code": REVOKED, "reason": "token revoked"}


async def agent_for_token(pool: asyncpg.Pool, token: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT id, name, skills, capacity, phone, client_identity FROM agents "
        "WHERE token_hash = $1 AND disabled_at IS NULL", hash_token(token), timeout=5)
    if row is None:
        return None
    return {"id": str(row["id"]), "name": row["name"], "skills": list(row["skills"]),
            "capacity": json.loads(row["capacity"]), "phone": row["phone"],
            "client_identity": row["client_identity"]}


class AgentDesk:
    """The /agent/ws endpoint of one instance."""

    def __init__(self, pool: asyncpg.Pool, handoff: Handoff, bus: Bus, contact_types,
                 throttle: AuthThrottle, activity: ActivityLog,
                 outbox: Outbox | None = None,
                 away_reasons: Callable[[], AwayReasons] = lambda: DEFAULT_REASONS):
        self._pool = pool
        self._away_reasons = away_reasons  # the rules in force's
        self._outbox = outbox
        self._handoff = handoff
        self._bus = bus
        self._activity = activity
        self._contact_types = contact_types
        self._throttle = throttle
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._signed_in: dict[web.WebSocketResponse, str] = {}  # socket -> agent id
        self._recheck: asyncio.Task | None = None

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = await open_socket(request, self.sockets, MAX_FRAME_BYTES)
        agent = await self._authenticate(ws, request.remote)
        if agent is None:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
            return ws
        structlog.contextvars.bind_contextvars(agent_id=agent["id"])
        router = self._handoff.router
        await router.register_agent(agent)
        self._signed_in[ws] = agent["id"]
        self._ensure_rechecking()
        console = await self._activity.connected(agent["id"])
        try:
            async with relay(self._bus.subscription(f"agent:{agent['id']}"), ws):
                await self._send_ready(ws, agent)
                await self._serve(ws, agent)
        finally:
            self._signed_in.pop(ws, None)
            await router.set_presence(agent["id"], "away")
            await self._activity.disconnected(console)
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse,
                            address: str | None) -> dict[str, Any] | None:
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            return None
        frame = parse_frame(msg)
        if not isinstance(frame, dict) or frame.get("type") != "auth" or \
                not isinstance(frame.get("token"), str):
            await _error(ws, "unauthorized", "the first frame must be {type: auth, token}")
            return None
        if await self._throttle.blocked(address):
            await _error(ws, "rate_limited", "too many failed sign-ins from this address; "
                         f"try again in {self._throttle.window_s} s")
            return None
        agent = await agent_for_token(self._pool, frame["token"])
        if agent is None:
            await self._throttle.failed(address)
            await _error(ws, "unauthorized", "unknown or disabled agent token")
        return agent

    def _ensure_rechecking(self) -> None:
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self._close_disabled(), name="agents-recheck")

    async def _close_disabled(self) -> None:
        """Every few seconds: consoles of agents disabled since they signed in are closed
        (`agents disable` also closes them at once through the bus; this covers a missed one)."""
        while self._signed_in:
            await asyncio.sleep(RECHECK_S)
            try:
                rows = await self._pool.fetch(
                    "SELECT id::text FROM agents WHERE disabled_at IS NOT NULL "
                    "AND id = ANY($1::uuid[])", list(set(self._signed_in.values())), timeout=5)
            except (asyncpg.PostgresError, OSError, asyncio.TimeoutError) as exc:
                log.warning("agents.recheck_failed", error=str(exc))
                continue
            disabled = {row["id"] for row in rows}
            for ws, agent_id in list(self._signed_in.items()):
                if agent_id in disabled:
                    await close_socket(ws, REVOKED, "token revoked")

    async def _send_ready(self, ws: web.WebSocketResponse, agent: dict[str, Any]) -> None:
        router = self._handoff.router
        state = await router.agent_state(agent["id"])
        reasons = self._away_reasons()
        await ws.send_json({"type": "ready", "agent": {
            "id": agent["id"], "name": agent["name"], "skills": agent["skills"],
            "capacity": router.capacity_of(agent), "status": state.get("status", "away"),
            **_reason_fields(reasons, state.get("away_reason")),
            "since": _ms_iso(state.get("activity_at"))},
            "contact_types": self._contact_types(),
            "away_reasons": [r.view() for r in reasons.reasons],
            "transfer_targets": await self._transfer_targets(agent)})
        for contact_id in await router.assignments_for(agent["id"]):  # re-sync after reconnect
            found = await self._handoff.conversation(contact_id)
            if found:
                await ws.send_json(self._handoff.assigned_frame(found[1]))
                await self._send_statuses(ws, contact_id)
        for contact_id in await router.offers_for(agent["id"]):
            entry = await router.entry(contact_id)
            if entry:
                await ws.send_json(offer_frame(entry, expires_in_s=router.offer_timeout_s))

    async def _transfer_targets(self, agent: dict[str, Any]) -> dict[str, Any]:
        """Where this agent may transfer to: the queues and the other agents."""
        rows = await self._pool.fetch(
            "SELECT id, name, skills FROM agents WHERE disabled_at IS NULL AND id <> $1 "
            "ORDER BY name, id", uuid.UUID(agent["id"]), timeout=5)
        queues = self._handoff.queues()
        return {"queues": queues, "agents": [{"id": str(r["id"]), "name": r["name"],
                                              "skills": list(r["skills"])} for r in rows]}

    async def _send_statuses(self, ws: web.WebSocketResponse, contact_id: str) -> None:
        """The states of the contact's outbound messages, after its assigned frame."""
        if self._outbox is None:
            return
        try:
            statuses = await self._outbox.statuses(contact_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("desk.statuses_unavailable", contact_id=contact_id, error=str(exc))
            return
        for frame in statuses:
            await ws.send_json(frame)

    async def _serve(self, ws: web.WebSocketResponse, agent: dict[str, Any]) -> None:
        limit = RateLimit(FRAMES_PER_SECOND, FRAMES_PER_SECOND * 2)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.ERROR:
                    break
                await _error(ws, "bad_frame", "frames are JSON text")
                continue
            frame = parse_frame(msg)
            if not limit.allow():
                await _error(ws, "rate_limited", "too many frames; slow down", frame)
                continue
            try:
                await self._dispatch_frame(ws, agent, frame)
            except HandoffError as exc:
                await _error(ws, exc.code, str(exc), frame)
            except Exception:  # Redis or PostgreSQL away: say so, keep the console open
                log.exception("desk.frame_failed")
                await _error(ws, "unavailable", "that could not be done now (the service "
                             "cannot reach its data); try again in a moment", frame)
                continue
            if isinstance(frame, dict) and str(frame.get("type")) in STATE_FRAMES:
                await self._activity.observe([agent["id"]])  # stamp when the state began

    async def _dispatch_frame(self, ws, agent, frame) -> None:
        if not isinstance(frame, dict):
            raise HandoffError("bad_frame", "frames are JSON objects")
        kind = frame.get("type")
        contact_id = frame.get("contact_id")
        if kind == "presence":
            await self._presence(ws, agent, frame)
            return
        if not isinstance(contact_id, str) or not contact_id:
            raise HandoffError("bad_frame", f"'{kind}' needs a contact_id")
        frame_id = _frame_id(frame) if kind in WITH_IDS else None
        if kind == "accept":
            await ws.send_json(await self._handoff.accept(agent, contact_id))
        elif kind == "decline":
            await self._handoff.decline(agent, contact_id)
        elif kind == "message":
            text = frame.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
                raise HandoffError("bad_frame", f"text is 1 to {MAX_TEXT_CHARS} characters")
            await _answer(ws, await self._handoff.agent_message(
                agent, contact_id, text.strip(), frame_id, frame.get("saved_reply") or None))
        elif kind == "wrap_up":
            if not isinstance(frame.get("resolved"), bool):
                raise HandoffError("bad_frame", "wrap_up needs resolved: true or false")
            correction = frame.get("contact_type") or None
            note = str(frame.get("note") or "")[:MAX_TEXT_CHARS]
            await self._handoff.wrap_up(agent, contact_id, frame["resolved"], correction, note)
            await ws.send_json({"type": "wrapped_up", "contact_id": contact_id})
        elif kind == "note":  # private: pushed to the agent's consoles, never to the customer
            author = NoteAuthor("agent", agent["name"], agent["id"])
            await self._handoff.notes.add(contact_id, author, frame.get("text"),
                                          holder_only=True, note_id=frame_id)
        elif kind == "replies":
            await ws.send_json(await self._handoff.saved_replies(agent, contact_id))
        elif kind == "templates":
            await ws.send_json(await self._handoff.message_templates(agent, contact_id))
        elif kind == "template":
            template_id = frame.get("template_id")
            if not isinstance(template_id, str) or not template_id:
                raise HandoffError("bad_frame", "template needs a template_id")
            await _answer(ws, await self._handoff.send_template(agent, contact_id,
                                                                template_id, frame_id))
        elif kind == "transfer":
            request = TransferRequest.from_frame(frame)
            await ws.send_json(await self._handoff.transfers.request(agent, request))
        else:
            raise HandoffError("bad_frame", f"unknown frame type {kind!r}")

    async def _presence(self, ws: web.WebSocketResponse, agent: dict[str, Any],
                        frame: dict[str, Any]) -> None:
        """Available, or away with a reason of the rules (an old console's none: `other`)."""
        status, reasons = frame.get("status"), self._away_reasons()
        if status not in ("available", "away"):
            raise HandoffError("bad_frame", "status is available or away")
        reason = frame.get("reason")
        if status == "available" and reason is not None:
            raise HandoffError("bad_frame", "a reason goes with status away only")
        if status == "away" and reason is None:
            reason = reasons.fallback
        elif status == "away" and reasons.get(reason) is None:
            known = ", ".join(r.id for r in reasons.reasons)
            raise HandoffError("unknown_reason", f"unknown away reason {reason!r} "
                               f"(this deployment's: {known})")
        await self._handoff.router.set_presence(agent["id"], status, reason)
        seen = (await self._activity.observe([agent["id"]]))[agent["id"]]  # stamped now
        await ws.send_json({"type": "presence", "status": status,
                            **_reason_fields(reasons, reason),
                            "since": iso(datetime.fromtimestamp(seen.since, timezone.utc))
                            if seen.since else None})
        if status == "available":
            await self._handoff.dispatch()

    async def close_all(self) -> None:
        if self._recheck:
            self._recheck.cancel()
            await asyncio.gather(self._recheck, return_exceptions=True)
        await tell_to_reconnect(self.sockets)


def _frame_id(frame: dict[str, Any]) -> str | None:
    """A message, note or template frame's own id, checked: None when it has none."""
    value = frame.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not FRAME_ID.fullmatch(value):
        raise HandoffError("bad_frame", f"id {value!r} is not a UUID in lower-case "
                           "canonical form (8-4-4-4-12 hex digits)")
    return value


async def _answer(ws: web.WebSocketResponse, frame: dict[str, Any] | None) -> None:
    """What a repeated frame is answered with (its message's status), when there is one."""
    if frame is not None:
        await ws.send_json(frame)


async def _error(ws: web.WebSocketResponse, code: str, message: str, frame: Any = None) -> None:
    """An error frame; one caused by a frame names its contact and its id."""
    extra = {}
    if isinstance(frame, dict):
        if isinstance(frame.get("contact_id"), str):
            extra["contact_id"] = frame["contact_id"]
        if isinstance(frame.get("id"), (str, int, float)):  # a bad id is named as sent
            extra["id"] = frame["id"]
    await send_error(ws, code, message, **extra)


def _reason_fields(reasons: AwayReasons, reason: str | None) -> dict[str, Any]:
    """An away reason as frames carry it: its id and label (both null when none)."""
    reason = reason or None
    return {"reason": reason, "reason_label": reasons.label(reason) if reason else None}


def _ms_iso(ms: str | None) -> str | None:
    return iso(datetime.fromtimestamp(int(ms) / 1000, timezone.utc)) if ms else None
