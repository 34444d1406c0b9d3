"""Where the server's CPU goes: py-spy's collapsed stacks, sorted into the parts of a turn.

    py-spy record --pid PID --format raw --output stacks.txt --duration 15
    python load_tests/profile_breakdown.py stacks.txt [--us-per-request 450]

Each sample (a stack, root first) is charged to one part. Parts that own everything below them
(signature validation includes its HMAC and string building; logging includes the JSON it
renders) are matched from the root down, and the outermost one wins. Samples outside those
parts are charged by their innermost frame to a library (JSON, aiohttp, the event loop) or to
the service's own Python (orchestrator).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path
from typing import Iterator

# (part, pattern over one frame 'function (file:line)'), outermost match wins.
OWNERS = [
    ("signature validation (RequestValidator)",
     re.compile(r"twilio/request_validator\.py|\b_valid \(.*channels/twilio_auth\.py")),
    ("form parsing (aiohttp request.post)", re.compile(r"\bpost \(.*aiohttp/web_request\.py")),
    ("TwiML rendering (twilio MessagingResponse, VoiceResponse)", re.compile(r"twilio/twiml/")),
    ("logging (structlog, contextvars)", re.compile(r"structlog/|[(/]logging/__init__\.py")),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client/")),
    ("classifier (predict)", re.compile(r"service/understanding/")),
    ("routing tree (decide)", re.compile(r"service/rules/routing\.py")),
    ("event spool (emit)",
     re.compile(r"\b(emit|to_line) \(.*service/reporting/events\.py")),
    ("event writer (COPY to PostgreSQL)", re.compile(r"service/reporting/events\.py")),
    ("customer look-up (PostgreSQL)", re.compile(r"service/conversations/customers\.py")),
    ("stored reply (Reply.to_json: dataclasses.asdict)",
     re.compile(r"\bto_json \(.*service/model\.py")),
    ("queue + dispatch (Dispatcher, Lua scripts)", re.compile(r"service/agents/queues\.py")),
    ("Redis client (CommandBatcher, redis-py)",
     re.compile(r"service/infra/redis_batch\.py|[(/]redis/|hiredis")),
    ("asyncpg (other)", re.compile(r"asyncpg/")),
]
# With uvloop the loop is C code under aiohttp's run_app: a sample whose innermost Python frame
# is run_app itself is the event loop at work (polling, socket I/O, callbacks' C side).
C_LOOP = re.compile(r"^run_app \(.*aiohttp/web\.py")
LOOP_PART = "event loop and socket I/O (asyncio or uvloop)"


# Innermost frame -> part, for samples no owner claimed.
# py-spy prints paths relative to site-packages or the standard library: "(json/encoder.py:258)".
LEAVES = [
    ("JSON encode/decode (context state, replies)", re.compile(r"[(/]json/")),
    ("uuid4", re.compile(r"[(/]uuid\.py")),
    ("aiohttp (HTTP parsing, routing, response)", re.compile(r"aiohttp/|multidict/|yarl/")),
    (LOOP_PART,
     re.compile(r"[(/]asyncio/|[(/]selectors\.py|[(/]socket\.py")),
    ("orchestrator (conversation, context, handoff, channels)",
     re.compile(r"service/|channels/")),
]


def classify(frames: list[str]) -> str:
    for frame in frames:  # root first: the outermost owner wins
        for part, pattern in OWNERS:
            if pattern.search(frame):
                return part
    if C_LOOP.match(frames[-1]):
        return LOOP_PART
    for frame in reversed(frames):  # innermost first
        for part, pattern in LEAVES:
            if pattern.search(frame):
                return part
    return "other (interpreter, GC, C extensions)"


# An idle thread-pool worker (the rules loader's executor) waiting for work: py-spy reports it
# as active, but it uses no CPU.
IDLE_WORKER = re.compile(r"^_worker \(.*concurrent/futures/thread\.py")


def samples(collapsed: Path) -> Iterator[tuple[list[str], int]]:
    """(frames root first, count) from py-spy's raw output 'frame;frame;... count'."""
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if frames and not IDLE_WORKER.match(frames[-1]):
            yield frames, int(count)


