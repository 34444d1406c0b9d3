"""The durable outbox: every message and call bridge the service sends a contact, recorded in
PostgreSQL before the first attempt, retried until the channel takes it or refuses it for good.

The core stays channel-neutral: a job is (channel value, action, destination, payload), and
the channel (from the injected mapping) performs it and maps its provider's answers to
`DeliveryFailed`. Per contact, jobs go out in the order they were recorded: a job is attempted
only when no earlier one of its contact is still queued. Several instances share the table; a
worker claims due jobs with `FOR UPDATE SKIP LOCKED` and a lease, so one worker attempts a job
at a time. Guarantees are in docs/reliability.md ("Twilio's REST API down, busy (429) or
refusing connections").
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable, Mapping

import asyncpg
import structlog

from service.infra.ids import new_hex, new_uuid
from service.model import (
    AgentLine,
    Attachment,
    CallOutcome,
    Choice,
    DeliveryFailed,
    Destination,
    MessageStatus,
    OutboundChannel,
)
from service.reporting import metrics
from service.reporting.events import Event, EventWriter

log = structlog.get_logger(__name__)

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]

LOCK_NAMESPACE = 0x0B0C  # with hashtext(contact_id): one contact's jobs are recorded in turn
CLAIM_BATCH = 50
_JOB = ("id::text, contact_id, channel, action, destination, payload, agent_id, event_context, "
        "attempts, lease, extract(epoch FROM created_at)::float8 AS created_at")
# Later states win: a late "sent" callback never undoes "delivered".
_RANK = "array_position(ARRAY['queued','sent','delivered','failed'], {})"


class NotRecorded(Exception):
    """The request could not be recorded (PostgreSQL unavailable): nothing was sent."""


class IdTaken(Exception):
    """The job id asked for is already another contact's job."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, never sooner than the provider's Retry-After."""
    base_s: float = 1.0
    max_s: float = 30.0  # also the longest a contact waits after the provider is back
    give_up_s: float = 3600.0  # a job still not taken this long after it was recorded fails
    lease_s: float = 60.0  # longer than one attempt (a send and a look-up, each time-limited)
    poll_s: float = 1.0

    def delay(self, attempts: int, retry_after_s: float | None) -> float:
        """Seconds before the next attempt, after `attempts` failed ones."""
        backoff = min(self.max_s, self.base_s * 2 ** max(attempts - 1, 0))
        return max(random.uniform(backoff / 2, backoff), retry_after_s or 0.0)


# send: an agent's text; connect: the agent accepted; join: a transfer's next agent joins
# (or a callback's agent, once the customer answered); release: a cold transfer lets the
# first agent go; drop: a completed warm transfer drops the first agent's line; ask: a survey
# question; call_back: a call placed to a customer who asked to be called back;
# delete_attachment: a customer's file deleted at the provider (an erasure, erasure.py);
# template: an approved message template with its variables (payload ref, variables; text is
# the filled text, what the agent sees and a lost answer is looked up by); file: a file an
# agent sends (payload content_type, ref: the stored file; text "", so never looked up).
ACTIONS = ("send", "connect", "join", "release", "drop", "ask", "call_back",
           "delete_attachment", "template", "file")


@dataclass(frozen=True, slots=True)
class OutboxJob:
    id: str
    contact_id: str
    channel: str
    action: str  # one of ACTIONS
    destination: Destination
    payload: dict[str, Any]
    agent_id: str | None
    event_context: dict[str, Any]
    attempts: int
    lease: str | None  # this worker's claim; None: not claimed (an earlier job is queued)
    created_at: float
    look_since: float | None = None  # an earlier attempt may have reached the provider

    @property
    def text(self) -> str:
        """What the customer is told (looked up after a lost answer; shown to the agent)."""
        return self.payload.get("text", self.payload.get("hello", ""))


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where a job stands after a submit: queued (retried later), sent, or failed for good."""
    message_id: str
    state: str
    failure: DeliveryFailed | None = None
    repeat: bool = False  # the id was recorded before: nothing new was recorded or attempted


