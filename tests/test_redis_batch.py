"""The hot-path command batcher against the real server: order, errors, reconnects."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError

from service.redis_batch import CommandBatcher


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
    with pytest.raises(Exception):
        await batcher.execute(("PING",))
    assert await batcher.execute(("PING",)) == [b"PONG"]


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
