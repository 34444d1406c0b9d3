"""Masking of what customers type before anything is stored, logged or shown.

Card numbers (13 to 19 digits, spaces or dashes allowed, Luhn-checked) keep their last four
digits; a 3 or 4 digit code after a card number in the same message (a CVV) is masked too; and
each pattern a deployment configures (`redaction.yaml`) is replaced by its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from service.model import Inbound

RUN = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*(?!\d)")  # digit groups apart by one space or dash
DIGITS = re.compile(r"\d+")
CODE = re.compile(r"(?<![\d*])\d{3,4}(?![\d])")


@dataclass(frozen=True)
class Redactor:
    cards: bool = True
    patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def mask(self, text: str) -> str:
        """The text with card numbers, codes after them and configured patterns masked."""
        for name, pattern in self.patterns:
            text = pattern.sub(f"[{name}]", text)
        if self.cards:
            text = _mask_cards(text)
        return text

    def inbound(self, inbound: Inbound) -> Inbound:
        """The message as the core may keep it; the raw text stays on it, in memory only."""
        masked = self.mask(inbound.text)
        if masked == inbound.text:
            return inbound
        return replace(inbound, text=masked, unmasked=inbound.text)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _mask_cards(text: str) -> str:
    out, last, after_card = [], 0, False
    for start, end in _cards(text):
        between = text[last:start]
        out += [_mask_codes(between) if after_card else between, _mask_card(text[start:end])]
        last, after_card = end, True
    if not after_card:
        return text
    return "".join(out) + _mask_codes(text[last:])


def _cards(text: str):
    """Spans of Luhn-valid card numbers: the fewest digit groups from each group on that make
    one (so in "4111 1111 1111 1111 714" the code is never read as a 19th digit)."""
    for run in RUN.finditer(text):
        if run.end() - run.start() < 13:  # too short for a card: most messages stop here
            continue
        groups = [(g.start(), g.end(), g.group()) for g in DIGITS.finditer(run.group())]
        i = 0
        while i < len(groups):
            for j in range(i, len(groups)):
                digits = "".join(g[2] for g in groups[i:j + 1])
                if 13 <= len(digits) <= 19 and luhn_valid(digits):
                    yield run.start() + groups[i][0], run.start() + groups[j][1]
                    i = j
                    break
            i += 1


def _mask_card(number: str) -> str:
    """Every digit but the last four, separators kept: 4111 1111 1111 1111 -> **** ... 1111."""
    keep = sum(c.isdigit() for c in number) - 4
    out, seen = [], 0
    for char in number:
        if char.isdigit():
            out.append("*" if seen < keep else char)
            seen += 1
        else:
            out.append(char)
    return "".join(out)


def _mask_codes(text: str) -> str:
    return CODE.sub(lambda m: "*" * len(m.group()), text)


CARDS_ONLY = Redactor()
