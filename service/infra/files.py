"""Files uploaded to the service itself, kept in PostgreSQL (`uploaded_files`, migration 025).

A web chat customer's photo or receipt and a file an agent sends are kept here under a random
id, at most `MAX_FILE_BYTES`. The type is checked from the bytes, not taken on the client's
word: an image (PNG, JPEG, GIF, WebP) or a PDF is recognised by its magic bytes and kept as
such whatever the client said; a claimed image or PDF that is not one is refused; anything
else is kept as `text/plain` when claimed so, else `application/octet-stream` (served as a
download, never rendered). The key that signs file URLs and chat upload credentials lives in
the database too (`uploaded_files_key`), so every instance signs alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Callable

import asyncpg
import structlog

from service.model import (
    MAX_FILE_BYTES,
    AttachmentBody,
    FileRefused,
    FilesUnavailable,
    StoredFile,
)

log = structlog.get_logger(__name__)

# Magic bytes of the types shown inline or opened by a browser's viewer.
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
               (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
PDF_MAGIC = b"%PDF-"
OTHER_TYPE = "application/octet-stream"
_DATABASE_DOWN = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


def sniffed_type(data: bytes, claimed: str) -> str:
    """The type a file is kept as, from its bytes; FileRefused when it is empty, too large,
    or a claimed image or PDF that the bytes are not."""
    if not data:
        raise FileRefused("empty", "the file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise FileRefused("too_large", f"the file is over {MAX_FILE_BYTES // (1024 * 1024)} MB")
    claimed = claimed.split(";", 1)[0].strip().lower()
    found = _magic_type(data)
    if found is not None:
        return found
    if claimed.startswith("image/"):
        raise FileRefused("not_image", f"the file is not a {claimed} image (PNG, JPEG, GIF "
                          "and WebP images are taken)")
    if claimed == "application/pdf":
        raise FileRefused("not_pdf", "the file is not a PDF document")
    return "text/plain" if claimed == "text/plain" else OTHER_TYPE


def _magic_type(data: bytes) -> str | None:
    for magic, kind in IMAGE_MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/pdf" if data.startswith(PDF_MAGIC) else None


class PgFileStore:
    """`model.FileStore` on PostgreSQL; `start` reads (or makes) the signing key."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]):
        self._pool = pool  # the app's pool, made after the channels that hold this store
        self._key = b""

    async def start(self) -> None:
        """Read the shared signing key, making it when this is the first instance."""
        async with self._pool().acquire() as conn:
            await conn.execute("INSERT INTO uploaded_files_key (key) VALUES ($1) "
                               "ON CONFLICT DO NOTHING", os.urandom(32))
            self._key = bytes(await conn.fetchval("SELECT key FROM uploaded_files_key"))

    async def put(self, data: bytes, claimed_type: str) -> StoredFile:
        """Keep the bytes under a new random id, their type sniffed."""
        kind = sniffed_type(data, claimed_type)
        file_id = secrets.token_hex(16)  # unguessable, though URLs are signed too
        try:
            await self._pool().execute(
                "INSERT INTO uploaded_files (id, content_type, size, data) VALUES ($1, $2, $3, "
                "$4)", file_id, kind, len(data), data, timeout=10)
        except _DATABASE_DOWN as exc:
            log.error("files.not_stored", error=str(exc))
            raise FilesUnavailable(str(exc)) from exc
        log.info("files.stored", file_id=file_id[:8], content_type=kind, size=len(data))
        return StoredFile(file_id, kind, len(data))

    async def get(self, file_id: str) -> AttachmentBody | None:
        """The file's bytes and type, or None when there is no such file."""
        try:
            row = await self._pool().fetchrow(
                "SELECT content_type, data FROM uploaded_files WHERE id = $1", file_id,
                timeout=10)
        except _DATABASE_DOWN as exc:
            raise FilesUnavailable(str(exc)) from exc
        return AttachmentBody(row["content_type"], bytes(row["data"])) if row else None

    async def delete(self, file_id: str) -> None:
        """Delete the file; one already gone counts as deleted."""
        try:
            await self._pool().execute("DELETE FROM uploaded_files WHERE id = $1", file_id,
                                       timeout=10)
        except _DATABASE_DOWN as exc:
            raise FilesUnavailable(str(exc)) from exc

    def mac(self, text: str) -> str:
        """Hex HMAC-SHA256 of `text` under the shared key."""
        if not self._key:
            raise FilesUnavailable("the file store has not started")
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()
