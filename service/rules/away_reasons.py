"""away_reasons.yaml (optional): why an agent may be away, and how long before it is flagged.

    away_reasons:
      - id: break            # snake_case, as the console's presence frame names it
        label: Break         # what the console and the supervisor view show
        limit_min: 15        # optional: the supervisor view flags an agent away longer
      - id: lunch
        label: Lunch
        limit_min: 60

No file: DEFAULT_REASONS (Break, Lunch, Meeting, Training, Other). A file of its own rather
than a key of routes.yaml: reasons are about agents, not the routing tree, and an optional file
is versioned, diffed, canaried and reloaded all or nothing with the others (loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.rules.yamlfile import Checker, LocatedList, is_identifier, optional_rule_file

FILE = "away_reasons.yaml"
MAX_LABEL_CHARS = 40
MAX_REASONS = 20
MAX_LIMIT_MIN = 24 * 60


@dataclass(frozen=True, slots=True)
class AwayReason:
    id: str
    label: str
    limit_s: int | None = None  # away longer than this is flagged; None: never

    def view(self) -> dict[str, Any]:
        """As the ready frame and /api/supervisor list it."""
        return {"id": self.id, "label": self.label,
                "limit_min": None if self.limit_s is None else self.limit_s // 60}


@dataclass(frozen=True)
class AwayReasons:
    reasons: tuple[AwayReason, ...]

    def get(self, reason_id: str | None) -> AwayReason | None:
        return next((r for r in self.reasons if r.id == reason_id), None)

    def label(self, reason_id: str | None) -> str | None:
        found = self.get(reason_id)
        return found.label if found else None

    @property
    def fallback(self) -> str | None:
        """The reason an old console's `away` (no reason) takes: `other` when listed."""
        return "other" if self.get("other") else None


DEFAULT_REASONS = AwayReasons((
    AwayReason("break", "Break", 15 * 60), AwayReason("lunch", "Lunch", 60 * 60),
    AwayReason("meeting", "Meeting"), AwayReason("training", "Training"),
    AwayReason("other", "Other")))


def load_away_reasons(directory: Path, display_dir: str) -> AwayReasons:
    """The deployment's away reasons; the defaults when there is no away_reasons.yaml."""
    opened = optional_rule_file(directory, display_dir, FILE, required=["away_reasons"])
    if opened is None:
        return DEFAULT_REASONS
    check, root = opened
    entries = root["away_reasons"]
    if not isinstance(entries, LocatedList) or not entries or len(entries) > MAX_REASONS:
        check.error(root, "away_reasons",
                    f"expected a list of 1 to {MAX_REASONS} reasons", ("away_reasons",))
        check.raise_if_any()
    reasons: list[AwayReason] = []
    for index, spec in enumerate(entries):
        reason = _reason(check, entries, index, spec)
        if reason is None:
            continue
        if any(r.id == reason.id for r in reasons):
            check.error(spec, "id", f"duplicate away reason '{reason.id}'",
                        ("away_reasons", index, "id"))
        reasons.append(reason)
    check.raise_if_any()
    return AwayReasons(tuple(reasons))


def _reason(check: Checker, entries: LocatedList, index: int, spec: Any) -> AwayReason | None:
    path = ("away_reasons", index)
    spec = check.mapping(spec, entries, index, path, required=("id", "label"),
                         optional=("limit_min",))
    if spec is None or not {"id", "label"} <= spec.keys():
        return None
    before = len(check.issues)
    if not is_identifier(spec["id"]):
        check.error(spec, "id", f"id must be snake_case (a-z, 0-9, _), not {spec['id']!r}",
                    (*path, "id"))
    label = spec["label"]
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_CHARS:
        check.error(spec, "label", f"label must be text of 1 to {MAX_LABEL_CHARS} characters",
                    (*path, "label"))
    limit = spec.get("limit_min")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or not 1 <= limit <= MAX_LIMIT_MIN):
        check.error(spec, "limit_min", f"limit_min must be a whole number of minutes from 1 "
                    f"to {MAX_LIMIT_MIN}, not {limit!r}", (*path, "limit_min"))
    if len(check.issues) > before:
        return None
    return AwayReason(spec["id"], label.strip(), None if limit is None else limit * 60)
