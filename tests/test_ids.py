"""Cheap random ids: valid version-4 UUIDs, never repeated, not even across a fork."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from service.infra.ids import new_hex, new_uuid

ROOT = Path(__file__).resolve().parent.parent
CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_uuids_are_canonical_version_4_text():
    for _ in range(2000):
        text = new_uuid()
        parsed = uuid.UUID(text)
        assert CANONICAL.fullmatch(text) and str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_uuids_do_not_repeat_and_every_random_digit_varies():
    ids = [new_uuid() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    fixed = [i for i in range(36) if len({text[i] for text in ids}) == 1]
    assert fixed == [8, 13, 14, 18, 23]  # the dashes and the version digit
    assert {text[19] for text in ids} == set("89ab")


def test_hex_strings_have_the_asked_length():
    for length in (0, 1, 8, 16, 31, 32, 33, 64, 100):
        text = new_hex(length)
        assert len(text) == length and re.fullmatch(r"[0-9a-f]*", text)
    assert len({new_hex(16) for _ in range(10_000)}) == 10_000
    assert len(new_hex()) == 32


def test_threads_never_get_the_same_id():
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        into.extend(new_uuid() for _ in range(20_000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [text for into in drawn for text in into]
    assert len(set(ids)) == len(ids) == 160_000


def test_a_forked_child_does_not_repeat_its_parent():
    new_uuid(), new_hex(8)  # the parent holds drawn ids when it forks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        os.write(write_end, " ".join([new_uuid() for _ in range(100)] + [new_hex(8)]).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {new_uuid() for _ in range(100)} | {new_hex(8)}
    assert len(child) == 101 and not child & parent


def test_processes_draw_different_ids():
    script = "from service.infra.ids import new_uuid; print(new_uuid())"
    ids = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip() for _ in range(3)}
    assert len(ids) == 3 and new_uuid() not in ids
