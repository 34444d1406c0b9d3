"""Self-service flows (docs/architecture.md): short step lists that collect what the customer
knows, look it up and say the answer, then ask "Did that help?" like a plain answer does.

`flows.yaml` in a rules directory (optional):

    lookups:                       # HTTP look-ups flows may call, in one place for ops
      orders:
        url: https://shop.example.com/api/orders/{order_number}   # collected values, URL-quoted
        timeout_s: 3               # optional; default 3, at most 5
    flows:
      where_is_my_order:
        steps:
          - ask: What's your order number? It starts with EX, like EX12345.
            save: order_number
            expect: 'EX\\d{5}'      # optional: the whole answer, spaces removed, any case
            retry: That doesn't look like an order number. It starts with EX, like EX12345.
          - lookup: orders         # GET, a JSON object; failures go to an agent
            save: order
            not_found: I can't find that order. Please check the number and send it again.
          - say: Order {order_number} is {order.status}.

Texts and URLs may use `{name}` and `{name.field}` of values saved by earlier steps; texts
may also use the customer's own data in optional parts (`[Hi {customer.name}. ]`, see
`service/rules/templates.py`); loading checks that every name is known and saved before it is
used, and that a flow ends by saying something.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from service.rules.templates import PERSONAL, PLACEHOLDER, check_template, fill
from service.rules.yamlfile import (
    Checker,
    LocatedDict,
    LocatedList,
    is_identifier,
    optional_rule_file,
)

STEP_KINDS = ("ask", "lookup", "say")
# A look-up runs inside the customer's turn, which has 10 s in all (Twilio waits 15).
DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S = 3.0, 5.0
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # ask | lookup | say
    text: str = ""  # what ask or say says
    save: str | None = None  # ask and lookup: the name the value is kept under
    expect: re.Pattern | None = None
    retry: str | None = None
    lookup: str | None = None
    not_found: str | None = None  # lookup: said on a 404, then the last question is asked again
    back_to: int | None = None  # lookup: the index of that question


@dataclass(frozen=True, slots=True)
class Lookup:
    name: str
    url: str
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class Flows:
    flows: Mapping[str, tuple[Step, ...]]
    lookups: Mapping[str, Lookup]


NO_FLOWS = Flows({}, {})


# ---- running ------------------------------------------------------------------------------

class LookupFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason  # the escalation reason: lookup_not_found or lookup_failed


def accepted(step: Step, answer: str) -> str | None:
    """The value an ask step keeps from the customer's answer, or None when it does not fit."""
    if step.expect is None:
        return answer.strip() or None
    compact = "".join(answer.split())  # a spoken "E X 1 2 3" arrives with spaces
    return compact if step.expect.fullmatch(compact) else None


