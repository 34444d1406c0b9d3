"""Strict YAML loading that remembers the file and line of every node.

Errors read like Home Assistant's: `routing_rules/routes.yaml:37: unknown contact type
'biling' (route -> routes -> 2 -> matchers -> 0)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")


def is_identifier(value: object) -> bool:
    """True for the names rule files give things (types, flows, replies...): snake_case."""
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


class LocatedDict(dict):
    """A mapping that knows its file, its line and the line of each of its values."""

    file: str
    line: int
    lines: dict[str, int]


class LocatedList(list):
    file: str
    line: int
    lines: list[int]


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    message: str
    path: tuple[Any, ...] = ()

    def __str__(self) -> str:
        where = f" ({' -> '.join(str(p) for p in self.path)})" if self.path else ""
        return f"{self.file}:{self.line}: {self.message}{where}"


class ConfigError(Exception):
    """One or more problems in the rules; the message lists each as file:line: message (path)."""

    def __init__(self, issues: Iterable[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def load_yaml(path: Path, display_name: str | None = None) -> Any:
    """Load one YAML document into LocatedDict / LocatedList / plain scalars."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, 0, f"cannot read file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(name, 0, f"not UTF-8 text: {exc.reason}")]) from exc
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([ConfigIssue(name, line, f"invalid YAML: {exc.problem}")]) from exc
    except yaml.reader.ReaderError as exc:  # a control character: the offset says where
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError([ConfigIssue(name, line, f"invalid YAML: {exc.reason} "
                                       f"(character #x{exc.character:04x})")]) from exc
    if node is None:
        raise ConfigError([ConfigIssue(name, 1, "file is empty")])
    return _construct(node, name)


_scalar_loader = yaml.SafeLoader("")
_INT = "tag:yaml.org,2002:int"


def _construct(node: yaml.Node, name: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        result = LocatedDict()
        result.file, result.line, result.lines = name, node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = _construct(key_node, name)
            if not isinstance(key, str):
                raise ConfigError([ConfigIssue(name, key_node.start_mark.line + 1,
                                               "keys must be text")])
            if key in result:
                raise ConfigError(
                    [ConfigIssue(name, key_node.start_mark.line + 1, f"duplicate key '{key}'")]
                )
            result[key] = _construct(value_node, name)
            result.lines[key] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        items = LocatedList(_construct(child, name) for child in node.value)
        items.file, items.line = name, node.start_mark.line + 1
        items.lines = [child.start_mark.line + 1 for child in node.value]
        return items
    if node.tag == _INT and not node.style and ":" in node.value:
        return node.value  # YAML 1.1 would read 1:3 (months) or 17:00 (a time) in base 60
    return _scalar_loader.construct_object(node)


@dataclass
class Checker:
    """Collects every problem in a document instead of stopping at the first."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def error(self, where: LocatedDict | LocatedList, key: Any, message: str, path: tuple) -> None:
        line = where.line
        if isinstance(where, LocatedDict) and key in where.lines:
            line = where.lines[key]
        elif isinstance(where, LocatedList) and isinstance(key, int) and key < len(where.lines):
            line = where.lines[key]
        self.issues.append(ConfigIssue(where.file, line, message, path))

    def mapping(
        self,
        value: Any,
        parent: LocatedDict | LocatedList,
        key: Any,
        path: tuple,
        required: Iterable[str] = (),
        optional: Iterable[str] = (),
    ) -> LocatedDict | None:
        """Check that `value` is a mapping with exactly the allowed keys: None (after the
        errors) when it is not a mapping or lacks a required key, so no caller reads one."""
        if not isinstance(value, LocatedDict):
            self.error(parent, key, "expected a mapping", path)
            return None
        required, allowed = set(required), set(required) | set(optional)
        for unknown in value.keys() - allowed:
            self.error(value, unknown, f"unknown key '{unknown}'", (*path, unknown))
        missing = sorted(required - value.keys())
        for name in missing:
            self.error(parent, key, f"missing required key '{name}'", path)
        return None if missing else value

    def entries(self, parent: LocatedDict, key: str, what: str) -> LocatedDict:
        """A required section that maps names to specs; empty (after an error) if it is not."""
        value = parent[key]
        if not isinstance(value, LocatedDict) or not value:
            self.error(parent, key, f"expected a non-empty mapping of {what}", (key,))
            return LocatedDict()
        return value

    def raise_if_any(self) -> None:
        if self.issues:
            raise ConfigError(sorted(self.issues, key=lambda i: (i.file, i.line)))


def optional_rule_file(directory: Path, display_dir: str, name: str,
                       required: Iterable[str] = (), optional: Iterable[str] = ()
                       ) -> tuple[Checker, LocatedDict] | None:
    """An optional file of a rules directory: its top-level mapping, checked for exactly these
    keys, and the Checker for the rest of it; None when the directory has no such file."""
    path = directory / name
    if not path.exists():
        return None
    doc = load_yaml(path, f"{display_dir}/{name}")
    check = Checker()
    root = check.mapping(doc, doc, None, (), required=required, optional=optional)
    check.raise_if_any()
    assert root is not None  # raise_if_any raised otherwise
    return check, root
