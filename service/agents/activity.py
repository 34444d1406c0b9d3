"""What each agent is doing, and since when: the supervisor view's source, shared by instances.

An agent is `offline` (no console connected on any instance), `busy` (holding contacts),
else `available` or `away` (their presence). The state and the moment it began are kept in
the agent's hash next to the routing fields of service/agents/queues.py:

    sb:{routing}:agent:<id>   ... activity, activity_at (ms)
    sb:{routing}:sockets      ZSET <agent id>/<socket id> -> expiry ms

Each instance refreshes its own sockets every few seconds, so the consoles of an instance
that stops without closing them turn offline when their entries expire. The state is
observed (worked out and, when it changed, stamped) in one Lua script over `{routing}`:
after every console frame that can change it, on connect and disconnect, and whenever the
supervisor view is read, which catches anything else.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import structlog

from service.agents.queues import PREFIX, _Script
from service.infra.ids import new_hex
from service.infra.redis_batch import CommandBatcher

log = structlog.get_logger(__name__)

STATES = ("available", "busy", "away", "offline")
SOCKET_TTL_S = 15
SOCKET_REFRESH_S = 5
# Console frames after which the agent's state may differ (presence, taking or leaving contacts).
STATE_FRAMES = frozenset({"presence", "accept", "wrap_up", "transfer"})

# For each agent in ARGV[2..]: its state from its sockets, assignments and presence, stamped
# with `now` when it changed; returns each agent's hash, state, offers per channel and
# contacts held, as JSON. An agent without a hash (never connected) is reported, not created.
OBSERVE = """
local P = KEYS[1]
local online, held, offers = {}, {}, {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sockets', ARGV[1], '+inf')) do
  online[string.match(member, '^[^/]+')] = true
end
local flat = redis.call('HGETALL', P .. 'assigned')
for i = 2, #flat, 2 do held[flat[i]] = (held[flat[i]] or 0) + 1 end
flat = redis.call('HGETALL', P .. 'offered')
for i = 1, #flat, 2 do
  local raw = redis.call('HGET', P .. 'entries', flat[i])
  if raw then
    local channel = cjson.decode(raw)['channel']
    local mine = offers[flat[i + 1]] or {}
    mine[channel] = (mine[channel] or 0) + 1
    offers[flat[i + 1]] = mine
  end
end
local result = {}
for i = 2, #ARGV do
  local agent = ARGV[i]
  local key = P .. 'agent:' .. agent
  local fields = {}
  flat = redis.call('HGETALL', key)
  for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
  local state = 'offline'
  if online[agent] then
    if (held[agent] or 0) > 0 then state = 'busy'
    elseif fields['status'] == 'available' then state = 'available'
    else state = 'away' end
  end
  if #flat > 0 and fields['activity'] ~= state then
    redis.call('HSET', key, 'activity', state, 'activity_at', ARGV[1])
    fields['activity'], fields['activity_at'] = state, ARGV[1]
  end
  table.insert(result, cjson.encode({fields = fields, state = state,
                                     offers = offers[agent] or {}, held = held[agent] or 0}))
end
return result
"""

# This instance's consoles are still there; entries nobody refreshed are dropped and their
# agents returned, to be observed (turned offline when that was their last console).
REFRESH = """
local P = KEYS[1]
for i = 3, #ARGV do redis.call('ZADD', P .. 'sockets', ARGV[2], ARGV[i]) end
local gone = redis.call('ZRANGEBYSCORE', P .. 'sockets', '-inf', '(' .. ARGV[1])
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', P .. 'sockets', '-inf', '(' .. ARGV[1]) end
return gone
"""


@dataclass(frozen=True)
class AgentActivity:
    """One agent as the supervisor sees it; `since` is None for an agent never connected."""

    agent_id: str
    state: str
    since: float | None  # epoch seconds
    presence: str  # available | away: whether the agent takes new contacts
    contacts: Mapping[str, int]  # contacts held per channel (offers not counted)
    offers: int  # offers waiting for the agent's answer

    def in_state_s(self, now: float) -> float | None:
        return None if self.since is None else max(0.0, now - self.since)


class ActivityLog:
    """Agents' consoles and states in Redis; the consoles of this instance are kept fresh."""

    def __init__(self, batcher: CommandBatcher):
        self._batcher = batcher
        self._observe = _Script(OBSERVE)
        self._refresh = _Script(REFRESH)
        self._sockets: dict[str, str] = {}  # member -> agent id, for this instance's consoles

    async def connected(self, agent_id: str) -> str:
        """A console of the agent is open here; returns its member for `disconnected`."""
        member = f"{agent_id}/{new_hex(12)}"
        self._sockets[member] = agent_id
        await self._batcher.execute(("ZADD", PREFIX + "sockets", _expiry_ms(), member))
        await self.observe([agent_id])
        return member

    async def disconnected(self, member: str) -> None:
        agent_id = self._sockets.pop(member, member.partition("/")[0])
        await self._batcher.execute(("ZREM", PREFIX + "sockets", member))
        await self.observe([agent_id])

    async def refresh(self) -> None:
        """Every few seconds: keep this instance's consoles alive, turn lost ones offline."""
        now_ms = int(time.time() * 1000)
        gone = await self._refresh(self._batcher, now_ms, _expiry_ms(), *self._sockets)
        agents = sorted({m.decode().partition("/")[0] for m in gone})
        if agents:
            log.info("activity.consoles_expired", agents=agents)
            await self.observe(agents)

    async def observe(self, agent_ids: Iterable[str], now: float | None = None
                      ) -> dict[str, AgentActivity]:
        """Each agent's state now, stamped where it changed, in one round trip."""
        ids = list(agent_ids)
        if not ids:
            return {}
        now_ms = int((time.time() if now is None else now) * 1000)
        replies = await self._observe(self._batcher, now_ms, *ids)
        return {agent_id: _activity(agent_id, json.loads(raw))
                for agent_id, raw in zip(ids, replies)}


def _activity(agent_id: str, seen: dict[str, Any]) -> AgentActivity:
    fields, offers = seen["fields"], seen["offers"] or {}  # cjson writes an empty table as {}
    held = {key.removeprefix("load_"): int(value) - int(offers.get(key[5:], 0))
            for key, value in fields.items() if key.startswith("load_")}
    since = fields.get("activity_at")
    return AgentActivity(agent_id, seen["state"], int(since) / 1000 if since else None,
                         "available" if fields.get("status") == "available" else "away",
                         {channel: n for channel, n in sorted(held.items()) if n > 0},
                         sum(offers.values()))


def _expiry_ms() -> int:
    return int((time.time() + SOCKET_TTL_S) * 1000)
