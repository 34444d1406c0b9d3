"""Agent queues and assignment in Redis, atomic and safe across Switchboard instances.

All routing state shares one hash tag, `{routing}`, so every Lua script below runs against
one slot (Redis Cluster included) and sees a consistent picture:

    sb:{routing}:q:<queue>          ZSET contact -> priority * 1e13 + enqueued ms (lowest first)
    sb:{routing}:entries            HASH contact -> JSON entry (queue, channel, skills, context)
    sb:{routing}:agent:<id>         HASH name, skills, status, cap_<channel>, load_<channel>
    sb:{routing}:available          ZSET agent -> when they last became free (longest idle first)
    sb:{routing}:offered            HASH contact -> agent holding an offer for it
    sb:{routing}:offers             ZSET contact -> offer expiry ms
    sb:{routing}:declined:<contact> SET agents who declined or let the offer expire
    sb:{routing}:assigned           HASH contact -> agent
    sb:{routing}:named              ZSET contact -> when a transfer to a named agent gives up

A contact is offered to one agent at a time; it leaves its queue only when accepted. A
transferred contact's entry may name `only_agent`: then it is offered to that agent alone.
A warm transfer's contact is assigned (to the sender) and waiting (for the next agent) at once.
Commands go through the shared `CommandBatcher`; a transaction is one MULTI ... EXEC batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from redis.exceptions import ResponseError

from service.infra.redis_batch import Command, CommandBatcher, json_value
from service.reporting import metrics

PREFIX = "sb:{routing}:"
PRIORITY_SCALE = 10**13  # above any epoch-millisecond value, so priority always dominates
DECLINED_TTL_S = 120

# Offers contacts (priority, then wait) to the longest-idle available agent with every skill
# the contact needs, free capacity on its channel, and no earlier decline of it; an entry with
# `not_before` (a callback waiting to be tried again) keeps its place but is offered only then.
DISPATCH = """
local P, now, ttl = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local agents = redis.call('ZRANGE', P .. 'available', 0, -1)
if #agents == 0 then return {} end  -- nobody free: do not read the queues at all
local candidates = {}
for i = 3, #ARGV do
  local items = redis.call('ZRANGE', P .. 'q:' .. ARGV[i], 0, 99, 'WITHSCORES')
  for j = 1, #items, 2 do
    table.insert(candidates, {items[j], tonumber(items[j + 1])})
  end
end
table.sort(candidates, function(a, b) return a[2] < b[2] end)
local made = {}
for _, candidate in ipairs(candidates) do
  local contact = candidate[1]
  local entry = cjson.decode(redis.call('HGET', P .. 'entries', contact))
  local due = entry['not_before'] == nil or entry['not_before'] * 1000 <= now
  if due and redis.call('HEXISTS', P .. 'offered', contact) == 0 then
    local channel = entry['channel']
    for _, agent in ipairs(agents) do
      local a = redis.call('HMGET', P .. 'agent:' .. agent, 'skills', 'cap_' .. channel,
                           'load_' .. channel, 'status')
      local only = entry['only_agent']
      local fits = a[4] == 'available' and tonumber(a[3] or '0') < tonumber(a[2] or '0')
        and redis.call('SISMEMBER', P .. 'declined:' .. contact, agent) == 0
        and (only == nil or only == agent)
      if fits and only == nil then  -- a colleague named by a transfer was chosen by a person
        local has = {}
        for _, s in ipairs(cjson.decode(a[1])) do has[s] = true end
        for _, s in ipairs(entry['skills']) do
          if not has[s] then fits = false break end
        end
      end
      if fits then
        redis.call('HSET', P .. 'offered', contact, agent)
        redis.call('ZADD', P .. 'offers', now + ttl, contact)
        redis.call('HINCRBY', P .. 'agent:' .. agent, 'load_' .. channel, 1)
        redis.call('ZADD', P .. 'available', now, agent)
        table.insert(made, {contact, agent})
        agents = redis.call('ZRANGE', P .. 'available', 0, -1)  -- they are now least idle
        break
      end
    end
  end
