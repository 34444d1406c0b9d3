"""experiments.yaml (optional): two or more variants (arms) of one contact type's self-service.

    experiments:
      delivery_wording:                 # the experiment's name, lower_snake_case
        contact_type: delivery_options  # one experiment per contact type
        control: catalog                # the arm the others are judged against (default: first)
        min_contacts: 30                # per arm, before a verdict (default 30)
        arms:
          catalog: {}                   # the catalog's own self-service, unchanged
          short:
            answer: "..."               # this wording instead of the catalog's answer
          guided:
            flow: refund_status         # a flow of flows.yaml instead
          person:
            agent: true                 # straight to an agent (reason code `experiment`)
            weight: 1                   # share of customers, relative to the others (default 1)

A customer is kept in one arm by a stable hash of the customer id and the experiment name, so
the same customer gets the same arm on every channel and every contact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

from service.infra.ids import stable_point
from service.rules.yamlfile import Checker, LocatedDict, is_identifier, optional_rule_file

ARM_KEYS = ("answer", "flow", "agent", "weight")
DEFAULT_MIN_CONTACTS = 30
MAX_ANSWER_CHARS = 1600
ESCALATION_REASON = "experiment"


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    answer: str | None = None  # instead of the catalog's self-service
    flow: str | None = None
    agent: bool = False  # straight to an agent
    weight: float = 1.0

    @property
    def treatment(self) -> str:
        """What the arm does, in a word: answer, flow, agent or catalog (unchanged)."""
        return "answer" if self.answer else "flow" if self.flow else \
            "agent" if self.agent else "catalog"


@dataclass(frozen=True)
class Experiment:
    name: str
    contact_type: str
    arms: tuple[Arm, ...]
    control: str
    min_contacts: int = DEFAULT_MIN_CONTACTS

    def arm_of(self, customer_id: str) -> Arm:
        """The customer's arm: a stable hash of customer id and experiment name, by weight."""
        point = stable_point(f"{customer_id}:{self.name}") * sum(a.weight for a in self.arms)
        for arm in self.arms:
            point -= arm.weight
            if point < 0:
                return arm
        return self.arms[-1]


@dataclass(frozen=True)
class Experiments:
    by_type: Mapping[str, Experiment] = field(default_factory=dict)

    def for_type(self, contact_type: str | None) -> Experiment | None:
        return self.by_type.get(contact_type or "")

    def named(self, name: str) -> Experiment | None:
        return next((e for e in self.by_type.values() if e.name == name), None)


NO_EXPERIMENTS = Experiments()


def load_experiments(directory: Path, display_dir: str, type_ids: Collection[str],
                     flow_ids: Collection[str]) -> Experiments:
    """The deployment's experiments; none when there is no experiments.yaml."""
    opened = optional_rule_file(directory, display_dir, "experiments.yaml",
                                required=["experiments"])
    if opened is None:
        return NO_EXPERIMENTS
    check, root = opened
    entries = check.entries(root, "experiments", "experiments")
    by_type: dict[str, Experiment] = {}
    for name, spec in entries.items():
        experiment = _experiment(check, entries, name, spec, type_ids, flow_ids)
        if experiment is None:
            continue
        if experiment.contact_type in by_type:
            check.error(spec, "contact_type", f"contact type '{experiment.contact_type}' is "
                        f"already in experiment '{by_type[experiment.contact_type].name}'",
                        ("experiments", name, "contact_type"))
            continue
        by_type[experiment.contact_type] = experiment
    check.raise_if_any()
    return Experiments(by_type)


def _experiment(check: Checker, entries: LocatedDict, name: str, raw: Any,
                type_ids: Collection[str], flow_ids: Collection[str]) -> Experiment | None:
    path = ("experiments", name)
    if not is_identifier(name):
        check.error(entries, name, "experiment names are lower_snake_case", path)
    spec = check.mapping(raw, entries, name, path, required=["contact_type", "arms"],
                         optional=["control", "min_contacts"])
    if spec is None or not {"contact_type", "arms"} <= spec.keys():
        return None
    contact_type = spec["contact_type"]
    if not isinstance(contact_type, str) or contact_type not in type_ids:
        check.error(spec, "contact_type", f"unknown contact type {contact_type!r}",
                    (*path, "contact_type"))
    arms = _arms(check, spec, path, flow_ids)
    control = spec.get("control", arms[0].name if arms else None)
    if arms and not (isinstance(control, str) and control in {a.name for a in arms}):
        check.error(spec, "control", f"control must name one of the arms "
                    f"({', '.join(a.name for a in arms)}), not {control!r}", (*path, "control"))
    least = spec.get("min_contacts", DEFAULT_MIN_CONTACTS)
    if not isinstance(least, int) or isinstance(least, bool) or least < 1:
        check.error(spec, "min_contacts", f"min_contacts must be a whole number of at least 1, "
                    f"not {least!r}", (*path, "min_contacts"))
    if len(arms) < 2 or not isinstance(contact_type, str) or contact_type not in type_ids:
        return None
    return Experiment(name, contact_type, tuple(arms), str(control),
                      least if isinstance(least, int) else DEFAULT_MIN_CONTACTS)


def _arms(check: Checker, spec: LocatedDict, path: tuple,
          flow_ids: Collection[str]) -> list[Arm]:
    raw = spec["arms"]
    if not isinstance(raw, LocatedDict) or len(raw) < 2:
        check.error(spec, "arms", "expected a mapping of two or more arms", (*path, "arms"))
        return []
    arms = []
    for name, arm_spec in raw.items():
        where = (*path, "arms", name)
        if not is_identifier(name):
            check.error(raw, name, "arm names are lower_snake_case", where)
        arm = _arm(check, raw, name, arm_spec, where, flow_ids)
        if arm is not None:
            arms.append(arm)
    return arms if len(arms) == len(raw) else []


def _arm(check: Checker, parent: LocatedDict, name: str, raw: Any, path: tuple,
         flow_ids: Collection[str]) -> Arm | None:
    spec = check.mapping(raw, parent, name, path, optional=ARM_KEYS)
    if spec is None:
        return None
    problems = len(check.issues)
    if sum(key in spec for key in ("answer", "flow", "agent")) > 1:
        check.error(parent, name, "an arm has at most one of 'answer', 'flow' or 'agent'", path)
    answer, flow, agent = spec.get("answer"), spec.get("flow"), spec.get("agent", False)
    if "answer" in spec and not (isinstance(answer, str) and answer.strip()
                                 and len(answer) <= MAX_ANSWER_CHARS):
        check.error(spec, "answer", f"answer must be text of 1 to {MAX_ANSWER_CHARS} "
                    "characters", (*path, "answer"))
    if "flow" in spec and not (isinstance(flow, str) and flow in flow_ids):
        check.error(spec, "flow", f"unknown flow {flow!r} (flows.yaml defines: "
                    f"{', '.join(sorted(flow_ids)) or 'none'})", (*path, "flow"))
    if "agent" in spec and agent is not True:
        check.error(spec, "agent", f"agent must be true (leave it out otherwise), not {agent!r}",
                    (*path, "agent"))
    weight = spec.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        check.error(spec, "weight", f"weight must be a number above 0, not {weight!r}",
                    (*path, "weight"))
    if len(check.issues) > problems:
        return None
    return Arm(name, answer.strip() if answer else None, str(flow) if flow else None,
               agent is True, float(weight))
