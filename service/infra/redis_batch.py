"""Commands of concurrent turns written to Redis together, on one connection of our own.

A turn's reads or writes are a handful of commands. Sending each turn's batch as a redis-py
pipeline costs a pool checkout, a syscall, an awaited read per reply and redis-py's pipeline
machinery per turn. Here every batch queued during one event-loop iteration goes out in a
single write, and replies are parsed by hiredis straight from the socket callback and handed
back in order: no task, no per-reply await.

Only what the hot path needs: RESP2 commands with bytes/str/int/float arguments, replies as
bytes (errors come back as `ResponseError` and fail only their own batch). A reply that does
not come in time drops the connection, since a half-open TCP connection would otherwise hold
every later batch; the next batch reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[Any]


@dataclass(frozen=True)
class Address:
    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> "Address":
        parts = parse_url(url)
        return cls(host=parts.get("host", "localhost"), port=parts.get("port", 6379),
                   path=parts.get("path"), db=parts.get("db") or 0,
                   username=parts.get("username"), password=parts.get("password"),
                   tls=parts.get("connection_class") is SSLConnection)

    def handshake(self) -> list[Command]:
        commands: list[Command] = []
        if self.password is not None:
            commands.append(("AUTH", *((self.username,) if self.username else ()), self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


class CommandBatcher:
    def __init__(self, address: Address, timeout_s: float = 2.0):
        self._address = address
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> "CommandBatcher":
        return cls(Address.from_url(url), timeout_s)

    async def execute(self, *commands: Command) -> list[Any]:
        """Run the commands in order; raise the first error reply, if any."""
        connection = self._connection
        if connection is None or connection.lost:
            connection = await self._connect()
        replies = await connection.send(commands)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connect(self) -> "_Connection":
        async with self._connecting:
            if self._connection is not None and not self._connection.lost:
                return self._connection
            connection = await self._open()
            try:
                handshake = self._address.handshake()
                if handshake:
                    for reply in await connection.send(handshake):
                        if isinstance(reply, ResponseError):
                            raise RedisConnectionError(f"Redis refused the connection: {reply}")
            except BaseException:
                connection.close()
                raise
            self._connection = connection
            return connection

    async def _open(self) -> "_Connection":
        loop = asyncio.get_running_loop()
        address = self._address
        factory = functools.partial(_Connection, self._timeout_s)
        try:
            async with asyncio.timeout(self._timeout_s):
                if address.path:
                    _, connection = await loop.create_unix_connection(factory, address.path)
                else:
                    tls = ssl.create_default_context() if address.tls else None
                    _, connection = await loop.create_connection(
                        factory, address.host, address.port, ssl=tls)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return connection


class InFlight(NamedTuple):
    count: int  # replies expected
    replies: list[Any]
    future: asyncio.Future
    sent_at: float  # loop time


class _Connection(asyncio.Protocol):
    """One socket: batches written once per loop iteration, replies matched in order.

    One watchdog timer per connection, not one per batch: it fires when the oldest batch in
    flight has waited `timeout_s`, and drops the connection.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._queued: list[bytes] = []
        self._in_flight: collections.deque[InFlight] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, commands: Sequence[Command]) -> asyncio.Future:
        packed = [_pack(command) for command in commands]  # a bad argument fails before queueing
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost:
            future.set_exception(RedisConnectionError("Redis connection was lost"))
            return future
        self._queued += packed
        self._in_flight.append(InFlight(len(commands), [], future, loop.time()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._check_overdue)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _check_overdue(self) -> None:
        self._watchdog = None
        if not self._in_flight or self.lost:
            return
        due = self._in_flight[0].sent_at + self._timeout_s
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self.close(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = loop.call_at(due, self._check_overdue)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._queued and not self.lost:
            self._transport.write(b"".join(self._queued))
        self._queued = []

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                batch = self._in_flight[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.count:
                    self._in_flight.popleft()
                    if not batch.future.done():
                        batch.future.set_result(batch.replies)
        except (hiredis.ProtocolError, IndexError) as exc:  # out of step: nothing can be trusted
            self.close(RedisConnectionError(f"unreadable reply from Redis: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(RedisConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))

    def close(self, reason: Exception | None = None) -> None:
        self._fail_all(reason or RedisConnectionError("Redis connection closed"))
        if self._transport is not None:
            self._transport.abort()

    def _fail_all(self, exc: Exception) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        while self._in_flight:
            future = self._in_flight.popleft().future
            if not future.done():
                future.set_exception(exc)


def _pack(command: Command) -> bytes:
    """RESP2 encoding of one command, in C: bytes, str, int and float arguments."""
    try:
        return hiredis.pack_command(tuple(command))
    except TypeError:
        bad = next(arg for arg in command if isinstance(arg, bool)
                   or not isinstance(arg, (bytes, str, int, float)))
        raise TypeError(f"Redis argument of type {type(bad).__name__}: {bad!r}") from None
