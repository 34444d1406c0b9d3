"""Signed Twilio Voice webhooks for the benchmark: scripted phone calls, one request per line.

A call is the sequence of requests Twilio makes while following the service's TwiML: the
incoming-call webhook (POST /twilio/voice), the <Gather> action of each prompt
(/twilio/voice/gather?turn=N with Digits, or SpeechResult + Confidence), the <Redirect> after a
silent prompt (/twilio/voice/no-input?turn=N), the <Enqueue> wait URL while on hold
(/twilio/voice/wait), its action when the caller leaves the queue (/twilio/voice/queue-result)
and the status callback when the call ends (/twilio/voice/status). Every prompt the service
speaks carries the conversation's turn number, which counts the caller's turns from 1 (the
incoming call), so every URL of a scripted call is known in advance.

Fields are the ones Twilio sends for an inbound call to a US number (as in
tests/fixtures/twilio/webhook_payload_examples.json): the standard call parameters on every
request, CallToken and StirVerstat on the incoming call, the input on a Gather action, the queue
figures on the wait URL and the queue result, the duration on the status callback. Each line
also says which reply the script expects (menu, answer offered, resolved, enqueued, hold, ...),
the same kinds webhooks.lua sorts the replies into.

Calls are laid out like the SMS conversations (traffic.interleave): a call's next request is
sent long after the previous one was answered. One caller in five whose earlier call was
resolved calls again and hears "Welcome back".
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path

from traffic import (
    ACCOUNT_SID,
    PLACES,
    SERVICE_NUMBER,
    Utterances,
    interleave,
    write_lines,
)

BASE = "/twilio/voice"
CALL_TOKEN = "%7B%22placeholder%22%3Atrue%7D"  # as in the fixtures: an opaque forwarding token
QUEUE_SID = "QU" + "0" * 31 + "1"
SPEECH_CONFIDENCE = (0.80, 0.95)  # what Twilio reports for clear speech
YES_SPEECH = ["Yes.", "Yeah.", "Yep.", "Yes it did.", "Thank you."]
NO_SPEECH = ["No.", "Nope.", "Not really.", "No it didn't."]
AGENT_SPEECH = ["I want to talk to a person.", "Representative.", "Agent.",
                "Can I speak to someone please?", "Operator."]
# (script, share of new calls)
SCRIPTS = [("keypad_yes", 0.25), ("speech_yes", 0.20), ("keypad_no", 0.10),
           ("speech_no", 0.05), ("zero_first", 0.10), ("agent_only_key", 0.05),
           ("speech_agent", 0.05), ("hang_up_in_ivr", 0.10), ("silence_then_key", 0.05),
           ("two_silences", 0.03), ("invalid_key", 0.02)]
# Diagnostic mix: every call resolved by its self-service answer, no queue at all.
MIXES = {"realistic": SCRIPTS, "self-service": [("keypad_yes", 0.5), ("speech_yes", 0.5)]}
MAX_STEPS = 7  # the longest script: call, two inputs, two waits, queue result, status


@dataclass(frozen=True)
class Keypad:
    self_service: dict[str, str]  # digit -> contact type with a self-service answer
    agent_only: list[str]  # digits of agent-only types


def load_keypad(rules_dir: Path) -> Keypad:
    from service.rules.loader import load_rules

    types = load_rules(rules_dir, with_classifier=False).catalog.types.values()
    keyed = [t for t in types if t.ivr_digit]
    return Keypad({str(t.ivr_digit): t.id for t in keyed if t.answer},  # flows ask more
                  [str(t.ivr_digit) for t in keyed if t.agent_only])


Step = tuple[str, dict[str, str], str]  # (path with query, extra fields, expected reply)


@dataclass
class Call:
    number: str
    place: tuple[str, str, str]
    sid: str
    steps: list[Step]
    resolvable: bool  # resolved by self-service: the caller may call again
    contact_type: str | None  # what the call was about, for the caller's next call


class Scripts:
    """Builds the steps of each kind of call (turn numbers as the service counts them)."""

    def __init__(self, words: Utterances, keypad: Keypad, rng: random.Random):
        self.keypad, self.rng = keypad, rng
        low = SPEECH_CONFIDENCE[0]
        # Spoken questions the service still classifies after weighting by Twilio's confidence.
        self.speech = [t for t in words.self_service
                       if words.predicted[t][1] * low >= words.threshold + 0.01]
        self.predicted = words.predicted

    def start(self, expect: str = "menu") -> Step:
        return BASE, {"CallStatus": "ringing", "CallToken": CALL_TOKEN,
                      "StirVerstat": "TN-Validation-Passed-A"}, expect

    def press(self, turn: int, digits: str, expect: str) -> Step:
        return f"{BASE}/gather?turn={turn}", {"CallStatus": "in-progress",
                                              "Digits": digits}, expect

    def speak(self, turn: int, words: str, expect: str) -> Step:
        confidence = f"{self.rng.uniform(*SPEECH_CONFIDENCE):.4f}"
        return f"{BASE}/gather?turn={turn}", {"CallStatus": "in-progress",
                                              "SpeechResult": words,
                                              "Confidence": confidence}, expect

    def silence(self, turn: int, expect: str) -> Step:
        return f"{BASE}/no-input?turn={turn}", {"CallStatus": "in-progress"}, expect

    def queue_tail(self) -> list[Step]:
        """Twilio fetches the wait URL on entering the queue and again after each ~25 s of
        hold message; then the caller gives up: queue result, then the status callback."""
        polls = self.rng.choice([1, 2])
        waits = [(f"{BASE}/wait", {"CallStatus": "in-progress", "QueueSid": QUEUE_SID,
                                   "QueueTime": str(5 + 25 * i), "QueuePosition": "1",
                                   "AvgQueueTime": "60", "CurrentQueueSize": "1",
                                   "MaxQueueSize": "100"}, "hold") for i in range(polls)]
        left = (f"{BASE}/queue-result", {"CallStatus": "in-progress", "QueueResult": "hangup",
                                         "QueueSid": QUEUE_SID,
                                         "QueueTime": str(25 * polls + 5)}, "hangup")
        return [*waits, left, self.hang_up()]

    def hang_up(self) -> Step:
        seconds = self.rng.randint(20, 180)
        return f"{BASE}/status", {"CallStatus": "completed", "CallDuration": str(seconds),
                                  "Duration": str(-(-seconds // 60)),
                                  "Timestamp": time.strftime(
                                      "%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
                                  "CallbackSource": "call-progress-events",
                                  "SequenceNumber": "0"}, "empty"

    def digit(self, avoid: str | None = None) -> str:
        return self.rng.choice([d for d, t in self.keypad.self_service.items() if t != avoid])

    def question(self) -> str:
        return self.rng.choice(self.speech)

    def build(self, kind: str) -> tuple[list[Step], str | None]:
        """Steps of a new caller's call, and the contact type a resolved call was about."""
        rng, d = self.rng, self.digit()
        by_key = self.keypad.self_service[d]
        if kind == "keypad_yes":
            return [self.start(), self.press(1, d, "offered"), self.press(2, "1", "resolved"),
                    self.hang_up()], by_key
        if kind == "speech_yes":
            text = self.question()
            return [self.start(), self.speak(1, text, "offered"),
                    self.speak(2, rng.choice(YES_SPEECH), "resolved"),
                    self.hang_up()], self.predicted[text][0]
        if kind == "keypad_no":
            return [self.start(), self.press(1, d, "offered"), self.press(2, "2", "enqueued"),
                    *self.queue_tail()], None
        if kind == "speech_no":
            return [self.start(), self.speak(1, self.question(), "offered"),
                    self.speak(2, rng.choice(NO_SPEECH), "enqueued"), *self.queue_tail()], None
        if kind == "zero_first":
            return [self.start(), self.press(1, "0", "enqueued"), *self.queue_tail()], None
        if kind == "agent_only_key":
            key = rng.choice(self.keypad.agent_only)
            return [self.start(), self.press(1, key, "enqueued"), *self.queue_tail()], None
        if kind == "speech_agent":
            return [self.start(), self.speak(1, rng.choice(AGENT_SPEECH), "enqueued"),
                    *self.queue_tail()], None
        if kind == "hang_up_in_ivr":  # during the menu, or during the answer
            heard = [self.press(1, d, "offered")] if rng.random() < 0.5 else []
            return [self.start(), *heard, self.hang_up()], None
        if kind == "silence_then_key":
            return [self.start(), self.silence(1, "reprompt"), self.press(2, d, "offered"),
                    self.press(3, "1", "resolved"), self.hang_up()], by_key
        if kind == "two_silences":
            return [self.start(), self.silence(1, "reprompt"), self.silence(2, "enqueued"),
                    *self.queue_tail()], None
        if kind == "invalid_key":
            return [self.start(), self.press(1, "9", "reprompt"), self.press(2, d, "offered"),
                    self.press(3, "1", "resolved"), self.hang_up()], by_key
        raise ValueError(kind)

    def returning(self, earlier_type: str) -> list[Step]:
        """A caller whose last call was resolved hears "Welcome back": 1 (the same question
        again) goes to a person as a repeat contact; 2 is the menu, where they pick another
        topic (the same one would be a repeat too)."""
        if self.rng.random() < 0.5:
            return [self.start("welcome_back"), self.press(1, "1", "enqueued"),
                    *self.queue_tail()]
        return [self.start("welcome_back"), self.press(1, "2", "menu"),
                self.press(2, self.digit(avoid=earlier_type), "offered"),
                self.press(3, "1", "resolved"), self.hang_up()]


