"""redaction.yaml (optional): what is masked in customers' messages besides card numbers.

    card_numbers: true          # the default; false turns card masking off
    patterns:                   # name: regular expression; each match becomes [name]
      member_id: 'M-\\d{8}'
"""

from __future__ import annotations

import re
from pathlib import Path

from service.conversations.redaction import CARDS_ONLY, Redactor
from service.rules.yamlfile import Checker, LocatedDict, is_identifier, optional_rule_file


def load_redaction(directory: Path, display_dir: str) -> Redactor:
    """The deployment's Redactor; card numbers only when there is no redaction.yaml."""
    opened = optional_rule_file(directory, display_dir, "redaction.yaml",
                                optional=["card_numbers", "patterns"])
    if opened is None:
        return CARDS_ONLY
    check, root = opened
    cards = root.get("card_numbers", True)
    if not isinstance(cards, bool):
        check.error(root, "card_numbers", "card_numbers must be true or false", ("card_numbers",))
    patterns = _patterns(check, root)
    check.raise_if_any()
    return Redactor(cards=cards, patterns=patterns)


def _patterns(check: Checker, root: LocatedDict) -> tuple[tuple[str, re.Pattern[str]], ...]:
    entries = root.get("patterns", LocatedDict())
    if not isinstance(entries, LocatedDict):
        check.error(root, "patterns", "expected a mapping of names to regular expressions",
                    ("patterns",))
        return ()
    patterns = []
    for name, raw in entries.items():
        path = ("patterns", name)
        if not is_identifier(name):
            check.error(entries, name, "pattern names are lower_snake_case", path)
        if not isinstance(raw, str) or not raw:
            check.error(entries, name, "expected a regular expression (quoted text)", path)
            continue
        try:
            pattern = re.compile(raw)
        except re.error as exc:
            check.error(entries, name, f"not a valid regular expression: {exc}", path)
            continue
        if pattern.fullmatch(""):
            check.error(entries, name, "the pattern matches empty text", path)
            continue
        patterns.append((name, pattern))
    return tuple(patterns)
