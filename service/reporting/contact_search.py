"""Finding contacts in the event log's projections: by customer (phone, email, id or name),
contact id prefix, window, channel, type, outcome and agent; newest first, keyset-paginated.

    found = await search(pool, SearchQuery(window, customer="(555) 010-0142"), rules)
    found.rows         # ContactRow, newest first (at most query.limit)
    found.next_before  # the cursor of the next page, or None

Reads `contact_facts` (one row per contact) by its `started_at` index, or by its
`(customer_id, started_at)` index once the customer box has named customers, or its key for a
contact id; the customer directory by `customer_identities`' primary key (phone, email), the
index of its phone numbers reversed (migration 026: a national number typed without its country
code, "07700 900123", is matched as the end of the kept +447700900123), or the
trigram index of names (migration 022, which also keeps statistics of the facts' channel, type
and outcome, so a filter is read from the newest contacts on). A page's customers, erasures,
addresses and agents are looked up for its rows only (load_tests/REPORTS.md, "Contact search").
"""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Sequence

import asyncpg

from service.infra.ids import is_uuid
from service.reporting.reports import HANDLED_BY, ReportRules, Window, _connection, iso

MAX_LIMIT = 100
DEFAULT_LIMIT = 25
# A name matching more customers than this is searched as a condition on the contacts rather
# than as a list of customer ids (the ids would cost more than the scan they save).
MAX_LISTED_CUSTOMERS = 500
QUERY_TIMEOUT_S = 10
# A number typed without its country code is searched as the end of the kept numbers when it
# has this many digits after its trunk 0: fewer would name a crowd of customers.
MIN_NATIONAL_DIGITS = 7
# reports.py's handling words (DEFINITIONS["journey"]), and escalated: entered a queue.
HANDLING = (*HANDLED_BY, "queued", "dropped", "open")
OUTCOME_WORDS = (*HANDLING, "escalated")
_OUTCOME_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PHONE = re.compile(r"^\+?[\d\s().\-/]+$")
TYPE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HEX_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")


class BadParameter(ValueError):
    """A search parameter that cannot be used; `parameter` names it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its last contact's start and id."""
    started_at: datetime
    contact_id: uuid.UUID

    def encode(self) -> str:
        return f"{iso(self.started_at)}~{self.contact_id}"

    @classmethod
    def decode(cls, raw: str) -> "Cursor":
        moment, _, contact = raw.partition("~")
        try:
            return cls(datetime.fromisoformat(moment.replace("Z", "+00:00")), uuid.UUID(contact))
        except ValueError:
            raise BadParameter("before", f"'before' is a cursor from a previous page's "
                               f"next_before, not {raw!r}") from None


@dataclass(frozen=True)
class SearchQuery:
    window: Window
    customer: str | None = None
    contact_id: str | None = None  # an id or the start of one
    channel: str | None = None
    contact_type: str | None = None
    outcome: str | None = None  # a HANDLING word, escalated, or an ended event's outcome
    agent: str | None = None  # an agent's id or name
    before: Cursor | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True)
class CustomerRef:
    id: str | None
    name: str | None  # from the customer directory
    erased: bool = False
    address: str | None = None  # what the contact came from (a number, a chat session)


@dataclass(frozen=True)
class AgentRef:
    id: str
    name: str | None


@dataclass(frozen=True)
class ContactRow:
    """One contact as search results and the contact's own page show it."""
    contact_id: str
    started_at: str
    ended_at: str | None
    duration_s: float | None
    channel: str | None
    customer: CustomerRef
    contact_type: str | None
    contact_type_label: str
    handling: str  # reports' words: self_service, agent, abandoned, queued, dropped, open
    outcome: str | None  # the ended event's outcome, as recorded
    escalated: bool
    escalation_reason: str | None
    queue: str | None
    agents: tuple[AgentRef, ...]
    survey: dict[str, Any] | None  # {"kind": "csat" | "nps", "score": int | None}
    csat: int | None
    came_back: bool | None  # a false deflection; None when not resolved in self-service
    transferred: bool
    callback_requested: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    rows: tuple[ContactRow, ...]
    next_before: str | None
    customers_matched: int | None = None  # how many customers the customer box named


@dataclass
class _Sql:
    """A WHERE clause and its parameters, built condition by condition."""
    conditions: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def where(self, condition: str) -> None:
        self.conditions.append(condition)