end
return made
"""

# The offered agent takes the contact: it leaves its queue exactly once.
ACCEPT = """
local P, contact, agent = KEYS[1], ARGV[1], ARGV[2]
if redis.call('HGET', P .. 'offered', contact) ~= agent then return false end
local raw = redis.call('HGET', P .. 'entries', contact)
local entry = cjson.decode(raw)
redis.call('HDEL', P .. 'offered', contact)
redis.call('ZREM', P .. 'offers', contact)
redis.call('DEL', P .. 'declined:' .. contact)
redis.call('HDEL', P .. 'entries', contact)
redis.call('ZREM', P .. 'q:' .. entry['queue'], contact)
redis.call('HSET', P .. 'assigned', contact, agent)
return raw
"""

# Take back an offer (declined, expired, or the customer left); the agent's slot is freed.
WITHDRAW = """
local P, contact, agent, ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HGET', P .. 'offered', contact) ~= agent then return 0 end
local entry = cjson.decode(redis.call('HGET', P .. 'entries', contact))
redis.call('HDEL', P .. 'offered', contact)
redis.call('ZREM', P .. 'offers', contact)
redis.call('SADD', P .. 'declined:' .. contact, agent)
redis.call('EXPIRE', P .. 'declined:' .. contact, ttl)
local key = P .. 'agent:' .. agent
if tonumber(redis.call('HINCRBY', key, 'load_' .. entry['channel'], -1)) < 0 then
  redis.call('HSET', key, 'load_' .. entry['channel'], 0)
end
return 1
"""

# Contacts that waited longer than their queue's timeout move to its overflow queue, keeping
# their place in time; they now need the overflow queue's skills plus their type's.
# The changed fields are appended to the stored JSON rather than the entry re-encoded: cjson
# would turn every empty list into {} and cut numbers to 14 digits. A later member wins when
# JSON is read (Python, JavaScript, cjson), and the next rewrite in Python drops the old ones.
OVERFLOW = """
local P, from, to, cutoff = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local queue_skills = cjson.decode(ARGV[4])
local moved = {}
for _, contact in ipairs(redis.call('ZRANGE', P .. 'q:' .. from, 0, -1)) do
  if redis.call('HEXISTS', P .. 'offered', contact) == 0 then
    local raw = redis.call('HGET', P .. 'entries', contact)
    local entry = cjson.decode(raw)
    local enqueued = math.floor(entry['enqueued_at'] * 1000)
    if enqueued < cutoff then
      local skills, seen = {}, {}
      for _, list in ipairs({queue_skills, entry['type_skills'] or {}}) do
        for _, skill in ipairs(list) do
          if not seen[skill] then seen[skill] = true table.insert(skills, skill) end
        end
      end
      table.sort(skills)
      local changed = cjson.encode({queue = to, overflowed_from = from})
      changed = '"skills": ' .. (#skills > 0 and cjson.encode(skills) or '[]') .. ', '
        .. changed:sub(2)
      redis.call('ZREM', P .. 'q:' .. from, contact)
      redis.call('ZADD', P .. 'q:' .. to, entry['priority'] * 1e13 + enqueued, contact)
      redis.call('HSET', P .. 'entries', contact, raw:sub(1, -2) .. ', ' .. changed)
      table.insert(moved, contact)
    end
  end
end
return moved
"""


# An agent hands a contact they hold on: it waits in a queue again (cold: it leaves the agent
# now; warm: the agent keeps it until the next agent accepts). The sender is not offered it.
TRANSFER = """
local P, contact, agent, queue, score, raw, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3],
  tonumber(ARGV[4]), ARGV[5], ARGV[6]
