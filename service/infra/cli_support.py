"""What the `switchboard` commands share: the database they run against, errors, cells.

Every command is `func(args, settings) -> exit code`; those that read or write PostgreSQL run
their job through `with_database`, which starts the embedded server when no URL is set and
migrates first, so a command works on a fresh machine as `make run` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterator

from service.settings import Settings


def fail(message: str, code: int = 1) -> int:
    """Say what went wrong on standard error; the exit code to return."""
    print(f"switchboard: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def servers(settings: Settings) -> Iterator[Settings]:
    """The settings with both URLs filled in: the embedded servers for those not set."""
    from service.infra.embedded import servers as embedded_servers

    with embedded_servers(settings.database_url, settings.redis_url, settings.data_dir) as urls:
        yield replace(settings, database_url=urls.database_url, redis_url=urls.redis_url)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured PostgreSQL, or the embedded one under the data directory."""
    if settings.database_url:
        yield settings.database_url
        return
    from service.infra.embedded import embedded_postgres

    with embedded_postgres(settings.data_dir) as url:
        yield url


async def connect(url: str):
    """A connection to a migrated database."""
    import asyncpg

    from service.infra.migrate import migrate

    conn = await asyncpg.connect(url)
    await migrate(conn)
    return conn


def with_database(settings: Settings, job: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `job(conn)` against the migrated database (the embedded one when no URL is set)."""
    async def run(url: str) -> Any:
        conn = await connect(url)
        try:
            return await job(conn)
        finally:
            await conn.close()

    with database(settings) as url:
        return asyncio.run(run(url))


def invoking_user() -> str:
    """Who runs the command, for the audit trail."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown user"


def csv_value(value: Any) -> Any:
    """A CSV cell: an empty field for a missing value."""
    return "" if value is None else value


def percent(value: float) -> str:
    """A rate as a table shows it."""
    return f"{100 * value:.1f}%"
