"""The contact-type catalog: why customers get in touch, and the self-service path for each."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from service.rules.templates import check_template
from service.rules.yamlfile import Checker, ConfigIssue, LocatedDict, is_identifier, load_yaml
from service.understanding import encoder as transformer_encoder
from service.understanding.background import background_texts, without_examples
from service.understanding.cascade import DEFAULT_BAND, Band
from service.understanding.embeddings import BACKENDS, INSTALL_HINT, installed

DEFAULT_REPEAT_WINDOW_H = 72
ADOPTED_FILE = "data/adopted.csv"  # where `switchboard unrecognised adopt` writes examples
DEFAULT_THRESHOLD = 0.45


@dataclass(frozen=True, slots=True)
class ContactType:
    id: str
    label: str
    skills: tuple[str, ...]
    examples: tuple[str, ...]
    answer: str | None = None
    ivr_digit: int | None = None
    repeat_window_h: int = DEFAULT_REPEAT_WINDOW_H
    flow: str | None = None  # a flow of flows.yaml instead of an answer

    @property
    def agent_only(self) -> bool:
        return self.answer is None and self.flow is None


@dataclass(frozen=True)
class Catalog:
    types: dict[str, ContactType]
    threshold: float
    training: tuple[tuple[str, str], ...]  # (text, contact type): catalog examples + data files
    out_of_scope: tuple[str, ...] = ()  # none of the types: classifier.out_of_scope_data
    # none of the types either: the shipped corpus, unless classifier.background is false
    background: tuple[str, ...] = ()
    embeddings: str | None = None  # classifier.embeddings: a backend of service/embeddings.py
    # the transformer encoder's band (classifier.encoder_band); None: classifier.encoder: false
    encoder_band: Band | None = None
    # the encoder stage trains on at most this many rows a type (classifier.encoder_examples)
    encoder_examples: int | None = None
    # texts it always trains on: the types' own examples and those adopted from traffic
    hand_picked: frozenset[str] = frozenset()

    def label(self, type_id: str | None) -> str:
        return self.types[type_id].label if type_id in self.types else "Something else"


def load_catalog(directory: Path, display_dir: str,
                 flow_ids: Collection[str] | None = None) -> Catalog:
    """`flow_ids`: the flows a type may name (None: not checked, for classifier-only use)."""
    path = directory / "catalog.yaml"
    name = f"{display_dir}/catalog.yaml"
    doc = load_yaml(path, name)
    check = Checker()
    root = check.mapping(doc, doc, None, (), required=["contact_types"],
                         optional=["classifier", "training_data"])
    check.raise_if_any()
    types = _contact_types(check, root, flow_ids)
    classifier = _classifier_section(check, root)
    threshold = _threshold(check, root, classifier)
    out_of_scope = _out_of_scope_texts(check, classifier, directory, display_dir)
    embeddings = _embeddings(check, classifier)
    encoder_band = _encoder_band(check, root, classifier)
    encoder_examples = _encoder_examples(check, classifier)
    training = [(ex, t.id) for t in types.values() for ex in t.examples]
    hand_picked = {text for text, _ in training}
    files = _training_files(check, root, directory, display_dir, types)
    for rel, rows in files:
        training += rows
        if rel == ADOPTED_FILE:
            hand_picked |= {text for text, _ in rows}
    background = without_examples(background_texts(), tuple(training)) \
        if _background(check, classifier) else ()
    check.raise_if_any()
    return Catalog(types=types, threshold=threshold, training=tuple(training),
                   out_of_scope=out_of_scope, embeddings=embeddings, background=background,
                   encoder_band=encoder_band, encoder_examples=encoder_examples,
                   hand_picked=frozenset(hand_picked))


def _contact_types(check: Checker, root: LocatedDict,
                   flow_ids: Collection[str] | None) -> dict[str, ContactType]:
    entries = check.entries(root, "contact_types", "contact types")
    types: dict[str, ContactType] = {}
    digits: dict[int, str] = {}
    for type_id, spec in entries.items():
        path = ("contact_types", type_id)
        if not is_identifier(type_id):
            check.error(entries, type_id, "contact type ids are lower_snake_case", path)
        spec = check.mapping(spec, entries, type_id, path, required=["label", "skills", "examples"],
                             optional=["ivr_digit", "repeat_window_h", "self_service",
                                       "agent_only"])
        if spec is None:
            continue
        contact_type = _contact_type(check, type_id, spec, path, flow_ids)
        if contact_type.ivr_digit is not None:
            if contact_type.ivr_digit in digits:
                check.error(spec, "ivr_digit", f"ivr_digit {contact_type.ivr_digit} is already "
                            f"used by '{digits[contact_type.ivr_digit]}'", (*path, "ivr_digit"))
            digits[contact_type.ivr_digit] = type_id
        types[type_id] = contact_type
    return types


def _contact_type(check: Checker, type_id: str, spec: LocatedDict, path: tuple,
                  flow_ids: Collection[str] | None) -> ContactType:
    label = _text(check, spec, "label", path)
    skills = _text_list(check, spec, "skills", path)
    examples = _text_list(check, spec, "examples", path)
    digit = spec.get("ivr_digit")
    if digit is not None and (type(digit) is not int or not 1 <= digit <= 9):
        check.error(spec, "ivr_digit", "ivr_digit must be a whole number from 1 to 9 "
                    "(0 is reserved for 'talk to a person')", (*path, "ivr_digit"))
        digit = None
    window = spec.get("repeat_window_h", DEFAULT_REPEAT_WINDOW_H)
    if type(window) is not int or window <= 0:
        check.error(spec, "repeat_window_h", "repeat_window_h must be a positive number of hours",
                    (*path, "repeat_window_h"))
        window = DEFAULT_REPEAT_WINDOW_H
    return ContactType(id=type_id, label=label, skills=tuple(skills), examples=tuple(examples),
                       ivr_digit=digit, repeat_window_h=window,
                       **_self_service(check, spec, path, flow_ids))


def _self_service(check: Checker, spec: LocatedDict, path: tuple,
                  flow_ids: Collection[str] | None) -> dict[str, str | None]:
    """The type's `answer` or `flow`, or neither for an agent-only type."""
    has_self_service, agent_only = "self_service" in spec, spec.get("agent_only", False)
    if agent_only not in (True, False):
        check.error(spec, "agent_only", "agent_only must be true or false", (*path, "agent_only"))
    if has_self_service == bool(agent_only):
        check.error(spec, None, "give exactly one of 'self_service' or 'agent_only: true'", path)
        return {}
    if not has_self_service:
        return {}
    where = (*path, "self_service")
    ss = check.mapping(spec["self_service"], spec, "self_service", where,
                       optional=["answer", "flow"])
    if ss is None:
        return {}
    if ("answer" in ss) == ("flow" in ss):
        check.error(spec, "self_service", "self_service has exactly one of 'answer' or 'flow'",
                    where)
        return {}
    if "answer" in ss:
        answer = _text(check, ss, "answer", where)
        check_template(check, ss, "answer", answer, where, saved=None)
        return {"answer": answer}
    flow = ss["flow"]
    if flow_ids is not None and flow not in flow_ids:
        check.error(ss, "flow", f"unknown flow '{flow}' (flows.yaml defines: "
                    f"{', '.join(sorted(flow_ids)) or 'none'})", (*where, "flow"))
    return {"flow": str(flow)}