if redis.call('HGET', P .. 'assigned', contact) ~= agent then return 0 end
if redis.call('HEXISTS', P .. 'entries', contact) == 1 then return -1 end
redis.call('HSET', P .. 'entries', contact, raw)
redis.call('ZADD', P .. 'q:' .. queue, score, contact)
redis.call('SADD', P .. 'declined:' .. contact, agent)
redis.call('SREM', P .. 'declined:' .. contact, ARGV[8])  -- a colleague named again
redis.call('EXPIRE', P .. 'declined:' .. contact, tonumber(ARGV[7]))
if mode == 'cold' then redis.call('HDEL', P .. 'assigned', contact) end
if ARGV[8] ~= '' then redis.call('ZADD', P .. 'named', ARGV[9], contact) end
return 1
"""


# Replace a waiting entry only if nobody changed it since it was read (a message, an overflow,
# an accept): the caller reads it again and retries, so nothing is lost or brought back.
REPLACE_ENTRY = """
local P, contact = KEYS[1], ARGV[1]
if redis.call('HGET', P .. 'entries', contact) ~= ARGV[2] then return 0 end
redis.call('HSET', P .. 'entries', contact, ARGV[3])
return 1
"""


@dataclass(frozen=True)
class QueuePosition:
    position: int  # 1 = next
    waiting: int


@dataclass(frozen=True)
class Offer:
    contact_id: str
    agent_id: str


class _Script:
    """A Lua script run by its SHA1; sent in full when the server does not have it cached
    (restarted, or SCRIPT FLUSH), which caches it again."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, batcher: CommandBatcher, *args: Any) -> Any:
        try:
            [reply] = await batcher.execute(("EVALSHA", self.sha, 1, PREFIX, *args))
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            [reply] = await batcher.execute(("EVAL", self.source, 1, PREFIX, *args))
        return reply


class QueueLoad:
    """Contacts waiting per queue as of the last refresh (every second, by each instance), so
    that routing on queue load costs a turn no Redis round trip of its own."""

    def __init__(self, router: "Dispatcher", queues: Callable[[], Iterable[str]]):
        self._router = router
        self._queues = queues
        self.waiting: dict[str, int] = {}

    async def refresh(self) -> None:
        self.waiting = await self._router.waiting_counts(self._queues())
        for queue, count in self.waiting.items():
            metrics.QUEUE_WAITING.labels(queue).set(count)