class HttpLookups:
    """Calls a flow's look-ups; one client session for the whole process."""

    def __init__(self, session: aiohttp.ClientSession):
        self._session = session

    async def fetch(self, lookup: Lookup, values: Mapping[str, Any]) -> dict[str, Any]:
        url = fill(lookup.url, values, lambda v: quote(str(v), safe=""))
        try:
            async with asyncio.timeout(lookup.timeout_s):
                async with self._session.get(url, headers={"Accept": "application/json"},
                                             allow_redirects=False) as response:
                    if response.status == 404:
                        raise LookupFailed("lookup_not_found", f"{lookup.name}: 404")
                    if response.status != 200:
                        raise LookupFailed("lookup_failed",
                                           f"{lookup.name}: HTTP {response.status}")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(16384):
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise LookupFailed("lookup_failed", f"{lookup.name}: response over "
                                               f"{MAX_RESPONSE_BYTES} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LookupFailed("lookup_failed", f"{lookup.name}: {exc!r}") from exc
        return _json_object(lookup.name, body)


def _json_object(name: str, body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise LookupFailed("lookup_failed", f"{name}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise LookupFailed("lookup_failed", f"{name}: not a JSON object")
    return data


# ---- loading --------------------------------------------------------------------------------

def load_flows(directory: Path, display_dir: str) -> Flows:
    opened = optional_rule_file(directory, display_dir, "flows.yaml",
                                required=["flows"], optional=["lookups"])
    if opened is None:
        return NO_FLOWS
    check, root = opened
    lookups = _lookups(check, root)
    flows = _flows(check, root, lookups)
    check.raise_if_any()
    return Flows(flows, lookups)


def _lookups(check: Checker, root: LocatedDict) -> dict[str, Lookup]:
    entries = root.get("lookups", LocatedDict())
    if not isinstance(entries, LocatedDict):
        check.error(root, "lookups", "expected a mapping of look-ups", ("lookups",))
        return {}
    lookups = {}
    for name, spec in entries.items():
        path = ("lookups", name)
        if not is_identifier(name):
            check.error(entries, name, "look-up names are lower_snake_case", path)
        spec = check.mapping(spec, entries, name, path, required=["url"], optional=["timeout_s"])
        if spec is None:
            continue
        url = spec.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            check.error(spec, "url", "url must be an http:// or https:// URL", (*path, "url"))
        timeout = spec.get("timeout_s", DEFAULT_TIMEOUT_S)
        if type(timeout) not in (int, float) or not 0 < timeout <= MAX_TIMEOUT_S:
            check.error(spec, "timeout_s", f"timeout_s must be a number of seconds, more than 0 "
                        f"and at most {MAX_TIMEOUT_S:g}", (*path, "timeout_s"))
            timeout = DEFAULT_TIMEOUT_S
        lookups[name] = Lookup(name, url if isinstance(url, str) else "", float(timeout))
    return lookups


def _flows(check: Checker, root: LocatedDict,
           lookups: dict[str, Lookup]) -> dict[str, tuple[Step, ...]]:
    entries = check.entries(root, "flows", "flows")
    flows = {}
    for flow_id, spec in entries.items():
        path = ("flows", flow_id)
        if not is_identifier(flow_id):
            check.error(entries, flow_id, "flow ids are lower_snake_case", path)
        spec = check.mapping(spec, entries, flow_id, path, required=["steps"])
        if spec is not None:
            flows[flow_id] = _steps(check, spec, path, lookups)
    return flows


def _steps(check: Checker, spec: LocatedDict, path: tuple,
           lookups: dict[str, Lookup]) -> tuple[Step, ...]:
    items = spec["steps"]
    if not isinstance(items, LocatedList) or not items:
        check.error(spec, "steps", "expected a non-empty list of steps", (*path, "steps"))
        return ()
    saved: set[str] = set()
    steps: list[Step] = []
    for index, item in enumerate(items):
        last_ask = next((i for i in range(len(steps) - 1, -1, -1) if steps[i].kind == "ask"),
                        None)
        step = _step(check, items, index, (*path, "steps", index), lookups, saved, last_ask)
        if step is not None:
            steps.append(step)
            saved |= {step.save} if step.save else set()
    if steps and len(steps) == len(items) and steps[-1].kind != "say":
        check.error(items, len(items) - 1, "a flow ends with a 'say' step: the answer the "
                    "customer is then asked to confirm", (*path, "steps", len(items) - 1))
    return tuple(steps)


def _step(check: Checker, items: LocatedList, index: int, path: tuple,
          lookups: dict[str, Lookup], saved: set[str], last_ask: int | None) -> Step | None:
    item = items[index]
    kinds = [k for k in STEP_KINDS if isinstance(item, LocatedDict) and k in item]
    if len(kinds) != 1:
        check.error(items, index, "each step has exactly one of 'ask', 'lookup' or 'say'", path)
        return None
    kind = kinds[0]
    allowed = {"ask": ["save", "expect", "retry"], "lookup": ["save", "not_found"],
               "say": []}[kind]
    required = [kind] + (["save"] if kind != "say" else [])
    item = check.mapping(item, items, index, path, required=required,
                         optional=[a for a in allowed if a not in required])
    if item is None:
        return None
    save = item.get("save")
    if save is not None and not is_identifier(save):
        check.error(item, "save", "save names a value in lower_snake_case", (*path, "save"))
    elif save in PERSONAL:
        check.error(item, "save", f"'{save}' is the customer's own data in texts: save "
                    "under another name", (*path, "save"))
    if kind == "lookup":
        name = item["lookup"]
        if name not in lookups:
            check.error(item, "lookup", f"unknown look-up '{name}'", (*path, "lookup"))
        else:
            _check_names(check, item, "lookup", lookups[name].url, saved, path)
        not_found = None
        if "not_found" in item:
            not_found = _text(check, item, "not_found", saved, path)
            if last_ask is None:
                check.error(item, "not_found", "not_found asks the last question again: put an "
                            "'ask' before this look-up", (*path, "not_found"))
        return Step("lookup", save=save, lookup=name, not_found=not_found, back_to=last_ask)
    text = _text(check, item, kind, saved, path)
    retry = _text(check, item, "retry", saved, path) if "retry" in item else None
    return Step(kind, text, save, _pattern(check, item, path), retry)


def _text(check: Checker, item: LocatedDict, key: str, saved: set[str], path: tuple) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        check.error(item, key, f"'{key}' must be non-empty text", (*path, key))
        return ""
    check_template(check, item, key, value, path, saved)
    return " ".join(value.split())


def _check_names(check: Checker, item: LocatedDict, key: str, template: str, saved: set[str],
                 path: tuple) -> None:
    """A URL's placeholders: values saved by earlier steps only."""
    for name in sorted({m[1] for m in PLACEHOLDER.finditer(template)} - saved):
        check.error(item, key, f"'{{{name}}}' is not saved by an earlier step", (*path, key))


def _pattern(check: Checker, item: LocatedDict, path: tuple) -> re.Pattern | None:
    raw = item.get("expect")
    if raw is None:
        return None
    try:
        return re.compile(str(raw), re.IGNORECASE)
    except re.error as exc:
        check.error(item, "expect", f"expect is not a valid regular expression: {exc}",
                    (*path, "expect"))
        return None
