"""The whole service on a real Redis Cluster and a real Sentinel deployment: every channel and
the agents' desk on each; a slot moved during traffic and a primary failed over during
traffic lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from typing import Iterator

import pytest
import redis as sync_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from channels.twilio_sms import FALLBACK
from service.agents.bus import Bus
from service.infra import redis_batch
from service.infra.redis_batch import ClusterBatcher, batcher_for
from service.infra.redis_url import (
    BUS_HOME_KEY,
    client_for,
    close_client,
    publisher_for,
    subscriber_for,
)
from tests import test_agents
from tests.conftest import with_settings
from tests.test_agents import app_settings, instance, login, twilio  # noqa: F401 (fixtures)
from tests.twilio_driver import text
from tests.valkey_topology import MASTER_NAME, wait_until

ENTRIES = "sb:{routing}:entries"


@pytest.fixture(params=["cluster", "sentinel"])
def shape_url(request) -> str:
    """The REDIS_URL of a real cluster or Sentinel deployment, emptied."""
    if request.param == "cluster":
        deployment = request.getfixturevalue("valkey_cluster")
        for primary in deployment.primaries():
            primary.flushall()
    else:
        deployment = request.getfixturevalue("valkey_sentinel")
        deployment.primary().flushall()
    return deployment.url


@pytest.fixture
def ha_settings(app_settings, shape_url):  # noqa: F811
    return with_settings(app_settings, redis_url=shape_url)


async def test_sms_escalation_and_an_agent_on_each_shape(ha_settings, db, twilio):  # noqa: F811
    await test_agents.test_sms_escalation_reaches_an_agent_with_context_and_replies_go_by_sms(
        ha_settings, db, twilio)


async def test_voice_escalation_and_bridging_on_each_shape(ha_settings, db, twilio):  # noqa: F811
    await test_agents.test_voice_escalation_reaches_an_agent_and_accepting_bridges_the_call(
        ha_settings, db, twilio)


async def test_chat_across_two_instances_on_each_shape(ha_settings, db):
    await test_agents.test_chat_customer_on_one_instance_agent_on_another(ha_settings, db)


async def test_readiness_checks_redis_of_each_shape(ha_settings):
    async with instance(ha_settings) as client:
        response = await client.get("/readyz")
        assert (response.status, (await response.json())["checks"]["redis"]) == (200, "ok")


async def test_a_turns_keys_are_spread_over_the_cluster_nodes(valkey_cluster):
    batcher = batcher_for(valkey_cluster.url)
    assert isinstance(batcher, ClusterBatcher)
    try:
        keys = [f"sb:{{phone:+1555000{i:04d}}}:ident" for i in range(60)]
        assert await batcher.execute(*(("SET", k, k) for k in keys)) == [b"OK"] * 60
        assert await batcher.execute(*(("GET", k) for k in keys)) == [k.encode() for k in keys]
        assert len({batcher.node_for(k) for k in keys}) == 3
        for key in keys:  # a plain client on the owner reads it (any other node: MOVED)
            assert sync_redis.Redis(port=batcher.node_for(key)[1]).get(key) == key.encode()
    finally:
        await batcher.close()


async def _traffic(client, customers: list[str], follow_ups: int,
                   until: asyncio.Event | None = None,
                   said_by: dict | None = None) -> dict[str, list[tuple[str, str]]]:
    """Each customer asks for a person, then texts `follow_ups` more messages (or until
    `until` is set); what each sent, with the reply (also in `said_by` as it goes)."""
    said_by = {} if said_by is None else said_by

    async def one(number: str) -> list[tuple[str, str]]:
        said = said_by[number] = []
        n = 0
        while not said or (n < follow_ups if until is None else not until.is_set()):
            words = f"detail {n} from {number}" if said else "I want to talk to a human"
            said.append((words, " ".join(await text(client, number, words))))
            n += bool(len(said) > 1)
        return said

    results = await asyncio.gather(*(one(c) for c in customers))
    return dict(zip(customers, results))


async def _entries(url: str) -> dict[str, list[str]]:
    """Customer address -> the customer words in their waiting entry's transcript."""
    client = client_for(url)
    try:
        raw = await client.hgetall(ENTRIES)
    finally:
        await close_client(client)
    entries = {}
    for value in raw.values():
        context = json.loads(value)["context"]
        entries[context["customer"]["address"]] = [
            m["text"] for m in context["transcript"] if m["from"] == "customer"]
    return entries


def _assert_nothing_lost(sent: dict[str, list[tuple[str, str]]],
                         entries: dict[str, list[str]]) -> None:
    for number, turns in sent.items():
        assert [reply for _, reply in turns if reply == FALLBACK] == []
        assert entries[number] == [words for words, _ in turns]