class Dispatcher:
    """Assigns waiting contacts to agents: queues, presence, capacity, offers, in Redis."""

    def __init__(self, batcher: CommandBatcher, offer_timeout_s: float = 20,
                 default_capacity: Mapping[str, int] | None = None):
        self.batcher = batcher
        # Per channel, from its traits: what an agent takes when their own capacity says nothing.
        self._default_capacity = dict(default_capacity or {})
        self.offer_timeout_s = offer_timeout_s
        self._dispatch = _Script(DISPATCH)
        self._accept = _Script(ACCEPT)
        self._withdraw = _Script(WITHDRAW)
        self._overflow = _Script(OVERFLOW)
        self._replace_entry = _Script(REPLACE_ENTRY)
        self._transfer = _Script(TRANSFER)

    async def _transaction(self, *commands: Command) -> list[Any]:
        """MULTI/EXEC in one batch: the batcher writes a batch contiguously on its one
        connection, so no other command lands inside. Returns the commands' replies."""
        *_, replies = await self.batcher.execute(("MULTI",), *commands, ("EXEC",))
        for reply in replies:
            if isinstance(reply, ResponseError):  # EXEC carries a failed command's error
                raise reply
        return replies

    # ---- contacts ------------------------------------------------------------------------

    async def enqueue(self, queue: str, priority: int, entry: dict[str, Any]) -> QueuePosition:
        contact = entry["contact_id"]
        score = priority * PRIORITY_SCALE + int(entry["enqueued_at"] * 1000)
        key = f"{PREFIX}q:{queue}"
        _, _, rank, size = await self._transaction(
            ("HSET", PREFIX + "entries", contact, json_value(entry)),
            ("ZADD", key, "NX", score, contact), ("ZRANK", key, contact), ("ZCARD", key))
        return QueuePosition(rank + 1, size)

    async def position(self, contact_id: str) -> tuple[str, QueuePosition] | None:
        entry = await self.entry(contact_id)
        if entry is None:
            return None
        key = f"{PREFIX}q:{entry['queue']}"
        rank, size = await self.batcher.execute(("ZRANK", key, contact_id), ("ZCARD", key))
        return None if rank is None else (entry["queue"], QueuePosition(rank + 1, size))

    async def status(self, queues: Iterable[str], now: float) -> dict[str, Any]:
        """What is waiting where right now, and how many agents are available."""
        waits, [available] = await asyncio.gather(
            self.wait_times(queues, now), self.batcher.execute(("ZCARD", PREFIX + "available")))
        status = {name: {"waiting": len(waited),
                         "longest_wait_s": round(max(waited), 1) if waited else None}
                  for name, waited in waits.items()}
        return {"queues": status, "agents_available": available}

    async def wait_times(self, queues: Iterable[str], now: float) -> dict[str, list[float]]:
        """Seconds each waiting contact has waited so far, per queue, in one round trip."""
        names = list(queues)
        ranges = await self.batcher.execute(
            *(("ZRANGE", f"{PREFIX}q:{q}", 0, -1, "WITHSCORES") for q in names))
        return {name: [now - (int(float(score)) % PRIORITY_SCALE) / 1000 for score in flat[1::2]]
                for name, flat in zip(names, ranges)}

    async def waiting_counts(self, queues: Iterable[str]) -> dict[str, int]:
        """How many contacts wait in each queue, in one round trip."""
        names = list(queues)
        counts = await self.batcher.execute(*(("ZCARD", f"{PREFIX}q:{q}") for q in names))
        return dict(zip(names, counts))

    async def entry(self, contact_id: str) -> dict[str, Any] | None:
        [raw] = await self.batcher.execute(("HGET", PREFIX + "entries", contact_id))
        return json.loads(raw) if raw else None

    async def waiting(self, queue: str) -> list[dict[str, Any]]:
        """The queue's entries in the order agents will get them."""
        [ids] = await self.batcher.execute(("ZRANGE", f"{PREFIX}q:{queue}", 0, -1))
        if not ids:
            return []
        [raw] = await self.batcher.execute(("HMGET", PREFIX + "entries", *ids))
        return [json.loads(r) for r in raw if r]

    async def append_message(self, contact_id: str, message: dict[str, Any]) -> None:
        """Keep a waiting entry's transcript current, so the agent sees the latest words."""
        await self.edit_entry(contact_id, lambda entry: entry["context"]["transcript"].append(
            message))

    async def edit_entry(self, contact_id: str, change: Callable[[dict[str, Any]], Any]
                         ) -> dict[str, Any] | None:
        """Change a waiting entry in place (read, change, compare-and-set, retried); the new
        entry, or None when the contact no longer waits."""
        while True:
            [raw] = await self.batcher.execute(("HGET", PREFIX + "entries", contact_id))
            if not raw:
                return None
            entry = json.loads(raw)
            change(entry)
            if await self._replace_entry(self.batcher, contact_id, raw, json_value(entry)):
                return entry

    async def requeue(self, entry: dict[str, Any], from_agent: str, mode: str) -> str:
        """A held contact waits again (a transfer): 'queued', 'not_assigned' (the agent does
        not hold it) or 'pending' (a transfer of it already waits). It keeps its priority and
        its first enqueue time, so it goes ahead of everyone who came after it."""
        score = entry["priority"] * PRIORITY_SCALE + int(entry["enqueued_at"] * 1000)
        done = await self._transfer(self.batcher, entry["contact_id"], from_agent,
                                    entry["queue"], score, json_value(entry), mode,
                                    DECLINED_TTL_S, entry.get("only_agent", ""),
                                    int((time.time() + self.offer_timeout_s) * 1000))
        return {1: "queued", 0: "not_assigned"}.get(done, "pending")

    async def remove(self, contact_id: str) -> str | None:
        """The customer left while waiting; returns the agent whose offer was withdrawn."""
        raw, agent = await self.batcher.execute(("HGET", PREFIX + "entries", contact_id),
                                                ("HGET", PREFIX + "offered", contact_id))
        if not raw:
            return None
        if agent:
            await self._withdraw(self.batcher, contact_id, agent, DECLINED_TTL_S)
        await self._transaction(("ZREM", f"{PREFIX}q:{json.loads(raw)['queue']}", contact_id),
                                ("HDEL", PREFIX + "entries", contact_id))
        return agent.decode() if agent else None

    # ---- assignment ----------------------------------------------------------------------

    async def dispatch(self, queues: Iterable[str]) -> list[Offer]:
        made = await self._dispatch(self.batcher, int(time.time() * 1000),
                                    int(self.offer_timeout_s * 1000), *queues)
        return [Offer(c.decode(), a.decode()) for c, a in made]

    async def accept(self, contact_id: str, agent_id: str) -> dict[str, Any] | None:
        raw = await self._accept(self.batcher, contact_id, agent_id)
        return json.loads(raw) if raw else None

    async def decline(self, contact_id: str, agent_id: str) -> bool:
        return bool(await self._withdraw(self.batcher, contact_id, agent_id, DECLINED_TTL_S))

    async def expired_offers(self) -> list[Offer]:
        """Withdraw offers nobody accepted in time; the contact goes to the next agent."""
        now = int(time.time() * 1000)
        [contacts] = await self.batcher.execute(("ZRANGEBYSCORE", PREFIX + "offers", 0, now))
        if not contacts:
            return []
        [agents] = await self.batcher.execute(("HMGET", PREFIX + "offered", *contacts))
        withdrawn = []
        for contact, agent in zip(contacts, agents):
            if agent and await self.decline(contact.decode(), agent.decode()):
                withdrawn.append(Offer(contact.decode(), agent.decode()))
        return withdrawn

    async def overflow(self, queue: str, overflow_queue: str, timeout_s: int,
                       overflow_skills: Iterable[str]) -> list[str]:
        cutoff = int((time.time() - timeout_s) * 1000)
        moved = await self._overflow(self.batcher, queue, overflow_queue, cutoff,
                                     json.dumps(sorted(overflow_skills)))
        return [m.decode() for m in moved]

    async def assigned_agent(self, contact_id: str) -> str | None:
        [agent] = await self.batcher.execute(("HGET", PREFIX + "assigned", contact_id))
        return agent.decode() if agent else None

    async def offers_for(self, agent_id: str) -> list[str]:
        return await self._contacts_held_by(PREFIX + "offered", agent_id)

    async def assignments_for(self, agent_id: str) -> list[str]:
        return await self._contacts_held_by(PREFIX + "assigned", agent_id)

    async def assignments(self) -> dict[str, str]:
        """Contact -> the agent who holds it, for every held contact."""
        [flat] = await self.batcher.execute(("HGETALL", PREFIX + "assigned"))
        return {c.decode(): a.decode() for c, a in zip(flat[::2], flat[1::2])}

    async def _contacts_held_by(self, key: str, agent_id: str) -> list[str]:
        [flat] = await self.batcher.execute(("HGETALL", key))  # contact, agent, contact, ...
        agent = agent_id.encode()
        return [c.decode() for c, a in zip(flat[::2], flat[1::2]) if a == agent]

    async def finish(self, contact_id: str, agent_id: str, channel: str) -> bool:
        """Wrap-up: the agent's slot on this channel is free again."""
        if await self.assigned_agent(contact_id) != agent_id:
            return False
        await self.batcher.execute(("HDEL", PREFIX + "assigned", contact_id))
        await self.release_slot(agent_id, channel)
        return True

    async def release_slot(self, agent_id: str, channel: str) -> None:
        """One of the agent's slots on the channel is free (wrap-up, a transfer away)."""
        key = f"{PREFIX}agent:{agent_id}"
        load, status = await self._transaction(("HINCRBY", key, f"load_{channel}", -1),
                                               ("HGET", key, "status"))
        fixes: list[Command] = []
        if load < 0:
            fixes.append(("HSET", key, f"load_{channel}", 0))
        if status == b"available":
            fixes.append(("ZADD", PREFIX + "available", int(time.time() * 1000), agent_id))
        if fixes:
            await self.batcher.execute(*fixes)

    async def unanswered_named(self) -> list[dict[str, Any]]:
        """Entries sent to a named colleague who was not offered them within an offer's
        timeout (they went away or filled up meanwhile); each is reported once."""
        now = int(time.time() * 1000)
        [contacts] = await self.batcher.execute(("ZRANGEBYSCORE", PREFIX + "named", 0, now))
        if not contacts:
            return []
        *raws, offered, _ = await self.batcher.execute(
            *(("HGET", PREFIX + "entries", c) for c in contacts),
            ("HMGET", PREFIX + "offered", *contacts), ("ZREM", PREFIX + "named", *contacts))
        entries = [json.loads(raw) for raw in raws if raw]
        held = {c.decode() for c, agent in zip(contacts, offered) if agent}
        return [e for e in entries if e.get("only_agent") and e["contact_id"] not in held]

    async def has_room(self, agent_id: str, channel: str) -> bool:
        """The agent is available with a free slot on the channel (a transfer's target)."""
        state = await self.agent_state(agent_id)
        cap = state.get(f"cap_{channel}", str(self._default_capacity.get(channel, 0)))
        return state.get("status") == "available" and \
            int(state.get(f"load_{channel}", "0")) < int(cap)

    # ---- agents --------------------------------------------------------------------------

    async def register_agent(self, agent: dict[str, Any]) -> None:
        """Refresh an agent's skills and capacity when they connect; load survives reconnects.
        A channel the agent's capacity does not name gets the channel's default."""
        key = f"{PREFIX}agent:{agent['id']}"
        fields: list[Any] = ["name", agent["name"], "skills", json.dumps(sorted(agent["skills"]))]
        capacity = self.capacity_of(agent)
        for channel, slots in capacity.items():
            fields += [f"cap_{channel}", slots]
        await self._transaction(
            ("HSET", key, *fields), *(("HSETNX", key, f"load_{c}", 0) for c in capacity),
            ("HSETNX", key, "status", "away"))

    def capacity_of(self, agent: dict[str, Any]) -> dict[str, int]:
        """Contacts at once per channel: the agent's own figures over the channels' defaults."""
        return {**self._default_capacity,
                **{c: int(n) for c, n in (agent.get("capacity") or {}).items()}}

    async def set_presence(self, agent_id: str, status: str, reason: str | None = None) -> None:
        """available or away (with why: an away reason's id, kept for activity.py)."""
        now = int(time.time() * 1000)
        availability = (("ZADD", PREFIX + "available", "NX", now, agent_id)
                        if status == "available" else ("ZREM", PREFIX + "available", agent_id))
        await self._transaction(("HSET", f"{PREFIX}agent:{agent_id}", "status", status,
                                 "away_reason", reason or ""), availability)

    async def agent_state(self, agent_id: str) -> dict[str, str]:
        [flat] = await self.batcher.execute(("HGETALL", f"{PREFIX}agent:{agent_id}"))
        return {k.decode(): v.decode() for k, v in zip(flat[::2], flat[1::2])}
