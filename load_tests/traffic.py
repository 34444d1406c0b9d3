"""Signed Twilio SMS webhooks for the benchmark: realistic conversations, one request per line.

Every request is a 20-field inbound-SMS form (the fields Twilio sends for a US number, in the
order it sends them) with its own MessageSid and an X-Twilio-Signature computed with twilio's
RequestValidator over the service's public URL, exactly as Twilio signs it.

Conversations follow scripts a contact centre sees: a question that the classifier recognises
(self-service answer) then YES or NO, a request for a person, an agent-only type, a vague first
message (the bot asks to clarify) then a menu number, HELP, STOP, and customers who come back
for a second contact. Utterances come from the held-out split of the example deployment's data
and are checked against the deployment's classifier, so the mix is what the scripts say.

Requests are laid out in rounds so that consecutive messages of one customer are at least
`block` requests apart: with 16 connections in flight, a customer's next message is sent long
after the previous one was answered, as on a real phone. The layout (`interleave`) and the
request file (`write_lines`) are shared with the voice calls (voice_calls.py).
"""

from __future__ import annotations

import collections
import csv
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

SERVICE_NUMBER = "+15005550006"
ACCOUNT_SID = "AC" + "0" * 32
MESSAGING_SERVICE_SID = "MG" + "0" * 31 + "3"
PLACES = [("SAN FRANCISCO", "CA", "94105"), ("AUSTIN", "TX", "78701"),
          ("CHICAGO", "IL", "60601"), ("NEW YORK", "NY", "10001"), ("DENVER", "CO", "80202"),
          ("SEATTLE", "WA", "98101"), ("BOSTON", "MA", "02108"), ("MIAMI", "FL", "33101")]
YES_WORDS = ["yes", "Yes", "YES", "yes it did", "thanks", "y"]
NO_WORDS = ["no", "No", "NO", "not really", "nope"]
AGENT_ASKS = ["I want to talk to a person", "agent please", "can I speak to a human",
              "AGENT", "let me talk to a real person about my order"]
VAGUE = ["hi", "hello, I have a question", "hey there", "question", "I need help",
         "um not sure", "hello?"]
FOLLOW_UPS = ["any update?", "still waiting", "ok thanks", "how long will it take?",
              "it's about order 732201349959"]

# (script, share of new contacts). Shares of the run's first messages, before returning customers.
SCRIPTS = [("self_service_yes", 0.45), ("self_service_no", 0.15), ("asks_agent", 0.10),
           ("agent_only_type", 0.08), ("clarify_then_menu", 0.12), ("help_first", 0.05),
           ("stop", 0.05)]
# Diagnostic mix: no escalation at all (every contact resolved by its self-service answer).
MIXES = {"realistic": SCRIPTS, "self-service": [("self_service_yes", 1.0)]}
MAX_STEPS = 3  # the longest script
RETURNING_SHARE = 0.2  # of contacts: a customer whose earlier contact was resolved comes back


@dataclass(frozen=True)
class Utterances:
    self_service: list[str]  # classified above the threshold into a type with an answer
    agent_only: list[str]  # classified above the threshold into an agent-only type
    vague: list[str]  # below the threshold: the bot asks to clarify
    threshold: float = 0.0
    predicted: dict[str, tuple[str, float]] = field(default_factory=dict)  # text -> type, conf.


