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

Three shapes, after `REDIS_URL` (see `redis_url.py`): `CommandBatcher` speaks to one server;
`SentinelBatcher` to the primary the sentinels name, following a failover; `ClusterBatcher`
to a Redis Cluster, splitting each batch by the node owning each key's slot (one connection
and one write per node per loop iteration) and following MOVED and ASK redirects.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from dataclasses import dataclass, replace
from typing import Any, Awaitable, NamedTuple, Sequence

import hiredis
import orjson
import structlog
from redis.asyncio.connection import SSLConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.infra.redis_url import RedisTarget, parse_redis_url

Command = Sequence[Any]

# JSON values stored in Redis (conversation state, queue entries, surveys): orjson, a tenth of
# json.dumps' time on every turn; readers (json, orjson, the Lua scripts' cjson) take it alike.
json_value = functools.partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
WAIT_MS = 500  # how long a write waits for its replicas (Sentinel with `replicas=N`)
log = structlog.get_logger(__name__)


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


class NotSent(RedisConnectionError):
    """No connection to send on: nothing of the batch reached the server, so it may be retried."""


class CommandBatcher:
    """One server. `fenced=False` marks a batch whose writes need no replica's acknowledgement
    of their own (a later fenced batch of the same turn covers them, see SentinelBatcher); on
    one server every batch shares the one connection."""

    def __init__(self, address: Address, timeout_s: float = 2.0):
        self._address = address
        self._timeout_s = timeout_s
        self._lanes: list[_Connection | None] = [None, None]  # fenced, unfenced
        self._connecting = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> "CommandBatcher":
        return cls(Address.from_url(url), timeout_s)

    async def execute(self, *commands: Command, fenced: bool = True) -> list[Any]:
        """Run the commands in order; raise the first error reply, if any."""
        replies = await self.submit(commands, fenced)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def submit(self, commands: Sequence[Command], fenced: bool = True
               ) -> Awaitable[list[Any]]:
        """The replies in order, error replies as `ResponseError` values, not raised."""
        lane = self._lane(fenced)
        connection = self._lanes[lane]
        if connection is None or connection.lost:
            return self._connect_and_send(commands, lane)
        return connection.send(commands)

    def _lane(self, fenced: bool) -> int:
        return 0

    async def _connect_and_send(self, commands: Sequence[Command], lane: int) -> list[Any]:
        return await (await self._connect(lane)).send(commands)

    async def close(self) -> None:
        self.drop()
        self._lanes = [None, None]

    def drop(self) -> None:
        """Close the connections; the next batch opens a new one."""
        for connection in self._lanes:
            if connection is not None:
                connection.close()

    async def _connect(self, lane: int = 0) -> "_Connection":
        async with self._connecting:
            current = self._lanes[lane]
            if current is not None and not current.lost:
                return current
            address = await self._locate()
            connection = await _open(address, self._timeout_s)
            try:
                handshake = self._handshake(address)
                if handshake:
                    self._check_handshake(await connection.send(handshake))
            except BaseException:
                connection.close()
                raise
            self._lanes[lane] = connection
            return connection

    async def _locate(self) -> Address:
        return self._address

    def _handshake(self, address: Address) -> list[Command]:
        return address.handshake()

    def _check_handshake(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise RedisConnectionError(f"Redis refused the connection: {reply}")


async def _open(address: Address, timeout_s: float) -> "_Connection":
    loop = asyncio.get_running_loop()
    factory = functools.partial(_Connection, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            if address.path:
                _, connection = await loop.create_unix_connection(factory, address.path)
            else:
                tls = ssl.create_default_context() if address.tls else None
                _, connection = await loop.create_connection(
                    factory, address.host, address.port, ssl=tls)
    except (OSError, TimeoutError) as exc:
        raise NotSent(f"cannot connect to Redis at {address.host}:{address.port}: {exc}") \
            from exc
    return connection


def batcher_for(url: str, timeout_s: float = 2.0) -> "CommandBatcher | ClusterBatcher":
    """The hot-path client for a REDIS_URL of any shape."""
    target = parse_redis_url(url)
    if target.shape == "cluster":
        return ClusterBatcher(target, timeout_s)
    if target.shape == "sentinel":
        return SentinelBatcher(target, timeout_s)
    return CommandBatcher.from_url(url, timeout_s)


# ---- Sentinel ------------------------------------------------------------------------------

class SentinelBatcher(CommandBatcher):
    """The primary the sentinels name. A connection is used only once `ROLE` says it is a
    primary; it is dropped when the sentinels announce a switch or the server answers
    READONLY (a demoted primary), and the batch refused with READONLY, of which nothing was
    applied, runs again on the new primary. Batches find no primary for up to `failover_s`
    before they fail.

    With `replicas` > 0 each write of the fenced connection ends with WAIT, and its batches
    are answered once enough replicas have their writes. A server blocks a connection's later
    commands while its WAIT is pending, so `fenced=False` batches go on a second connection
    without WAIT: a turn's first round trip, whose writes (its lease and delivery claim) the
    turn's last fenced write covers, since WAIT waits for the primary's whole replication
    offset up to that write, not just the connection's own writes."""

    def __init__(self, target: RedisTarget, timeout_s: float = 2.0, failover_s: float = 5.0):
        super().__init__(Address(db=target.db, username=target.username,
                                 password=target.password, tls=target.tls), timeout_s)
        self._sentinels = list(target.nodes)
        self._master = target.master
        self._sentinel_password = target.sentinel_password
        self._failover_s = failover_s
        self._replicas = target.replicas
        self._watcher: asyncio.Task | None = None

    async def execute(self, *commands: Command, fenced: bool = True) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._failover_s
        while True:
            try:
                replies = await self.submit(commands, fenced)
            except NotSent:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.1)
                continue
            error = next((r for r in replies if isinstance(r, ResponseError)), None)
            if error is None:
                return replies
            if not any(isinstance(r, ResponseError) and str(r).startswith("READONLY")
                       for r in replies) or loop.time() >= deadline:
                raise error
            log.warning("redis.sentinel.readonly", error=str(error))
            self.drop()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        await super().close()

    async def _locate(self) -> Address:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch_switches(), name="sentinel-watch")
        for host, port in list(self._sentinels):
            sentinel = Address(host=host, port=port, password=self._sentinel_password)
            try:
                connection = await _open(sentinel, self._timeout_s)
            except NotSent:
                continue
            try:
                *_, reply = await connection.send(
                    [*sentinel.handshake(), ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._master)])
            except RedisConnectionError:
                continue
            finally:
                connection.close()
            if isinstance(reply, list) and len(reply) == 2:
                return replace(self._address, host=reply[0].decode(), port=int(reply[1]))
        raise NotSent(f"no sentinel of {self._sentinels} names a primary {self._master!r}")

    def _handshake(self, address: Address) -> list[Command]:
        return [*address.handshake(), ("ROLE",)]

    def _check_handshake(self, replies: list[Any]) -> None:
        *handshake, role = replies
        super()._check_handshake(handshake)
        if not isinstance(role, list) or role[0] != b"master":
            raise NotSent("the server the sentinels named is not a primary (yet)")

    def _lane(self, fenced: bool) -> int:
        return 0 if fenced or not self._replicas else 1

    async def _connect(self, lane: int = 0) -> "_Connection":
        connection = await super()._connect(lane)
        connection.replicas = self._replicas if lane == 0 else 0
        return connection

    async def _watch_switches(self) -> None:
        """Drop the connection as soon as a sentinel announces a new primary."""
        import redis.asyncio as redis

        while True:
            for host, port in list(self._sentinels):
                client = redis.Redis(host=host, port=port, password=self._sentinel_password,
                                     socket_connect_timeout=self._timeout_s)
                try:
                    async with client.pubsub() as pubsub:
                        await pubsub.subscribe("+switch-master")
                        async for message in pubsub.listen():
                            if message["type"] == "message" and \
                                    message["data"].split()[0].decode() == self._master:
                                log.info("redis.sentinel.switch", to=message["data"].decode())
                                self.drop()
                except (RedisError, OSError):
                    pass
                finally:
                    await client.aclose()
            await asyncio.sleep(0.5)


