"""CPU cost of the pure-Python parts of one SMS turn, each timed alone on one core.

    .venv/bin/python load_tests/parts.py

A cross-check for the profile (bench_sms.py --profile): the profile says what share of the
server's time a part takes under load; this says what one call costs and how many a turn
makes, so a suggested change can be priced. No server, no network: I/O is measured under load.
"""

from __future__ import annotations

import os
import sys
import time
import timeit
import uuid
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
from multidict import MultiDict, MultiDictProxy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import traffic  # noqa: E402


def per_call_us(fn, min_time_s: float = 0.3) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    runs = max(1, int(min_time_s / max(1e-9, timer.timeit(number) / number) / number))
    return min(timer.repeat(repeat=5, number=number * runs)) / (number * runs) * 1e6


def conversation_after_two_turns(answer: str) -> dict:
    """The shape of an SMS conversation in Redis after a question and its self-service answer
    (the fields conversation.py writes)."""
    now = time.time()
    return {"contact_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "channel": "sms",
            "address": "+15552000001", "service_address": traffic.SERVICE_NUMBER, "thread": None,
            "started_at": now, "last_at": now, "status": "confirming", "turns": 1,
            "contact_type": "track_order", "confidence": 0.8731, "misses": 0, "menu": [],
            "route_path": "root/orders", "queue": "orders", "reason": None, "outcome": None,
            "transcript": [{"from": "customer", "text": "where is my parcel 732201349959?",
                            "at": now},
                           {"from": "bot", "text": answer, "at": now},
                           {"from": "bot", "text": "Did that help? Reply YES or NO.", "at": now}],
            "steps": [{"type": "answer", "contact_type": "track_order", "at": now,
                       "outcome": None}],
            "attributes": {}, "earlier": []}


def main() -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[0]})
    import structlog

    from channels.twilio_auth import TwilioSignature
    from channels.twilio_sms import _twiml, render
    from service.conversations.context import _dumps
    from service.infra.ids import new_uuid
    from service.model import Reply
    from service.reporting import metrics
    from service.reporting.events import Event
    from service.rules.loader import load_rules
    from service.understanding.classifier import wants_agent

    rules_dir = ROOT / "routing_rules"
    rules = load_rules(rules_dir)
    words = traffic.load_utterances(rules_dir)
    texts = words.self_service[:200]
    customer = traffic.Customer("+15552000001", traffic.PLACES[0], [], False)
    params = traffic.sms_params(customer, texts[0])
    body = traffic.urlencode(params)
    url = "http://127.0.0.1:8080/twilio/sms"
    signer = TwilioSignature("bench_auth_token_not_real", "http://127.0.0.1:8080")
    form = MultiDictProxy(MultiDict(params))
    answer = rules.catalog.types["track_order"].answer
    reply = Reply(messages=(answer, "Did that help? Reply YES or NO."),
                  contact_id=str(uuid.uuid4()), turn=1, expects_input=True)
    conv = conversation_after_two_turns(answer)
    conv_json = _dumps(conv)
    it = iter(range(10**9))

    def predict():
        rules.classifier.predict(texts[next(it) % len(texts)])

    def log_context():
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:16],
                                               path="/twilio/sms")
        structlog.contextvars.bind_contextvars(message_sid=params["MessageSid"])
        structlog.contextvars.bind_contextvars(channel="sms")
        structlog.contextvars.bind_contextvars(contact_id=conv["contact_id"])

    def metric_updates():
        metrics.child(metrics.TURNS, "sms", "self_service").inc()
        metrics.child(metrics.TURN_SECONDS, "sms").observe(0.004)

    parts = [
        ("signature: TwilioSignature.signature (one HMAC-SHA1), 20 fields", 1,
         lambda: signer.signature(url, form)),
        ("form body -> dict (urllib parse_qsl; aiohttp's own parser is similar)", 1,
         lambda: dict(parse_qsl(body, keep_blank_values=True))),
        ("TwiML: render(), a reply seen before (the template's cache)", 0.8,
         lambda: render(reply)),
        ("TwiML: the template for a new reply (a name, a queue position)", 0.2,
         lambda: _twiml.__wrapped__(reply.messages)),
        ("classifier: predict(), held-out utterances", 0.6, predict),
        ("wants_agent() regex", 1, lambda: wants_agent(texts[0])),
        ("conversation state: orjson dumps (commit_turn)", 1, lambda: _dumps(conv)),
        ("conversation state: orjson loads (begin_turn)", 0.6,
         lambda: orjson.loads(conv_json)),
        ("stored reply: orjson dumps of Reply.to_json()", 1,
         lambda: _dumps(reply.to_json())),
        ("event: Event(...) (new_uuid, time) + to_line()", 5,
         lambda: Event("classified", conv["contact_id"], conv["customer_id"], "sms",
                       "track_order", "root/orders", None,
                       {"confidence": 0.87, "via": "classifier"}).to_line()),
        ("new_uuid() (ids cut from bulk os.urandom)", 1, new_uuid),
        ("structlog contextvars: clear + 4 binds per request", 1, log_context),
        ("prometheus: turn counter + histogram", 1, metric_updates),
    ]
    print(f"{'part':<72} {'us/call':>8} {'calls/turn':>10} {'us/turn':>8}")
    total = 0.0
    for name, calls, fn in parts:
        us = per_call_us(fn)
        total += us * calls
        print(f"{name:<72} {us:8.1f} {calls:10.1f} {us * calls:8.1f}")
    print(f"{'sum of the parts above, per turn':<72} {'':8} {'':10} {total:8.1f}")
    print("calls/turn: averages for the realistic mix (about 60% of messages are classified; "
          "about 5 events per turn)")


if __name__ == "__main__":
    main()