class Outbox:
    def __init__(self, pool: asyncpg.Pool, channels: Mapping[str, OutboundChannel],
                 publish: Publish, events: EventWriter, policy: RetryPolicy = RetryPolicy()):
        self._pool = pool
        self._channels = channels
        self._publish = publish
        self._events = events
        self.policy = policy
        self._wake = asyncio.Event()
        self._stopping = False
        # Where a call placed back that could not be placed at all is reported (callbacks).
        self.call_failed: Callable[[CallOutcome], Awaitable[None]] | None = None

    # ---- recording -----------------------------------------------------------------------

    async def submit(self, conv: Mapping[str, Any], action: str, payload: dict[str, Any],
                     agent_id: str | None, job_id: str | None = None) -> Outcome:
        """Record one outbound request, then attempt it at once when it is first in its
        contact's line; otherwise the worker sends it after the earlier ones. A `job_id`
        already recorded for the contact records and attempts nothing: its state, `repeat`
        (IdTaken when it is another contact's)."""
        try:
            job = await self._record(conv, action, payload, agent_id, job_id or new_uuid())
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise NotRecorded(str(exc)) from exc
        if isinstance(job, Outcome):
            return job
        await self._tell(job, "queued")
        if job.lease is None:
            self._wake.set()
            return Outcome(job.id, "queued")
        try:
            return await self._attempt(job)
        except Exception:  # recorded and leased: the worker takes it over when the lease ends
            log.exception("outbox.first_attempt_unsettled", message_id=job.id)
            return Outcome(job.id, "queued")

    async def attempt_unrecorded(self, conv: Mapping[str, Any], action: str,
                                 payload: dict[str, Any], agent_id: str | None) -> Outcome:
        """PostgreSQL is away, so nothing can be recorded: one attempt now, never retried,
        its outcome told to the agent like a recorded message's (for connecting the
        customer, which would otherwise not happen at all)."""
        job = OutboxJob(new_uuid(), conv["contact_id"], conv["channel"], action,
                        destination(conv), payload, agent_id, {}, 1, None, time.time())
        await self._tell(job, "queued")
        try:
            await self._perform(self._channels[job.channel], job)
        except Exception as exc:  # DeliveryFailed or anything else: told, not retried
            log.error("outbox.unrecorded_failed", message_id=job.id, action=action,
                      error=str(exc), contact_id=job.contact_id)
            await self._tell(job, "failed", "not sent, and not retried (PostgreSQL is "
                             f"unavailable, so it could not be recorded): {exc}",
                             getattr(exc, "code", None))
            return Outcome(job.id, "failed",
                           exc if isinstance(exc, DeliveryFailed) else None)
        log.warning("outbox.sent_unrecorded", message_id=job.id, action=action,
                    contact_id=job.contact_id)
        await self._tell(job, "sent")
        return Outcome(job.id, "sent")

    async def _record(self, conv: Mapping[str, Any], action: str, payload: dict[str, Any],
                      agent_id: str | None, job_id: str) -> OutboxJob | Outcome:
        context = {"customer_id": conv.get("customer_id"),
                   "contact_type": conv.get("contact_type"),
                   "route_path": conv.get("route_path")}
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                               LOCK_NAMESPACE, conv["contact_id"])
            row = await conn.fetchrow(
                f"""INSERT INTO outbox (id, contact_id, channel, action, destination, payload,
                        agent_id, event_context, attempts, lease, lease_until, maybe_sent_since)
                    SELECT $1, $2, $3, $4, $5, $6, $7, $8, first::int,
                           CASE WHEN first THEN $9::text END,
                           CASE WHEN first THEN now() + make_interval(secs => $10::float8) END,
                           CASE WHEN first THEN now() END
                    FROM (SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE contact_id = $2
                                             AND state = 'queued') AS first) line
                    ON CONFLICT (id) DO NOTHING
                    RETURNING {_JOB}""",
                uuid.UUID(job_id), conv["contact_id"], conv["channel"], action,
                json.dumps(asdict(destination(conv))), json.dumps(payload), agent_id,
                json.dumps(context), new_hex(16), self.policy.lease_s)
            if row is None:  # a repeat (a console resending after a dropped connection)
                return await _recorded(conn, job_id, conv["contact_id"])
        return _job(row)

    # ---- the worker ----------------------------------------------------------------------

    async def run(self) -> None:
        """The background worker: attempt due jobs, refresh the gauges, until stopped."""
        while not self._stopping:
            try:
                while await self.drain() and not self._stopping:
                    pass
                await self.refresh_gauges()
            except Exception:
                log.exception("outbox.worker_failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.policy.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def stop(self, task: asyncio.Task, grace_s: float) -> None:
        """Let the attempts under way finish (within `grace_s`), then stop the worker."""
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def drain(self) -> int:
        """Claim the due jobs (the first queued one of each contact) and attempt them."""
        rows = await self._pool.fetch(
            f"""WITH due AS (
                    SELECT o.id AS due_id, o.maybe_sent_since AS before FROM outbox o
                    WHERE o.state = 'queued' AND o.next_attempt_at <= now()
                      AND (o.lease_until IS NULL OR o.lease_until < now())
                      AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.contact_id = o.contact_id
                                      AND e.state = 'queued' AND e.seq < o.seq)
                    ORDER BY o.seq LIMIT $1
                    FOR UPDATE OF o SKIP LOCKED)
                UPDATE outbox o SET lease = $2, attempts = o.attempts + 1,
                    lease_until = now() + make_interval(secs => $3),
                    maybe_sent_since = coalesce(o.maybe_sent_since, now()), updated_at = now()
                FROM due WHERE o.id = due.due_id
                RETURNING {_JOB},
                          extract(epoch FROM due.before)::float8 AS look_since""",
            CLAIM_BATCH, new_hex(16), self.policy.lease_s)
        results = await asyncio.gather(*(self._attempt(_job(row)) for row in rows),
                                       return_exceptions=True)
        for result in results:  # a job left leased is taken again when its lease ends
            if isinstance(result, Exception):
                log.error("outbox.attempt_unsettled", error=repr(result))
        return len(rows)

    async def _attempt(self, job: OutboxJob) -> Outcome:
        channel = self._channels[job.channel]
        try:
            if job.look_since is not None and job.text:  # a lost answer: taken after all?
                found = await channel.find_sent(job.destination, job.text, job.look_since)
                if found and not await self._known(found, job.id):
                    return await self._sent(job, found, "adopted")
            provider_id = await self._perform(channel, job)
        except DeliveryFailed as exc:
            return await self._failed_attempt(job, exc)
        except Exception as exc:  # not the provider's answer: retried, looked up first
            log.exception("outbox.attempt_error", message_id=job.id)
            return await self._failed_attempt(job, DeliveryFailed(
                "error", f"not sent yet: {exc!r}", retryable=True, maybe_sent=True))
        return await self._sent(job, provider_id, "sent")

    async def _known(self, provider_id: str, job_id: str) -> bool:
        """The provider id is another job's: the same words sent earlier, not this job's."""
        return await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE provider_id = $1 AND id <> $2)",
            provider_id, uuid.UUID(job_id))

    async def _perform(self, channel: OutboundChannel, job: OutboxJob) -> str | None:
        to, payload = job.destination, job.payload
        if job.action == "send":
            return await channel.send_text(to, job.text, job.id)
        if job.action == "template":
            return await channel.send_template(to, payload["ref"], payload["variables"], job.id)
        if job.action == "ask":
            choices = tuple(Choice(**c) for c in payload["choices"])
            return await channel.ask(to, job.text, choices)
        if job.action == "call_back":
            return await channel.call_back(to, payload["attempt"])
        if job.action == "file":
            return await channel.send_file(to, Attachment(payload["content_type"],
                                                          payload["ref"]), job.id)
        if job.action == "delete_attachment":
            await channel.delete_attachment(Attachment(payload["content_type"], payload["ref"]))
            return None
        line = AgentLine(**payload["agent"])
        if job.action == "connect":
            return await channel.connect_agent(to, line, job.text, job.id)
        if job.action == "join":
            await channel.join_agent(to, line, job.text)
        elif job.action == "drop":
            await channel.drop_agent(to, line)
        else:
            await channel.release_agent(to, line)
        return None

    async def _sent(self, job: OutboxJob, provider_id: str | None, result: str) -> Outcome:
        # The channel took it, so it is up: every job of the channel waiting out a backoff is
        # due now (not before a Retry-After), in the same statement, and the worker wakes.
        # Many sends succeed at once when a provider comes back, each waking the same rows:
        # rows another statement holds are skipped (it is waking them), never waited for, or
        # two such statements deadlock and one job stays leased, though sent, until its lease
        # runs out.
        state = await self._pool.fetchval(
            """WITH settled AS (
                   UPDATE outbox SET state = CASE WHEN state = 'queued' THEN 'sent'
                                                  ELSE state END,
                       provider_id = coalesce(provider_id, $2),
                       sent_at = coalesce(sent_at, now()), lease = NULL, lease_until = NULL,
                       maybe_sent_since = NULL, failure = NULL, failure_code = NULL,
                       updated_at = now()
                   WHERE id = $1 AND lease = $3 RETURNING state),
               waiting AS (
                   SELECT id FROM outbox
                   WHERE state = 'queued' AND channel = $4 AND next_attempt_at > now()
                     AND lease IS NULL AND id <> $1
                   FOR UPDATE SKIP LOCKED),
               channel_is_back AS (
                   UPDATE outbox o SET next_attempt_at = greatest(now(), o.retry_not_before)
                   FROM waiting WHERE o.id = waiting.id)
               SELECT state FROM settled""",
            uuid.UUID(job.id), provider_id, job.lease, job.channel)
        metrics.OUTBOX_ATTEMPTS.labels(job.channel, result).inc()
        log.info("outbox.sent", message_id=job.id, provider_id=provider_id, result=result,
                 attempts=job.attempts, contact_id=job.contact_id)
        if state == "sent":
            await self._tell(job, "sent")
        self._wake.set()
        return Outcome(job.id, state or "sent")

    async def _failed_attempt(self, job: OutboxJob, exc: DeliveryFailed) -> Outcome:
        age = time.time() - job.created_at
        if not exc.retryable:
            return await self._give_up(job, exc)
        if age >= self.policy.give_up_s:
            return await self._give_up(job, DeliveryFailed(
                "gave_up", f"not sent after {job.attempts} attempts in {age:.0f} s: {exc}",
                code=exc.code))
        delay = self.policy.delay(job.attempts, exc.retry_after_s)
        await self._pool.execute(
            """UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2),
                   retry_not_before = now() + make_interval(secs => $8::float8),
                   lease = NULL, lease_until = NULL, failure = $3, failure_code = $4,
                   maybe_sent_since = CASE WHEN $5::boolean THEN maybe_sent_since
                                           ELSE to_timestamp($6::float8) END,
                   updated_at = now()
               WHERE id = $1 AND lease = $7 AND state = 'queued'""",
            uuid.UUID(job.id), delay, str(exc)[:300], exc.code, exc.maybe_sent,
            job.look_since, job.lease, exc.retry_after_s)
        metrics.OUTBOX_ATTEMPTS.labels(job.channel, "retry").inc()
        log.warning("outbox.retry", message_id=job.id, reason=exc.reason, code=exc.code,
                    attempts=job.attempts, retry_in_s=round(delay, 3),
                    maybe_sent=exc.maybe_sent, contact_id=job.contact_id)
        await self._tell(job, "queued", f"not sent yet, retrying: {exc}")
        return Outcome(job.id, "queued", exc)

    async def _give_up(self, job: OutboxJob, exc: DeliveryFailed) -> Outcome:
        state = await self._pool.fetchval(
            """UPDATE outbox SET state = 'failed', failure = $2, failure_code = $3,
                   lease = NULL, lease_until = NULL, updated_at = now()
               WHERE id = $1 AND lease = $4 AND state = 'queued' RETURNING state""",
            uuid.UUID(job.id), str(exc)[:300], exc.code, job.lease)
        if state == "failed":
            await self._failed(job, exc.reason, exc.code, str(exc))
        self._wake.set()  # the contact's next job is no longer held up by this one
        return Outcome(job.id, "failed", exc)

    async def _failed(self, job: OutboxJob, reason: str, code: str | None, text: str) -> None:
        metrics.OUTBOX_FAILED.labels(job.channel, reason).inc()
        log.warning("outbox.failed", message_id=job.id, reason=reason, code=code,
                    error=text, contact_id=job.contact_id)
        context = job.event_context
        self._events.emit(Event("delivery_failed", job.contact_id, context.get("customer_id"),
                                job.channel, context.get("contact_type"),
                                context.get("route_path"),
                                data={"action": job.action, "failure": reason, "code": code,
                                      "error": text[:300], "message_id": job.id}))
        await self._tell(job, "failed", text, code)
        if job.action == "call_back" and self.call_failed is not None:
            try:  # the attempt is over: tried again later, or given up
                await self.call_failed(CallOutcome(job.contact_id, job.payload["attempt"],
                                                   "failed"))
            except Exception:
                log.exception("outbox.call_failed_unreported", contact_id=job.contact_id)

    # ---- states --------------------------------------------------------------------------

    async def on_status(self, status: MessageStatus) -> None:
        """A provider's status callback: the message's state moves forward (never back) and
        its agent is told; a callback for a message we do not know changes nothing."""
        match, value = _callback_match(status)
        if match is None:
            return
        row = await self._pool.fetchrow(
            f"""UPDATE outbox SET state = $2::text, provider_id = coalesce(provider_id, $3),
                    sent_at = coalesce(sent_at, now()), lease = NULL, lease_until = NULL,
                    failure = CASE WHEN $2 = 'failed' THEN $4::text ELSE failure END,
                    failure_code = CASE WHEN $2 = 'failed' THEN $5::text ELSE failure_code END,
                    updated_at = now()
                WHERE {match} AND {_RANK.format('state')} < {_RANK.format('$2::text')}
                RETURNING {_JOB}""",
            value, status.state, status.provider_id, status.reason, status.code)
        if row is None:
            return
        job = _job(row)
        if status.state == "failed":
            await self._failed(job, "provider_failed", status.code, status.reason or "failed")
        else:
            await self._tell(job, status.state)
            self._wake.set()

    async def _tell(self, job: OutboxJob, state: str, reason: str | None = None,
                    code: str | None = None) -> None:
        if not job.agent_id:
            return
        try:
            await self._publish(f"agent:{job.agent_id}", _frame(job, state, reason, code))
        except Exception as exc:  # the state is in the table all the same
            log.warning("outbox.status_not_published", message_id=job.id, error=str(exc))

    async def statuses(self, contact_id: str) -> list[dict[str, Any]]:
        """Every outbound message of the contact as it stands, in the order recorded: what a
        reconnecting console is re-sent."""
        rows = await self._pool.fetch(
            f"SELECT {_JOB}, state, failure, failure_code FROM outbox WHERE contact_id = $1 "
            "ORDER BY seq", contact_id)
        return [_status_frame(row) for row in rows]

    async def status(self, job_id: str) -> dict[str, Any] | None:
        """One job's `message_status` frame as it stands (what a repeated frame is answered
        with), or None when there is no such job."""
        row = await self._pool.fetchrow(
            f"SELECT {_JOB}, state, failure, failure_code FROM outbox WHERE id = $1",
            uuid.UUID(job_id))
        return _status_frame(row) if row else None

    # ---- what ops see --------------------------------------------------------------------

    async def refresh_gauges(self) -> None:
        """Depth and age of the shared outbox, for /metrics."""
        row = await self._pool.fetchrow(
            "SELECT count(*) AS depth, coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            "::float8 AS oldest FROM outbox WHERE state = 'queued'")
        metrics.OUTBOX_DEPTH.set(row["depth"])
        metrics.OUTBOX_OLDEST.set(row["oldest"])

    async def summary(self, recent: int = 20) -> dict[str, Any]:
        """The outbox for the ops API: depth, states of the last 24 hours, recent failures."""
        async with self._pool.acquire() as conn:
            queued = await conn.fetchrow(
                "SELECT count(*) AS depth, count(*) FILTER (WHERE attempts > 1 OR failure IS "
                "NOT NULL) AS retrying, coalesce(extract(epoch FROM now() - min(created_at)),"
                " 0)::float8 AS oldest FROM outbox WHERE state = 'queued'")
            states = await conn.fetch(
                "SELECT state, count(*) AS n FROM outbox WHERE created_at > now() - "
                "interval '24 hours' GROUP BY state")
            failures = await conn.fetch(
                "SELECT id::text, contact_id, channel, action, failure, failure_code, attempts,"
                " extract(epoch FROM updated_at)::float8 AS at FROM outbox "
                "WHERE state = 'failed' ORDER BY updated_at DESC LIMIT $1", recent)
        return {"depth": queued["depth"], "retrying": queued["retrying"],
                "oldest_queued_s": round(queued["oldest"], 1),
                "last_24h": {"queued": 0, "sent": 0, "delivered": 0, "failed": 0,
                             **{r["state"]: r["n"] for r in states}},
                "recent_failures": [{"message_id": r["id"], "contact_id": r["contact_id"],
                                     "channel": r["channel"], "action": r["action"],
                                     "reason": r["failure"], "code": r["failure_code"],
                                     "attempts": r["attempts"], "at": r["at"]}
                                    for r in failures]}


def destination(conv: Mapping[str, Any]) -> Destination:
    """Where outbound calls for the conversation go."""
    said = [line["at"] for line in conv["transcript"] if line.get("from") == "customer"]
    return Destination(conv["contact_id"], conv["address"], conv["service_address"],
                       conv.get("thread"), said[-1] if said else None)


def _frame(job: OutboxJob, state: str, reason: str | None, code: str | None
           ) -> dict[str, Any]:
    return {"type": "message_status", "contact_id": job.contact_id, "message_id": job.id,
            "state": state, "reason": reason, "code": code, "text": job.text}


def _status_frame(row: asyncpg.Record) -> dict[str, Any]:
    """A recorded job's `message_status` frame, with the reason it is retried or failed."""
    reason = row["failure"]
    if row["state"] == "queued" and reason:
        reason = f"not sent yet, retrying: {reason}"
    return _frame(_job(row), row["state"],
                  reason if row["state"] in ("queued", "failed") else None,
                  row["failure_code"] if row["state"] == "failed" else None)


async def _recorded(conn: asyncpg.Connection, job_id: str, contact_id: str) -> Outcome:
    """Where a job recorded before stands; IdTaken when it is another contact's."""
    row = await conn.fetchrow("SELECT contact_id, state FROM outbox WHERE id = $1",
                              uuid.UUID(job_id))
    if row is None or row["contact_id"] != contact_id:
        raise IdTaken(f"id {job_id} is already used by another message")
    return Outcome(job_id, row["state"], repeat=True)


def _callback_match(status: MessageStatus) -> tuple[str | None, Any]:
    """Which row a callback is about: our id when it carries a valid one, else the provider's."""
    if status.message_id:
        try:
            return "id = $1", uuid.UUID(status.message_id)
        except ValueError:
            pass
    if status.provider_id:
        return "provider_id = $1", status.provider_id
    return None, None


def _job(row: asyncpg.Record) -> OutboxJob:
    return OutboxJob(
        id=row["id"], contact_id=row["contact_id"], channel=row["channel"],
        action=row["action"], destination=Destination(**json.loads(row["destination"])),
        payload=json.loads(row["payload"]), agent_id=row["agent_id"],
        event_context=json.loads(row["event_context"]), attempts=row["attempts"],
        lease=row["lease"], created_at=row["created_at"],
        look_since=row.get("look_since"))
