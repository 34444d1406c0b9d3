"""Putting a recorded version's files back into a rules directory, all or nothing: the
version is validated in a copy of the directory first, so one that fails changes nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from service.rules.loader import RULE_FILES, load_rules
from service.rules.yamlfile import ConfigError


class RestoreFailed(Exception):
    """The version does not validate with this directory's other files; nothing changed."""


def restore(directory: Path, files: Mapping[str, str]) -> None:
    """Validate `files` beside the directory's training data, then write them in place."""
    directory = directory.resolve()
    with tempfile.TemporaryDirectory(prefix=".rollback-", dir=directory.parent) as scratch:
        trial = Path(scratch) / directory.name
        shutil.copytree(directory, trial, ignore=shutil.ignore_patterns(*RULE_FILES))
        _write(trial, files)
        try:
            load_rules(trial, with_classifier=False)
        except ConfigError as exc:
            raise RestoreFailed(str(exc).replace(str(trial), str(directory))) from None
    _write(directory, files)


def _write(directory: Path, files: Mapping[str, str]) -> None:
    """Each file replaced in one rename; a file the version did not have is removed."""
    for name in RULE_FILES:
        path = directory / name
        if name not in files:
            path.unlink(missing_ok=True)
            continue
        staged = directory / f".{name}.new"
        staged.write_text(files[name], encoding="utf-8")
        os.replace(staged, path)
