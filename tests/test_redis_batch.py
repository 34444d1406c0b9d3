"""The hot-path command batcher against the real server: order, errors, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.infra.redis_batch import Address, CommandBatcher


@pytest.fixture
async def batcher(redis_url, redis_client):
    batcher = CommandBatcher.from_url(redis_url)
    yield batcher
    await batcher.close()


async def test_concurrent_batches_get_their_own_replies(batcher):
    async def turn(i: int) -> list:
        return await batcher.execute(("SET", f"k{i}", i), ("INCR", f"k{i}"), ("GET", f"k{i}"))

    results = await asyncio.gather(*(turn(i) for i in range(200)))
    assert [r[2] for r in results] == [str(i + 1).encode() for i in range(200)]


async def test_an_error_reply_fails_its_batch_only(batcher):
    await batcher.execute(("SET", "text", "abc"))
    bad = batcher.execute(("INCR", "text"), ("GET", "text"))
    good = batcher.execute(("SET", "n", 1), ("INCR", "n"))
    results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], ResponseError)
    assert results[1] == [b"OK", 2]
    assert await batcher.execute(("GET", "text")) == [b"abc"]  # still in step


async def test_reconnects_after_the_server_drops_the_connection(batcher, redis_client):
    await batcher.execute(("CLIENT", "SETNAME", "hot-path"))
    clients = await redis_client.client_list()
    [ours] = [c for c in clients if c["name"] == "hot-path"]
    await redis_client.client_kill_filter(_id=ours["id"])
    with contextlib.suppress(RedisConnectionError):  # unless the drop was noticed already
        await batcher.execute(("PING",))
    assert await batcher.execute(("PING",)) == [b"PONG"]
    [new_id] = await batcher.execute(("CLIENT", "ID"))
    assert new_id != ours["id"]


async def test_many_turns_arriving_before_the_first_connect_all_succeed(redis_url, redis_client):
    batcher = CommandBatcher.from_url(redis_url)
    try:
        turns = []
        for _ in range(50):  # arrivals interleave with the connection handshake
            turns.append(asyncio.create_task(batcher.execute(("INCR", "first-connect"))))
            await asyncio.sleep(0)
        results = await asyncio.gather(*turns)
    finally:
        await batcher.close()
    assert sorted(r[0] for r in results) == list(range(1, 51))


async def test_a_bad_argument_fails_before_anything_is_sent(batcher):
    with pytest.raises(TypeError, match="NoneType"):
        await batcher.execute(("SET", "a", 1), ("SET", "b", None))
    assert await batcher.execute(("EXISTS", "a", "b"), ("PING",)) == [0, b"PONG"]


async def test_a_url_with_a_database_number_selects_it(redis_url, redis_client):
    db5_url = urlsplit(redis_url)._replace(path="/5").geturl()
    batcher = CommandBatcher.from_url(db5_url)
    try:
        await batcher.execute(("SET", "in-db-5", "x"))
    finally:
        await batcher.close()
    db5 = redis.from_url(db5_url)
    try:
        assert await db5.get("in-db-5") == b"x"
        await db5.delete("in-db-5")
    finally:
        await db5.aclose()
    assert await redis_client.exists("in-db-5") == 0


async def test_a_wrong_password_is_a_clear_connection_error(redis_url):
    batcher = CommandBatcher.from_url(redis_url.replace("redis://", "redis://:wrong@", 1))
    try:
        with pytest.raises(Exception, match="Redis refused the connection"):
            await batcher.execute(("PING",))
    finally:
        await batcher.close()


async def test_a_cancelled_turn_leaves_the_replies_in_step(batcher):
    await batcher.execute(("SET", "mine", "kept"))
    cancelled = asyncio.create_task(batcher.execute(("INCR", "counter"), ("INCR", "counter")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # its commands are on the wire
    cancelled.cancel()
    assert await batcher.execute(("GET", "mine"), ("GET", "counter")) == [b"kept", b"2"]


async def test_a_server_that_never_answers_times_out_and_the_next_turn_reconnects():
    connections = []

    async def silent(reader, writer):
        connections.append(writer)
        await reader.read()  # reads until closed, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    batcher = CommandBatcher(Address(host="127.0.0.1", port=port), timeout_s=0.3)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedisTimeoutError):
            await batcher.execute(("PING",))
        assert 0.3 <= loop.time() - started < 1.5
        with pytest.raises(RedisTimeoutError):
            await batcher.execute(("PING",))
        assert len(connections) == 2  # the stalled connection was dropped, not reused
    finally:
        await batcher.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


def test_commands_are_encoded_as_redis_py_encodes_them():
    from redis.asyncio.connection import Connection

    from service.infra.redis_batch import _pack

    command = ("ZADD", "sb:{phone:+15555550188}:x", 1732280000.123456, "m\u00e9", b"\x00\xff",
               -7, 0.1, "")
    assert _pack(command) == b"".join(Connection().pack_command(*command))
