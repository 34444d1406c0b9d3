"""What each agent is doing, and since when: the supervisor view's source, shared by instances.

An agent is `offline` (no console connected on any instance), `busy` (holding contacts),
else `available` or `away` (their presence). The state and the moment it began are kept in
the agent's hash next to the routing fields of service/agents/queues.py:

    sb:{routing}:agent:<id>          ... activity, activity_at (ms), activity_reason
    sb:{routing}:consoles:<id>       ZSET console id -> expiry ms, one per open console

An away agent's status carries its reason (the `away_reason` the console's presence frame
set, queues.py): a change of reason while away is a change of status. Each change is seen by
exactly one observer (the script is atomic), which appends `agent_status_changed` to the event
log (from, to, their reasons, seconds in the previous status): the agent report's times.

Each instance refreshes its own consoles every few seconds, so the consoles of an instance
that stops without closing them expire and their agents count as offline. The state is
observed (worked out and, when it changed, stamped) in one Lua script over `{routing}`: after
every console frame that can change it, on connect and disconnect, and whenever the
supervisor view or its gauges are read (every few seconds), which catches anything else.
Contacts held per channel are the agent's load minus the offers it has not answered yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import structlog

from service.agents.queues import PREFIX, _Script
from service.infra.ids import new_hex
from service.infra.redis_batch import CommandBatcher
from service.reporting.events import Event

log = structlog.get_logger(__name__)

STATES = ("available", "busy", "away", "offline")
CONSOLE_TTL_S = 15
CONSOLE_REFRESH_S = 5
# Console frames after which the agent's state may differ (taking or leaving contacts; the
# presence frame observes before its answer, which carries the time).
STATE_FRAMES = frozenset({"accept", "wrap_up", "transfer"})

# For each agent in ARGV[3 + n..] (ARGV[2] = n, the channels in ARGV[3..2 + n]): its state,
# stamped with ARGV[1] (now, ms) when it or its away reason changed. Replies per agent
# {state, activity_at, status, offers, reason, changed (0/1), previous state, its start, its
# reason, channel, held, channel, held, ...} (held > 0 only); an agent without a hash (never
# connected) is reported, not created.
OBSERVE = """
local P, now, n = KEYS[1], ARGV[1], tonumber(ARGV[2])
local channels, offers = {}, {}
local fields = {'status', 'activity', 'activity_at', 'away_reason', 'activity_reason'}
local LOADS = #fields
for i = 3, 2 + n do
  table.insert(channels, ARGV[i])
  table.insert(fields, 'load_' .. ARGV[i])
end
for i = 3 + n, #ARGV do offers[ARGV[i]] = {} end
local flat = redis.call('HGETALL', P .. 'offered')
for i = 1, #flat, 2 do
  local mine = offers[flat[i + 1]]
  local raw = mine and redis.call('HGET', P .. 'entries', flat[i])
  if raw then  -- the first "channel" of an entry is its own (decoding it all costs ~0.2 ms)
    local channel = string.match(raw, '"channel": *"([^"]+)"') or cjson.decode(raw)['channel']
    mine[channel] = (mine[channel] or 0) + 1
  end
end
local result = {}
for i = 3 + n, #ARGV do
  local agent = ARGV[i]
  local key = P .. 'agent:' .. agent
  local got = redis.call('HMGET', key, unpack(fields))
  local mine, held, total, offered = offers[agent], {}, 0, 0
  for _, count in pairs(mine) do offered = offered + count end
  for c, channel in ipairs(channels) do
    local count = tonumber(got[LOADS + c] or '0') - (mine[channel] or 0)
    if count > 0 then
      table.insert(held, channel) table.insert(held, count) total = total + count
    end
  end
  local state = 'offline'
  if redis.call('ZCOUNT', P .. 'consoles:' .. agent, now, '+inf') > 0 then
    if total > 0 then state = 'busy'
    elseif got[1] == 'available' then state = 'available'
    else state = 'away' end
  end
  local reason = ''
  if state == 'away' then reason = got[4] or '' end
  local since, changed = got[3] or '', 0
  if got[1] and (got[2] ~= state or (got[5] or '') ~= reason) then
    redis.call('HSET', key, 'activity', state, 'activity_at', now, 'activity_reason', reason)
    since, changed = now, 1
  end
  local row = {state, since, got[1] or '', offered, reason, changed,
               got[2] or '', got[3] or '', got[5] or ''}
  for _, value in ipairs(held) do table.insert(row, value) end
  table.insert(result, row)
