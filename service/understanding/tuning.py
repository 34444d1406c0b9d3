"""Fine-tuning the encoder's top transformer layers and a softmax head, in numpy.

For measurement only (load_tests/encoder_tuning.py): the service's encoder stage stays a
logistic regression on frozen encodings, because a tuned top layer scored within the noise of
it in the cascade for 60-180 times the training (docs/classifier.md, "Why frozen encodings").

The lower layers stay frozen: their token vectors are computed once per training text
(`lower_states`), so an epoch runs only the tuned layers forward and backward. The backward
pass is written by hand (layer norm, exact GELU, attention, mean pooling, L2 norm, softmax
cross-entropy) and checked against finite differences in tests/test_encoder_tuning.py.
Training is Adam on minibatches of texts of like length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from service.understanding.encoder import (
    DIMENSIONS,
    HEADS,
    LAYER_NORM_EPS,
    LAYERS,
    SentenceEncoder,
    _batches,
    _block,
    _gelu,
    mean_pool,
    padding_of,
)


@dataclass(frozen=True)
class TokenStates:
    """Token vectors of texts after the frozen lower layers, one (length, 384) array a text."""

    states: tuple[np.ndarray, ...]
    pooled: np.ndarray  # (texts, layers, 384): each layer's mean-pooled, L2-normalised output


def lower_states(model: SentenceEncoder, texts: Sequence[str], frozen: int = LAYERS - 1
                 ) -> TokenStates:
    """Each text's token vectors after the first `frozen` layers, and the mean-pooled unit
    vector of every layer's output (the richer frozen features)."""
    encodings = model._tokenizer.encode_batch(list(texts))
    lengths = [len(e.ids) for e in encodings]
    states: list[np.ndarray | None] = [None] * len(texts)
    pooled = np.empty((len(texts), LAYERS, DIMENSIONS), np.float32)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    for chunk in _batches(order, lengths):
        hidden, mask = model.embedded([encodings[i].ids for i in chunk])
        padding = padding_of(mask)
        for index, layer in enumerate(model._layers):
            hidden = _block(hidden, padding, layer)
            pooled[chunk, index] = _unit(mean_pool(hidden, mask))
            if index + 1 == frozen:
                for row, i in enumerate(chunk):
                    states[i] = hidden[row, :lengths[i]].copy()
    return TokenStates(tuple(states), pooled)  # type: ignore[arg-type]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


LAYER_PARAMETERS = ("qkv", "qkv_bias", "attention_out", "attention_out_bias", "norm1_weight",
                    "norm1_bias", "up", "up_bias", "down", "down_bias", "norm2_weight",
                    "norm2_bias")


def parameter_names(layers: int) -> tuple[str, ...]:
    """Keys of the tuned parameters: `{k}.{name}` for each tuned layer k (0 the lowest of
    them), then the head's."""
    return (*(f"{k}.{name}" for k in range(layers) for name in LAYER_PARAMETERS),
            "head", "head_bias")


def tuned_layers(p: dict[str, np.ndarray]) -> int:
    return sum(key.endswith(".qkv") for key in p)


def top_parameters(model: SentenceEncoder, head: np.ndarray, head_bias: np.ndarray,
                   layers: int = 1) -> dict[str, np.ndarray]:
    """The pretrained top `layers` layers' parameters (copied) and a head to start from."""
    p: dict[str, np.ndarray] = {}
    for k, layer in enumerate(model._layers[LAYERS - layers:]):
        values = (layer.qkv, layer.qkv_bias, layer.attention_out, layer.attention_out_bias,
                  *layer.attention_norm, layer.up, layer.up_bias, layer.down, layer.down_bias,
                  *layer.output_norm)
        p |= {f"{k}.{name}": np.array(v, np.float32) for name, v in zip(LAYER_PARAMETERS, values)}
    return p | {"head": np.array(head, np.float32), "head_bias": np.array(head_bias, np.float32)}


