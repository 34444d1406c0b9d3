"""Real servers for the whole test session: PostgreSQL and a Redis-compatible server.

DATABASE_URL / REDIS_URL point the tests at servers you run; unset, the embedded servers
start once per session. Each session gets its own database, dropped at the end. Tests that
ask for `valkey_cluster` or `valkey_sentinel` get a real cluster or Sentinel deployment,
started once per session from the same pip-installed server.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.infra.embedded import servers
from service.infra.logs import configure_logging
from service.infra.migrate import migrate
from service.settings import Settings
from tests.valkey_topology import Cluster, SentinelGroup, cluster, sentinel_group

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "routing_rules"
NO_TWILIO = "http://127.0.0.1:9"  # the discard port: nothing listens
PUBLIC_URL = "https://switchboard.example.test"
AUTH_TOKEN = "test-auth-token"


@pytest.fixture(scope="session", autouse=True)
def logs_on_stderr() -> None:
    """The service's log lines go to stderr, as in production, so that a command's output on
    stdout (a report as JSON or CSV) never has a background task's log line in it."""
    configure_logging("console", "info")


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("servers")
    with servers(os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL"), data_dir) as urls:
        yield urls.database_url, urls.redis_url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def database_url(server_urls) -> AsyncIterator[str]:
    admin_url, _ = server_urls
    name = f"switchboard_test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(admin_url, name)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
def redis_url(server_urls) -> str:
    return server_urls[1]


@pytest.fixture
async def redis_client(redis_url) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def settings(database_url, redis_url, tmp_path) -> Settings:
    # Twilio's REST API is the stand-in's (tests/twilio_standin.py) where a test starts one;
    # elsewhere a closed loopback port, so no test ever reaches the internet.
    return Settings(public_url=PUBLIC_URL, database_url=database_url, redis_url=redis_url,
                    twilio_auth_token=AUTH_TOKEN, rules_dir=RULES_DIR, data_dir=tmp_path / "data",
                    log_format="console", twilio_api_base_url=NO_TWILIO)


@pytest.fixture
async def db(database_url) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the migrated test database (the service migrates on start too; tests
    that write before starting one must not depend on another test having started it)."""
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    yield conn
    await conn.close()


async def _clean_tables(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('contact_events') IS NOT NULL"):
            await conn.execute("TRUNCATE contact_events, customer_identities, "
                               "customers, rule_versions CASCADE")
        if await conn.fetchval("SELECT to_regclass('outbox') IS NOT NULL"):
            await conn.execute("TRUNCATE outbox")
        if await conn.fetchval("SELECT to_regclass('uploaded_files') IS NOT NULL"):
            await conn.execute("TRUNCATE uploaded_files")
    finally:
        await conn.close()


@pytest.fixture
async def client(settings, redis_client) -> AsyncIterator[TestClient]:
    """The whole service, on real servers, with empty state."""
    await _clean_tables(settings.database_url)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def with_settings(settings: Settings, **changes) -> Settings:
    return replace(settings, **changes)


@asynccontextmanager
async def service_with_rules(settings: Settings, rules_dir: Path) -> AsyncIterator[TestClient]:
    """The whole service on another rules directory, with empty state."""
    await _clean_tables(settings.database_url)
    app = create_app(with_settings(settings, rules_dir=rules_dir))
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A real 3-primary, 3-replica Redis Cluster on loopback, for the whole session."""
    with cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="session")
def valkey_sentinel(tmp_path_factory) -> Iterator[SentinelGroup]:
    """A real primary, replica and 3 sentinels on loopback, for the whole session."""
    with sentinel_group(tmp_path_factory.mktemp("sentinel")) as started:
        yield started


@contextmanager
def service_logs(capsys, level: str) -> Iterator[Callable[[], str]]:
    """The service's own log output while the block runs, JSON as production writes it, at
    `level`; logging as it was afterwards."""
    root = logging.getLogger()
    handlers, before = root.handlers[:], root.level
    configure_logging("json", level)
    try:
        yield lambda: capsys.readouterr().err
    finally:
        root.handlers[:] = handlers
        root.setLevel(before)
