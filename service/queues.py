"""Agent queues in Redis: one sorted set per queue ordered by priority, then wait time.

    sb:q:{<queue>}:waiting   ZSET contact id -> priority * 1e13 + enqueued ms (lowest first)
    sb:q:{<queue>}:entries   HASH contact id -> JSON entry (skills, reason, context package)

Both keys of a queue share its hash tag, so enqueueing is one atomic MULTI in one slot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

PRIORITY_SCALE = 10**13  # above any epoch-millisecond value, so priority always dominates


def _keys(queue: str) -> tuple[str, str]:
    return f"sb:q:{{{queue}}}:waiting", f"sb:q:{{{queue}}}:entries"


@dataclass(frozen=True)
class QueuePosition:
    position: int  # 1 = next
    waiting: int


class Queues:
    def __init__(self, client: redis.Redis):
        self.redis = client

    async def enqueue(self, queue: str, priority: int, entry: dict[str, Any]) -> QueuePosition:
        waiting, entries = _keys(queue)
        enqueued_ms = int(entry.get("enqueued_at", time.time()) * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(waiting, {entry["contact_id"]: priority * PRIORITY_SCALE + enqueued_ms}, nx=True)
        pipe.hset(entries, entry["contact_id"], json.dumps(entry))
        pipe.zrank(waiting, entry["contact_id"])
        pipe.zcard(waiting)
        _, _, rank, size = await pipe.execute()
        return QueuePosition(rank + 1, size)

    async def position(self, queue: str, contact_id: str) -> QueuePosition | None:
        waiting, _ = _keys(queue)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrank(waiting, contact_id)
        pipe.zcard(waiting)
        rank, size = await pipe.execute()
        return None if rank is None else QueuePosition(rank + 1, size)

    async def waiting(self, queue: str) -> list[dict[str, Any]]:
        """The queue's entries in the order agents will get them."""
        waiting, entries = _keys(queue)
        ids = await self.redis.zrange(waiting, 0, -1)
        if not ids:
            return []
        raw = await self.redis.hmget(entries, ids)
        return [json.loads(r) for r in raw if r]

    async def append_message(self, queue: str, contact_id: str, message: dict[str, Any]) -> None:
        """Keep the waiting entry's transcript current, so the agent sees the latest words."""
        _, entries = _keys(queue)
        raw = await self.redis.hget(entries, contact_id)
        if raw:
            entry = json.loads(raw)
            entry["context"]["transcript"].append(message)
            await self.redis.hset(entries, contact_id, json.dumps(entry))

    async def remove(self, queue: str, contact_id: str) -> bool:
        waiting, entries = _keys(queue)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(waiting, contact_id)
        pipe.hdel(entries, contact_id)
        removed, _ = await pipe.execute()
        return bool(removed)
