"""Customers who write faster than a person can, and other bots answering ours.

Checked on channels where the customer writes when they like (`ChannelTraits.customer_paced`),
before the bot answers; an agent's contact is never held back. Pure functions over the
conversation record: turns of one conversation are applied one at a time, so the record's
recent arrival times are exact on any instance.

- **Rate limit**: more than `BURST` texts within `BURST_WINDOW_S` seconds. The first one over
  is answered once ("slow down"), the rest are acknowledged silently; every one is still heard
  (transcript, `received` event) and counted (`rate_limited`).
- **Loop breaker**: another bot answering ours echoes our words back or repeats itself (texts
  of `MIN_LOOP_WORDS` words or more). `LOOP_HITS` such texts in a row end the contact
  (`bot_loop`) and mute the address for `MUTE_S` seconds: texts are then recorded
  (`received_while_muted`), never answered, and carrier keywords (STOP, START, HELP) still
  work.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from service.conversations.record import Conversation

BURST = 6
BURST_WINDOW_S = 10.0
LOOP_HITS = 2
MIN_LOOP_WORDS = 3  # "agent", "yes", "1" repeated are a person insisting, not a bot
MUTE_S = 3600
KEPT_ARRIVALS = BURST + 1

Verdict = Literal["answer", "slow_down", "quiet", "loop"]
_NOT_WORDS = re.compile(r"[^\w]+")


def pace(conv: Conversation, text: str, now: float) -> Verdict:
    """What to do with a customer's text, before it is added to the transcript."""
    arrivals = [*conv.get("arrivals", ()), now][-KEPT_ARRIVALS:]
    conv["arrivals"] = arrivals
    conv["loop_hits"] = conv.get("loop_hits", 0) + 1 if _echoes(conv, text) else 0
    if conv["loop_hits"] >= LOOP_HITS:
        return "loop"
    if len(arrivals) > BURST and now - arrivals[-BURST - 1] < BURST_WINDOW_S:
        first = not conv.get("rate_limited")
        conv["rate_limited"] = True
        return "slow_down" if first else "quiet"
    conv["rate_limited"] = False
    return "answer"


def _echoes(conv: Conversation, text: str) -> bool:
    """The text repeats the customer's previous one, or one of our last three lines."""
    said = _normal(text)
    if len(said.split()) < MIN_LOOP_WORDS:
        return False
    transcript = conv.get("transcript", [])
    previous = next((line["text"] for line in reversed(transcript)
                     if line["from"] == "customer"), None)
    ours = [line["text"] for line in transcript[-6:] if line["from"] == "bot"][-3:]
    return said == _normal(previous or "") or any(said == _normal(line) for line in ours)


@functools.lru_cache(maxsize=512)  # our prompts and the customer's last text recur turn on turn
def _normal(text: str) -> str:
    return _NOT_WORDS.sub(" ", text.lower()).strip()
