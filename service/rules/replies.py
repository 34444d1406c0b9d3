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

    templates:                          # optional: message templates the provider approved
      - id: follow_up                   # lower_snake_case, unique among templates
        title: Follow up the next day   # what the agent's list shows (at most 60 characters)
        channel_trait: templates_after_window   # the ChannelTraits flag of the channels it is for
        content_sid: HX0123...          # the provider's reference: HX and 32 hex digits
        text: Hi {{1}}, this is {{2}}.  # the approved text, {{n}} its numbered variables
        variables:                      # what fills each {{n}}: placeholders as above
          "1": "{customer.name}"
          "2": "{agent.name}"

A template is sent as it was approved, never edited: every variable must be filled from the
contact, so a value the customer lacks is a gap that refuses the send (named in `gaps`).
Templates live beside saved replies because they are the same thing to an agent (canned
words filled in for the contact, picked from one panel) with the same values and checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

from service.model import TEMPLATE_TRAITS
from service.rules.catalog import Catalog
from service.rules.templates import PLACEHOLDER, check_template, personal_values, render
from service.rules.yamlfile import (
    Checker,
    LocatedDict,
    LocatedList,
    is_identifier,
    optional_rule_file,
)

MAX_TITLE_CHARS = 60
MAX_TEXT_CHARS = 2000  # an agent's message (service/agents/desk.py)
MAX_TEMPLATE_CHARS = 1024  # the providers' limit on an approved template's body
GROUPS = ("type", "any", "other")  # suits this contact's type, any contact, other types
ANSWER_PREFIX = "answer."
CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")  # Twilio Content API template id
VARIABLE = re.compile(r"\{\{(\d{1,2})\}\}")  # an approved text's numbered variable


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


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """A message template the provider approved, sent as is with its variables filled."""
    id: str
    title: str
    channel_trait: str  # one of TEMPLATE_TRAITS: the channels whose traits have it
    ref: str  # the provider's reference (a ContentSid)
    text: str  # the approved text, {{n}} its variables
    variables: tuple[tuple[str, str], ...]  # (n, what fills it: placeholders of templates.py)


@dataclass(frozen=True)
class SavedReplies:
    replies: tuple[SavedReply, ...] = ()
    templates: tuple[MessageTemplate, ...] = ()

    def template(self, template_id: str) -> MessageTemplate | None:
        """The template with this id, if any."""
        return next((t for t in self.templates if t.id == template_id), None)


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


@dataclass(frozen=True, slots=True)
class FilledTemplate:
    """A message template as one contact's agent gets it: its variables filled for them."""

    id: str
    title: str
    text: str  # the approved text with the values in (a gap: its placeholder)
    variables: tuple[tuple[str, str], ...]  # (n, value) as the provider gets them
    gaps: tuple[str, ...]  # placeholders this customer has no value for: it cannot be sent

    def frame(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text,
                "gaps": list(self.gaps)}


def load_replies(directory: Path, display_dir: str, type_ids: Collection[str]) -> SavedReplies:
    """The deployment's saved replies and message templates; none without replies.yaml."""
    opened = optional_rule_file(directory, display_dir, "replies.yaml",
                                optional=["replies", "templates"])
    if opened is None:
        return NO_REPLIES
    check, root = opened
    if not root.keys():
        check.error(root, None, "replies.yaml needs `replies`, `templates` or both", ())
    templates = _listed(check, root, "templates", ("template", "message templates"),
                        lambda items, index, item: _template(check, items, index, item))
    replies = _listed(check, root, "replies", ("reply", "replies"),
                      lambda items, index, item: _reply(check, items, index, item, type_ids))
    check.raise_if_any()
    return SavedReplies(replies, templates)


def _listed(check: Checker, root: LocatedDict, key: str, nouns: tuple[str, str],
            build: Callable[[LocatedList, int, Any], Any]) -> tuple[Any, ...]:
    """The items of the `key` list, each built by `build` (None: refused), ids unique."""
    if key not in root:
        return ()
    items = root[key]
    one, many = nouns  # "duplicate <one> id", "a non-empty list of <many>"
    if not isinstance(items, LocatedList) or not items:
        check.error(root, key, f"expected a non-empty list of {many}", (key,))
        return ()
    found: list[Any] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        built = build(items, index, item)
        if built is None:
            continue
        if built.id in seen:
            check.error(item, "id", f"duplicate {one} id '{built.id}' (first at line "
                        f"{seen[built.id]})", (key, index, "id"))
            continue
        seen[built.id] = item.lines["id"]
        found.append(built)
    return tuple(found)


def _template(check: Checker, items: LocatedList, index: int,
              item: Any) -> MessageTemplate | None:
    path = ("templates", index)
    needed = ["id", "title", "channel_trait", "content_sid", "text"]
    spec = check.mapping(item, items, index, path, required=needed, optional=["variables"])
    if spec is None or not set(needed) <= spec.keys():
        return None
    before = len(check.issues)
    template_id, title, trait = spec["id"], spec["title"], spec["channel_trait"]
    ref, text = spec["content_sid"], spec["text"]
    if not is_identifier(template_id):
        check.error(spec, "id", f"template id {template_id!r} must be lower_snake_case, e.g. "
                    "follow_up", (*path, "id"))
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE_CHARS:
        check.error(spec, "title", f"title must be text of 1 to {MAX_TITLE_CHARS} characters",
                    (*path, "title"))
    if trait not in TEMPLATE_TRAITS:
        check.error(spec, "channel_trait", f"unknown channel trait {trait!r}: templates apply "
                    f"to channels with {', '.join(TEMPLATE_TRAITS)}", (*path, "channel_trait"))
    if not isinstance(ref, str) or not CONTENT_SID.fullmatch(ref):
        check.error(spec, "content_sid", f"content_sid {ref!r} is not a Content API template "
                    "id: HX and 32 hex digits, as the provider's console shows it",
                    (*path, "content_sid"))
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEMPLATE_CHARS:
        check.error(spec, "text", f"text must be the approved text, 1 to {MAX_TEMPLATE_CHARS} "
                    "characters", (*path, "text"))
        return None
    variables = _variables(check, spec, path, text)
    if len(check.issues) > before:
        return None
    return MessageTemplate(template_id, title.strip(), trait, ref, text.strip(), variables)