async def test_moving_slots_with_live_keys_during_traffic_loses_nothing(
        app_settings, valkey_cluster, db):  # noqa: F811
    for primary in valkey_cluster.primaries():
        primary.flushall()
    settings = with_settings(app_settings, redis_url=valkey_cluster.url)
    customers = [f"+1555010{i:04d}" for i in range(24)]
    async with instance(settings) as client:
        moving = _slots_to_move(customers[:4])  # their keys, and all of routing's
        traffic = asyncio.create_task(_traffic(client, customers, 4))
        await asyncio.sleep(0.2)
        moved = await asyncio.to_thread(_move_slots, valkey_cluster, moving)
        replies = await traffic
        assert moved > 0  # keys really were migrated while the traffic ran
        entries = await _entries(valkey_cluster.url)
    _assert_nothing_lost(replies, entries)
    assert "turn_failed" not in [r["kind"] for r in await db.fetch(
        "SELECT kind FROM contact_events")]


def _slots_to_move(numbers: list[str]) -> list[int]:
    from redis.crc import key_slot

    return sorted({key_slot(b"routing")} | {key_slot(f"phone:{n}".encode()) for n in numbers})


def _move_slots(deployment, slots: list[int]) -> int:
    """Move each slot to another primary key by key, as redis-cli --cluster reshard does."""
    nodes = {c.connection_pool.connection_kwargs["port"]: c for c in deployment.primaries()}
    ids = {port: c.execute_command("CLUSTER", "MYID").decode() for port, c in nodes.items()}
    migrated = 0
    for slot in slots:
        [source] = [p for p, c in nodes.items() if _owns(c, slot)]
        target = next(p for p in nodes if p != source)
        nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2):
            nodes[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000,
                                          "KEYS", *keys)
            migrated += len(keys)
            time.sleep(0.02)  # let turns hit the slot half-moved (ASK)
        for client in nodes.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    return migrated


def _owns(client: sync_redis.Redis, slot: int) -> bool:
    myself = client.execute_command("CLUSTER", "MYID").decode()
    for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return primary[2].decode() == myself
    return False


def _replica(group) -> tuple[int, subprocess.Popen]:
    """The Sentinel group's one replica: its port and its process."""
    primary_port = group.primary().connection_pool.connection_kwargs["port"]
    [port] = [p for p in group.data_ports if p != primary_port]
    return port, group.processes.running[port]


