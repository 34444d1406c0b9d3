"""The encoder stage runs beside the event loop: while it works out one message, the same
process goes on answering other requests; messages that wait for it together share a pass."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Sequence

import numpy as np

from service.appkeys import RULES
from service.understanding.cascade import Encoder
from tests.test_sms import CUSTOMER
from tests.twilio_driver import text


class Watched:
    """The stage's encoder, recording each pass's texts and able to hold a pass back."""

    def __init__(self, encoder: Encoder, hold: bool = False):
        self.weights_sha256 = encoder.weights_sha256
        self._encoder = encoder
        self.passes: list[list[str]] = []
        self.entered, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.passes.append(list(texts))
        self.entered.set()
        assert self.release.wait(10), "the pass was never let go"
        return self._encoder.embed(texts)


def watch_stage(client, monkeypatch, hold: bool = False) -> tuple[Watched, object]:
    """Every message with letters goes to the stage, whose encoder is watched."""
    classifier = client.app[RULES].current.classifier
    stage = classifier.encoder_stage
    watched = Watched(stage.encoder, hold)
    monkeypatch.setattr(classifier, "encoder_stage",
                        replace(stage, band=(0.0, 1.0), encoder=watched))
    return watched, classifier


async def test_other_requests_are_served_while_the_encoder_stage_works(client, monkeypatch):
    watched, _ = watch_stage(client, monkeypatch, hold=True)
    turn = asyncio.create_task(text(client, CUSTOMER, "i want to cancel my order"))
    assert await asyncio.to_thread(watched.entered.wait, 10)
    health = await asyncio.wait_for(client.get("/healthz"), 5)  # while the stage holds
    assert health.status == 200
    assert not turn.done()
    watched.release.set()
    [answer, *_] = await asyncio.wait_for(turn, 10)
    assert answer.startswith("You can cancel any order that has not shipped yet")


async def test_a_request_for_a_person_never_waits_for_the_encoder_stage(client, monkeypatch):
    watched, _ = watch_stage(client, monkeypatch)
    await text(client, CUSTOMER, "talk to a person please")
    assert watched.passes == []
    await text(client, "+15550009999", "i want to cancel my order")
    assert watched.passes == [["i want to cancel my order"]]


async def test_messages_waiting_together_share_one_pass_and_keep_their_answers(
        client, monkeypatch):
    watched, classifier = watch_stage(client, monkeypatch, hold=True)
    words = ["i want to cancel my order", "where is my parcel", "how do i get a refund",
             "change my delivery address", "my payment did not go through"]
    first = asyncio.create_task(classifier.predict_off_loop(words[0]))
    assert await asyncio.to_thread(watched.entered.wait, 10)  # the first pass is running
    rest = [asyncio.create_task(classifier.predict_off_loop(w)) for w in words[1:]]
    await asyncio.sleep(0.05)
    watched.release.set()
    predictions = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
    assert watched.passes == [words[:1], words[1:]]  # four waited and went in one pass
    alone = [classifier.predict(w) for w in words]  # predict() encodes each text by itself
    assert [p.contact_type for p in predictions] == [p.contact_type for p in alone]
    assert np.allclose([p.confidence for p in predictions], [p.confidence for p in alone],
                       atol=1e-5)
    assert len({p.contact_type for p in predictions}) >= 3  # not one answer for everything


async def test_a_failed_pass_fails_its_messages_and_the_next_ones_are_encoded(
        client, monkeypatch):
    watched, classifier = watch_stage(client, monkeypatch)
    real_embed = watched.embed

    def failing_once(texts: Sequence[str]) -> np.ndarray:
        watched.embed = real_embed  # type: ignore[method-assign]
        raise MemoryError("no room for the pass")

    watched.embed = failing_once  # type: ignore[method-assign]
    failed = await asyncio.gather(classifier.predict_off_loop("where is my parcel"),
                                  return_exceptions=True)
    assert isinstance(failed[0], MemoryError)
    after = await classifier.predict_off_loop("where is my parcel")
    assert watched.passes == [["where is my parcel"]]  # the failed pass never reached it
    assert after.contact_type == classifier.predict("where is my parcel").contact_type


async def test_a_failing_encoder_stage_leaves_the_n_gram_models_answer(client, monkeypatch):
    watched, classifier = watch_stage(client, monkeypatch)

    def failing(texts: Sequence[str]) -> np.ndarray:
        raise MemoryError("no room for the pass")

    watched.embed = failing  # type: ignore[method-assign]
    words = "i want to cancel my order"
    expected = classifier.cheap_prediction(words)
    assert expected.contact_type == "cancel_order"
    [answer, *_] = await text(client, CUSTOMER, words)  # a 200 with an answer, not the fallback
    assert answer.startswith("You can cancel any order that has not shipped yet")
