"""Replay past traffic through a set of rules: what would each contact's first message have
been understood as, and where would the routing tree have sent it?

For every contact that started in the window, the message (or key) that decided its first step
is read back from the event log and run through `understand` and the routing tree of the
candidate rules, exactly as a live turn does. The result is compared with what was recorded,
or with another rules directory (`against`), so ops see what a change does before reloading.

What can be replayed is the first decision: self-service offered, straight to an agent (and
which queue), or a clarifying question. How the customer would have answered after that is
unknown. Customer fields are read as they are now; repeat contacts use the simulated contact
types of contacts in the window and the recorded ones before it.

What a replay needs of each contact is kept in `contact_replay` as events land (migration
015), so reading a window is one row per contact; `load_past_from_events` gathers the same from
the raw events and stays as the reference the tests hold it equal to. Decisions are memoised on
exactly what they read: the same words are understood once, and the routing tree walked once
per distinct set of the attributes its matchers read.
"""

from __future__ import annotations

import gc
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence

import asyncpg
import orjson

from service.conversations.conversation import routing_attributes
from service.reporting.reports import STARTED_IN_WINDOW, Window, iso
from service.rules.loader import Rules
from service.rules.routing import INTERVAL_ATTR, Decision, Route
from service.understanding.understand import Understood, escalation_reason, understand

DECISIVE = ("classified", "classification_missed", "escalated")
KINDS = ("received", "routed", "self_service_started", *DECISIVE)
PROGRESS_EVERY = 5000
TOP = 10

# Each customer's contacts (id, start, recorded contact type), for repeat contacts.
EarlierTypes = dict[str, list[tuple[str, float, str | None]]]


@dataclass(frozen=True, slots=True)
class Result:
    """A contact's first decision."""

    outcome: str  # self_service | agent | clarify
    reason: str | None = None  # agent: the escalation reason; clarify: why not understood
    contact_type: str | None = None
    route_path: str | None = None
    queue: str | None = None

    @property
    def label(self) -> str:
        return self.outcome if self.reason is None else f"{self.outcome}:{self.reason}"


@dataclass(frozen=True, slots=True)
class PastContact:
    contact_id: str
    customer_id: str
    channel: str
    started_at: float
    attributes: dict[str, Any]
    recorded: Result | None  # None: the contact ended before a first decision
    input_kind: str | None = None  # "message" or "digits"
    text: str | None = None
    input_confidence: float | None = None
    confirmed_earlier: bool = False  # its type came from "is this about ...?" -> yes

    @property
    def skipped(self) -> str | None:
        """Why this contact cannot be replayed, or None."""
        if self.recorded is None:
            return "ended_before_a_decision"
        if self.text is None and not self.confirmed_earlier:
            return "nothing_said"  # no input, or a failure put it in a queue
        return None


# ---- replay ---------------------------------------------------------------------------------

def replay(rules: Rules, contacts: Iterable[PastContact], earlier_types: EarlierTypes,
           progress: Callable[[int], None] = lambda n: None,
           memoised: bool = True) -> dict[str, Result]:
    """The first decision of each replayable contact under `rules`, oldest contact first.
    `earlier_types` lists each customer's contacts (id, start, recorded type) for repeats.
    `memoised=False` works every decision out afresh (the tests' reference)."""
    run = _Replay(rules, earlier_types, memoised)
    with without_gc_pauses():
        for count, contact in enumerate(contacts, 1):
            if contact.skipped is None:
                run.simulated[contact.contact_id] = run.first_decision(contact)
            if count % PROGRESS_EVERY == 0:
                progress(count)
    return run.simulated


