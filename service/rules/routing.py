"""The routing tree: Alertmanager's semantics for contacts. Pure: no I/O after loading.

The root route carries the defaults; children inherit and override queue, priority,
self-service policy and reason. Matching is depth-first and the first matching child wins,
unless it sets `continue: true`, in which case later siblings may match too and the last
match's settings apply. Every decision names the route path that made it.
"""

from __future__ import annotations

import calendar
import operator
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.rules.catalog import Catalog
from service.rules.yamlfile import Checker, LocatedDict, LocatedList, is_identifier, load_yaml

MATCHER = re.compile(r'^\s*([a-z_][a-z0-9_.]*)\s*(=~|!~|!=|<=|>=|=|<|>)\s*(.*?)\s*$', re.S)
NUMERIC_ATTRS = ("confidence",)
BOOL_ATTRS = ("repeat_contact",)
TEXT_ATTRS = ("channel", "contact_type")
INTERVAL_ATTR = "hours"  # 'hours = business_hours': the decision falls in that time interval
WAITING_PREFIX = "waiting."  # 'waiting.orders > 20': contacts waiting in that queue now
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$|^24:00$")
PERIOD_KEYS = ("weekdays", "times", "days_of_month", "months", "years", "location")
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class ServiceLevel:
    """A queue's target: at least `goal` (a fraction) of its contacts accepted within
    `target_s` seconds of entering the queue."""
    target_s: int
    goal: float


DEFAULT_SERVICE_LEVEL = ServiceLevel(target_s=60, goal=0.8)


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    """How a queue's callbacks are tried: at most `attempts` calls, `retry_after_s` apart
    (a call not answered, busy or failed is tried again after that, then given up)."""
    attempts: int = 3
    retry_after_s: int = 300


DEFAULT_CALLBACK = CallbackPolicy()


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    label: str
    skills: tuple[str, ...]
    avg_handle_s: int = 300
    timeout_s: int | None = None  # waiting longer than this moves a contact to `overflow`
    overflow: str | None = None
    service_level: ServiceLevel = DEFAULT_SERVICE_LEVEL
    callback: CallbackPolicy = DEFAULT_CALLBACK


@dataclass(frozen=True, slots=True)
class Matcher:
    attr: str
    op: str
    value: Any
    text: str

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        actual = attrs.get(self.attr)
        if self.op in COMPARE:  # a number the contact lacks compares with nothing
            return isinstance(actual, (int, float)) and COMPARE[self.op](actual, self.value)
        if self.attr in BOOL_ATTRS:
            equal = bool(actual) == self.value
        elif self.attr == INTERVAL_ATTR:
            equal = self.value in (actual or ())
        else:  # as in Alertmanager, an attribute the contact lacks is the empty string
            text = "" if actual is None else str(actual)
            equal = self.value.fullmatch(text) is not None if self.op in ("=~", "!~") \
                else text == self.value
        return equal if self.op in ("=", "=~") else not equal


Ranges = tuple[tuple[int, int], ...]  # inclusive [first, last] pairs


