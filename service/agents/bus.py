"""Frames between instances: Redis pub/sub, fanned out to this instance's open sockets.

A chat customer connected to one instance and their agent connected to another still talk:
whoever produces a frame publishes it on the recipient's topic (`agent:<id>`,
`chat:<session>`); every instance with a socket for that topic delivers it. Pub/sub delivers
only to who is listening, so sockets re-sync from Redis state when they (re)connect.

Frames are published with `publish` and listened for on `subscriber()`'s client: on a
cluster both are the primary owning the slot of `sb:{bus}` (a plain PUBLISH also reaches
every other node, so a listener moved to another node after a failure still hears it); a
listener that fails is replaced and resubscribes to every topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from typing import Any, AsyncIterator, Awaitable, Callable

import redis.asyncio as redis
import structlog

log = structlog.get_logger(__name__)
CHANNEL_PREFIX = "sb:bus:"


class Bus:
    def __init__(self, client: Any, subscriber: Callable[[], redis.Redis] | None = None,
                 publish: Callable[[str, str], Awaitable[Any]] | None = None):
        self._redis = client
        self._publish = publish or client.publish
        self._subscriber = subscriber or (lambda: client)
        self._listener: Any = None  # chosen at the first subscription, when slots are known
        self._pubsub: Any = None
        self._listeners: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self._unsubscribed: set[str] = set()  # Redis was away: subscribed when it is back
        # redis-py's PubSub opens its connection on the first command: two subscribes at
        # once would open two, and only one is read (sockets opened together lost frames).
        self._changing = asyncio.Lock()

    async def publish(self, topic: str, frame: dict[str, Any]) -> None:
        await self._publish(CHANNEL_PREFIX + topic, json.dumps(frame))

    @contextlib.asynccontextmanager
    async def subscription(self, topic: str) -> AsyncIterator[asyncio.Queue]:
        """Frames published on `topic` while the block runs, in a local queue."""
        inbox: asyncio.Queue = asyncio.Queue(maxsize=1000)
        first = not self._listeners[topic]
        self._listeners[topic].add(inbox)
        if first:
            try:
                async with self._changing:
                    if self._pubsub is None:
                        self._new_listener()
                    await self._pubsub.subscribe(CHANNEL_PREFIX + topic)
            except (redis.RedisError, OSError) as exc:  # the socket is served all the same
                log.warning("bus.subscribe_failed", topic=topic, error=str(exc))
                self._unsubscribed.add(topic)
            self._ensure_listening()
        try:
            yield inbox
        finally:
            self._listeners[topic].discard(inbox)
            if not self._listeners[topic]:
                del self._listeners[topic]
                self._unsubscribed.discard(topic)
                with contextlib.suppress(redis.RedisError, OSError):
                    async with self._changing:
                        await self._pubsub.unsubscribe(CHANNEL_PREFIX + topic)

    def _ensure_listening(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="bus-listener")

    async def _listen(self) -> None:
        stale = False
        while self._listeners:
            try:
                if stale or self._unsubscribed:
                    await self._resubscribe()
                    stale = False
                    self._unsubscribed.clear()
                if not self._pubsub.subscribed:
                    await asyncio.sleep(1)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                log.warning("bus.listen_failed", error=str(exc))
                await asyncio.sleep(1)
                stale = True
                continue
            if message is None:
                continue
            topic = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
            frame = json.loads(message["data"])
            for inbox in list(self._listeners.get(topic, ())):
                if inbox.full():
                    log.warning("bus.inbox_full", topic=topic)
                    continue
                inbox.put_nowait(frame)

    async def _resubscribe(self) -> None:
        """A new listener, subscribed to every topic someone here still listens to."""
        async with self._changing:
            await self._close_listener()
            self._new_listener()
            if self._listeners:
                await self._pubsub.subscribe(*(CHANNEL_PREFIX + t for t in self._listeners))

    def _new_listener(self) -> None:
        self._listener = self._subscriber()
        self._pubsub = self._listener.pubsub(ignore_subscribe_messages=True)

    async def _close_listener(self) -> None:
        if self._pubsub is None:
            return
        with contextlib.suppress(redis.RedisError, OSError):
            await self._pubsub.aclose()
        if self._listener is not self._redis:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._listener.aclose()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()
