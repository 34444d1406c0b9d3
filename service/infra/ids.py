"""Random ids, cheaply: version-4 UUIDs and hex strings cut from os.urandom drawn in bulk.

The bytes come from the operating system's CSPRNG, as uuid.uuid4() uses, but one read serves
256 ids instead of one, and ids are formatted in batches. They are unguessable enough for ids,
not meant for secrets or tokens (use the secrets module). A forked child discards the ids it
inherited, so parent and child never hand out the same ones.
"""

from __future__ import annotations

import hashlib
import os
import uuid

BATCH = 256
_VARIANT = str.maketrans("0123456789abcdef", "89ab89ab89ab89ab")  # RFC 4122 variant: 10xx

_uuids: list[str] = []
_hexes: list[str] = []


def new_uuid() -> str:
    """A random version-4 UUID in canonical text form (36 characters), e.g. for a uuid column."""
    while True:
        try:
            return _uuids.pop()  # atomic: threads never get the same id
        except IndexError:  # other threads may empty a new batch before we pop: draw again
            _uuids.extend(_uuid_batch())


def new_hex(length: int = 32) -> str:
    """`length` random lowercase hex characters (4 random bits each)."""
    parts = []
    while length > 0:
        try:
            chunk = _hexes.pop()
        except IndexError:
            _hexes.extend(_hex_batch())
            continue
        parts.append(chunk[:length])
        length -= 32
    return "".join(parts)


def _uuid_batch() -> list[str]:
    h = os.urandom(16 * BATCH).hex()
    variants = h[16::32].translate(_VARIANT)
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{v}{h[i + 17:i + 20]}-"
            f"{h[i + 20:i + 32]}" for v, i in zip(variants, range(0, 32 * BATCH, 32))]


def _hex_batch() -> list[str]:
    h = os.urandom(16 * BATCH).hex()
    return [h[i:i + 32] for i in range(0, 32 * BATCH, 32)]


def _forget() -> None:
    _uuids.clear()
    _hexes.clear()


# Checked at fork rather than per call: os.getpid() costs a system call, more than an id does.
os.register_at_fork(after_in_child=_forget)


def stable_point(key: str) -> float:
    """The key's place in [0, 1), the same in every process: the first 8 bytes of SHA-256 of
    it (survey sampling, experiment arms, canary shares; no round trip, never random)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64


def is_uuid(text: str) -> bool:
    """Whether `text` reads as a UUID (any of the forms uuid.UUID accepts)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