@contextlib.contextmanager
def _stopped(process: subprocess.Popen) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: connected, answering nothing."""
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


async def test_a_write_waiting_for_its_replica_holds_up_no_unfenced_batch(
        valkey_sentinel, monkeypatch):
    """A fenced write is answered once the replica has it; meanwhile an unfenced batch (a
    turn's first round trip) is answered on its own connection; the fenced write's WAIT
    covers the unfenced write sent before it."""
    monkeypatch.setattr(redis_batch, "WAIT_MS", 10_000)  # the stopped replica is not given up
    replica_port, replica = _replica(valkey_sentinel)
    batcher = batcher_for(valkey_sentinel.url)
    try:
        assert await batcher.execute(("SET", "fence:warm", 1)) == [b"OK"]
        assert await batcher.execute(("GET", "fence:warm"), fenced=False) == [b"1"]
        with _stopped(replica):
            assert await batcher.execute(("SET", "fence:early", 1), fenced=False) == [b"OK"]
            fenced = asyncio.ensure_future(batcher.execute(("SET", "fence:late", 1)))
            await asyncio.sleep(0.2)
            assert not fenced.done()  # its WAIT waits for the stopped replica
            assert await asyncio.wait_for(
                batcher.execute(("GET", "fence:late"), fenced=False), 5) == [b"1"]
            assert not fenced.done()
        assert await asyncio.wait_for(fenced, 10) == [b"OK"]
        on_replica = sync_redis.Redis(port=replica_port)
        assert on_replica.mget("fence:early", "fence:late") == [b"1", b"1"]
    finally:
        await batcher.close()


async def test_writes_queued_behind_a_pending_wait_share_the_next_one(valkey_sentinel,
                                                                      monkeypatch):
    """Group commit: ten turns' writes sent while a WAIT is pending go out behind one WAIT,
    and each is answered once the replica has it."""
    monkeypatch.setattr(redis_batch, "WAIT_MS", 10_000)
    primary = valkey_sentinel.primary()
    replica_port, replica = _replica(valkey_sentinel)
    batcher = batcher_for(valkey_sentinel.url)

    def waits() -> int:
        return primary.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)

    try:
        await batcher.execute(("SET", "group:warm", 1))
        before = waits()
        with _stopped(replica):
            first = asyncio.ensure_future(batcher.execute(("SET", "group:first", 1)))
            await asyncio.sleep(0.1)
            held = []
            for _ in range(10):  # each in a loop iteration of its own: ten writes
                held.append(asyncio.ensure_future(batcher.execute(("INCR", "group:n"))))
                await asyncio.sleep(0.01)
            assert not first.done() and not any(h.done() for h in held)
        assert await asyncio.wait_for(first, 10) == [b"OK"]
        assert sorted(r for [r] in await asyncio.wait_for(asyncio.gather(*held), 10)) == \
            list(range(1, 11))
        assert waits() - before == 2
        assert sync_redis.Redis(port=replica_port).get("group:n") == b"10"
    finally:
        await batcher.close()


async def test_a_connection_lost_while_its_write_waits_for_the_replica_fails_the_write(
        valkey_sentinel, monkeypatch):
    """Not left waiting until the turn's own timeout: the turn answers with the fallback."""
    monkeypatch.setattr(redis_batch, "WAIT_MS", 10_000)
    primary = valkey_sentinel.primary()
    _, replica = _replica(valkey_sentinel)
    batcher = batcher_for(valkey_sentinel.url, timeout_s=30)
    try:
        await batcher.execute(("CLIENT", "SETNAME", "fenced-lane"))
        [ours] = [c for c in primary.client_list() if c["name"] == "fenced-lane"]
        with _stopped(replica):
            fenced = asyncio.ensure_future(batcher.execute(("SET", "fence:lost", 1)))
            await asyncio.sleep(0.2)
            assert not fenced.done()
            primary.client_kill_filter(_id=ours["id"])
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(fenced, 5)
    finally:
        await batcher.close()


async def test_a_text_is_answered_only_once_the_replica_has_its_turn(
        app_settings, valkey_sentinel, db, monkeypatch):  # noqa: F811
    """Round trip 1 waits for no replica, but the turn's answer still does."""
    monkeypatch.setattr(redis_batch, "WAIT_MS", 10_000)
    valkey_sentinel.primary().flushall()
    replica_port, replica = _replica(valkey_sentinel)
    settings = with_settings(app_settings, redis_url=valkey_sentinel.url)
    async with instance(settings) as client:
        assert await text(client, "+15550300001", "hello")  # both connections open
        with _stopped(replica):
            answer = asyncio.ensure_future(text(client, "+15550300002",
                                                "I need to track my order"))
            await asyncio.sleep(0.5)
            assert not answer.done()
        said = await asyncio.wait_for(answer, 10)
    assert said and said[-1] != FALLBACK
    assert sync_redis.Redis(port=replica_port).keys("sb:{phone:+15550300002}:conv:*")


async def test_a_failover_during_traffic_loses_no_queued_contact(
        app_settings, valkey_sentinel, db):  # noqa: F811
    valkey_sentinel.primary().flushall()
    settings = with_settings(app_settings, redis_url=valkey_sentinel.url)
    customers = [f"+1555020{i:04d}" for i in range(20)]
    before = valkey_sentinel.primary().connection_pool.connection_kwargs["port"]
    switched, said_by = asyncio.Event(), {}
    async with instance(settings) as client:
        traffic = asyncio.create_task(_traffic(client, customers, 0, switched, said_by))
        while sum(map(len, said_by.values())) < 3 * len(customers):
            await asyncio.sleep(0.05)
        sentinel = sync_redis.Redis(port=valkey_sentinel.sentinel_ports[0])
        sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        await asyncio.to_thread(wait_until, lambda: valkey_sentinel.primary().connection_pool
                                .connection_kwargs["port"] != before, "no failover")
        await asyncio.to_thread(wait_until, lambda: valkey_sentinel.primary().info(
            "replication")["connected_slaves"] == 1, "the old primary did not rejoin", 30)
        await asyncio.sleep(1.0)  # traffic goes on to the new primary, replicated again
        switched.set()
        sent = await traffic
        entries = await _entries(valkey_sentinel.url)
    answered = {n: [t for t in turns if t[1] != FALLBACK] for n, turns in sent.items()}
    queued = [n for n in customers if sent[n][0][1] != FALLBACK]  # told they are queued
    assert len(queued) > len(customers) // 2
    for number in queued:  # every message answered normally is kept, in order
        words = [w for w, _ in answered[number]]
        assert [w for w in entries[number] if w in words] == words
    for number in customers:
        assert sent[number][-1][1] != FALLBACK  # answered normally again after the switch
    assert sum(map(len, answered.values())) > 4 * len(customers)


async def test_the_bus_publishes_and_listens_on_one_home_node_of_the_cluster(valkey_cluster):
    """PUBLISH answers with the subscribers of the node that ran it: 1 means the frame
    reached its listener without the cluster bus forwarding it between nodes."""
    client = client_for(valkey_cluster.url)
    bus = Bus(client, subscriber_for(client), publisher_for(client))
    try:
        for _ in range(3):  # whichever node a keyless command would have picked
            await client.ping()
        async with bus.subscription("agent:a1") as inbox:
            home = client.get_node_from_key(BUS_HOME_KEY)
            listeners = sync_redis.Redis(port=home.port).pubsub_numsub("sb:bus:agent:a1")
            assert listeners == [(b"sb:bus:agent:a1", 1)]
            publish = publisher_for(client)
            for n in range(5):
                assert await publish("sb:bus:agent:a1", json.dumps({"n": n})) == 1
            assert [(await asyncio.wait_for(inbox.get(), 5))["n"] for _ in range(5)] == [
                0, 1, 2, 3, 4]
    finally:
        await bus.close()
        await close_client(client)
