"""Messages of real traffic written into a rules directory as training examples.

`adopt` adds texts as examples of an existing contact type, in a training-data file the
catalog lists (`data/adopted.csv`, added under `training_data` if it is not there), or seeds a
new contact type: a stub in `catalog.yaml` (agent only, the first examples inline) and the
rest in the same file. `catalog.yaml` is edited as text, at the end of the list or mapping
concerned, so its comments and layout stay. The result is checked as `rules check` would
before anything is written; the next reload picks it up.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from service.rules.catalog import ADOPTED_FILE, Catalog
from service.rules.loader import Rules, load_rules
from service.rules.yamlfile import ConfigError, is_identifier
from service.understanding.clusters import normal

INLINE_EXAMPLES = 5  # a new type's stub shows this many; the rest go to the file
TOP_LEVEL_KEY = re.compile(r"^[^\s#-][^:]*:")
PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]*$")


class AdoptError(Exception):
    """Bad input or a rules directory that cannot take the change; nothing was written."""


@dataclass(frozen=True)
class Adoption:
    contact_type: str
    new_type: bool
    added: tuple[str, ...]  # texts written as examples
    already_known: int  # texts that were examples of the type already
    files: tuple[str, ...]  # the files changed, relative to the rules directory


def adopt(directory: Path, texts: Sequence[str], type_id: str, *, new: bool = False,
          label: str | None = None, skills: Sequence[str] = ()) -> Adoption:
    """Write `texts` as examples of `type_id` (a new type's stub with `new`) into the rules in
    `directory`, after checking the result; AdoptError, changing nothing, when it cannot."""
    rules = _current_rules(directory)
    _check_type(rules.catalog, type_id, new)
    known = {normal(t) for t, label_ in rules.catalog.training if label_ == type_id}
    distinct: dict[str, str] = {}
    for text in texts:
        if text.strip():
            distinct.setdefault(normal(text), text.strip())
    fresh = [text for key, text in distinct.items() if key not in known]
    if not fresh:
        raise AdoptError(f"every message of the cluster is already an example of '{type_id}'; "
                         "nothing to add")
    catalog_text = (directory / "catalog.yaml").read_text(encoding="utf-8")
    inline, to_file = (fresh[:INLINE_EXAMPLES], fresh[INLINE_EXAMPLES:]) if new else ([], fresh)
    if new:
        catalog_text = add_contact_type(catalog_text, type_id, label or _humanised(type_id),
                                        list(skills) or _default_skills(rules), inline)
    changed = {"catalog.yaml": catalog_text}
    if to_file:
        changed["catalog.yaml"] = add_training_file(changed["catalog.yaml"], ADOPTED_FILE)
        changed[ADOPTED_FILE] = _with_rows(directory / ADOPTED_FILE, to_file, type_id)
    changed = {name: text for name, text in changed.items()
               if not (directory / name).exists()
               or (directory / name).read_text(encoding="utf-8") != text}
    _check_result(directory, changed)
    _write(directory, changed)
    return Adoption(type_id, new, tuple(fresh), len(distinct) - len(fresh),
                    tuple(sorted(changed)))


def _current_rules(directory: Path) -> Rules:
    if not (directory / "catalog.yaml").is_file():
        raise AdoptError(f"{directory} is not a rules directory (no catalog.yaml in it)")
    try:
        return load_rules(directory, with_classifier=False)
    except ConfigError as exc:
        raise AdoptError(f"the rules in {directory} are invalid already; fix them first:\n"
                         f"{exc}") from None


def _check_type(catalog: Catalog, type_id: str, new: bool) -> None:
    if new and type_id in catalog.types:
        raise AdoptError(f"contact type '{type_id}' exists already; leave out --new to add "
                         "the messages to it")
    if new and not is_identifier(type_id):
        raise AdoptError(f"'{type_id}' cannot be a contact type id: ids are lower_snake_case")
    if not new and type_id not in catalog.types:
        raise AdoptError(f"unknown contact type '{type_id}' (the catalog has: "
                         f"{', '.join(sorted(catalog.types))}); add --new to create it")


def _default_skills(rules: Rules) -> list[str]:
    """The default queue's skills: agents who take any contact can take the new type."""
    skills = list(rules.tree.queues[rules.tree.root.settings.queue].skills)
    if not skills:
        raise AdoptError("the default queue names no skills; give the new type's with --skill")
    return skills


def _humanised(type_id: str) -> str:
    return type_id.replace("_", " ").capitalize()


def add_training_file(text: str, relative: str) -> str:
    """`catalog.yaml` with `relative` at the end of its `training_data` list (the list added
    at the end when there is none); unchanged when it is listed already."""
    lines = text.splitlines(keepends=True)
    start = _key_line(lines, "training_data")
    entry = f"{relative}  # messages adopted from unrecognised traffic\n"
    if start is None:
        return _ended(text) + f"training_data:\n  - {entry}"
    if lines[start].split(":", 1)[1].split("#")[0].strip():
        raise AdoptError("catalog.yaml's training_data is not a block list (one '- file' a "
                         f"line); add '- {relative}' to it yourself and adopt again")
    items = [i for i in _block(lines, start) if lines[i].lstrip().startswith("- ")]
    if any(lines[i].lstrip()[2:].split("#")[0].strip().strip("'\"") == relative
           for i in items):
        return text
    indent = _indent(lines[items[-1]]) if items else "  "
    at = (items[-1] + 1) if items else start + 1
    return "".join([*lines[:at], f"{indent}- {entry}", *lines[at:]])


def add_contact_type(text: str, type_id: str, label: str, skills: Sequence[str],
                     examples: Sequence[str]) -> str:
    """`catalog.yaml` with a new agent-only type at the end of `contact_types`."""
    lines = text.splitlines(keepends=True)
    start = _key_line(lines, "contact_types")
    if start is None:
        raise AdoptError("catalog.yaml has no contact_types mapping to add the type to")
    body = [i for i in _block(lines, start)
            if lines[i].strip() and not lines[i].lstrip().startswith("#")]
    indent = _indent(lines[body[0]]) if body else "  "
    inner = indent + "  "
    stub = [f"\n{indent}{type_id}:\n", f"{inner}label: {json.dumps(label)}\n",
            f"{inner}skills: [{', '.join(map(_scalar, skills))}]\n",
            f"{inner}agent_only: true  # from unrecognised traffic: give it an answer or a "
            "flow when ready\n", f"{inner}examples:\n",
            *(f"{inner}  - {json.dumps(e, ensure_ascii=False)}\n" for e in examples)]
    at = (body[-1] + 1) if body else start + 1
    head = lines[:at]
    if head and not head[-1].endswith("\n"):
        head[-1] += "\n"
    return "".join([*head, *stub, *lines[at:]])


def _scalar(text: str) -> str:
    """A flow-list item as written by hand when plain, quoted when YAML would misread it."""
    return text if PLAIN.match(text) else json.dumps(text, ensure_ascii=False)


def _key_line(lines: list[str], key: str) -> int | None:
    return next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)