def pad(states: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A (batch, width, 384) batch of token vectors and its mask."""
    width = max(len(s) for s in states)
    hidden = np.zeros((len(states), width, states[0].shape[1]), states[0].dtype)
    mask = np.zeros((len(states), width), states[0].dtype)
    for row, s in enumerate(states):
        hidden[row, :len(s)] = s
        mask[row, :len(s)] = 1.0
    return hidden, mask


def _norm_forward(x, weight, bias):
    centred = x - x.mean(-1, keepdims=True)
    deviation = np.sqrt((centred * centred).mean(-1, keepdims=True) + x.dtype.type(LAYER_NORM_EPS))
    normal = centred / deviation
    return normal * weight + bias, (normal, deviation)


def _norm_backward(grad, weight, cache):
    normal, deviation = cache
    d_weight = (grad * normal).sum(0)
    d_bias = grad.sum(0)
    d_normal = grad * weight
    d_x = (d_normal - d_normal.mean(-1, keepdims=True)
           - normal * (d_normal * normal).mean(-1, keepdims=True)) / deviation
    return d_x, d_weight, d_bias


def _gelu_grad(x: np.ndarray) -> np.ndarray:
    """d/dx of x * Phi(x): Phi(x) + x * phi(x)."""
    from scipy.special import erf

    phi = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    return (0.5 * (1.0 + erf(x / np.sqrt(2.0))) + x * phi).astype(x.dtype)


def _layer_forward(p, prefix, flat, padding, batch, width):
    """One transformer layer over (batch * width, 384) rows, and what its backward needs."""
    dims = flat.shape[1]
    size = dims // HEADS
    qkv = (flat @ p[prefix + "qkv"] + p[prefix + "qkv_bias"]).reshape(batch, width, 3, HEADS,
                                                                       size)
    query, key, value = qkv.transpose(2, 0, 3, 1, 4)
    scale = flat.dtype.type(1 / np.sqrt(size))
    scores = query @ key.transpose(0, 1, 3, 2) * scale + padding
    attention = np.exp(scores - scores.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    context = (attention @ value).transpose(0, 2, 1, 3).reshape(batch * width, dims)
    first, norm1 = _norm_forward(
        context @ p[prefix + "attention_out"] + p[prefix + "attention_out_bias"] + flat,
        p[prefix + "norm1_weight"], p[prefix + "norm1_bias"])
    up = first @ p[prefix + "up"] + p[prefix + "up_bias"]
    activated = _gelu(up)
    out, norm2 = _norm_forward(activated @ p[prefix + "down"] + p[prefix + "down_bias"] + first,
                               p[prefix + "norm2_weight"], p[prefix + "norm2_bias"])
    return out, (flat, query, key, value, attention, context, first, norm1, up, activated, norm2)


def _layer_backward(p, prefix, d_out, cache, g, input_grad):
    """Fills `g` with the layer's gradients; returns the gradient at its input if asked."""
    flat, query, key, value, attention, context, first, norm1, up, activated, norm2 = cache
    batch, heads, width, size = query.shape
    dims = heads * size
    d_sum, g[prefix + "norm2_weight"], g[prefix + "norm2_bias"] = _norm_backward(
        d_out, p[prefix + "norm2_weight"], norm2)
    g[prefix + "down"], g[prefix + "down_bias"] = activated.T @ d_sum, d_sum.sum(0)
    d_up = (d_sum @ p[prefix + "down"].T) * _gelu_grad(up)
    g[prefix + "up"], g[prefix + "up_bias"] = first.T @ d_up, d_up.sum(0)
    d_first = d_sum + d_up @ p[prefix + "up"].T
    d_residual, g[prefix + "norm1_weight"], g[prefix + "norm1_bias"] = _norm_backward(
        d_first, p[prefix + "norm1_weight"], norm1)
    g[prefix + "attention_out"] = context.T @ d_residual
    g[prefix + "attention_out_bias"] = d_residual.sum(0)
    d_context = (d_residual @ p[prefix + "attention_out"].T).reshape(batch, width, heads, size)
    d_context = d_context.transpose(0, 2, 1, 3)
    d_attention = d_context @ value.transpose(0, 1, 3, 2)
    d_value = attention.transpose(0, 1, 3, 2) @ d_context
    d_scores = attention * (d_attention - (d_attention * attention).sum(-1, keepdims=True))
    d_scores *= d_scores.dtype.type(1 / np.sqrt(size))
    d_query = d_scores @ key
    d_key = d_scores.transpose(0, 1, 3, 2) @ query
    d_qkv = np.stack([d_query, d_key, d_value]).transpose(1, 3, 0, 2, 4)
    d_qkv = d_qkv.reshape(batch * width, 3 * dims)
    g[prefix + "qkv"], g[prefix + "qkv_bias"] = flat.T @ d_qkv, d_qkv.sum(0)
    return d_residual + d_qkv @ p[prefix + "qkv"].T if input_grad else None


def forward(p: dict[str, np.ndarray], hidden: np.ndarray, mask: np.ndarray,
            keep: bool = False):
    """Logits (batch, classes) of the tuned layers and the head over a padded batch; with
    `keep`, also what backward() needs."""
    batch, width, dims = hidden.shape
    flat, padding, caches = hidden.reshape(batch * width, dims), padding_of(mask), []
    for k in range(tuned_layers(p)):
        flat, cache = _layer_forward(p, f"{k}.", flat, padding, batch, width)
        caches.append(cache)
    out = flat.reshape(batch, width, dims)
    counts = mask.sum(1, keepdims=True)
    pooled = (out * mask[:, :, None]).sum(1) / counts
    length = np.linalg.norm(pooled, axis=1, keepdims=True)
    unit = pooled / length
    logits = unit @ p["head"] + p["head_bias"]
    if not keep:
        return logits
    return logits, (caches, counts, length, unit, mask)


def backward(p: dict[str, np.ndarray], d_logits: np.ndarray, cache) -> dict[str, np.ndarray]:
    """Gradients of every parameter, given the loss's gradient at the logits."""
    caches, counts, length, unit, mask = cache
    batch, width = mask.shape
    g = {"head": unit.T @ d_logits, "head_bias": d_logits.sum(0)}
    d_unit = d_logits @ p["head"].T
    d_pooled = (d_unit - unit * (d_unit * unit).sum(1, keepdims=True)) / length
    d_out = (mask[:, :, None] * (d_pooled / counts)[:, None, :]).reshape(batch * width, -1)
    for k in reversed(range(len(caches))):
        d_out = _layer_backward(p, f"{k}.", d_out, caches[k], g, input_grad=k > 0)
    return g


def loss_and_gradients(p: dict[str, np.ndarray], hidden: np.ndarray, mask: np.ndarray,
                       targets: np.ndarray, weight_decay: float = 0.0
                       ) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of a batch and its gradients."""
    logits, cache = forward(p, hidden, mask, keep=True)
    shifted = logits - logits.max(1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(1, keepdims=True)
    rows = np.arange(len(targets))
    loss = float(-np.log(probabilities[rows, targets]).mean())
    d_logits = probabilities
    d_logits[rows, targets] -= 1
    d_logits /= len(targets)
    gradients = backward(p, d_logits, cache)
    if weight_decay:
        gradients["head"] = gradients["head"] + weight_decay * p["head"]
    return loss, gradients


@dataclass(frozen=True)
class TuningSettings:
    epochs: int = 3
    layer_rate: float = 5e-5
    head_rate: float = 1e-3
    batch_tokens: int = 1024  # texts of like length, up to this many token positions a step
    seed: int = 0


def fine_tune(p: dict[str, np.ndarray], states: Sequence[np.ndarray], targets: np.ndarray,
              settings: TuningSettings = TuningSettings(), log=None, on_epoch=None
              ) -> dict[str, np.ndarray]:
    """Adam over minibatches of texts of like length; the rates decay linearly to 0.
    `on_epoch(epoch, parameters)` is called after each epoch (for experiments)."""
    p = {k: v.copy() for k, v in p.items()}
    first = {k: np.zeros_like(v) for k, v in p.items()}
    second = {k: np.zeros_like(v) for k, v in p.items()}
    rng = np.random.default_rng(settings.seed)
    lengths = [len(s) for s in states]
    steps_per_epoch = len(_shuffled_batches(lengths, settings.batch_tokens, rng))
    total, step = settings.epochs * steps_per_epoch, 0
    for epoch in range(settings.epochs):
        losses = []
        for batch in _shuffled_batches(lengths, settings.batch_tokens, rng):
            hidden, mask = pad([states[i] for i in batch])
            loss, grads = loss_and_gradients(p, hidden, mask, targets[batch])
            losses.append(loss)
            step += 1
            decay = 1.0 - (step - 1) / total
            for name, grad in grads.items():
                rate = (settings.head_rate if name.startswith("head") else
                        settings.layer_rate) * decay
                first[name] = 0.9 * first[name] + 0.1 * grad
                second[name] = 0.999 * second[name] + 0.001 * grad * grad
                corrected = first[name] / (1 - 0.9 ** step)
                scale = np.sqrt(second[name] / (1 - 0.999 ** step)) + 1e-8
                p[name] -= (rate * corrected / scale).astype(np.float32)
        if log:
            log(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}")
        if on_epoch:
            on_epoch(epoch + 1, p)
    return p


def _shuffled_batches(lengths: list[int], batch_tokens: int, rng) -> list[list[int]]:
    """Texts sorted by length (ties at random) cut into batches, the batches shuffled."""
    order = sorted(rng.permutation(len(lengths)).tolist(), key=lambda i: lengths[i])
    batches = _batches(order, lengths, batch_tokens)
    return [batches[i] for i in rng.permutation(len(batches))]


def probabilities(p: dict[str, np.ndarray], states: Sequence[np.ndarray]) -> np.ndarray:
    """Softmax of the tuned model for each text's cached lower-layer states."""
    lengths = [len(s) for s in states]
    out = np.empty((len(states), p["head"].shape[1]), np.float32)
    for chunk in _batches(sorted(range(len(states)), key=lengths.__getitem__), lengths):
        hidden, mask = pad([states[i] for i in chunk])
        logits = forward(p, hidden, mask)
        logits = np.exp(logits - logits.max(1, keepdims=True))
        out[chunk] = logits / logits.sum(1, keepdims=True)
    return out