def calls(count: int, words: Utterances, keypad: Keypad, number_prefix: str, seed: int,
          mix: str = "realistic", block: int = 200):
    """Yield (call, step) for `count` requests or more."""
    kinds, weights = zip(*MIXES[mix])
    serials = itertools.count(1)
    scripts = Scripts(words, keypad, random.Random(seed + 1))

    def new_call(rng: random.Random, take_returning) -> Call:
        kind = rng.choices(kinds, weights)[0]
        serial = next(serials)
        sid = f"CA{rng.getrandbits(128):032x}"
        back = take_returning()
        if back is not None:
            return Call(back.number, back.place, sid, scripts.returning(back.contact_type),
                        False, None)
        steps, resolved_type = scripts.build(kind)
        return Call(f"{number_prefix}{serial:07d}", rng.choice(PLACES), sid, steps,
                    resolved_type is not None, resolved_type)

    return interleave(count, new_call, seed, MAX_STEPS, block)


def call_params(call: Call, extra: dict[str, str]) -> dict[str, str]:
    """The standard parameters of every voice webhook, in the order of the fixtures, then the
    ones of this request."""
    city, state, zip_code = call.place
    return {"AccountSid": ACCOUNT_SID, "ApiVersion": "2010-04-01", "CallSid": call.sid,
            "Direction": "inbound", "From": call.number, "Caller": call.number,
            "To": SERVICE_NUMBER, "Called": SERVICE_NUMBER, "FromCity": city,
            "FromState": state, "FromZip": zip_code, "FromCountry": "US", "ToCity": "",
            "ToState": "CA", "ToZip": "", "ToCountry": "US", "CallerCity": city,
            "CallerState": state, "CallerZip": zip_code, "CallerCountry": "US",
            "CalledCity": "", "CalledState": "CA", "CalledZip": "", "CalledCountry": "US",
            **extra}


def write_requests(path: Path, count: int, words: Utterances, keypad: Keypad,
                   public_url: str, auth_token: str, number_prefix: str, seed: int,
                   mix: str = "realistic", skip: int = 0) -> list[str | None]:
    """Write `count` signed voice webhooks (traffic.write_lines); returns the expected replies."""
    requests = ((url_path, call_params(call, extra), expect)
                for call, (url_path, extra, expect)
                in calls(skip + count, words, keypad, number_prefix, seed, mix))
    return write_lines(path, requests, count, public_url, auth_token, skip)