def _block(lines: list[str], start: int) -> list[int]:
    """The line numbers under a top-level key, up to the next top-level key."""
    end = next((i for i in range(start + 1, len(lines)) if TOP_LEVEL_KEY.match(lines[i])),
               len(lines))
    return list(range(start + 1, end))


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _with_rows(path: Path, texts: Sequence[str], type_id: str) -> str:
    """The training file with rows added (a new file gets the header)."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if not existing:
        writer.writerow(["text", "contact_type"])
    writer.writerows([t, type_id] for t in texts)
    return _ended(existing) + out.getvalue() if existing else out.getvalue()


def _check_result(directory: Path, changed: dict[str, str]) -> None:
    """The rules as they would be, checked in a copy (without training the classifier)."""
    with tempfile.TemporaryDirectory(prefix="switchboard-adopt-") as scratch:
        copy = Path(scratch) / "rules"
        shutil.copytree(directory, copy, symlinks=True)
        for name, content in changed.items():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_text(content, encoding="utf-8")
        try:
            load_rules(copy, with_classifier=False)
        except ConfigError as exc:
            raise AdoptError("the change would leave the rules invalid, so nothing was "
                             f"written:\n{exc}") from None


def _write(directory: Path, changed: dict[str, str]) -> None:
    """Data files first, catalog last: a catalog never lists a file that is not there."""
    for name in sorted(changed, key=lambda n: n == "catalog.yaml"):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.adopting")
        temporary.write_text(changed[name], encoding="utf-8")
        os.replace(temporary, path)