# ---- the customer box ------------------------------------------------------------------

def _typed_phone(raw: str) -> tuple[str, str] | None:
    """(the text, its digits) when the text is a phone number in a common format, else None."""
    text = raw.strip()
    for prefix in ("whatsapp:", "tel:", "sms:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):].strip()
    if not _PHONE.match(text) or not re.search(r"\d", text):
        return None
    if text.startswith(("+", "00")):  # "+44 (0)20 7946 0958": the trunk 0 is not dialled
        text = text.replace("(0)", "")
    return text, re.sub(r"\D", "", text)


def _international(text: str, digits: str) -> bool:
    return text.startswith("+") or digits.startswith("00")


def phone_candidates(raw: str) -> list[str]:
    """The E.164 numbers a phone number typed in a common format may be, as the service keeps
    them (Twilio's `From`, a `whatsapp:` prefix taken off): "+1 (555) 010-0142",
    "555.010.0142", "0044 20 7946 0958", "whatsapp:+44..."; [] when it is not a number."""
    typed = _typed_phone(raw)
    if typed is None:
        return []
    text, digits = typed
    if not MIN_NATIONAL_DIGITS <= len(digits) <= 15:
        return []
    if text.startswith("+"):
        return [f"+{digits}"]
    if digits.startswith("00"):  # the international prefix most of the world dials
        return [f"+{digits[2:]}"]
    if digits.startswith("0"):  # a trunk prefix: a national number (national_endings)
        return []
    candidates = [f"+{digits}"]
    if len(digits) == 10:  # a North American number without its country code
        candidates.append(f"+1{digits}")
    return candidates


def national_endings(raw: str) -> list[str]:
    """The digits a number typed without its country code ends a kept E.164 number with:
    "07700 900123" -> 7700900123 (the trunk prefix 0 dropped, as in the UK and France) and
    07700900123 (kept, as in Italy); [] for an international number or one with fewer than
    MIN_NATIONAL_DIGITS digits after the trunk 0, whose endings many customers share."""
    typed = _typed_phone(raw)
    if typed is None:
        return []
    text, digits = typed
    if _international(text, digits) or len(digits) > 15:
        return []
    significant = digits[1:] if digits.startswith("0") else digits
    if len(significant) < MIN_NATIONAL_DIGITS:
        return []
    return [significant] if significant == digits else [significant, digits]


def too_short_a_number(raw: str) -> bool:
    """A phone number (digits and the usual punctuation) too short to search for."""
    typed = _typed_phone(raw)
    return typed is not None and not phone_candidates(raw) and not national_endings(raw) \
        and len(typed[1]) <= 15


def ending_range(ending: str) -> tuple[str, str]:
    """The range of `reverse(value)` (bytewise, migration 026's index) of the numbers ending
    in `ending`: a range rather than LIKE, whose pattern a cached generic plan cannot use."""
    low = ending[::-1]
    return low, low[:-1] + chr(ord(low[-1]) + 1)


# The customers a phone number names: its E.164 forms by the key, and the kept numbers ending
# in a national number's digits by migration 026's index of reverse(value) (a range of it).
PHONE_SQL = """
SELECT customer_id FROM customer_identities
WHERE kind = 'phone' AND value = ANY($1::text[])
UNION
SELECT i.customer_id FROM unnest($2::text[], $3::text[]) AS e(low, high)
CROSS JOIN LATERAL (
    SELECT customer_id FROM customer_identities
    WHERE kind = 'phone' AND reverse(value) ~>=~ e.low AND reverse(value) ~<~ e.high
    LIMIT $4
) i
LIMIT $4
"""


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def matching_customers(conn: asyncpg.Connection | asyncpg.Pool, raw: str
                             ) -> tuple[list[uuid.UUID] | None, str | None]:
    """The customers the box names: (ids, None), or (None, a name pattern) when a name
    matches more than MAX_LISTED_CUSTOMERS."""
    text = raw.strip()
    try:
        return [uuid.UUID(text)], None
    except ValueError:
        pass
    if "@" in text:
        rows = await conn.fetch("SELECT customer_id FROM customer_identities "
                                "WHERE kind = 'email' AND value = $1", text.lower(),
                                timeout=QUERY_TIMEOUT_S)
        return [r["customer_id"] for r in rows], None
    numbers, endings = phone_candidates(text), national_endings(text)
    if numbers or endings:
        ranges = [ending_range(e) for e in endings]
        rows = await conn.fetch(PHONE_SQL, numbers, [low for low, _ in ranges],
                                [high for _, high in ranges], MAX_LISTED_CUSTOMERS,
                                timeout=QUERY_TIMEOUT_S)
        return [r["customer_id"] for r in rows], None
    if too_short_a_number(text):
        raise BadParameter("customer", f"'customer' as a phone number needs at least "
                           f"{MIN_NATIONAL_DIGITS} digits after a trunk 0 (07700 900123, "
                           f"+44 7700 900123), not {raw!r}")
    pattern = f"%{_like_escaped(text)}%"
    rows = await conn.fetch("SELECT id FROM customers WHERE display_name ILIKE $1 LIMIT $2",
                            pattern, MAX_LISTED_CUSTOMERS + 1, timeout=QUERY_TIMEOUT_S)
    if len(rows) > MAX_LISTED_CUSTOMERS:
        return None, pattern
    return [r["id"] for r in rows], None


def contact_id_range(raw: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The ids a contact id, or the start of one (hex digits, dashes anywhere), covers."""
    text = raw.strip().lower()
    digits = text.replace("-", "")
    if not _HEX_PREFIX.match(text) or not 1 <= len(digits) <= 32:
        raise BadParameter("contact_id", f"'contact_id' is a contact id or its first "
                           f"characters (hex digits), not {raw!r}")
    return (uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f")))


# ---- the query ---------------------------------------------------------------------------

# The contact's handling in reports.py's words (its _judged and derived CTEs, per contact), as
# one condition per word, mutually exclusive: a filter is a plain conjunction the planner can
# estimate (a CASE it cannot, and a rare word then read the whole table instead of the newest
# contacts of the index until the page was full).
_ABANDONED = ("f.escalation IS NOT NULL AND f.ending IS NOT NULL AND NOT f.callback_requested "
              "AND (f.accepted_at IS NULL OR f.accepted_at > (f.ending).at)")
HANDLING_CONDITIONS = {
    "self_service": "(f.ending).value = 'self_service_resolved' AND f.escalation IS NULL",
    "agent": f"f.escalation IS NOT NULL AND f.accepted_at IS NOT NULL AND NOT ({_ABANDONED})",
    "abandoned": _ABANDONED,
    "queued": "f.escalation IS NOT NULL AND f.accepted_at IS NULL "
              "AND (f.ending IS NULL OR f.callback_requested)",
    "dropped": "f.escalation IS NULL AND f.ending IS NOT NULL "
               "AND (f.ending).value IS DISTINCT FROM 'self_service_resolved'",
    "open": "f.escalation IS NULL AND f.ending IS NULL",
}
assert tuple(HANDLING_CONDITIONS) == HANDLING
HANDLING_SQL = "CASE " + " ".join(f"WHEN {condition} THEN '{word}'" for word, condition
                                  in HANDLING_CONDITIONS.items()) + " END"

# A page of contacts (the inner query: its conditions, order and limit), then for its rows
# only the customer, an erasure, and the agents who accepted it.
PAGE_SQL = """
SELECT f.contact_id, f.customer_id, (f.started).value AS channel, f.started_at,
       (f.ending).at AS ended_at, (f.ending).value AS outcome,
       (f.contact_type).value AS contact_type, (f.escalation).value AS escalation_reason,
       f.escalation IS NOT NULL AS escalated, (f.queue).value AS queue,
       (f.survey).value AS survey_kind, (f.survey_answer).value AS survey_score,
       f.next_same_type_at, f.transferred, f.callback_requested, f.handling,
       c.display_name, x.customer_id IS NOT NULL AS erased, agents.list AS agents,
       NULLIF(started.data->>'address', '') AS address
FROM (
    SELECT f.*, {handling} AS handling FROM contact_facts f
    WHERE {where}
    ORDER BY f.started_at DESC, f.contact_id DESC
    LIMIT {limit}
) f
LEFT JOIN customers c ON c.id = f.customer_id
LEFT JOIN erased_customers x ON x.customer_id = f.customer_id
LEFT JOIN LATERAL (  -- the address it came from (the contacts view reads it alike)
    SELECT e.data FROM contact_events e
    WHERE e.contact_id = f.contact_id AND e.occurred_at = f.started_at
      AND e.seq = (f.started).seq
) started ON true
LEFT JOIN LATERAL (
    SELECT array_agg(ARRAY[a.agent_id, g.name] ORDER BY a.first_at) AS list
    FROM (SELECT e.data->>'agent_id' AS agent_id, min(e.occurred_at) AS first_at
          FROM contact_events e
          WHERE e.contact_id = f.contact_id AND e.occurred_at >= f.started_at
            AND e.kind = 'agent_accepted'
          GROUP BY 1) a
    LEFT JOIN agents g ON g.id::text = a.agent_id
) agents ON true
ORDER BY f.started_at DESC, f.contact_id DESC
"""


def page_sql(where: Sequence[str], limit_param: str) -> str:
    return PAGE_SQL.format(handling=HANDLING_SQL, where=" AND ".join(where) or "true",
                           limit=limit_param)


async def fetch_page(conn: asyncpg.Connection | asyncpg.Pool, sql: str, *args: Any,
                     custom_plan: bool = False) -> list[asyncpg.Record]:
    """A page query; `custom_plan`: planned for its own values each time. asyncpg prepares
    every statement and PostgreSQL plans it for any values from its sixth run on: for a search
    over the window with a rare filter that plan reads the whole table instead of the index's
    newest contacts (1.4 ms, then 40-100 ms on the 1M-event benchmark log). Planning costs
    1-2 ms, so a look-up by customer or id, whose plan is the same for any values, skips it."""
    if not custom_plan:
        return await conn.fetch(sql, *args, timeout=QUERY_TIMEOUT_S)
    async with _connection(conn) as connection, connection.transaction(readonly=True):
        await connection.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        return await connection.fetch(sql, *args, timeout=QUERY_TIMEOUT_S)


async def search(conn: asyncpg.Connection | asyncpg.Pool, query: SearchQuery,
                 rules: ReportRules) -> SearchResult:
    """One page of the contacts the query finds, newest first."""
    sql = _Sql()
    sql.where(f"f.started_at >= {sql.param(query.window.start)}")
    sql.where(f"f.started_at < {sql.param(query.window.end)}")
    matched = None
    if query.customer is not None:
        ids, pattern = await matching_customers(conn, query.customer)
        if ids is not None:
            matched = len(ids)
            if not ids:
                return SearchResult((), None, 0)
            sql.where(f"f.customer_id = ANY({sql.param(ids)}::uuid[])")
        else:
            sql.where(f"f.customer_id IN (SELECT id FROM customers WHERE display_name "
                      f"ILIKE {sql.param(pattern)})")
    if query.contact_id is not None:
        low, high = contact_id_range(query.contact_id)
        sql.where(f"f.contact_id BETWEEN {sql.param(low)} AND {sql.param(high)}")
    if query.channel is not None:
        sql.where(f"(f.started).value = {sql.param(query.channel)}")
    if query.contact_type is not None:
        wanted = None if query.contact_type == "unclassified" else query.contact_type
        sql.where(f"(f.contact_type).value IS NOT DISTINCT FROM {sql.param(wanted)}::text")
    if query.outcome is not None:
        _outcome_condition(sql, query.outcome)
    if query.agent is not None:
        agents = await matching_agents(conn, query.agent)
        if not agents:
            return SearchResult((), None, matched)
        # accepted after the contact started, so in migration 020's index from the window on
        sql.where(f"f.contact_id IN (SELECT e.contact_id FROM contact_events e "
                  f"WHERE e.kind = 'agent_accepted' "
                  f"AND e.occurred_at >= {sql.param(query.window.start)} "
                  f"AND e.data->>'agent_id' = ANY({sql.param(agents)}::text[]))")
    if query.before is not None:
        moment, contact = sql.param(query.before.started_at), sql.param(query.before.contact_id)
        # the first half lets the started_at index bound the scan; the second breaks ties
        sql.where(f"f.started_at <= {moment}")
        sql.where(f"(f.started_at < {moment} OR f.contact_id < {contact})")
    limit = sql.param(query.limit + 1)
    by_window = query.customer is None and query.contact_id is None
    records = await fetch_page(conn, page_sql(sql.conditions, limit), *sql.params,
                               custom_plan=by_window)
    rows = tuple(contact_row(r, rules) for r in records[:query.limit])
    more = len(records) > query.limit
    next_before = Cursor(records[query.limit - 1]["started_at"],
                         records[query.limit - 1]["contact_id"]).encode() if more else None
    return SearchResult(rows, next_before, matched)


def _outcome_condition(sql: _Sql, outcome: str) -> None:
    if outcome == "escalated":
        sql.where("f.escalation IS NOT NULL")
    elif outcome in HANDLING:
        sql.where(HANDLING_CONDITIONS[outcome])
    else:
        sql.where(f"(f.ending).value = {sql.param(outcome)}")


def check_outcome(raw: str) -> str:
    """An outcome filter: a handling word, escalated, or an ended event's outcome code."""
    value = raw.strip().lower()
    if value in OUTCOME_WORDS or _OUTCOME_CODE.match(value):
        return value
    raise BadParameter("outcome", f"'outcome' is one of {', '.join(OUTCOME_WORDS)} or an "
                       f"ended contact's outcome (e.g. agent_resolved), not {raw!r}")


async def matching_agents(conn: asyncpg.Connection | asyncpg.Pool, raw: str) -> list[str]:
    """Agent ids for an id or a name (case-insensitive, whole or part)."""
    text = raw.strip()
    rows = await conn.fetch(
        "SELECT id::text FROM agents WHERE id::text = $1 OR name ILIKE $2",
        text, f"%{_like_escaped(text)}%", timeout=QUERY_TIMEOUT_S)
    return [r["id"] for r in rows] or ([text] if is_uuid(text) else [])


async def contact(conn: asyncpg.Connection | asyncpg.Pool, contact_id: uuid.UUID,
                  rules: ReportRules) -> ContactRow | None:
    """One contact's row, or None when the log has no such contact."""
    records = await fetch_page(conn, page_sql(["f.contact_id = $1"], "1"), contact_id)
    return contact_row(records[0], rules) if records else None


async def customer_contacts(conn: asyncpg.Connection | asyncpg.Pool, customer_id: str,
                            rules: ReportRules, limit: int = 50) -> tuple[ContactRow, ...]:
    """The customer's contacts, newest first (at most `limit`)."""
    records = await fetch_page(conn, page_sql(["f.customer_id = $1"], "$2"),
                               uuid.UUID(customer_id), limit)
    return tuple(contact_row(r, rules) for r in records)


def contact_row(r: asyncpg.Record, rules: ReportRules) -> ContactRow:
    """The row of a PAGE_SQL record, judged with the catalog's repeat windows."""
    kind = r["survey_kind"]
    score = int(r["survey_score"]) if r["survey_score"] is not None else None
    customer_id = str(r["customer_id"]) if r["customer_id"] else None
    return ContactRow(
        contact_id=str(r["contact_id"]), started_at=iso(r["started_at"]),
        ended_at=iso(r["ended_at"]) if r["ended_at"] else None,
        duration_s=round((r["ended_at"] - r["started_at"]).total_seconds(), 3)
        if r["ended_at"] else None,
        channel=r["channel"],
        customer=CustomerRef(customer_id, r["display_name"], bool(r["erased"]),
                             r["address"]),
        contact_type=r["contact_type"],
        contact_type_label=rules.labels.get(r["contact_type"] or "", r["contact_type"]
                                            or "Unclassified"),
        handling=r["handling"], outcome=r["outcome"], escalated=r["escalated"],
        escalation_reason=r["escalation_reason"], queue=r["queue"],
        agents=tuple(AgentRef(a, n) for a, n in (r["agents"] or ())),
        survey={"kind": kind, "score": score} if kind else None,
        csat=score if kind == "csat" else None,
        came_back=_came_back(r, rules), transferred=r["transferred"],
        callback_requested=r["callback_requested"])


def _came_back(r: asyncpg.Record, rules: ReportRules) -> bool | None:
    """A false deflection (reports' definition): resolved in self-service, and the customer's
    next contact of the same type started within the type's repeat window."""
    if r["handling"] != "self_service":
        return None
    if r["contact_type"] is None or r["next_same_type_at"] is None:
        return False
    hours = rules.repeat_windows_h.get(r["contact_type"], rules.default_window_h)
    return r["next_same_type_at"] <= r["started_at"] + timedelta(hours=hours)
