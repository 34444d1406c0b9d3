"""Rules you can audit and roll back, against the real servers: every load records its cause,
version and diff; `rules history`, `rules diff`, `rules rollback` and `rules reload` at the
command line; `POST /api/rules/reload` for ops tokens."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.__main__ import main
from service.appkeys import PG, RULES
from service.infra.tokens import create_token
from tests.conftest import service_with_rules
from tests.test_rules_validation import CATALOG, ROUTES, write_rules

EXTRA_TRAINING = "text,contact_type\nwhere has my parcel gone,track_order\n"


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)


async def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def eventually(check, timeout_s: float = 20.0):
    for _ in range(int(timeout_s / 0.05)):
        if result := await check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


async def newest_load(capsys, cause: str) -> dict | None:
    """The newest entry of `rules history` once it is a load of this cause."""
    [load] = json.loads((await cli(capsys, "rules", "history", "--format", "json",
                                   "--limit", "1"))[1])
    return load if load["cause"] == cause else None


async def reload(client, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post("/api/rules/reload", headers=headers)
    return response.status, await response.json()


async def test_reloads_are_recorded_and_a_version_can_be_rolled_back(
        settings, redis_client, tmp_path, capsys, cli_env):
    (tmp_path / "rules").mkdir()
    directory = write_rules(tmp_path / "rules", catalog=CATALOG + "training_data: "
                            "[data/extra.csv]\n")
    (directory / "data").mkdir()
    (directory / "data" / "extra.csv").write_text(EXTRA_TRAINING)
    async with service_with_rules(settings, directory) as client:
        pool = client.app[PG]
        ops = await create_token(pool, "ops", name="deploy-bot")
        agent = await create_token(pool, "agent", name="someone")
        first = client.app[RULES].current.digest

        # Only ops tokens may reload; nothing is reloaded or recorded otherwise.
        assert (await reload(client, None))[0] == 401
        assert (await reload(client, "sb_ops_not-a-real-token"))[0] == 401
        assert (await reload(client, agent))[0] == 403

        # A change, reloaded through the API: recorded with the token's name and a diff.
        (directory / "routes.yaml").write_text(ROUTES.replace("priority: 5", "priority: 4"))
        (directory / "catalog.yaml").write_text(CATALOG)  # the extra training file is unused
        status, body = await reload(client, ops)
        assert status == 200 and body["ok"] and body["digest"] != first
        second = body["digest"]
        assert client.app[RULES].current.tree.root.settings.priority == 4

        # An invalid change is refused whole: 422 with the problem, the rules stay.
        (directory / "routes.yaml").write_text(ROUTES.replace("queue: orders", "queue: order"))
        status, body = await reload(client, ops)
        assert status == 422 and not body["ok"] and body["digest"] == second
        assert any("unknown queue 'order'" in e for e in body["errors"])
        assert client.app[RULES].current.digest == second
        (directory / "routes.yaml").write_text(ROUTES.replace("priority: 5", "priority: 4"))

        code, out, _ = await cli(capsys, "rules", "history", "--format", "json")
        failed, api, start = json.loads(out)[:3]
        assert (start["cause"], start["digest"], start["ok"]) == ("start", first, True)
        assert (api["cause"], api["actor"], api["digest"]) == ("api", "deploy-bot", second)
        assert api["previous_version"] == start["version"]
        assert "-  priority: 5\n+  priority: 4\n" in api["diff"]
        assert "-training_data: [data/extra.csv]\n" in api["diff"]
        assert (failed["cause"], failed["ok"], failed["version"]) == ("api", False, None)
        assert "unknown queue 'order'" in failed["errors"][0]

        code, out, _ = await cli(capsys, "rules", "history")
        assert code == 0 and "FAILED" in out and "deploy-bot" in out

        code, out, _ = await cli(capsys, "rules", "diff", str(start["version"]),
                                 str(api["version"]))
        assert code == 0
        assert f"--- v{start['version']}/routes.yaml\n+++ v{api['version']}/routes.yaml\n" in out
        assert "-  priority: 5\n+  priority: 4\n" in out
        assert (await cli(capsys, "rules", "diff", "v999999"))[0] == 1

        # A rollback to the first version fails now its training file is gone: nothing
        # changes, neither the files nor the rules in force nor the history.
        (directory / "data" / "extra.csv").unlink()
        before = {p.name: p.read_text() for p in directory.glob("*.yaml")}
        loads_before = await pool.fetchval("SELECT count(*) FROM rule_loads")
        code, _, err = await cli(capsys, "rules", "rollback", str(start["version"]),
                                 str(directory))
        assert code == 1
        assert "does not validate any more; nothing changed" in err
        assert f"{directory.resolve()}/catalog.yaml:16: training file 'data/extra.csv' " \
               "does not exist" in err
        assert {p.name: p.read_text() for p in directory.glob("*.yaml")} == before
        assert list(directory.parent.glob(".rollback-*")) == []
        await asyncio.sleep(0.3)
        assert client.app[RULES].current.digest == second
        assert await pool.fetchval("SELECT count(*) FROM rule_loads") == loads_before

        # With the file back, the rollback writes the files and the service reloads them.
        (directory / "data" / "extra.csv").write_text(EXTRA_TRAINING)
        code, out, _ = await cli(capsys, "rules", "rollback", f"v{start['version']}",
                                 str(directory))
        assert code == 0 and f"restored v{start['version']}" in out
        await eventually(lambda: _is(client.app[RULES].current.digest, first))
        assert client.app[RULES].current.tree.root.settings.priority == 5
        # the rules are swapped in before the load is recorded (an outage of PostgreSQL must
        # not undo a load): the record follows within moments
        rollback = await eventually(lambda: newest_load(capsys, "rollback"))
        assert (rollback["cause"], rollback["version"]) == ("rollback", start["version"])
        assert rollback["actor"].endswith(f"(to v{start['version']})")
        assert "-  priority: 4\n+  priority: 5\n" in rollback["diff"]

        # `rules reload` reaches the running service too.
        (directory / "routes.yaml").write_text(ROUTES.replace("priority: 5", "priority: 6"))
        assert (await cli(capsys, "rules", "reload"))[0] == 0
        await eventually(lambda: _is(client.app[RULES].current.tree.root.settings.priority, 6))
        by_cli = await eventually(lambda: newest_load(capsys, "cli"))
        assert by_cli["cause"] == "cli" and by_cli["ok"]


async def _is(actual, expected) -> bool:
    return actual == expected
