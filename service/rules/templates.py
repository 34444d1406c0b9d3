"""Texts sent to customers with values filled in: catalog answers and flow texts.

    {customer.name}          the customer's name in the directory (customers add --name)
    {customer.<attribute>}   one of the customer's attributes (customers add --attr tier=gold)
    {last_contact.label}     the customer's previous contact, on any channel, in the last 30
                             days: its contact type's label; also .type (its id), .channel
                             and .when ("today", "yesterday", "on Monday", "on 3 May"; UTC)
    {name}, {name.field}     flows only: a value an earlier step saved (an answer, a look-up)
    [ ... ]                  an optional part: left out, brackets and all, when a value in it
                             is missing, so the customer gets the wording without it

Values about the customer can always be missing (an unknown caller, a first contact), so
they must sit inside an optional part; loading reports any other use, and any unknown name,
with file, line and key path. A customer never sees "None" or "{name}".

    check_template(check, item, "answer", text, path, saved=None)   # when loading
    render(text, {**personal_values(conv, labels, now), **flow_values})
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from service.rules.yamlfile import Checker, LocatedDict

PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)((?:\.[A-Za-z0-9_-]+)*)\}")
OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
PERSONAL = ("customer", "last_contact")  # names no flow step may save under
LAST_CONTACT_FIELDS = ("type", "label", "channel", "when")
_SPACE_BEFORE_MARK = re.compile(r"[ \t]+([.,!?;:])")
_SPACES = re.compile(r"[ \t]{2,}")


class MissingValue(LookupError):
    """A text names a value this customer or flow does not have."""


def fill(template: str, values: Mapping[str, Any], convert=str,
         gap: Callable[[str], str] | None = None) -> str:
    """Every placeholder replaced; MissingValue when one has no value (None or empty), unless
    `gap` says what to put in its place instead."""
    def value(match: re.Match) -> str:
        found: Any = values
        for part in (match[1], *match[2].split(".")[1:]):
            if not isinstance(found, Mapping) or found.get(part) in (None, ""):
                if gap is not None:
                    return gap(match[0])
                raise MissingValue(match[0])
            found = found[part]
        return convert(found)

    return PLACEHOLDER.sub(value, template)


def render(template: str, values: Mapping[str, Any],
           gap: Callable[[str], str] | None = None) -> str:
    """The text a customer gets: optional parts kept only when all their values exist; a
    required value that is missing raises MissingValue, or becomes `gap(placeholder)`."""
    if "[" not in template:
        return fill(template, values, gap=gap)

    def optional(match: re.Match) -> str:
        try:
            return fill(match[1], values)
        except MissingValue:
            return ""

    text = fill(OPTIONAL.sub(optional, template), values, gap=gap)
    return _SPACES.sub(" ", _SPACE_BEFORE_MARK.sub(r"\1", text)).strip()


def personal_values(conv: Mapping[str, Any], label: Callable[[str], str],
                    now: float) -> dict[str, Any]:
    """`customer` and `last_contact` of a conversation, for its texts."""
    customer = {k: v for k, v in (conv.get("attributes") or {}).items()
                if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    if conv.get("customer_name"):
        customer["name"] = conv["customer_name"]
    values: dict[str, Any] = {"customer": customer}
    earlier = [e for e in conv.get("earlier") or () if e.get("contact_id") != conv.get(
        "contact_id") and e.get("started_at")]
    if earlier:
        last = max(earlier, key=lambda e: e["started_at"])
        kind = last.get("contact_type")
        values["last_contact"] = {"type": kind, "label": label(kind) if kind else None,
                                  "channel": last.get("channel"),
                                  "when": when(last["started_at"], now)}
    return values


def when(at: float, now: float) -> str:
    """A past moment in words, by calendar day in UTC."""
    then, today = (datetime.fromtimestamp(t, timezone.utc) for t in (at, now))
    days = (today.date() - then.date()).days
    if days <= 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days < 7:
        return f"on {then.strftime('%A')}"
    return f"on {then.day} {then.strftime('%B')}"


# ---- loading -------------------------------------------------------------------------------

def check_template(check: Checker, item: LocatedDict, key: str, template: str, path: tuple,
                   saved: set[str] | None, *, for_agent: bool = False) -> None:
    """Report every placeholder the text cannot fill: unknown names, values not saved by an
    earlier step (`saved`; None where no flow runs), customer values outside [ ].
    `for_agent`: a saved reply an agent edits before sending (replies.py): {agent.name} is
    known, and customer values may stand outside [ ] (a gap the agent fills in)."""
    where = (*path, key)
    unbalanced = OPTIONAL.sub("", template)
    if "[" in unbalanced or "]" in unbalanced:
        check.error(item, key, "square brackets mark an optional part: each [ needs its ] "
                    "and they do not nest", where)
    inside = {m.span() for part in OPTIONAL.finditer(template)
              for m in PLACEHOLDER.finditer(template, part.start(), part.end())}
    for match in PLACEHOLDER.finditer(template):
        problem = _problem(match, saved, match.span() in inside or for_agent, for_agent)
        if problem:
            check.error(item, key, problem, where)
    for braces in re.finditer(r"\{[^{}]*\}", template):
        if not PLACEHOLDER.fullmatch(braces[0]):
            check.error(item, key, f"'{braces[0]}' is not a placeholder: write {{name}} or "
                        "{name.field} in lower_snake_case", where)


def _problem(match: re.Match, saved: set[str] | None, optional: bool,
             for_agent: bool = False) -> str | None:
    name, fields = match[1], match[2].split(".")[1:]
    if for_agent and name == "agent":
        return None if fields == ["name"] else f"'{match[0]}': the agent has only {{agent.name}}"
    if name in PERSONAL:
        if name == "customer" and len(fields) != 1:
            return (f"'{match[0]}': write {{customer.name}} or {{customer.<attribute>}}, "
                    "e.g. {customer.tier}")
        if name == "last_contact" and (len(fields) != 1 or fields[0] not in
                                       LAST_CONTACT_FIELDS):
            return (f"'{match[0]}': last_contact has {', '.join(LAST_CONTACT_FIELDS)} "
                    "(e.g. {last_contact.label})")
        if not optional:
            return (f"'{match[0]}' may be missing for a customer: put it inside [ ] with the "
                    "words that go with it, e.g. [Hi {customer.name}. ]")
        return None
    if saved is None:
        what = "saved replies" if for_agent else "answers"
        also = ", {agent.name}" if for_agent else ""
        return (f"unknown placeholder '{match[0]}': {what} may use {{customer.name}}, "
                f"{{customer.<attribute>}}{also} and {{last_contact.label|type|channel|when}}")
    if name not in saved:
        return f"'{{{name}}}' is not saved by an earlier step"
    return None
