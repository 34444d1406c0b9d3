"""The switchboard command line against the real servers."""

from __future__ import annotations

import json

import asyncpg

from service.__main__ import main
from service.agents.desk import agent_for_token


def use_servers(monkeypatch, database_url, redis_url):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)


async def test_agents_add_prints_the_token_alone_on_its_last_line(monkeypatch, capsys,
                                                                  database_url, redis_url):
    use_servers(monkeypatch, database_url, redis_url)
    import asyncio
    code = await asyncio.to_thread(main, ["agents", "add", "Dana", "--skills", "care,orders",
                                          "--capacity", "voice=1,chat=2,sms=4"])
    assert code == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        agent = await agent_for_token(pool, token)
        stored = await pool.fetchval("SELECT token_hash FROM agents WHERE id = $1::uuid",
                                     agent["id"])
    assert (agent["name"], agent["skills"]) == ("Dana", ["care", "orders"])
    assert agent["capacity"] == {"voice": 1, "chat": 2, "sms": 4}
    assert token not in stored  # only the hash is kept


def test_agents_add_rejects_bad_capacity(monkeypatch, capsys, database_url, redis_url):
    use_servers(monkeypatch, database_url, redis_url)
    assert main(["agents", "add", "Dana", "--skills", "care", "--capacity", "fax=2"]) == 2
    assert "capacity takes chat, sms, voice and whatsapp" in capsys.readouterr().err


def test_rules_test_prints_the_decision_and_route_path(capsys):
    assert main(["rules", "test", "routing_rules", "channel=sms", "contact_type=track_order",
                 "customer.tier=vip"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["route_path"] == "root > vip"
    assert (decision["queue"], decision["self_service"], decision["reason"]) == \
        ("vip", False, "vip_customer")
    assert main(["rules", "test", "routing_rules", "contact_type=biling"]) == 1
    assert "unknown contact_type 'biling'" in capsys.readouterr().err
    assert main(["rules", "test", "routing_rules", "nonsense"]) == 1


def test_rules_test_can_classify_text(capsys):
    assert main(["rules", "test", "routing_rules", "text=I forgot my password and can't log "
                 "in"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["input"]["contact_type"] == "recover_password"
    assert decision["route_path"] == "root > accounts"
    assert decision["self_service_path"] == "answer"


def test_rules_test_says_what_a_live_turn_would_do_with_text(capsys):
    """The same understanding as a live turn: a request for a person, or a clarifying question."""
    assert main(["rules", "test", "text=I want to talk to a person"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert (decision["self_service_path"], decision["route_path"]) == \
        ("agent (requested_agent)", "root")
    assert "contact_type" not in decision["input"]
    assert main(["rules", "test", "channel=voice", "text=what's the weather like tomorrow"]) == 0
    assert json.loads(capsys.readouterr().out)["self_service_path"] == (
        "clarifying question (out_of_scope; offers track_order, cancel_order, get_refund)")


async def test_customers_add_moves_an_address_only_to_a_named_customer(monkeypatch, capsys,
                                                                       database_url, redis_url):
    import asyncio
    use_servers(monkeypatch, database_url, redis_url)

    async def add(*args: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, ["customers", "add", *args])
        out, err = capsys.readouterr()
        return code, out.strip(), err

    code, ana, _ = await add("--phone", "+15555550401", "--name", "Ana")
    assert code == 0
    code, ben, _ = await add("--phone", "+15555550402", "--name", "Ben")
    assert code == 0 and ben != ana
    code, out, err = await add("--phone", "+15555550401", "--phone", "+15555550402")
    assert code == 2 and out == ""
    assert f"phone +15555550401 belongs to {ana}" in err and "--customer ID" in err
    assert (await add("--phone", "+15555550401", "--customer", "nobody"))[2] == \
        "switchboard: not a customer id: 'nobody'\n"
    missing = "00000000-0000-0000-0000-000000000404"
    assert (await add("--phone", "+15555550401", "--customer", missing))[2] == \
        f"switchboard: no customer {missing}\n"
    assert await add("--phone", "+15555550401", "--customer", ben) == (0, ben, "")
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        owners = await pool.fetch("SELECT value, customer_id::text AS owner FROM "
                                  "customer_identities WHERE value LIKE '+1555555040_'")
    assert {r["value"]: r["owner"] for r in owners} == {"+15555550401": ben,
                                                        "+15555550402": ben}
