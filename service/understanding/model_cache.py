"""Trained classifiers kept on disk, so a new process on the same machine loads rather than
trains them (a restart, another worker or instance, `rules check`).

One `.npz` of plain arrays per model (read with allow_pickle=False), named by the rules'
training digest (examples, out-of-scope texts, embeddings, encoder band), the encoder weights'
hash and the source of the modules that train it (classifier.py, cascade.py, this one), so a
change to how models are trained or kept never loads a model trained the old way. The newest
KEEP_FILES are kept; an unreadable or unwritable cache only costs time. Models with the
optional embeddings block are not kept (its weights live with the embedder).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import structlog

from service.understanding.cascade import Encoder
from service.understanding.classifier import Classifier

log = structlog.get_logger(__name__)

MODELS_CACHE = Path.home() / ".cache" / "switchboard" / "models"
KEEP_FILES = 4


@functools.cache
def _code_digest() -> str:
    """The source of what trains and keeps models: another version never shares a file."""
    from service.understanding import cascade, classifier

    h = hashlib.sha256()
    for module in (classifier, cascade, sys.modules[__name__]):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def _path(directory: Path, training_digest: str, weights_sha256: str) -> Path:
    key = hashlib.sha256(f"{_code_digest()}\n{weights_sha256}\n{training_digest}".encode())
    return directory / f"model-{key.hexdigest()[:32]}.npz"


def load_model(directory: Path | None, training_digest: str, encoder: Encoder | None,
               weights_sha256: str = "") -> Classifier | None:
    """The model trained on this training set before, or None."""
    if directory is None:
        return None
    path = _path(directory, training_digest, weights_sha256)
    try:
        with np.load(path, allow_pickle=False) as data:
            parts = {name: data[name] for name in data.files}
        model = Classifier.from_parts(parts, encoder)
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return None
    if ("stage_weights" in parts) != (encoder is not None):
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return model


def save_model(directory: Path | None, training_digest: str, model: Classifier,
               weights_sha256: str = "") -> None:
    """Keep `model` for the next process; written whole under a temporary name, renamed."""
    parts = model.parts()
    if directory is None or parts is None:
        return
    path = _path(directory, training_digest, weights_sha256)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as handle:
            np.savez(handle, **parts)
        os.replace(handle.name, path)
    except OSError as exc:
        log.warning("classifier.cache_unwritable", path=str(path), error=str(exc))
        return
    models = sorted(directory.glob("model-*.npz"), key=_mtime, reverse=True)
    for old in models[KEEP_FILES:]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