def _text(check: Checker, spec: LocatedDict, key: str, path: tuple) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip():
        check.error(spec, key, f"'{key}' must be non-empty text", (*path, key))
        return ""
    return value.strip()


def _text_list(check: Checker, spec: LocatedDict, key: str, path: tuple) -> list[str]:
    value = spec.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip()
                                                           for v in value):
        check.error(spec, key, f"'{key}' must be a non-empty list of text", (*path, key))
        return []
    return [v.strip() for v in value]


def _classifier_section(check: Checker, root: LocatedDict) -> LocatedDict | None:
    section = root.get("classifier")
    if section is None:
        return None
    return check.mapping(section, root, "classifier", ("classifier",),
                         optional=["threshold", "out_of_scope_data", "embeddings",
                                   "background", "encoder", "encoder_band",
                                   "encoder_examples"])


def _background(check: Checker, section: LocatedDict | None) -> bool:
    """classifier.background: train against the shipped out-of-scope corpus (default)."""
    value = (section or {}).get("background", True)
    if not isinstance(value, bool):
        check.error(section, "background", "background must be true or false",
                    ("classifier", "background"))
        return True
    return value


def _encoder_band(check: Checker, root: LocatedDict, section: LocatedDict | None
                  ) -> Band | None:
    """classifier.encoder (on by default) and its band, classifier.encoder_band: [low, high]."""
    if section is None:
        section = root  # no classifier section: the defaults, and errors at the top
    enabled = section.get("encoder", True)
    if not isinstance(enabled, bool):
        check.error(section, "encoder", "encoder must be true or false", ("classifier", "encoder"))
        return None
    band = _band(check, section)
    if not enabled:
        return None
    if not transformer_encoder.installed():
        check.error(section, "encoder" if "encoder" in section else "encoder_band",
                    f"the transformer encoder is on (classifier.encoder, default true) but its "
                    f"model package is not installed; {transformer_encoder.INSTALL_HINT}, or "
                    f"set classifier.encoder: false", ("classifier", "encoder"))
    return band