@dataclass(frozen=True, slots=True)
class Period:
    """Alertmanager's time interval: years, months, days of the month, weekdays and times of
    day on the wall clock of one time zone; a part left out matches always."""

    zone: ZoneInfo
    weekdays: frozenset[int] | None = None  # 0 is Monday
    times: Ranges | None = None  # [start, end) in minutes of the day
    days_of_month: Ranges | None = None  # 1..31, or -1 (the last day) .. -31
    months: frozenset[int] | None = None  # 1 is January
    years: Ranges | None = None

    def contains(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        if self.years is not None and not any(a <= local.year <= b for a, b in self.years):
            return False
        if self.months is not None and local.month not in self.months:
            return False
        if self.days_of_month is not None and not _day_of_month_in(self.days_of_month, local):
            return False
        if self.weekdays is not None and local.weekday() not in self.weekdays:
            return False
        minute = local.hour * 60 + local.minute
        return self.times is None or any(start <= minute < end for start, end in self.times)


def _day_of_month_in(ranges: Ranges, local: datetime) -> bool:
    """Negative days count from the month's end (-1 is its last day), as in Alertmanager; a
    range is cut to the month, and one starting after the month's end matches nothing."""
    length = calendar.monthrange(local.year, local.month)[1]
    for first, last in ranges:
        start = length + first + 1 if first < 0 else first
        end = length + last + 1 if last < 0 else last
        if start <= length and max(start, 1) <= local.day <= min(end, length):
            return True
    return False


@dataclass(frozen=True, slots=True)
class TimeInterval:
    name: str
    periods: tuple[Period, ...]

    def contains(self, moment: datetime) -> bool:
        return any(period.contains(moment) for period in self.periods)


@dataclass(frozen=True, slots=True)
class Closed:
    """What a route does instead of queueing a contact for an agent, e.g. out of hours: say
    `message` and end the contact, or (with `queue`) say it, if any, and wait in that queue,
    or (with `callback`) say it, if any, and wait in that queue to be called back (on a
    channel that calls back; elsewhere as with `queue`)."""

    message: str | None = None
    queue: str | None = None
    callback: str | None = None  # the queue a callback waits in

    @property
    def waits_in(self) -> str | None:
        """The queue the contact waits in, if it waits at all."""
        return self.queue or self.callback

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("message", self.message), ("queue", self.queue),
                                  ("callback", self.callback)) if v}


CLOSED_KEYS = ("message", "queue", "callback")


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """What a route decides; children inherit what they do not set."""

    queue: str
    priority: int
    self_service: bool
    reason: str
    closed: Closed | None = None


