"""The encoder stage runs beside the event loop: while it works out one message, the same
process goes on answering other requests."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from service.appkeys import RULES
from service.understanding.cascade import EncoderStage
from tests.test_sms import CUSTOMER
from tests.twilio_driver import text


async def test_other_requests_are_served_while_the_encoder_stage_works(client, monkeypatch):
    classifier = client.app[RULES].current.classifier
    # every message with letters goes to the stage, which holds on until the test lets it go
    monkeypatch.setattr(classifier, "encoder_stage",
                        replace(classifier.encoder_stage, band=(0.0, 1.0)))
    entered, release = threading.Event(), threading.Event()
    stage_probabilities = EncoderStage.probabilities

    def held(stage: EncoderStage, words: str):
        entered.set()
        assert release.wait(10), "the stage was never let go"
        return stage_probabilities(stage, words)

    monkeypatch.setattr(EncoderStage, "probabilities", held)
    turn = asyncio.create_task(text(client, CUSTOMER, "i want to cancel my order"))
    assert await asyncio.to_thread(entered.wait, 10)
    health = await asyncio.wait_for(client.get("/healthz"), 5)  # while the stage holds
    assert health.status == 200
    assert not turn.done()
    release.set()
    [answer, *_] = await asyncio.wait_for(turn, 10)
    assert answer.startswith("You can cancel any order that has not shipped yet")


async def test_a_request_for_a_person_never_waits_for_the_encoder_stage(client, monkeypatch):
    classifier = client.app[RULES].current.classifier
    monkeypatch.setattr(classifier, "encoder_stage",
                        replace(classifier.encoder_stage, band=(0.0, 1.0)))
    asked: list[str] = []
    stage_probabilities = EncoderStage.probabilities

    def counted(stage: EncoderStage, words: str):
        asked.append(words)
        return stage_probabilities(stage, words)

    monkeypatch.setattr(EncoderStage, "probabilities", counted)
    await text(client, CUSTOMER, "talk to a person please")
    assert asked == []
    await text(client, "+15550009999", "i want to cancel my order")
    assert asked == ["i want to cancel my order"]