@contextmanager
def without_gc_pauses() -> Iterator[None]:
    """No cyclic garbage collection while a window's contacts are read or replayed: they
    make no cycles, and a collection every few hundred new objects walks all of them (about
    a third of the time of a large window)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Replay:
    """One replay: its results so far, and the decisions already worked out. `understand` and
    the routing tree are pure, so the same words get the same answer, and the same values of
    the attributes the tree's matchers read the same route."""

    def __init__(self, rules: Rules, earlier_types: EarlierTypes, memoised: bool):
        self.rules, self.earlier_types, self.memoised = rules, earlier_types, memoised
        self.simulated: dict[str, Result] = {}
        self.understood: dict[tuple, Understood] = {}
        self.decided: dict[tuple, Result] = {}
        self.read = tuple(sorted(attributes_read(rules.tree.root)))
        self.readers = tuple(self._reader(name) for name in self.read)

    def first_decision(self, contact: PastContact) -> Result:
        if contact.confirmed_earlier:  # the customer picked the type: only the routing changes
            return self.classified(contact, contact.recorded.contact_type, 1.0)
        said = (contact.input_kind or "message", contact.text.strip(), contact.input_confidence)
        understood = self.understood.get(said)
        if understood is None:
            understood = understand(self.rules, *said)
            if self.memoised:
                self.understood[said] = understood
        if understood.outcome == "classified":
            return self.classified(contact, understood.contact_type, understood.confidence)
        if understood.outcome == "agent":
            return self.routed(contact, None, None, _to_agent)
        return Result("clarify", understood.reason)

    def classified(self, contact: PastContact, contact_type: str | None,
                   confidence: float) -> Result:
        if contact_type not in self.rules.catalog.types:  # the candidate dropped the type
            return Result("clarify", "unknown_contact_type", contact_type)
        return self.routed(contact, contact_type, confidence, _first_step)

    def routed(self, contact: PastContact, contact_type: str | None, confidence: float | None,
               result: Callable[[Rules, str | None, Decision], Result]) -> Result:
        if not self.memoised:
            return result(self.rules, contact_type, self.rules.tree.decide(self.attributes(
                contact, contact_type, confidence)))
        values = tuple([read(contact, contact_type, confidence) for read in self.readers])
        # With their types: True and 1 match differently.
        key: tuple = (result, contact_type, values, tuple(map(type, values)))
        try:
            known = self.decided.get(key)
        except TypeError:  # a list or mapping among them: matchers compare its text
            key = (result, contact_type, repr(values), key[3])
            known = self.decided.get(key)
        if known is None:
            attrs = self.attributes(contact, contact_type, confidence)
            if values != tuple(map(attrs.get, self.read)):
                raise RuntimeError(f"simulate read {values} for {self.read}, routing_attributes "
                                   f"{tuple(map(attrs.get, self.read))}: the two must agree")
            known = self.decided[key] = result(self.rules, contact_type,
                                               self.rules.tree.decide(attrs))
        return known

    def attributes(self, contact: PastContact, contact_type: str | None,
                   confidence: float | None) -> dict[str, Any]:
        """The same attributes a live turn routes on, built from the past contact."""
        earlier = [{"contact_id": cid, "started_at": started,
                    "contact_type": self.type_of(cid, recorded)}
                   for cid, started, recorded in self.earlier_types.get(contact.customer_id, ())
                   if started < contact.started_at]
        conv = {"contact_id": contact.contact_id, "started_at": contact.started_at,
                "contact_type": contact_type, "confidence": confidence,
                "attributes": contact.attributes, "earlier": earlier}
        return routing_attributes(self.rules, conv, contact.channel, contact.started_at)

    def type_of(self, contact_id: str, recorded: str | None) -> str | None:
        """An earlier contact's type: as replayed if it was, else as recorded."""
        replayed = self.simulated.get(contact_id)
        return recorded if replayed is None else replayed.contact_type

    # The memo key: each attribute the tree reads as `attributes` gives it, without building
    # them all (`routed` checks the two agree whenever it walks the tree).
    def _reader(self, name: str) -> Callable[[PastContact, str | None, float | None], Any]:
        if name == "channel":
            return lambda contact, contact_type, confidence: contact.channel
        if name == "contact_type":
            return lambda contact, contact_type, confidence: contact_type
        if name == "confidence":
            return lambda contact, contact_type, confidence: confidence
        if name == "repeat_contact":
            return lambda contact, contact_type, confidence: self.is_repeat(contact, contact_type)
        if name == INTERVAL_ATTR:
            intervals_at = self.rules.tree.intervals_at
            return lambda contact, contact_type, confidence: intervals_at(contact.started_at)
        if name.startswith("customer."):
            field = name.removeprefix("customer.")
            return lambda contact, contact_type, confidence: contact.attributes.get(field)
        return lambda contact, contact_type, confidence: None  # waiting.<queue>: unknown

    def is_repeat(self, contact: PastContact, contact_type: str | None) -> bool:
        """An earlier contact of the customer's of the same type within its repeat window."""
        known = self.rules.catalog.types.get(contact_type or "")
        if known is None:
            return False
        at, since = contact.started_at, contact.started_at - known.repeat_window_h * 3600
        for cid, started, recorded in self.earlier_types.get(contact.customer_id, ()):
            if since <= started < at and cid != contact.contact_id and \
                    self.type_of(cid, recorded) == contact_type:
                return True
        return False


