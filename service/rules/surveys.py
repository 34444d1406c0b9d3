"""surveys.yaml (optional): which satisfaction survey follows a contact, and how often.

    default:                    # every contact type, unless it says otherwise
      kind: csat                # csat (1-5) or nps (0-10)
      sample_rate: 1.0          # share of contacts asked, 0 to 1 (decided by the contact id)
      once_per_days: 30         # a customer is asked at most once in this many days
      answer_within_min: 60     # an answer after this is late: thanked, not counted
      after: [self_service, agent]   # resolved in self-service, wrapped up by an agent
      question: "..."           # optional: our wording instead of the default
    contact_types:
      track_order: {kind: nps}  # overrides the default, key by key
      payment_issue: {enabled: false}

No file, or no `default` and no entry for a type: that type is never surveyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Mapping

from service.infra.ids import stable_point
from service.rules.yamlfile import Checker, LocatedDict, optional_rule_file

KINDS = ("csat", "nps")
MOMENTS = ("self_service", "agent")  # self-service resolved; an agent wrapped the contact up
SETTINGS = ("kind", "sample_rate", "once_per_days", "answer_within_min", "after", "question",
            "enabled")
MAX_QUESTION_CHARS = 300


@dataclass(frozen=True, slots=True)
class SurveyRule:
    kind: str = "csat"
    sample_rate: float = 1.0
    once_per_days: int = 30
    answer_within_s: int = 3600
    after: tuple[str, ...] = MOMENTS
    question: str | None = None  # None: the prompt style's default wording
    enabled: bool = True

    def samples(self, contact_id: str) -> bool:
        """Whether this contact is in the sample: a stable hash of its id, never random."""
        return sampled(contact_id, self.sample_rate)


@dataclass(frozen=True)
class Surveys:
    default: SurveyRule | None = None
    by_type: Mapping[str, SurveyRule] = field(default_factory=dict)

    def rule_for(self, contact_type: str | None, moment: str) -> SurveyRule | None:
        """The survey a contact of this type gets at this moment, if any."""
        rule = self.by_type.get(contact_type or "", self.default)
        if rule is None or not rule.enabled or moment not in rule.after:
            return None
        return rule


NO_SURVEYS = Surveys()


def sampled(contact_id: str, rate: float) -> bool:
    """Whether the contact's stable place in [0, 1) falls under the rate."""
    return stable_point(contact_id) < rate


def load_surveys(directory: Path, display_dir: str, type_ids: Collection[str]) -> Surveys:
    """The deployment's surveys; none when there is no surveys.yaml."""
    opened = optional_rule_file(directory, display_dir, "surveys.yaml",
                                optional=["default", "contact_types"])
    if opened is None:
        return NO_SURVEYS
    check, root = opened
    default = None
    if "default" in root:
        default = _rule(check, root, "default", ("default",), SurveyRule())
    by_type = _per_type(check, root, type_ids, default or SurveyRule())
    check.raise_if_any()
    return Surveys(default, by_type)


def _per_type(check: Checker, root: LocatedDict, type_ids: Collection[str],
              base: SurveyRule) -> dict[str, SurveyRule]:
    entries = root.get("contact_types", LocatedDict())
    if not isinstance(entries, LocatedDict):
        check.error(root, "contact_types", "expected a mapping of contact types to surveys",
                    ("contact_types",))
        return {}
    rules = {}
    for type_id in entries:
        path = ("contact_types", type_id)
        if type_id not in type_ids:
            check.error(entries, type_id, f"unknown contact type '{type_id}'", path)
            continue
        rule = _rule(check, entries, type_id, path, base)
        if rule is not None:
            rules[type_id] = rule
    return rules


def _rule(check: Checker, parent: LocatedDict, key: str, path: tuple,
          base: SurveyRule) -> SurveyRule | None:
    spec = check.mapping(parent[key], parent, key, path, optional=SETTINGS)
    if spec is None:
        return None
    changes: dict[str, Any] = {}
    for name, value in spec.items():
        if name in SETTINGS:
            checked = _setting(check, spec, name, value, (*path, name))
            if checked is not None:
                changes[_field(name)] = checked
    return replace(base, **changes)


def _field(name: str) -> str:
    return "answer_within_s" if name == "answer_within_min" else name


def _setting(check: Checker, spec: LocatedDict, name: str, value: Any, path: tuple) -> Any:
    """One setting's value as the rule keeps it, or None after reporting why it is wrong."""
    if name == "kind":
        return value if value in KINDS else check.error(
            spec, name, f"kind must be one of {', '.join(KINDS)}, not {value!r}", path)
    if name == "sample_rate":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        return float(value) if ok else check.error(
            spec, name, f"sample_rate must be a number from 0 to 1, not {value!r}", path)
    if name in ("once_per_days", "answer_within_min"):
        least = 0 if name == "once_per_days" else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        scale = 60 if name == "answer_within_min" else 1
        return value * scale if ok else check.error(
            spec, name, f"{name} must be a whole number of at least {least}, not {value!r}", path)
    if name == "after":
        return _moments(check, spec, value, path)
    if name == "question":
        ok = isinstance(value, str) and value.strip() and len(value) <= MAX_QUESTION_CHARS
        return value.strip() if ok else check.error(
            spec, name, f"question must be text of 1 to {MAX_QUESTION_CHARS} characters", path)
    return value if isinstance(value, bool) else check.error(
        spec, name, f"enabled must be true or false, not {value!r}", path)


def _moments(check: Checker, spec: LocatedDict, value: Any, path: tuple) -> tuple | None:
    if not isinstance(value, list) or not value or any(m not in MOMENTS for m in value):
        check.error(spec, "after", f"after must list one or both of {', '.join(MOMENTS)}, "
                    f"not {value!r}", path)
        return None
    return tuple(dict.fromkeys(value))