# ---- Cluster -------------------------------------------------------------------------------

SLOTS = 16384
REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
MAX_REDIRECTS = 16
KEYLESS = frozenset({"MULTI", "EXEC", "DISCARD", "PING", "ECHO", "CLIENT", "INFO", "TIME",
                     "SCRIPT", "CLUSTER", "ROLE", "ASKING", "READONLY", "READWRITE", "AUTH",
                     "HELLO", "SELECT", "DBSIZE", "FLUSHDB", "FLUSHALL", "CONFIG", "WAIT",
                     "PUBLISH"})


class _Unit(NamedTuple):
    node: tuple[str, int]
    indices: Sequence[int]  # of the batch's commands
    commands: Sequence[Command]
    transaction: bool
    asking: bool = False


class ClusterBatcher:
    """A Redis Cluster: each batch split by the primary owning each key's slot, every node's
    share sent on that node's own batching connection, the replies put back in order.

    MOVED updates the slot map (then read whole again from the cluster) and resends to the
    new owner; ASK resends behind ASKING to the importing node; TRYAGAIN and CLUSTERDOWN wait
    and resend. None of these applied the refused command, so nothing runs twice. A MULTI
    batch goes whole to one node (its keys must share a slot). A node that cannot be reached
    sends the batch's share nowhere: the slot map is read again (a replica may have taken
    over) for up to `failover_s`."""

    def __init__(self, target: RedisTarget, timeout_s: float = 2.0, failover_s: float = 5.0):
        self._seeds = list(target.nodes)
        self._template = Address(username=target.username, password=target.password,
                                 tls=target.tls)
        self._timeout_s = timeout_s
        self._failover_s = failover_s
        self._links: dict[tuple[str, int], CommandBatcher] = {}
        self._slots: list[tuple[str, int]] = []
        self._map_version = 0
        self._refreshing = asyncio.Lock()

    async def execute(self, *commands: Command, fenced: bool = True) -> list[Any]:
        """Run the commands, each on the node owning its key; raise the first error reply.
        (`fenced` means nothing here: a cluster replicates asynchronously.)"""
        if not self._slots:
            await self.refresh_slots(self._map_version)
        units = self._split(commands)
        if len(units) == 1:  # the usual case: a turn's reads, all under one hash tag
            try:
                replies = await self._link(units[0].node).submit(commands)
            except NotSent:
                return _raise_first_error(await self._run(commands, units))
            if any(isinstance(r, ResponseError) and str(r).startswith(REDIRECTS)
                   for r in replies):
                return _raise_first_error(await self._run(commands, units, replies))
            return _raise_first_error(replies)
        return _raise_first_error(await self._run(commands, units))

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
        self._links.clear()

    def node_for(self, key: str | bytes) -> tuple[str, int]:
        """The primary owning the key's slot, as last read from the cluster."""
        return self._slots[key_slot(key.encode() if isinstance(key, str) else key)]

    async def refresh_slots(self, seen_version: int) -> None:
        """Read the slot map again, unless someone did since `seen_version` was current."""
        async with self._refreshing:
            if self._map_version != seen_version:
                return
            known = list(dict.fromkeys([*self._slots, *self._seeds]))
            for node in known:
                try:
                    [layout] = await self._link(node).execute(("CLUSTER", "SLOTS"))
                except RedisError:
                    continue
                slots = [node] * SLOTS
                for start, end, primary, *_ in layout:
                    owner = (primary[0].decode() or node[0], int(primary[1]))
                    slots[start:end + 1] = [owner] * (end - start + 1)
                if len(layout):
                    self._slots = slots
                    self._map_version += 1
                    return
            raise NotSent(f"no node of the cluster answered at {known}")

    def _link(self, node: tuple[str, int]) -> CommandBatcher:
        link = self._links.get(node)
        if link is None:
            address = replace(self._template, host=node[0], port=node[1])
            link = self._links[node] = CommandBatcher(address, self._timeout_s)
        return link

    def _split(self, commands: Sequence[Command]) -> list[_Unit]:
        slots = [_slot(command) for command in commands]
        if _name(commands[0]) == "MULTI":
            slot = next((s for s in slots if s is not None), 0)
            return [_Unit(self._slots[slot], range(len(commands)), commands, True)]
        by_node: dict[tuple[str, int] | None, list[int]] = {}
        for index, slot in enumerate(slots):
            by_node.setdefault(None if slot is None else self._slots[slot], []).append(index)
        keyless = by_node.pop(None, None)
        if keyless:  # to a node the batch goes to anyway
            by_node.setdefault(next(iter(by_node), self._slots[0]), []).extend(keyless)
        if len(by_node) == 1:
            [node] = by_node
            return [_Unit(node, range(len(commands)), commands, False)]
        return [_Unit(node, sorted(indices), [commands[i] for i in sorted(indices)], False)
                for node, indices in by_node.items()]

    async def _run(self, commands: Sequence[Command], units: list[_Unit],
                   first: list[Any] | None = None) -> list[Any]:
        """Send every unit (`first`: the replies of the one unit, already sent), then resend
        the redirected ones until all have a final reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._failover_s
        replies: list[Any] = [None] * len(commands)
        for _ in range(MAX_REDIRECTS):
            version = self._map_version
            if first is not None:
                sent = [(units[0], _ready(first))]
                first = None
            else:
                sent = [(unit, self._link(unit.node).submit(_wire(unit))) for unit in units]
            retry: list[_Unit] = []
            unreachable = False
            failure: BaseException | None = None
            for unit, pending in sent:
                try:
                    got = _unwire(unit, await pending)
                except NotSent:
                    unreachable = True
                    retry.append(unit._replace(asking=False))
                    continue
                except BaseException as exc:  # in flight: whether it was applied is unknown
                    failure = failure or exc
                    continue
                retry += self._redirected(unit, got, replies)
            if failure is not None:
                raise failure
            if not retry:
                return replies
            if loop.time() >= deadline:
                raise NotSent("the cluster kept redirecting or could not be reached")
            if unreachable or any(not u.asking for u in retry):
                if unreachable:
                    await asyncio.sleep(0.1)
                await self.refresh_slots(version)
                retry = [self._reroute(unit) for unit in retry]
            if any(_busy(replies[i]) for unit in retry for i in unit.indices):
                await asyncio.sleep(0.05)
            units = retry
        raise NotSent("too many cluster redirects")

    def _redirected(self, unit: _Unit, got: list[Any], replies: list[Any]) -> list[_Unit]:
        """Store the final replies of a unit; return what must be sent again, and where."""
        moves = [(i, r) for i, r in zip(unit.indices, got)
                 if isinstance(r, ResponseError) and str(r).startswith(REDIRECTS)]
        if not moves:
            for i, reply in zip(unit.indices, got):
                replies[i] = reply
            return []
        if unit.transaction:  # the transaction was aborted whole: send it again whole
            [(i, first)] = moves[:1]
            replies[i] = first
            return [_redirect(unit, str(first))]
        moved = dict(moves)
        again: dict[tuple[tuple[str, int], bool], list[int]] = {}
        for i, reply in zip(unit.indices, got):
            replies[i] = reply
            if i in moved:
                node, asking = _target(str(reply), unit.node)
                again.setdefault((node, asking), []).append(i)
        return [_Unit(node, indices, [unit.commands[unit.indices.index(i)] for i in indices],
                      False, asking) for (node, asking), indices in again.items()]

    def _reroute(self, unit: _Unit) -> _Unit:
        if unit.asking:
            return unit
        slot = next((s for s in map(_slot, unit.commands) if s is not None), None)
        return unit if slot is None else unit._replace(node=self._slots[slot])


def _ready(value: Any) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _redirect(unit: _Unit, error: str) -> _Unit:
    node, asking = _target(error, unit.node)
    return unit._replace(node=node, asking=asking)


def _target(error: str, node: tuple[str, int]) -> tuple[tuple[str, int], bool]:
    """Where a redirect error sends the command, and whether behind ASKING."""
    kind, _, rest = error.partition(" ")
    if kind in ("MOVED", "ASK"):
        host, _, port = rest.split(" ")[1].rpartition(":")
        return (host or node[0], int(port)), kind == "ASK"
    return node, False


def _busy(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith(("TRYAGAIN",
                                                                         "CLUSTERDOWN"))


def _wire(unit: _Unit) -> list[Command]:
    if not unit.asking:
        return list(unit.commands)
    if unit.transaction:  # inside MULTI the ASKING flag lasts until EXEC
        return [("ASKING",), *unit.commands]
    return [part for command in unit.commands for part in (("ASKING",), command)]


def _unwire(unit: _Unit, got: list[Any]) -> list[Any]:
    if not unit.asking:
        return got
    return got[1:] if unit.transaction else got[1::2]


def _name(command: Command) -> str:
    name = command[0]
    return (name.decode() if isinstance(name, bytes) else name).upper()


def _slot(command: Command) -> int | None:
    """The slot of the command's (first) key; None for a command without keys."""
    name = _name(command)
    if name in KEYLESS:
        return None
    if name in ("EVAL", "EVALSHA"):
        if not int(command[2]):
            return None
        key = command[3]
    else:
        key = command[1]
    return key_slot(key.encode() if isinstance(key, str) else key)


