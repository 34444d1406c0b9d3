"""replies.yaml (optional): saved replies agents insert in the console, filled in per contact.

    replies:
      - id: ask_order_number            # lower_snake_case, unique
        title: Ask for the order number # what the agent's list shows (at most 60 characters)
        text: >-                        # at most 2000 characters, as an agent's message
          [Thanks, {customer.name}. ]Could you give me your order number? ...
        contact_types: [track_order]    # optional: the types it suits (none: any contact)

Texts use the placeholders of templates.py ({customer.name}, {customer.<attribute>},
{last_contact.*}, [ ... ] optional parts) and {agent.name}. Unlike a customer's answer, a
customer value may stand outside [ ]: the agent reads the text before sending it, so a value
the customer lacks is left in the text as its placeholder (a gap to fill) and named in `gaps`.

Besides these, each contact type's own self-service answer from the catalog is offered for
contacts of that type (id `answer.<type>`), filled in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Mapping

from service.rules.catalog import Catalog
from service.rules.templates import check_template, personal_values, render
from service.rules.yamlfile import (
    Checker,
    LocatedDict,
    LocatedList,
    is_identifier,
    optional_rule_file,
)

MAX_TITLE_CHARS = 60
MAX_TEXT_CHARS = 2000  # an agent's message (service/agents/desk.py)
GROUPS = ("type", "any", "other")  # suits this contact's type, any contact, other types
ANSWER_PREFIX = "answer."


@dataclass(frozen=True, slots=True)
class SavedReply:
    id: str
    title: str
    text: str  # the template, placeholders unfilled
    contact_types: tuple[str, ...] = ()  # empty: suits any contact

    def group_for(self, contact_type: str | None) -> str:
        """How this reply suits a contact of `contact_type` (one of GROUPS)."""
        if not self.contact_types:
            return "any"
        return "type" if contact_type in self.contact_types else "other"


@dataclass(frozen=True)
class SavedReplies:
    replies: tuple[SavedReply, ...] = ()


NO_REPLIES = SavedReplies()


@dataclass(frozen=True, slots=True)
class FilledReply:
    """A saved reply as one contact's agent gets it: filled in for that customer and agent."""

    id: str
    title: str
    text: str
    group: str  # one of GROUPS
    contact_types: tuple[str, ...]
    gaps: tuple[str, ...]  # required placeholders this customer has no value for, left as is

    def frame(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text, "group": self.group,
                "contact_types": list(self.contact_types), "gaps": list(self.gaps)}


def load_replies(directory: Path, display_dir: str, type_ids: Collection[str]) -> SavedReplies:
    """The deployment's saved replies; none when there is no replies.yaml."""
    opened = optional_rule_file(directory, display_dir, "replies.yaml",
                                required=["replies"])
    if opened is None:
        return NO_REPLIES
    check, root = opened
    items = root["replies"]
    if not isinstance(items, LocatedList) or not items:
        check.error(root, "replies", "expected a non-empty list of replies", ("replies",))
        check.raise_if_any()
    replies: list[SavedReply] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        reply = _reply(check, items, index, item, type_ids)
        if reply is None:
            continue
        if reply.id in seen:
            check.error(item, "id", f"duplicate reply id '{reply.id}' (first at line "
                        f"{seen[reply.id]})", ("replies", index, "id"))
            continue
        seen[reply.id] = item.lines["id"]
        replies.append(reply)
    check.raise_if_any()
    return SavedReplies(tuple(replies))


def _reply(check: Checker, items: LocatedList, index: int, item: Any,
           type_ids: Collection[str]) -> SavedReply | None:
    path = ("replies", index)
    spec = check.mapping(item, items, index, path, required=["id", "title", "text"],
                         optional=["contact_types"])
    if spec is None or not {"id", "title", "text"} <= spec.keys():
        return None
    before = len(check.issues)
    reply_id, title, text = spec["id"], spec["title"], spec["text"]
    if not is_identifier(reply_id):
        check.error(spec, "id", f"reply id {reply_id!r} must be lower_snake_case, e.g. "
                    "ask_order_number", (*path, "id"))
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
        check.error(spec, "title", f"title must be text of 1 to {MAX_TITLE_CHARS} characters",
                    (*path, "title"))
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
        check.error(spec, "text", f"text must be 1 to {MAX_TEXT_CHARS} characters",
                    (*path, "text"))
    else:
        check_template(check, spec, "text", text, path, saved=None, for_agent=True)
    types = _contact_types(check, spec, path, type_ids)
    if len(check.issues) > before:
        return None
    return SavedReply(reply_id, title.strip(), text.strip(), types)


def _contact_types(check: Checker, spec: LocatedDict, path: tuple,
                   type_ids: Collection[str]) -> tuple[str, ...]:
    value = spec.get("contact_types", [])
    where = (*path, "contact_types")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        check.error(spec, "contact_types", "contact_types must be a list of contact type ids",
                    where)
        return ()
    for i, type_id in enumerate(value):
        if type_id not in type_ids:
            check.error(value if isinstance(value, LocatedList) else spec, i,
                        f"unknown contact type '{type_id}'", (*where, i))
    return tuple(dict.fromkeys(value))


def replies_for(saved: SavedReplies, catalog: Catalog, conv: Mapping[str, Any],
                agent_name: str, now: float) -> list[FilledReply]:
    """The replies for one contact, filled in: those for its type first (its catalog answer
    last among them), then those for any contact, then those for other types."""
    contact_type = conv.get("contact_type")
    values = {**personal_values(conv, catalog.label, now), "agent": {"name": agent_name}}
    filled = [_filled(reply.id, reply.title, reply.text, reply.group_for(contact_type),
                      reply.contact_types, values) for reply in saved.replies]
    kind = catalog.types.get(contact_type or "")
    if kind is not None and kind.answer:
        filled.append(_filled(f"{ANSWER_PREFIX}{kind.id}", f"Self-service answer: {kind.label}",
                              kind.answer, "type", (kind.id,), values))
    return sorted(filled, key=lambda reply: GROUPS.index(reply.group))  # stable: file order


def _filled(reply_id: str, title: str, template: str, group: str,
            contact_types: tuple[str, ...], values: Mapping[str, Any]) -> FilledReply:
    gaps: list[str] = []

    def gap(placeholder: str) -> str:
        gaps.append(placeholder)
        return placeholder

    text = render(template, values, gap=gap)
    return FilledReply(reply_id, title, text, group, contact_types, tuple(dict.fromkeys(gaps)))