def _first_step(rules: Rules, contact_type: str | None, decision: Decision) -> Result:
    reason = escalation_reason(rules, contact_type, decision)
    return Result("agent" if reason else "self_service", reason, contact_type,
                  decision.route_path, decision.queue)


def _to_agent(rules: Rules, contact_type: str | None, decision: Decision) -> Result:
    return Result("agent", "requested_agent", None, decision.route_path, decision.queue)


def attributes_read(route: Route) -> set[str]:
    """The attributes the matchers of `route` and its descendants read: all a decision
    depends on."""
    names = {matcher.attr for matcher in route.matchers}
    for child in route.routes:
        names |= attributes_read(child)
    return names


# ---- what was recorded ------------------------------------------------------------------------

# One row per contact from contact_replay (migration 015), in the order of its index: the
# window's contacts and, before them, the customers' earlier ones a repeat may follow. The
# recorded first decision as `_recorded` reads it from the events.
PAST_SQL = """
SELECT contact_id::text, customer_id::text, (started).value,
       extract(epoch FROM started_at)::float8, started_at >= $1::timestamptz,
       CASE (decided).value WHEN 'classification_missed' THEN 'clarify'
                            WHEN 'escalated' THEN 'agent'
                            WHEN 'classified' THEN CASE WHEN (step).value = 'escalated'
                                                        THEN 'agent' ELSE 'self_service' END
       END,
       CASE WHEN (decided).value <> 'classified' THEN decided_reason
            WHEN (step).value = 'escalated' THEN step_reason END,
       CASE WHEN (decided).value = 'classified' THEN decided_type END,
       CASE (decided).value WHEN 'escalated' THEN decided_route
                            WHEN 'classified' THEN (routed).value END,
       CASE (decided).value WHEN 'escalated' THEN decided_queue
                            WHEN 'classified' THEN routed_queue END,
       decided_via IS NOT DISTINCT FROM 'repeat_prompt',
       (said).value, said_input, said_confidence, (classified).value
FROM contact_replay
WHERE started_at >= $1::timestamptz - make_interval(secs => $3::float8)
  AND started_at < $2::timestamptz
ORDER BY contact_replay.started_at, contact_replay.contact_id
"""

# The fields of the window's customers who have any (most contacts' customers have none).
CUSTOMER_FIELDS_SQL = """
SELECT id::text, attributes::text FROM customers
WHERE attributes <> '{}'::jsonb
  AND id IN (SELECT customer_id FROM contact_replay
             WHERE started_at >= $1::timestamptz AND started_at < $2::timestamptz)
"""


async def load_past(conn: asyncpg.Connection, window: Window, lookback_h: float
                    ) -> tuple[list[PastContact], EarlierTypes]:
    """The contacts that started in the window, oldest first, and every customer's contacts
    from `lookback_h` before the window to its end (for repeats)."""
    with without_gc_pauses():
        return await _load_past(conn, window, lookback_h)


async def _load_past(conn: asyncpg.Connection, window: Window, lookback_h: float
                     ) -> tuple[list[PastContact], EarlierTypes]:
    async with conn.transaction():
        rows = await conn.fetch(PAST_SQL, window.start, window.end, lookback_h * 3600)
        fields = await conn.fetch(CUSTOMER_FIELDS_SQL, window.start, window.end)
    parsed: dict[str, dict[str, Any]] = {}  # one dict per distinct text
    attributes = {customer: parsed.get(text) or parsed.setdefault(text, orjson.loads(text))
                  for customer, text in fields}
    results: dict[tuple, Result] = {}  # one Result per distinct decision: cheap to compare
    contacts: list[PastContact] = []
    earlier: EarlierTypes = {}
    for (contact_id, customer_id, channel, started_at, in_window, outcome, reason, contact_type,
         route_path, queue, confirmed, text, input_kind, input_confidence, classified) in rows:
        customer_id = str(customer_id)  # None, as the reference has it, for none
        entries = earlier.get(customer_id)
        if entries is None:
            earlier[customer_id] = [(contact_id, started_at, classified)]
        else:
            entries.append((contact_id, started_at, classified))
        if not in_window:
            continue
        recorded = None
        if outcome is not None:
            fields_of = (outcome, reason, contact_type, route_path, queue)
            recorded = results.get(fields_of) or results.setdefault(fields_of, Result(*fields_of))
        contacts.append(PastContact(  # positional: 100,000 of them
            contact_id, customer_id, channel, started_at, attributes.get(customer_id, {}),
            recorded, input_kind, None if confirmed else text, input_confidence, confirmed))
    return contacts, earlier