@dataclass(frozen=True)
class Route:
    name: str
    matchers: tuple[Matcher, ...]
    settings: RouteSettings
    continue_: bool = False
    routes: tuple["Route", ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Decision:
    queue: str
    priority: int
    self_service: bool
    reason: str
    route_path: str
    closed: Closed | None = None  # instead of queueing for an agent

    def as_dict(self) -> dict[str, Any]:
        decided = {"queue": self.queue, "priority": self.priority,
                   "self_service": self.self_service, "reason": self.reason,
                   "route_path": self.route_path}
        return {**decided, "closed": self.closed.as_dict()} if self.closed else decided


@dataclass(frozen=True)
class RoutingTree:
    root: Route
    queues: dict[str, Queue]
    time_intervals: dict[str, TimeInterval] = field(default_factory=dict)

    def intervals_at(self, epoch_s: float) -> frozenset[str]:
        """The `hours` attribute: the time intervals the moment falls in."""
        if not self.time_intervals:  # most trees: nothing to work out on every turn
            return frozenset()
        moment = datetime.fromtimestamp(epoch_s, timezone.utc)
        return frozenset(name for name, interval in self.time_intervals.items()
                         if interval.contains(moment))

    def decide(self, attrs: Mapping[str, Any]) -> Decision:
        settings, path = _walk(self.root, attrs, self.root.name)
        return Decision(settings.queue, settings.priority, settings.self_service,
                        settings.reason, path, settings.closed)


def _walk(route: Route, attrs: Mapping[str, Any], path: str) -> tuple[RouteSettings, str]:
    result: tuple[RouteSettings, str] | None = None
    for child in route.routes:
        if all(m.matches(attrs) for m in child.matchers):
            result = _walk(child, attrs, f"{path} > {child.name}")
            if not child.continue_:
                break
    return result or (route.settings, path)


# ---- loading -------------------------------------------------------------------------------

ROUTE_KEYS = ("name", "matchers", "queue", "priority", "self_service", "reason", "closed",
              "continue", "routes")


def load_routing_tree(directory: Path, display_dir: str, catalog: Catalog,
                      channels: Collection[str]) -> RoutingTree:
    name = f"{display_dir}/routes.yaml"
    doc = load_yaml(directory / "routes.yaml", name)
    check = Checker()
    doc = check.mapping(doc, doc, None, (), required=["queues", "route"],
                        optional=["time_intervals"])
    check.raise_if_any()
    queues = _queues(check, doc)
    intervals = _time_intervals(check, doc)
    root_spec = check.mapping(doc["route"], doc, "route", ("route",),
                              required=["queue", "priority", "self_service"],
                              optional=["name", "reason", "closed", "routes", "matchers"])
    check.raise_if_any()
    if "matchers" in root_spec:  # Alertmanager refuses them as well
        check.error(root_spec, "matchers", "the root route matches everything: it takes no "
                    "matchers", ("route", "matchers"))
    defaults = RouteSettings(queue="", priority=0, self_service=True, reason="rule")
    known = Known(catalog, frozenset(intervals), frozenset(queues), tuple(channels))
    root = _route(check, root_spec, ("route",), "root", defaults, queues, known)
    check.raise_if_any()
    return RoutingTree(root=root, queues=queues, time_intervals=intervals)


def _queues(check: Checker, doc: LocatedDict) -> dict[str, Queue]:
    specs = check.entries(doc, "queues", "queues")
    queues = {}
    for name, spec in specs.items():
        path = ("queues", name)
        spec = check.mapping(spec, specs, name, path, required=["label", "skills"],
                             optional=["avg_handle_s", "timeout_s", "overflow",
                                       "service_level", "callback"])
        if spec is None:
            continue
        skills = spec["skills"]
        if not isinstance(skills, list) or not all(isinstance(s, str) for s in skills):
            check.error(spec, "skills", "skills must be a list of text", (*path, "skills"))
            skills = []
        handle = spec.get("avg_handle_s", 300)
        if type(handle) is not int or handle <= 0:
            check.error(spec, "avg_handle_s", "avg_handle_s must be a positive whole number",
                        (*path, "avg_handle_s"))
            handle = 300
        queues[name] = Queue(name, str(spec["label"]), tuple(skills), handle,
                             *_overflow(check, spec, path), _service_level(check, spec, path),
                             _callback(check, spec, path))
    for name, queue in queues.items():
        if queue.overflow and queue.overflow not in queues:
            check.error(specs[name], "overflow", f"unknown queue '{queue.overflow}'",
                        ("queues", name, "overflow"))
        elif queue.overflow == name:
            check.error(specs[name], "overflow", "a queue cannot overflow into itself",
                        ("queues", name, "overflow"))
    return queues


def _overflow(check: Checker, spec: LocatedDict, path: tuple) -> tuple[int | None, str | None]:
    timeout, overflow = spec.get("timeout_s"), spec.get("overflow")
    if (timeout is None) != (overflow is None):
        check.error(spec, "timeout_s" if timeout is not None else "overflow",
                    "timeout_s and overflow go together", path)
        return None, None
    if timeout is not None and (type(timeout) is not int or timeout <= 0):
        check.error(spec, "timeout_s", "timeout_s must be a positive whole number of seconds",
                    (*path, "timeout_s"))
        return None, None
    return timeout, overflow


def _service_level(check: Checker, spec: LocatedDict, path: tuple) -> ServiceLevel:
    """`service_level: {target_s: 20, goal: 0.8}`; both keys required when it is given."""
    if "service_level" not in spec:
        return DEFAULT_SERVICE_LEVEL
    path = (*path, "service_level")
    raw = check.mapping(spec["service_level"], spec, "service_level", path,
                        required=["target_s", "goal"])
    if raw is None or not {"target_s", "goal"} <= raw.keys():
        return DEFAULT_SERVICE_LEVEL
    target, goal = raw["target_s"], raw["goal"]
    valid = True
    if type(target) is not int or target <= 0:
        check.error(raw, "target_s", f"target_s must be a positive whole number of seconds, "
                    f"not {target!r}", (*path, "target_s"))
        valid = False
    if type(goal) not in (int, float) or not 0 < goal <= 1:
        check.error(raw, "goal", f"goal must be a fraction above 0 and at most 1 (0.8 is 80%), "
                    f"not {goal!r}", (*path, "goal"))
        valid = False
    return ServiceLevel(target, float(goal)) if valid else DEFAULT_SERVICE_LEVEL


def _callback(check: Checker, spec: LocatedDict, path: tuple) -> CallbackPolicy:
    """`callback: {attempts: 3, retry_after_s: 300}`; either key may be left to its default."""
    if "callback" not in spec:
        return DEFAULT_CALLBACK
    path = (*path, "callback")
    raw = check.mapping(spec["callback"], spec, "callback", path,
                        optional=["attempts", "retry_after_s"])
    if raw is None:
        return DEFAULT_CALLBACK
    attempts = raw.get("attempts", DEFAULT_CALLBACK.attempts)
    delay = raw.get("retry_after_s", DEFAULT_CALLBACK.retry_after_s)
    valid = True
    if type(attempts) is not int or not 1 <= attempts <= 10:
        check.error(raw, "attempts", f"attempts must be a whole number from 1 to 10, not "
                    f"{attempts!r}", (*path, "attempts"))
        valid = False
    if type(delay) is not int or not 1 <= delay <= 86400:
        check.error(raw, "retry_after_s", f"retry_after_s must be a whole number of seconds "
                    f"from 1 to 86400, not {delay!r}", (*path, "retry_after_s"))
        valid = False
    return CallbackPolicy(attempts, delay) if valid else DEFAULT_CALLBACK


def _time_intervals(check: Checker, doc: LocatedDict) -> dict[str, TimeInterval]:
    """Alertmanager's `time_intervals`: weekdays, times, days_of_month, months, years and
    location."""
    items = doc.get("time_intervals", LocatedList())
    if not isinstance(items, LocatedList):
        check.error(doc, "time_intervals", "time_intervals must be a list", ("time_intervals",))
        return {}
    intervals: dict[str, TimeInterval] = {}
    for index, item in enumerate(items):
        path = ("time_intervals", index)
        item = check.mapping(item, items, index, path, required=["name", "time_intervals"])
        if item is None:
            continue
        name, periods = item["name"], item["time_intervals"]
        if not is_identifier(name) or name in intervals:
            check.error(item, "name", "name must be a unique lower_snake_case name",
                        (*path, "name"))
        if not isinstance(periods, LocatedList) or not periods:
            check.error(item, "time_intervals", "expected a non-empty list of periods",
                        (*path, "time_intervals"))
            continue
        intervals[str(name)] = TimeInterval(str(name), tuple(
            _period(check, periods, i, (*path, "time_intervals", i))
            for i in range(len(periods))))
    return intervals


def _period(check: Checker, periods: LocatedList, index: int, path: tuple) -> Period:
    spec = check.mapping(periods[index], periods, index, path, optional=PERIOD_KEYS)
    if spec is None:
        return Period(ZoneInfo("UTC"))
    ranges = {kind.key: _ranges(check, spec, path, kind) for kind in RANGE_KINDS}
    return Period(_zone(check, spec, path),
                  weekdays=_as_set(ranges["weekdays"], WEEKDAYS_FROM_ZERO),
                  times=_times(check, spec, path),
                  days_of_month=ranges["days_of_month"],
                  months=_as_set(ranges["months"]), years=ranges["years"])


def _zone(check: Checker, spec: LocatedDict, path: tuple) -> ZoneInfo:
    name = spec.get("location", "UTC")
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        check.error(spec, "location", f"unknown time zone '{name}' (an IANA name such as "
                    "'Europe/London')", (*path, "location"))
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class RangeKind:
    """One of time_intervals' range lists: `weekdays: ['monday:friday', saturday]`."""

    key: str
    value: Callable[[str], int | None]  # one item's text -> its number, or None
    what: str  # "is not ..." for an item that cannot be read
    order: Callable[[int], int]  # where a number falls, to refuse a range that runs backwards
    backwards: str  # how to write it instead


def _named(names: tuple[str, ...], numbered: bool) -> Callable[[str], int | None]:
    def value(text: str) -> int | None:
        text = text.strip().lower()
        if text in names:
            return names.index(text) + 1
        if numbered and text.isdigit() and 1 <= int(text) <= len(names):
            return int(text)
        return None
    return value


def _whole(low: int, high: int, zero: bool = True) -> Callable[[str], int | None]:
    def value(text: str) -> int | None:
        try:
            number = int(text.strip())
        except ValueError:
            return None
        return number if low <= number <= high and (zero or number != 0) else None
    return value


RANGE_KINDS = (
    RangeKind("weekdays", _named(WEEKDAYS, numbered=False),
              "is not a weekday or a range such as 'monday:friday'", lambda day: day,
              "a range goes from Monday towards Sunday (write two items, such as "
              "'friday:sunday' and 'monday')"),
    RangeKind("days_of_month", _whole(-31, 31, zero=False),
              "is not a day of the month (1 to 31, or -1 for the last day to -31) or a range "
              "such as '1:7' or '-3:-1'", lambda day: day + 32 if day < 0 else day,
              "the first day comes before the last in a 31-day month (write two items, such "
              "as '25:-1' and '1:3')"),
    RangeKind("months", _named(MONTHS, numbered=True),
              "is not a month (january to december, or 1 to 12) or a range such as "
              "'january:march'", lambda month: month,
              "a range goes from January towards December (write two items, such as "
              "'november:december' and 'january')"),
    RangeKind("years", _whole(1, 9999), "is not a year or a range such as '2026:2027'",
              lambda year: year, "the first year comes before the last"),
)
WEEKDAYS_FROM_ZERO = -1  # weekdays read 1..7; Period counts Monday as 0, like datetime


def _ranges(check: Checker, spec: LocatedDict, path: tuple, kind: RangeKind) -> Ranges | None:
    if kind.key not in spec:
        return None
    items = spec[kind.key]
    listed = items if isinstance(items, LocatedList) else [items]
    found = []
    for index, item in enumerate(listed):
        where = (items, index) if isinstance(items, LocatedList) else (spec, kind.key)
        text = str(item)
        first, sep, last = text.partition(":")
        begin, end = kind.value(first), kind.value(last) if sep else kind.value(first)
        if isinstance(item, bool) or begin is None or end is None:
            check.error(*where, f"'{text}' {kind.what}", (*path, kind.key))
        elif kind.order(begin) > kind.order(end):  # Alertmanager refuses these too
            check.error(*where, f"'{text}' runs backwards: {kind.backwards}", (*path, kind.key))
        else:
            found.append((begin, end))
    return tuple(found)


def _as_set(ranges: Ranges | None, shift: int = 0) -> frozenset[int] | None:
    if ranges is None:
        return None
    return frozenset(n + shift for first, last in ranges for n in range(first, last + 1))


def _times(check: Checker, spec: LocatedDict, path: tuple) -> tuple[tuple[int, int], ...] | None:
    if "times" not in spec:
        return None
    items, ranges = spec["times"], []
    if not isinstance(items, LocatedList):
        check.error(spec, "times", "times must be a list of start_time/end_time",
                    (*path, "times"))
        return ()
    for index, item in enumerate(items):
        where = (*path, "times", index)
        item = check.mapping(item, items, index, where, required=["start_time", "end_time"])
        if item is None:
            continue
        start, end = (_minutes(item.get(key)) for key in ("start_time", "end_time"))
        if start is None or end is None or start >= end:
            check.error(items, index, "start_time and end_time are 'HH:MM' (00:00 to 24:00), "
                        "start before end", where)
            continue
        ranges.append((start, end))
    return tuple(ranges)


def _minutes(raw: Any) -> int | None:
    match = CLOCK.match(raw) if isinstance(raw, str) else None
    if not match:
        return None
    return 24 * 60 if match[0] == "24:00" else int(match[1]) * 60 + int(match[2])


def _route(check: Checker, spec: LocatedDict, path: tuple, default_name: str, parent: RouteSettings,
           queues: dict[str, Queue], known: "Known") -> Route:
    settings = _settings(check, spec, path, parent, queues)
    matchers = _matchers(check, spec, path, known)
    children = []
    child_specs = spec.get("routes")
    if child_specs is None:
        child_specs = LocatedList()
    elif not isinstance(child_specs, LocatedList):
        check.error(spec, "routes", "routes must be a list", (*path, "routes"))
        child_specs = LocatedList()
    for index, child in enumerate(child_specs):
        child_path = (*path, "routes", index)
        child = check.mapping(child, child_specs, index, child_path, optional=ROUTE_KEYS)
        if child is not None:
            children.append(_route(check, child, child_path, f"routes[{index}]", settings,
                                   queues, known))
    cont = spec.get("continue", False)
    if cont not in (True, False):
        check.error(spec, "continue", "continue must be true or false", (*path, "continue"))
    return Route(name=str(spec.get("name", default_name)), matchers=matchers, settings=settings,
                 continue_=cont is True, routes=tuple(children))


def _settings(check: Checker, spec: LocatedDict, path: tuple, parent: RouteSettings,
              queues: dict[str, Queue]) -> RouteSettings:
    settings = parent
    if "queue" in spec:
        if spec["queue"] not in queues:
            check.error(spec, "queue", f"unknown queue '{spec['queue']}'", (*path, "queue"))
        settings = replace(settings, queue=str(spec["queue"]))
    if "priority" in spec:
        if type(spec["priority"]) is not int or not 0 <= spec["priority"] <= 9:
            check.error(spec, "priority", "priority must be a whole number from 0 (most urgent) "
                        "to 9", (*path, "priority"))
        else:
            settings = replace(settings, priority=spec["priority"])
    if "self_service" in spec:
        if spec["self_service"] not in (True, False):
            check.error(spec, "self_service", "self_service must be true or false",
                        (*path, "self_service"))
        else:
            settings = replace(settings, self_service=spec["self_service"])
    if "reason" in spec:
        if not is_identifier(spec["reason"]):
            check.error(spec, "reason", "reason must be a lower_snake_case code",
                        (*path, "reason"))
        else:
            settings = replace(settings, reason=spec["reason"])
    if "closed" in spec:
        settings = replace(settings, closed=_closed(check, spec, (*path, "closed"), queues))
    return settings


def _closed(check: Checker, spec: LocatedDict, path: tuple, queues: dict[str, Queue]
            ) -> Closed | None:
    """`closed: {message: ...}`, `{queue: ...}`, `{callback: ...}`, a message with either
    queue; `closed: null` undoes a parent's."""
    raw = spec["closed"]
    if raw is None:
        return None
    raw = check.mapping(raw, spec, "closed", path, optional=CLOSED_KEYS)
    if raw is None:
        return None
    if not raw.keys() & set(CLOSED_KEYS):
        check.error(spec, "closed", "closed needs a 'message', a 'queue' to wait in, a "
                    "'callback' queue, or a message with either", path)
    if {"queue", "callback"} <= raw.keys():
        check.error(raw, "callback", "closed takes a 'queue' to wait in or a 'callback' "
                    "queue, not both", (*path, "callback"))
    message = raw.get("message")
    if message is not None and (not isinstance(message, str) or not message.strip()):
        check.error(raw, "message", "message must be non-empty text", (*path, "message"))
    for key in ("queue", "callback"):
        if raw.get(key) is not None and (not isinstance(raw[key], str) or
                                         raw[key] not in queues):
            check.error(raw, key, f"unknown queue '{raw[key]}'", (*path, key))
    queue, callback = raw.get("queue"), raw.get("callback")
    return Closed(str(message) if message else None, str(queue) if queue else None,
                  str(callback) if callback else None)


def _matchers(check: Checker, spec: LocatedDict, path: tuple, known: "Known"
              ) -> tuple[Matcher, ...]:
    if "matchers" not in spec:
        return ()
    items = spec["matchers"]
    if not isinstance(items, LocatedList):  # an empty list matches everything
        check.error(spec, "matchers", "matchers must be a list", (*path, "matchers"))
        return ()
    found = []
    for index, text in enumerate(items):
        matcher = parse_matcher(text, known)
        if isinstance(matcher, str):
            check.error(items, index, matcher, (*path, "matchers", index))
        else:
            found.append(matcher)
    return tuple(found)


@dataclass(frozen=True)
class Known:
    """What matcher values may name."""

    catalog: Catalog
    intervals: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()
    channels: tuple[str, ...] = ()  # the channels the deployment serves


def parse_matcher(text: Any, known: Known) -> Matcher | str:
    """Parse `attr op value`; return the Matcher, or an error message."""
    match = MATCHER.match(text) if isinstance(text, str) else None
    if not match:
        return (f"cannot read matcher {text!r}: write it as 'attribute op value', for example "
                "'contact_type = track_order'")
    attr, op, raw = match.groups()
    value = unquote(raw)
    if value is None:
        return (f"cannot read the value of matcher {text!r}: a quoted value ends with its "
                'only unescaped quote (write \\" for a quote inside it)')
    if attr not in (*TEXT_ATTRS, *NUMERIC_ATTRS, *BOOL_ATTRS, INTERVAL_ATTR) and \
            not attr.startswith(("customer.", WAITING_PREFIX)):
        return (f"unknown attribute '{attr}' (use channel, contact_type, confidence, "
                "repeat_contact, hours, waiting.<queue> or customer.<field>)")
    if attr.startswith(WAITING_PREFIX):
        queue = attr.removeprefix(WAITING_PREFIX)
        if queue not in known.queues:
            return f"unknown queue '{queue}' in '{attr}'"
        return _numeric_matcher(attr, op, value, text)
    if attr == INTERVAL_ATTR:
        if op not in ("=", "!="):
            return f"'{attr}' names a time interval: write '{attr} = <name>' or '{attr} != <name>'"
        if value not in known.intervals:
            return (f"unknown time interval '{value}' (time_intervals defines: "
                    f"{', '.join(sorted(known.intervals)) or 'none'})")
        return Matcher(attr, op, value, text)
    if attr in NUMERIC_ATTRS:
        return _numeric_matcher(attr, op, value, text)
    if op in COMPARE:
        return f"'{op}' compares numbers; '{attr}' is not a number"
    if attr in BOOL_ATTRS:
        if op not in ("=", "!=") or value not in ("true", "false"):
            return f"'{attr}' is true or false: write '{attr} = true' or '{attr} = false'"
        return Matcher(attr, op, value == "true", text)
    if op in ("=~", "!~"):
        return _regex_matcher(attr, op, value, text, known)
    return _check_known(attr, value, known) or Matcher(attr, op, value, text)


def unquote(raw: str) -> str | None:
    """A matcher value as Alertmanager reads it: optionally in double quotes; \\" \\\\ and
    \\n are escapes, any other backslash stays (so regexes keep their \\d); None if malformed."""
    quoted = raw.startswith('"')
    body, out, index = raw[1:] if quoted else raw, [], 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            following = body[index + 1]
            out.append({"n": "\n", '"': '"', "\\": "\\"}.get(following, "\\" + following))
            index += 2
            continue
        if char == '"':
            if not quoted or index != len(body) - 1:
                return None
            quoted = False
        else:
            out.append(char)
        index += 1
    return None if quoted else "".join(out)


def _numeric_matcher(attr: str, op: str, value: str, text: str) -> Matcher | str:
    if op not in COMPARE:
        return f"'{attr}' is a number: compare it with <, <=, > or >="
    try:
        return Matcher(attr, op, float(value), text)
    except ValueError:
        return f"'{value}' is not a number"


def _regex_matcher(attr: str, op: str, value: str, text: str, known: Known) -> Matcher | str:
    try:
        pattern = re.compile(value)
    except re.error as exc:
        return f"invalid regular expression '{value}': {exc}"
    universe = _known_values(attr, known)
    if universe is not None and not any(pattern.fullmatch(v) for v in universe):
        return f"'{value}' matches no {attr.replace('_', ' ')}"
    return Matcher(attr, op, pattern, text)


def _check_known(attr: str, value: str, known: Known) -> str | None:
    universe = _known_values(attr, known)
    if universe is not None and value not in universe:
        return f"unknown {attr.replace('_', ' ')} '{value}'"
    return None


def _known_values(attr: str, known: Known) -> tuple[str, ...] | None:
    if attr == "contact_type":  # "" is a contact not (yet) classified
        return ("", *known.catalog.types)
    if attr == "channel":
        return known.channels
    return None