def breakdown(collapsed: Path) -> tuple[collections.Counter[str], int]:
    """Samples per part."""
    parts: collections.Counter[str] = collections.Counter()
    for frames, count in samples(collapsed):
        parts[classify(frames)] += count
    return parts, sum(parts.values())


def top_functions(collapsed: Path, limit: int = 15) -> list[tuple[str, int]]:
    """Self time: the innermost Python frame of each sample."""
    leaves: collections.Counter[str] = collections.Counter()
    for frames, count in samples(collapsed):
        leaves[frames[-1]] += count
    return leaves.most_common(limit)


def inclusive(collapsed: Path, limit: int = 25) -> list[tuple[str, int]]:
    """Inclusive time: samples in which a function appears at least once."""
    functions: collections.Counter[str] = collections.Counter()
    for frames, count in samples(collapsed):
        for name in {f.split(" (")[0] for f in frames}:
            functions[name] += count
    return functions.most_common(limit)


# Webhook handlers, by the path they serve: the handler on a sample's stack says which kind
# of request the sample worked for.
HANDLER_PATHS = {"TwilioMessaging.incoming": "/twilio/sms", "TwilioVoice.incoming": "/twilio/voice",
                 "TwilioVoice.gathered": "/twilio/voice/gather",
                 "TwilioVoice.no_input": "/twilio/voice/no-input",
                 "TwilioVoice.wait": "/twilio/voice/wait",
                 "TwilioVoice.left_queue": "/twilio/voice/queue-result",
                 "TwilioVoice.status": "/twilio/voice/status"}


def by_webhook(collapsed: Path) -> collections.Counter[str | None]:
    """Samples per webhook path, inclusive of all its handler calls (None: outside any
    handler: HTTP parsing before the handler, the event loop, the event writer, timers)."""
    paths: collections.Counter[str | None] = collections.Counter()
    for frames, count in samples(collapsed):
        names = (f.split(" (")[0] for f in frames)
        paths[next((HANDLER_PATHS[n] for n in names if n in HANDLER_PATHS), None)] += count
    return paths


# Functions worth pricing one by one (inclusive: with everything they call).
WATCHED = ["TwilioMessaging.incoming", "TwilioVoice.incoming", "TwilioVoice.gathered",
           "TwilioVoice.wait", "TwilioVoice.left_queue", "TwilioVoice.status",
           "Conversations._hold", "Dispatcher.position", "Dispatcher.remove", "Dispatcher.entry",
           "TwilioSignature.verified_form", "BaseRequest.post",
           "TwilioSignature._valid", "handle_turn", "Conversations.handle",
           "ContextStore.begin_turn", "ContextStore.commit_turn", "Conversations._open_contact",
           "Classifier.predict", "features", "Handoff.dispatch", "Dispatcher.enqueue",
           "Dispatcher.append_message", "render", "render_hold", "TwiML.to_xml", "Reply.to_json",
           "EventWriter.emit",
           "EventWriter._run", "CommandBatcher.execute", "CommandBatcher._flush",
           "CommandBatcher._read", "AbstractConnection.read_response", "timeout", "wait_for",
           "uuid4", "request_context"]


def watched(collapsed: Path) -> list[tuple[str, float]]:
    shares = dict(inclusive(collapsed, limit=10**6))
    total = sum(count for _, count in samples(collapsed))
    return [(name, shares.get(name, 0) / total) for name in WATCHED]


def render(parts: collections.Counter[str], total: int,
           us_per_request: float | None = None) -> str:
    lines = ["| part | share of server CPU |" + (" us per request |" if us_per_request else ""),
             "|---|---:|" + ("---:|" if us_per_request else "")]
    for part, samples in parts.most_common():
        share = samples / total if total else 0.0
        row = f"| {part} | {share:6.1%} |"
        if us_per_request:
            row += f" {share * us_per_request:6.0f} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("--us-per-request", type=float)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    parts, total = breakdown(args.collapsed)
    print(f"{total} samples")
    print(render(parts, total, args.us_per_request))
    print("\ninclusive time of selected functions:")
    for name, share in watched(args.collapsed):
        line = f"{share:6.1%}  {name}"
        if args.us_per_request:
            line += f"  ({share * args.us_per_request:.0f} us per request)"
        print(line)
    print("\nself time, innermost frame:")
    for frame, samples in top_functions(args.collapsed, args.top):
        print(f"{samples / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
