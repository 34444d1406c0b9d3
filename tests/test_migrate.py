import asyncio

import asyncpg

from service.infra.migrate import discover, migrate


async def test_two_instances_migrating_at_once_apply_each_migration_once(server_urls):
    admin = await asyncpg.connect(server_urls[0])
    await admin.execute("CREATE DATABASE switchboard_migrate_race")
    url = server_urls[0].replace("/postgres?", "/switchboard_migrate_race?")
    try:
        first, second = await asyncpg.connect(url), await asyncpg.connect(url)
        applied = await asyncio.gather(migrate(first), migrate(second))
        expected = [m.version for m in discover()]
        assert sorted(applied, key=len) == [[], expected]
        rows = await first.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == expected
        assert await migrate(first) == []
        await first.close()
        await second.close()
    finally:
        await admin.execute("DROP DATABASE switchboard_migrate_race WITH (FORCE)")
        await admin.close()


async def test_partitioning_the_log_keeps_every_event_and_builds_the_facts(server_urls, tmp_path):
    import shutil

    from service.infra.migrate import MIGRATIONS_DIR
    from service.reporting import reports
    from tests.test_reports import COLUMNS, RULES, WIDE, mixed_day

    before = tmp_path / "before"
    before.mkdir()
    for migration in discover():
        if migration.version < 4:
            shutil.copy(migration.path, before)
    admin = await asyncpg.connect(server_urls[0])
    await admin.execute("CREATE DATABASE switchboard_migrate_partitions")
    url = server_urls[0].replace("/postgres?", "/switchboard_migrate_partitions?")
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn, before)
        rows = sorted((row for c in mixed_day() for row in c.rows), key=lambda r: r[1])
        await conn.copy_records_to_table("contact_events", records=rows, columns=COLUMNS)
        seqs = await conn.fetch("SELECT id, seq FROM contact_events ORDER BY seq")
        assert 4 in await migrate(conn, MIGRATIONS_DIR)
        assert await conn.fetch("SELECT id, seq FROM contact_events ORDER BY seq") == seqs
        assert await conn.fetchval("SELECT count(*) FROM contact_events_2024_05") == len(rows)
        served = await reports.summary(conn, WIDE, RULES)
        reference = await reports.summary(conn, WIDE, RULES, queries=reports.FROM_EVENTS)
        assert served["totals"] == reference["totals"] and served["totals"]["contacts"] == 11
        await conn.close()
    finally:
        await admin.execute("DROP DATABASE switchboard_migrate_partitions WITH (FORCE)")
        await admin.close()


async def test_a_role_that_may_not_create_extensions_still_migrates(server_urls):
    """The service's role owns its schema but not the database: it cannot create pg_trgm, so
    the name search's index is left out (a warning) and every migration still applies."""
    admin = await asyncpg.connect(server_urls[0])
    await admin.execute("CREATE ROLE switchboard_plain LOGIN PASSWORD 'plain'")
    await admin.execute("CREATE DATABASE switchboard_migrate_plain")
    url = server_urls[0].replace("/postgres?", "/switchboard_migrate_plain?")
    try:
        owner = await asyncpg.connect(url)
        await owner.execute("ALTER SCHEMA public OWNER TO switchboard_plain")
        await owner.close()
        plain = await asyncpg.connect(url, user="switchboard_plain", password="plain")
        try:
            assert await migrate(plain) == [m.version for m in discover()]
            assert not await plain.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")
            assert not await plain.fetchval(
                "SELECT to_regclass('customers_display_name_trgm') IS NOT NULL")
        finally:
            await plain.close()
    finally:
        await admin.execute("DROP DATABASE switchboard_migrate_plain WITH (FORCE)")
        await admin.execute("DROP ROLE switchboard_plain")
        await admin.close()