def load_utterances(rules_dir: Path) -> Utterances:
    """Held-out examples, sorted by what the deployment's classifier does with them."""
    from service.rules.loader import load_rules
    from service.understanding.classifier import wants_agent

    rules = load_rules(rules_dir)
    threshold = rules.catalog.threshold
    self_service, agent_only, predicted = [], [], {}
    with open(rules_dir / "data" / "bitext_heldout.csv", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"]
            if wants_agent(text) or text.strip().upper() in ("STOP", "HELP", "START"):
                continue
            prediction = rules.classifier.predict(text)
            if prediction.confidence < threshold:
                continue
            contact_type = rules.catalog.types[prediction.contact_type]
            if contact_type.flow:
                continue  # a flow asks its own questions: these scripts answer YES or NO
            predicted[text] = (prediction.contact_type, prediction.confidence)
            (agent_only if contact_type.agent_only else self_service).append(text)
    vague = [t for t in VAGUE if rules.classifier.predict(t).confidence < threshold]
    if not (self_service and agent_only and vague):
        raise SystemExit("the example deployment's data no longer yields every kind of message")
    return Utterances(self_service, agent_only, vague, threshold, predicted)


def script_messages(kind: str, words: Utterances, rng: random.Random) -> list[str]:
    if kind == "self_service_yes":
        return [rng.choice(words.self_service), rng.choice(YES_WORDS)]
    if kind == "self_service_no":
        tail = [rng.choice(FOLLOW_UPS)] if rng.random() < 0.5 else []
        return [rng.choice(words.self_service), rng.choice(NO_WORDS), *tail]
    if kind == "asks_agent":
        tail = [rng.choice(FOLLOW_UPS)] if rng.random() < 0.5 else []
        return [rng.choice(AGENT_ASKS), *tail]
    if kind == "agent_only_type":
        return [rng.choice(words.agent_only)]
    if kind == "clarify_then_menu":
        return [rng.choice(words.vague), rng.choice(["1", "2"]), rng.choice(YES_WORDS)]
    if kind == "help_first":
        return ["HELP", rng.choice(words.self_service), rng.choice(YES_WORDS)]
    if kind == "stop":
        return ["STOP"]
    raise ValueError(kind)


@dataclass
class Customer:
    number: str
    place: tuple[str, str, str]
    steps: list[str]  # the texts, in order
    resolvable: bool  # ends closed (YES after self-service), so the customer may come back


def sms_params(customer: Customer, text: str) -> dict[str, str]:
    """The 20 fields of an inbound SMS webhook, in Twilio's order."""
    sid = f"SM{random.getrandbits(128):032x}"
    city, state, zip_code = customer.place
    return {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0",
            "ToCity": "", "FromZip": zip_code, "SmsSid": sid, "FromState": state,
            "SmsStatus": "received", "FromCity": city, "Body": text, "FromCountry": "US",
            "To": SERVICE_NUMBER, "ToZip": "", "NumSegments": "1", "MessageSid": sid,
            "AccountSid": ACCOUNT_SID, "MessagingServiceSid": MESSAGING_SERVICE_SID,
            "From": customer.number, "ApiVersion": "2010-04-01"}


TakeReturning = Callable[[], object]  # a resolved contact to bring back, or None


def interleave(count: int, new_contact: Callable[[random.Random, TakeReturning], object],
               seed: int, max_steps: int, block: int = 200) -> Iterator[tuple[object, object]]:
    """Yield (contact, step) for `count` steps or more, laid out in rounds (module doc).

    `new_contact(rng, take_returning)` builds a contact with `steps` and `resolvable`;
    `take_returning()` hands it, now and then, a resolved contact of an earlier round to
    reuse the customer of (None otherwise)."""
    rng = random.Random(seed)
    returning: collections.deque[tuple[int, object]] = collections.deque()  # (round, contact)
    in_progress: list[list] = []  # blocks still sending, oldest first
    emitted = 0
    round_no = 0

    def take_returning():
        if returning and returning[0][0] <= round_no - 2 and rng.random() < RETURNING_SHARE:
            return returning.popleft()[1]
        return None

    while emitted < count:
        in_progress.append([new_contact(rng, take_returning) for _ in range(block)])
        # Round r: step 0 of the newest block, step 1 of the one before, and so on.
        for age, contacts in enumerate(reversed(in_progress)):
            for contact in contacts:
                if age < len(contact.steps):
                    yield contact, contact.steps[age]
                    emitted += 1
        if len(in_progress) == max_steps:  # the oldest block has sent its last steps
            returning.extend((round_no, c) for c in in_progress.pop(0) if c.resolvable)
        round_no += 1


def conversations(count: int, words: Utterances, number_prefix: str, seed: int,
                  mix: str = "realistic", block: int = 200):
    """Yield (customer, text) for `count` messages or more."""
    kinds, weights = zip(*MIXES[mix])
    serials = itertools.count(1)

    def new_customer(rng: random.Random, take_returning: TakeReturning) -> Customer:
        kind = rng.choices(kinds, weights)[0]
        messages = script_messages(kind, words, rng)
        back = take_returning()
        if back is not None:
            return Customer(back.number, back.place, messages, False)
        return Customer(f"{number_prefix}{next(serials):07d}", rng.choice(PLACES), messages,
                        kind == "self_service_yes")

    return interleave(count, new_customer, seed, MAX_STEPS, block)


def write_lines(path: Path, requests: Iterable[tuple[str, dict[str, str], str | None]],
                count: int, public_url: str, auth_token: str,
                skip: int = 0) -> list[str | None]:
    """Write `count` signed requests, one per line: '<signature> <path> <form body>', signed
    over the public URL with the path and query, as Twilio signs them. `skip` continues a
    stream whose first `skip` requests an earlier file had. Returns the reply each line
    should get (None: not scripted)."""
    validator = RequestValidator(auth_token)
    base = public_url.rstrip("/")
    expected: list[str | None] = []
    with open(path, "w") as out:
        for url_path, params, expect in itertools.islice(requests, skip, skip + count):
            signature = validator.compute_signature(base + url_path, params)
            out.write(f"{signature} {url_path} {urlencode(params)}\n")
            expected.append(expect)
    return expected


def write_requests(path: Path, count: int, words: Utterances, public_url: str,
                   auth_token: str, number_prefix: str, seed: int, mix: str = "realistic",
                   skip: int = 0) -> list[str | None]:
    """Write `count` signed inbound-SMS webhooks (see write_lines)."""
    requests = (("/twilio/sms", sms_params(customer, text), None) for customer, text
                in conversations(skip + count, words, number_prefix, seed, mix))
    return write_lines(path, requests, count, public_url, auth_token, skip)