def _variables(check: Checker, spec: LocatedDict, path: tuple,
               text: str) -> tuple[tuple[str, str], ...]:
    """Each numbered variable of the text with what fills it; every one filled, none extra."""
    used = list(dict.fromkeys(VARIABLE.findall(text)))
    where = (*path, "variables")
    given = spec.get("variables", LocatedDict())
    if not isinstance(given, LocatedDict):
        check.error(spec, "variables", "variables must map each {{n}} of the text to what "
                    "fills it, e.g. \"1\": \"{customer.name}\"", where)
        return ()
    fillers: dict[str, str] = {}
    for key, filler in given.items():
        number = str(key)
        if number not in used:
            check.error(given, key, f"the text has no {{{{{number}}}}} for this variable to "
                        "fill", (*where, key))
        elif not isinstance(filler, str) or not PLACEHOLDER.search(filler):
            check.error(given, key, f"{{{{{number}}}}} must be filled from the contact: write "
                        "a placeholder such as {customer.name} or {agent.name} (fixed words "
                        "belong in the approved text)", (*where, key))
        else:
            check_template(check, given, key, filler, where, saved=None, for_agent=True)
            fillers[number] = filler.strip()
    for number in used:
        if number not in fillers and number not in {str(k) for k in given}:
            check.error(spec, "text" if "variables" not in spec else "variables",
                        f"{{{{{number}}}}} of the text is not filled: add `'{number}': "
                        "'{customer.name}'` (or another placeholder) under variables",
                        where)
    return tuple((number, fillers[number]) for number in used if number in fillers)


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
    values = agent_values(catalog, conv, agent_name, now)
    filled = [_filled(reply.id, reply.title, reply.text, reply.group_for(contact_type),
                      reply.contact_types, values) for reply in saved.replies]
    kind = catalog.types.get(contact_type or "")
    if kind is not None and kind.answer:
        filled.append(_filled(f"{ANSWER_PREFIX}{kind.id}", _answer_title(kind.label),
                              kind.answer, "type", (kind.id,), values))
    return sorted(filled, key=lambda reply: GROUPS.index(reply.group))  # stable: file order


def _answer_title(label: str) -> str:
    return f"Self-service answer: {label}"


def reply_titles(saved: SavedReplies, catalog: Catalog) -> dict[str, str]:
    """Every saved reply's id and title: replies.yaml's, then each type's catalog answer."""
    titles = {reply.id: reply.title for reply in saved.replies}
    titles.update({f"{ANSWER_PREFIX}{kind.id}": _answer_title(kind.label)
                   for kind in catalog.types.values() if kind.answer})
    return titles


def edited(sent: str, filled: str) -> bool:
    """Whether an agent changed a saved reply's words before sending it (spacing aside)."""
    return sent.split() != filled.split()


def agent_values(catalog: Catalog, conv: Mapping[str, Any], agent_name: str,
                 now: float) -> dict[str, Any]:
    """What an agent's replies and templates are filled with: the customer's values and the
    agent's name."""
    return {**personal_values(conv, catalog.label, now), "agent": {"name": agent_name}}


def _filled(reply_id: str, title: str, template: str, group: str,
            contact_types: tuple[str, ...], values: Mapping[str, Any]) -> FilledReply:
    gaps: list[str] = []

    def gap(placeholder: str) -> str:
        gaps.append(placeholder)
        return placeholder

    text = render(template, values, gap=gap)
    return FilledReply(reply_id, title, text, group, contact_types, tuple(dict.fromkeys(gaps)))


def templates_for(saved: SavedReplies, catalog: Catalog, conv: Mapping[str, Any],
                  agent_name: str, now: float, has_trait: Callable[[str], bool]
                  ) -> list[FilledTemplate]:
    """The message templates for one contact, filled in: those whose channel trait the
    contact's channel has (`has_trait`), in file order."""
    values = agent_values(catalog, conv, agent_name, now)
    return [fill_template(template, values) for template in saved.templates
            if has_trait(template.channel_trait)]


def fill_template(template: MessageTemplate, values: Mapping[str, Any]) -> FilledTemplate:
    """The template's variables from `values`; a value missing (or empty) is a gap."""
    gaps: list[str] = []

    def gap(placeholder: str) -> str:
        gaps.append(placeholder)
        return placeholder

    filled: dict[str, str] = {}
    for number, filler in template.variables:
        before = len(gaps)
        value = render(filler, values, gap=gap)
        if not value.strip() and len(gaps) == before:
            value = gap(filler)  # Twilio refuses an empty variable
        filled[number] = value
    text = VARIABLE.sub(lambda m: filled.get(m[1], m[0]), template.text)
    return FilledTemplate(template.id, template.title, text, tuple(filled.items()),
                          tuple(dict.fromkeys(gaps)))
