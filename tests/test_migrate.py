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