def _encoder_examples(check: Checker, section: LocatedDict | None) -> int | None:
    """classifier.encoder_examples: at most this many training rows a type for the encoder
    stage (fewer texts to encode on a first load); absent: every row."""
    value = (section or {}).get("encoder_examples")
    if value is None:
        return None
    if type(value) is not int or value < 1:
        check.error(section, "encoder_examples", "encoder_examples must be a whole number of "
                    "rows a type, at least 1", ("classifier", "encoder_examples"))
        return None
    return value


def _band(check: Checker, section: LocatedDict | dict) -> Band:
    value = section.get("encoder_band", list(DEFAULT_BAND))
    numbers = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not numbers or not 0 <= value[0] < value[1] <= 1:
        check.error(section, "encoder_band", "encoder_band must be [low, high] with "
                    "0 <= low < high <= 1", ("classifier", "encoder_band"))
        return DEFAULT_BAND
    return float(value[0]), float(value[1])


def _embeddings(check: Checker, section: LocatedDict | None) -> str | None:
    name = (section or {}).get("embeddings")
    if name is None:
        return None
    path = ("classifier", "embeddings")
    if name not in BACKENDS:
        check.error(section, "embeddings", f"unknown embeddings {name!r} (known: "
                    f"{', '.join(BACKENDS)})", path)
    elif not installed(name):
        check.error(section, "embeddings", f"embeddings {name!r} are not installed; "
                    f"{INSTALL_HINT}", path)
    return name


def _threshold(check: Checker, root: LocatedDict, section: LocatedDict | None) -> float:
    value = (section or {}).get("threshold", DEFAULT_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        check.error(section or root, "threshold", "threshold must be a number between 0 and 1",
                    ("classifier", "threshold"))
        return DEFAULT_THRESHOLD
    return float(value)


def _out_of_scope_texts(check: Checker, section: LocatedDict | None, directory: Path,
                        display_dir: str) -> tuple[str, ...]:
    """Texts of CSV files (column `text`) that are none of the contact types."""
    files = (section or {}).get("out_of_scope_data", [])
    key = ("classifier", "out_of_scope_data")
    if not isinstance(files, list):
        check.error(section, "out_of_scope_data", "expected a list of CSV files", key)
        return ()
    texts: list[str] = []
    for index, rel in enumerate(files):
        if not isinstance(rel, str) or not (directory / rel).is_file():
            check.error(files, index, f"out-of-scope file '{rel}' does not exist", (*key, index))
            continue
        texts += _csv_texts(check, directory / rel, f"{display_dir}/{rel}")
    return tuple(texts)


def _csv_texts(check: Checker, path: Path, name: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            check.issues.append(ConfigIssue(name, 1, "expected a column text"))
            return []
        return [row["text"] for row in reader if row["text"].strip()]


def _training_files(check: Checker, root: LocatedDict, directory: Path, display_dir: str,
                    types: dict[str, ContactType]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each listed file and its rows."""
    files = root.get("training_data", [])
    if not isinstance(files, list):
        check.error(root, "training_data", "expected a list of CSV files", ("training_data",))
        return []
    read: list[tuple[str, list[tuple[str, str]]]] = []
    for index, rel in enumerate(files):
        path = ("training_data", index)
        if not isinstance(rel, str) or not (directory / rel).is_file():
            check.error(files, index, f"training file '{rel}' does not exist", path)
            continue
        read.append((rel, read_training_csv(check, directory / rel, f"{display_dir}/{rel}",
                                            types)))
    return read


def read_training_csv(check: Checker, path: Path, name: str,
                      types: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of a `text,contact_type` file; unknown types are reported with their line."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"text", "contact_type"} <= set(reader.fieldnames):
            check.issues.append(ConfigIssue(name, 1, "expected the columns text,contact_type"))
            return []
        for row in reader:
            label = row["contact_type"]
            if label not in types:
                check.issues.append(ConfigIssue(
                    name, reader.line_num, f"unknown contact type '{label}'"))
                continue
            rows.append((row["text"], label))
    return rows