def _raise_first_error(replies: list[Any]) -> list[Any]:
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


class InFlight(NamedTuple):
    count: int  # replies expected
    replies: list[Any]
    future: asyncio.Future | None
    sent_at: float  # loop time
    guards: list["InFlight"] | None = None  # a WAIT: the batches of its write


class NotReplicated(RedisConnectionError):
    """Applied on the primary, but no replica confirmed it: a failover could lose it."""


class _Connection(asyncio.Protocol):
    """One socket: batches written once per loop iteration, replies matched in order.

    One watchdog timer per connection, not one per batch: it fires when the oldest batch in
    flight has waited `timeout_s`, and drops the connection.

    With `replicas`, a write ends with WAIT, and batches queued while a WAIT is pending are
    held until it answers, then go out together behind one WAIT: the server would not run
    them any sooner (a client blocked in WAIT is read no further), and one replica
    acknowledgement then covers every turn that arrived meanwhile.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._queued: list[bytes] = []
        self._in_flight: collections.deque[InFlight] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._unguarded: list[InFlight] = []  # batches no WAIT has been sent for yet
        self._fence_pending = False  # a WAIT is out: hold further writes until it answers
        self.replicas = 0  # > 0: each write ends with a WAIT for that many replicas
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, commands: Sequence[Command]) -> asyncio.Future:
        packed = [_pack(command) for command in commands]  # a bad argument fails before queueing
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost:
            future.set_exception(NotSent("Redis connection was lost"))
            return future
        self._queued += packed
        batch = InFlight(len(commands), [], future, loop.time())
        self._in_flight.append(batch)
        if self.replicas:
            self._unguarded.append(batch)
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
            if self.replicas:
                if self._fence_pending:
                    return  # kept queued: written when the pending WAIT answers
                self._fence_pending = True
                self._queued.append(_pack(("WAIT", self.replicas, WAIT_MS)))
                self._in_flight.append(InFlight(1, [], None, asyncio.get_running_loop().time(),
                                                self._unguarded))
                self._unguarded = []
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
                    if batch.guards is not None:
                        if not _settle(batch.guards, reply, self.replicas):
                            # writes queued behind would each wait out WAIT: start afresh
                            self.close(NotReplicated("no replica confirms writes"))
                            return
                        self._fence_pending = False
                        if self._queued and not self._flush_scheduled:
                            self._flush()  # after the replies before it: order is kept
                    elif not self.replicas and not batch.future.done():
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
        waiting = [*self._unguarded]  # answered, waiting for the next WAIT: it will not come
        self._unguarded = []
        while self._in_flight:
            batch = self._in_flight.popleft()
            waiting += [batch, *(batch.guards or ())]  # a WAIT's batches have their replies
        for batch in waiting:
            if batch.future is not None and not batch.future.done():
                batch.future.set_exception(exc)


def _settle(batches: list[InFlight], acked: Any, replicas: int) -> bool:
    """Hand out the replies of one write's batches once WAIT says enough replicas have it;
    False when they had not."""
    confirmed = isinstance(acked, int) and acked >= replicas
    for batch in batches:
        if batch.future.done():
            continue
        refused = any(isinstance(r, ResponseError) and str(r).startswith("READONLY")
                      for r in batch.replies)  # nothing applied: the caller may retry
        if refused or confirmed:
            batch.future.set_result(batch.replies)
        else:
            batch.future.set_exception(NotReplicated(
                f"{acked!r} of {replicas} replicas confirmed the write in {WAIT_MS} ms"))
    return confirmed


def _pack(command: Command) -> bytes:
    """RESP2 encoding of one command, in C: bytes, str, int and float arguments."""
    try:
        return hiredis.pack_command(tuple(command))
    except TypeError:
        bad = next(arg for arg in command if isinstance(arg, bool)
                   or not isinstance(arg, (bytes, str, int, float)))
        raise TypeError(f"Redis argument of type {type(bad).__name__}: {bad!r}") from None
