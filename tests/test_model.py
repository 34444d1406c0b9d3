"""The stored reply: what a retried webhook is answered with must be the reply first given."""

from __future__ import annotations

import dataclasses
import json

from service.model import Choice, Reply


def full_reply() -> Reply:
    return Reply(messages=("Your order ships today.", "Did that help?"),
                 choices=(Choice("Track an order", "track_order", "1"), Choice("Other", "other")),
                 state="queued", contact_id="c-1", position=3, estimated_wait_s=120,
                 queue="orders", expects_input=True, turn=4,
                 history=({"from": "customer", "text": "where is it"},))


def test_to_json_carries_every_field():
    reply = full_reply()
    assert json.dumps(reply.to_json()) == json.dumps(dataclasses.asdict(reply))


def test_a_stored_reply_reads_back_equal():
    reply = full_reply()
    assert Reply.from_json(json.loads(json.dumps(reply.to_json()))) == reply
    assert Reply.from_json(json.loads(json.dumps(Reply().to_json()))) == Reply()
