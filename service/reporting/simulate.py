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
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable

import asyncpg
import orjson

from service.conversations.conversation import routing_attributes
from service.reporting.reports import STARTED_IN_WINDOW, Window, iso
from service.rules.loader import Rules
from service.understanding.understand import escalation_reason, understand

DECISIVE = ("classified", "classification_missed", "escalated")
KINDS = ("received", "routed", "self_service_started", *DECISIVE)
PROGRESS_EVERY = 5000
TOP = 10


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

def replay(rules: Rules, contacts: Iterable[PastContact],
           earlier_types: dict[str, list[tuple[str, float, str | None]]],
           progress: Callable[[int], None] = lambda n: None) -> dict[str, Result]:
    """The first decision of each replayable contact under `rules`, oldest contact first.
    `earlier_types` lists each customer's contacts (id, start, recorded type) for repeats."""
    simulated: dict[str, Result] = {}
    understood: dict[tuple, Any] = {}  # understand() is pure: the same words, the same answer
    for count, contact in enumerate(contacts, 1):
        if contact.skipped is None:
            simulated[contact.contact_id] = _first_decision(rules, contact, earlier_types,
                                                            simulated, understood)
        if count % PROGRESS_EVERY == 0:
            progress(count)
    return simulated


def _first_decision(rules: Rules, contact: PastContact,
                    earlier_types: dict[str, list[tuple[str, float, str | None]]],
                    simulated: dict[str, Result], seen: dict[tuple, Any]) -> Result:
    if contact.confirmed_earlier:  # the customer picked the type: only the routing can change
        return _classified(rules, contact, contact.recorded.contact_type, 1.0, earlier_types,
                           simulated)
    said = (contact.input_kind or "message", contact.text.strip(), contact.input_confidence)
    understood = seen.get(said)
    if understood is None:
        understood = seen[said] = understand(rules, *said)
    if understood.outcome == "classified":
        return _classified(rules, contact, understood.contact_type, understood.confidence,
                           earlier_types, simulated)
    if understood.outcome == "agent":
        decision = rules.tree.decide(_attributes(rules, contact, None, None, earlier_types,
                                                 simulated))
        return Result("agent", "requested_agent", None, decision.route_path, decision.queue)
    return Result("clarify", understood.reason)


def _classified(rules: Rules, contact: PastContact, contact_type: str | None, confidence: float,
                earlier_types, simulated) -> Result:
    if contact_type not in rules.catalog.types:  # the candidate catalog dropped the type
        return Result("clarify", "unknown_contact_type", contact_type)
    decision = rules.tree.decide(_attributes(rules, contact, contact_type, confidence,
                                             earlier_types, simulated))
    reason = escalation_reason(rules, contact_type, decision)
    return Result("agent" if reason else "self_service", reason, contact_type,
                  decision.route_path, decision.queue)


def _attributes(rules: Rules, contact: PastContact, contact_type: str | None,
                confidence: float | None, earlier_types, simulated) -> dict[str, Any]:
    """The same attributes a live turn routes on, built from the past contact."""
    earlier = [{"contact_id": cid, "started_at": started,
                "contact_type": simulated[cid].contact_type if cid in simulated else recorded}
               for cid, started, recorded in earlier_types.get(contact.customer_id, ())
               if started < contact.started_at]
    conv = {"contact_id": contact.contact_id, "started_at": contact.started_at,
            "contact_type": contact_type, "confidence": confidence,
            "attributes": contact.attributes, "earlier": earlier}
    return routing_attributes(rules, conv, contact.channel, contact.started_at)


# ---- what was recorded ------------------------------------------------------------------------

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
CONTACTS_SQL = "WITH " + STARTED_IN_WINDOW + """,
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
EARLIER_SQL = "WITH " + STARTED_IN_WINDOW + """,
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


async def load_past_contacts(conn: asyncpg.Connection, window: Window) -> list[PastContact]:
    async with conn.transaction():
        return [past_contact(row) async for row in conn.cursor(
            CONTACTS_SQL, window.start, window.end, list(KINDS), prefetch=2000)]


async def load_earlier_types(conn: asyncpg.Connection, window: Window, lookback_h: float
                             ) -> dict[str, list[tuple[str, float, str | None]]]:
    """Every customer's contacts from `lookback_h` before the window to its end."""
    by_customer: dict[str, list[tuple[str, float, str | None]]] = {}
    for row in await conn.fetch(EARLIER_SQL, window.start - timedelta(hours=lookback_h),
                                window.end):
        by_customer.setdefault(str(row["customer_id"]), []).append(
            (str(row["contact_id"]), row["started_at"], row["contact_type"]))
    return by_customer


def longest_repeat_window_h(*rule_sets: Rules) -> float:
    return max((t.repeat_window_h for rules in rule_sets for t in rules.catalog.types.values()),
               default=0)


# ---- comparing ----------------------------------------------------------------------------------

def compare(window: Window, contacts: list[PastContact], simulated: dict[str, Result],
            baseline: dict[str, Result] | None, rules: Rules, against: Rules | None,
            examples: int = 10) -> dict[str, Any]:
    """The report: the first decisions under `rules` next to the baseline, which is `against`'s
    replay when given, else what was recorded."""
    replayed = [c for c in contacts if c.contact_id in simulated]
    pairs = [(c, (baseline[c.contact_id] if baseline is not None else c.recorded),
              simulated[c.contact_id]) for c in replayed]
    changed = [(c, old, new) for c, old, new in pairs if old != new]
    return {
        "from": iso(window.start), "to": iso(window.end),
        "rules": _described(rules),
        "baseline": _described(against) if against is not None else "recorded",
        "contacts": len(contacts), "replayed": len(replayed),
        "not_replayed": dict(Counter(c.skipped for c in contacts if c.skipped).most_common()),
        "first_decisions": _side_by_side(Counter(old.label for _, old, _ in pairs),
                                         Counter(new.label for _, _, new in pairs)),
        "queues": _side_by_side(Counter(old.queue for _, old, _ in pairs
                                        if old.outcome == "agent"),
                                Counter(new.queue for _, _, new in pairs
                                        if new.outcome == "agent")),
        "changed": {
            "first_decision": sum(old.label != new.label for _, old, new in changed),
            "contact_type": sum(old.contact_type != new.contact_type for _, old, new in changed),
            "route": sum(old.route_path != new.route_path for _, old, new in changed),
            "queue": sum(old.queue != new.queue for _, old, new in changed)},
        "contact_type_changes": _top(Counter((old.contact_type, new.contact_type)
                                             for _, old, new in changed
                                             if old.contact_type != new.contact_type)),
        "first_decision_changes": _top(Counter((old.label, new.label) for _, old, new in changed
                                               if old.label != new.label)),
        "examples": [_example(c, old, new) for c, old, new in changed[:examples]],
    }


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