# ---- the reference: the same from the raw events -------------------------------------------

async def load_past_from_events(conn: asyncpg.Connection, window: Window, lookback_h: float
                                ) -> tuple[list[PastContact], EarlierTypes]:
    """What `load_past` reads, gathered from contact_events (slow: the tests' reference)."""
    async with conn.transaction():
        contacts = [past_contact(row) async for row in conn.cursor(
            CONTACTS_FROM_EVENTS, window.start, window.end, list(KINDS), prefetch=2000)]
    earlier: EarlierTypes = {}
    for row in await conn.fetch(EARLIER_FROM_EVENTS, window.start - timedelta(hours=lookback_h),
                                window.end):
        earlier.setdefault(str(row["customer_id"]), []).append(
            (str(row["contact_id"]), row["started_at"], row["contact_type"]))
    return contacts, earlier


def past_contact(row: asyncpg.Record) -> PastContact:
    """A contact and its events of KINDS (`events`: [kind, contact_type, route_path, reason,
    data] each, oldest first) as the replay needs them."""
    events = [_Event(*e) for e in orjson.loads(row["events"] or "[]")]
    said: dict[str, Any] | None = None
    recorded, confirmed = None, False
    for index, event in enumerate(events):
        if event.kind == "received":
            said = event.data
        elif event.kind in DECISIVE:
            recorded = _recorded(event, events[index + 1:])
            confirmed = event.data.get("via") == "repeat_prompt"
            break
    text = None if said is None or confirmed else said.get("text")
    return PastContact(
        str(row["id"]), str(row["customer_id"]), row["channel"], row["started_at"],
        orjson.loads(row["attributes"]), recorded,
        input_kind=said.get("input") if said else None, text=text,
        input_confidence=said.get("input_confidence") if said else None,
        confirmed_earlier=confirmed)


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str
    contact_type: str | None
    route_path: str | None
    reason: str | None
    data: dict[str, Any]


def _recorded(decisive: _Event, later: list[_Event]) -> Result:
    if decisive.kind == "classification_missed":
        return Result("clarify", decisive.reason)
    if decisive.kind == "escalated":
        return Result("agent", decisive.reason, None, decisive.route_path,
                      decisive.data.get("queue"))
    routed = next((e.data for e in later if e.kind == "routed"), {})
    step = next((e for e in later if e.kind in ("self_service_started", "escalated")), None)
    if step is not None and step.kind == "escalated":
        return Result("agent", step.reason, decisive.contact_type, routed.get("route_path"),
                      routed.get("queue"))
    return Result("self_service", None, decisive.contact_type, routed.get("route_path"),
                  routed.get("queue"))


# One row per contact, its events already gathered: far fewer rows to decode than events.
CONTACTS_FROM_EVENTS = "WITH " + STARTED_IN_WINDOW + """,
gathered AS (
    SELECT e.contact_id,
           json_agg(json_build_array(e.kind, e.contact_type, e.route_path, e.reason, e.data)
                    ORDER BY e.occurred_at, e.seq) AS events
    FROM contact_events e JOIN chosen c USING (contact_id)
    WHERE e.kind = ANY($3::text[])
    GROUP BY e.contact_id
)
SELECT c.contact_id AS id, c.customer_id, c.channel,
       extract(epoch FROM c.started_at)::float8 AS started_at,
       coalesce(cu.attributes, '{}'::jsonb) AS attributes, g.events
FROM chosen c LEFT JOIN gathered g USING (contact_id)
     LEFT JOIN customers cu ON cu.id = c.customer_id
ORDER BY c.started_at, c.contact_id
"""

# The type a contact's summary carried for repeat detection: its latest classification.
EARLIER_FROM_EVENTS = "WITH " + STARTED_IN_WINDOW + """,
typed AS (
    SELECT DISTINCT ON (e.contact_id) e.contact_id, e.contact_type
    FROM contact_events e JOIN chosen c USING (contact_id)
    WHERE e.kind = 'classified'
    ORDER BY e.contact_id, e.occurred_at DESC, e.seq DESC
)
SELECT c.customer_id, c.contact_id, extract(epoch FROM c.started_at)::float8 AS started_at,
       t.contact_type
FROM chosen c LEFT JOIN typed t USING (contact_id)
ORDER BY c.started_at
"""


