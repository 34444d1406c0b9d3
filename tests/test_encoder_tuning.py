"""Fine-tuning the encoder's top layer (service/understanding/tuning.py): the hand-written
backward pass agrees with finite differences, the pretrained top layer run from cached lower
states reproduces the encoder's embedding, and a few Adam steps learn a tiny task."""

from __future__ import annotations

import numpy as np
import pytest

from service.understanding import tuning
from service.understanding.encoder import DIMENSIONS, encoder


def _random_parameters(rng, layers=1, dims=DIMENSIONS, classes=3):
    shapes = {"qkv": (dims, 3 * dims), "qkv_bias": (3 * dims,), "attention_out": (dims, dims),
              "attention_out_bias": (dims,), "norm1_weight": (dims,), "norm1_bias": (dims,),
              "up": (dims, 4 * dims), "up_bias": (4 * dims,), "down": (4 * dims, dims),
              "down_bias": (dims,), "norm2_weight": (dims,), "norm2_bias": (dims,)}
    p = {f"{k}.{name}": rng.normal(0, 0.05, shape) for k in range(layers)
         for name, shape in shapes.items()}
    for k in range(layers):
        p[f"{k}.norm1_weight"] += 1.0
        p[f"{k}.norm2_weight"] += 1.0
    return p | {"head": rng.normal(0, 0.05, (dims, classes)),
                "head_bias": rng.normal(0, 0.05, classes)}


@pytest.mark.parametrize("layers", [1, 2])
def test_backward_pass_matches_finite_differences(layers):
    rng = np.random.default_rng(1)
    p = _random_parameters(rng, layers)
    assert set(p) == set(tuning.parameter_names(layers))
    states = [rng.normal(0, 1, (n, DIMENSIONS)) for n in (3, 5, 2)]  # padding included
    hidden, mask = tuning.pad(states)
    targets = np.array([0, 2, 1])
    _, gradients = tuning.loss_and_gradients(p, hidden, mask, targets)

    def loss():
        return tuning.loss_and_gradients(p, hidden, mask, targets)[0]

    checked = 0
    for name in tuning.parameter_names(layers):
        flat = p[name].reshape(-1)
        for index in rng.choice(flat.size, min(4, flat.size), replace=False):
            saved = flat[index]
            flat[index] = saved + 1e-5
            above = loss()
            flat[index] = saved - 1e-5
            below = loss()
            flat[index] = saved
            numeric = (above - below) / 2e-5
            analytic = gradients[name].reshape(-1)[index]
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-9), (name, index)
            checked += 1
    assert checked == 4 * len(p) - 1  # head_bias has three


def test_padding_does_not_change_a_texts_logits():
    rng = np.random.default_rng(2)
    p = _random_parameters(rng)
    short, long = rng.normal(0, 1, (2, DIMENSIONS)), rng.normal(0, 1, (6, DIMENSIONS))
    alone = tuning.forward(p, *tuning.pad([short]))
    together = tuning.forward(p, *tuning.pad([short, long]))
    assert np.allclose(alone[0], together[0], atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_the_pretrained_top_layers_from_cached_states_are_the_encoders_embedding(layers):
    model = encoder()
    texts = ["where is my card", "I was charged twice for the same coffee this morning"]
    lower = tuning.lower_states(model, texts, frozen=6 - layers)
    identity = np.eye(DIMENSIONS, dtype=np.float32)
    p = tuning.top_parameters(model, identity, np.zeros(DIMENSIONS, np.float32), layers)
    logits = np.vstack([tuning.forward(p, *tuning.pad([s])) for s in lower.states])
    assert np.allclose(logits, model.embed(texts), atol=1e-5)
    assert np.allclose(lower.pooled[:, -1], model.embed(texts), atol=1e-5)


def test_fine_tuning_learns_labels_the_frozen_head_gets_wrong():
    model = encoder()
    texts = ["my card has not arrived", "when will my new card come", "card still not here",
             "I want to close my account", "please delete my account", "shut down my account"]
    targets = np.array([0, 0, 0, 1, 1, 1])
    lower = tuning.lower_states(model, texts)
    p = tuning.top_parameters(model, np.zeros((DIMENSIONS, 2), np.float32),
                              np.zeros(2, np.float32))
    before = tuning.probabilities(p, lower.states)
    assert np.allclose(before, 0.5)
    tuned = tuning.fine_tune(p, lower.states, targets,
                             tuning.TuningSettings(epochs=30, head_rate=1e-2, layer_rate=1e-4))
    after = tuning.probabilities(tuned, lower.states)
    assert (after.argmax(1) == targets).all()
    assert after[np.arange(6), targets].min() > 0.6
    assert not np.allclose(tuned["0.up"], p["0.up"])  # the layer itself moved, not only the head