end
return result
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
    reason: str | None = None  # why away (an away reason's id); None when not away or not said

    def in_state_s(self, now: float) -> float | None:
        return None if self.since is None else max(0.0, now - self.since)


@dataclass(frozen=True)
class StatusChange:
    """An agent's status changed (seen by one observer): `agent_status_changed`'s data."""

    agent_id: str
    at: float  # epoch seconds
    to: str
    reason: str | None
    previous: str | None  # None: the agent's first status
    previous_reason: str | None
    previous_since: float | None

    def event(self) -> Event:
        """The event log's record of the change (no contact: an agent's own event)."""
        seconds = None if self.previous_since is None else \
            round(max(0.0, self.at - self.previous_since), 3)
        return Event("agent_status_changed", None, None, None, occurred_at=self.at, data={
            "agent_id": self.agent_id, "from": self.previous, "to": self.to,
            "from_reason": self.previous_reason, "reason": self.reason,
            "seconds": seconds})


class ActivityLog:
    """Agents' consoles and states in Redis; the consoles of this instance are kept fresh."""

    def __init__(self, batcher: CommandBatcher, channels: Iterable[str],
                 emit: Callable[[Event], None] = lambda event: None):
        self._batcher = batcher
        self._emit = emit  # the event log's, for agent_status_changed
        self._channels = sorted(channels)  # whose load fields say what an agent holds
        self._observe = _Script(OBSERVE)
        self._consoles: dict[str, str] = {}  # console id -> agent id, for this instance's

    async def connected(self, agent_id: str) -> str:
        """A console of the agent is open here; returns its id for `disconnected`."""
        console = new_hex(12)
        self._consoles[console] = agent_id
        await self._batcher.execute(*_keep_alive(agent_id, console))
        await self.observe([agent_id])
        return console

    async def disconnected(self, console: str) -> None:
        agent_id = self._consoles.pop(console)
        await self._batcher.execute(("ZREM", f"{PREFIX}consoles:{agent_id}", console))
        await self.observe([agent_id])

    async def refresh(self) -> None:
        """Every few seconds: this instance's consoles are still open."""
        commands = [c for console, agent_id in self._consoles.items()
                    for c in _keep_alive(agent_id, console)]
        if commands:
            await self._batcher.execute(*commands)

    async def observe(self, agent_ids: Iterable[str], now: float | None = None
                      ) -> dict[str, AgentActivity]:
        """Each agent's state now, stamped where it changed, in one round trip."""
        ids = list(agent_ids)
        if not ids:
            return {}
        now_ms = int((time.time() if now is None else now) * 1000)
        replies = await self._observe(self._batcher, now_ms, len(self._channels),
                                      *self._channels, *ids)
        seen = {}
        for agent_id, reply in zip(ids, replies):
            seen[agent_id], change = _activity(agent_id, reply)
            if change is not None:
                self._emit(change.event())
                log.info("agents.status_changed", agent_id=agent_id, status=change.to,
                         reason=change.reason, previous=change.previous)
        return seen


def _activity(agent_id: str, reply: list) -> tuple[AgentActivity, StatusChange | None]:
    state, since, status, offers, reason, changed, before, before_at, before_reason, *held = (
        v.decode() if isinstance(v, bytes) else v for v in reply)
    at = int(since) / 1000 if since else None
    seen = AgentActivity(agent_id, state, at, "available" if status == "available" else "away",
                         dict(sorted(zip(held[::2], map(int, held[1::2])))), int(offers),
                         reason or None)
    if not int(changed) or at is None:
        return seen, None
    return seen, StatusChange(agent_id, at, state, reason or None, before or None,
                              before_reason or None,
                              int(before_at) / 1000 if before and before_at else None)


def _keep_alive(agent_id: str, console: str) -> list[tuple]:
    """The console's entry lives CONSOLE_TTL_S more; expired ones (and the key) go."""
    now = time.time()
    key = f"{PREFIX}consoles:{agent_id}"
    return [("ZADD", key, int((now + CONSOLE_TTL_S) * 1000), console),
            ("ZREMRANGEBYSCORE", key, "-inf", f"({int(now * 1000)}"),
            ("PEXPIRE", key, int(CONSOLE_TTL_S * 1000))]