def longest_repeat_window_h(*rule_sets: Rules) -> float:
    return max((t.repeat_window_h for rules in rule_sets for t in rules.catalog.types.values()),
               default=0)


# ---- comparing ----------------------------------------------------------------------------------

def compare(window: Window, contacts: Sequence[PastContact], simulated: dict[str, Result],
            baseline: dict[str, Result] | None, rules: Rules, against: Rules | None,
            examples: int = 10) -> dict[str, Any]:
    """The report: the first decisions under `rules` next to the baseline, which is `against`'s
    replay when given, else what was recorded."""
    with without_gc_pauses():
        return _compare(window, contacts, simulated, baseline, rules, against, examples)


def _compare(window: Window, contacts: Sequence[PastContact], simulated: dict[str, Result],
             baseline: dict[str, Result] | None, rules: Rules, against: Rules | None,
             examples: int) -> dict[str, Any]:
    pairs: dict[tuple[int, int], list] = {}  # by the two Results' ids: [old, new, contacts]
    not_replayed: Counter[str] = Counter()
    shown: list[tuple[PastContact, Result, Result]] = []
    for contact in contacts:
        if contact.skipped:
            not_replayed[contact.skipped] += 1
        new = simulated.get(contact.contact_id)
        if new is None:
            continue
        old = baseline[contact.contact_id] if baseline is not None else contact.recorded
        pair = pairs.get((id(old), id(new)))
        if pair is None:
            pairs[id(old), id(new)] = [old, new, 1]
        else:
            pair[2] += 1
        if len(shown) < examples and old is not new and old != new:
            shown.append((contact, old, new))
    counted = [(old, new, n) for old, new, n in pairs.values()]
    changed = [(old, new, n) for old, new, n in counted if old != new]
    return {
        "from": iso(window.start), "to": iso(window.end),
        "rules": _described(rules),
        "baseline": _described(against) if against is not None else "recorded",
        "contacts": len(contacts), "replayed": sum(n for _, _, n in counted),
        "not_replayed": dict(not_replayed.most_common()),
        "first_decisions": _side_by_side(_count((old.label, n) for old, _, n in counted),
                                         _count((new.label, n) for _, new, n in counted)),
        "queues": _side_by_side(_count((old.queue, n) for old, _, n in counted
                                       if old.outcome == "agent"),
                                _count((new.queue, n) for _, new, n in counted
                                       if new.outcome == "agent")),
        "changed": {
            "first_decision": sum(n for old, new, n in changed if old.label != new.label),
            "contact_type": sum(n for old, new, n in changed
                                if old.contact_type != new.contact_type),
            "route": sum(n for old, new, n in changed if old.route_path != new.route_path),
            "queue": sum(n for old, new, n in changed if old.queue != new.queue)},
        "contact_type_changes": _top(_count(((old.contact_type, new.contact_type), n)
                                            for old, new, n in changed
                                            if old.contact_type != new.contact_type)),
        "first_decision_changes": _top(_count(((old.label, new.label), n)
                                              for old, new, n in changed
                                              if old.label != new.label)),
        "examples": [_example(c, old, new) for c, old, new in shown],
    }


def _count(weighted: Iterable[tuple[Any, int]]) -> Counter:
    counts: Counter = Counter()
    for key, n in weighted:
        counts[key] += n
    return counts


def _described(rules: Rules) -> dict[str, str]:
    return {"directory": str(rules.directory), "digest": rules.digest}


def _side_by_side(before: Counter, after: Counter) -> dict[str, dict[str, int]]:
    keys = sorted(set(before) | set(after), key=lambda k: (-(before[k] + after[k]), str(k)))
    return {str(k): {"baseline": before[k], "simulated": after[k]} for k in keys}


def _top(pairs: Counter) -> list[dict[str, Any]]:
    return [{"from": old, "to": new, "contacts": n}
            for (old, new), n in sorted(pairs.items(), key=lambda p: (-p[1], str(p[0])))[:TOP]]


def _example(contact: PastContact, old: Result, new: Result) -> dict[str, Any]:
    said = "(confirmed an earlier contact)" if contact.confirmed_earlier else contact.text
    if contact.input_kind == "digits":
        said = f"[pressed {contact.text}]"
    return {"contact_id": contact.contact_id, "channel": contact.channel,
            "started_at": contact.started_at, "said": said,
            "baseline": asdict(old), "simulated": asdict(new)}
