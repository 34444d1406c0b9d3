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
