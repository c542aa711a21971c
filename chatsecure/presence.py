"""Presence across the servers of a cluster: who is in the room on every node, through Redis.

Why these choices:
- **One order for lines and presence.** Joins and leaves are entries of a second stream,
  ``chatsecure:{ROOM}:presence``, that the room's feed reads in the same ``XREAD`` as the lines
  (``RedisLog.also``). The script that adds an entry reads the room's seq counter into it
  (``after``), and every node announces it after line ``after`` and before line ``after + 1``.
  The counter only grows and scripts run alone, so an entry that says A was added before line
  A + 1 was stored; one ``XREAD`` is one snapshot of both streams, so a node that reads line
  A + 1 has read every entry before it (when the presence part of a read is cut at its count,
  the lines of that read are read again next time). Every node interleaves lines and presence
  the same way: a join comes before its peer's first line, since the node adds the join before
  it lets the peer speak, and a leave after its last, since the node adds the leave once the
  lines its peer said before it are stored.
- **A node's own newcomers are welcomed from the feed.** A join is a script (free nick, roster
  entry, stream entry in one step); the newcomer gets its ``welcome`` when the feed brings that
  entry back, so the roster it is given is the room as every node sees it at that point of the
  order, and everything after comes as ``join``/``leave`` frames, as on one server.
- **Nicks are unique across the cluster**: a hash of casefolded nick -> peer id, claimed with
  ``HSETNX`` inside the join script (the same suffixes as one server: ``alice_2``...), freed by
  the leave.
- **The roster** is a hash of peer id -> [node, id, nick, addr, casefolded nick, join entry id,
  client id ('' for none)]:
  a starting node reads it together with the stream's newest id (one transaction), in join
  order, and follows the stream from there. Its rooms are the union of every node's members.
- **A node that dies** stops refreshing its heartbeat key (``SET ... PX``, every
  ``HEARTBEAT_EVERY``). Every node checks the others' heartbeats; a node whose key expired is
  swept by one script that claims it (``SREM`` from the set of nodes: the first sweeper wins,
  the others find nothing to do) and adds a leave with reason ``node_lost`` for each of its
  users. A leave is only ever added by removing its peer from the roster hash, so everyone gets
  each leave once, whoever adds it. A node sweeps only after ``NODE_TTL`` of heartbeats of its
  own: after Redis comes back from an outage, every live node has refreshed its key by then.
- A node that stops cleanly sweeps itself: the others see its users leave with ``node_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import RedisError  # if missing, history.redis (imported first) says so

from chatsecure.cluster import (
    NODE_LOST,
    RETRY_FIRST,
    RETRY_MAX,
    Evicted,
    PresenceEvent,
    cancel,
)
from chatsecure.history import HistoryError, LogReset
from chatsecure.history.redis import SAME_LOG, RedisLog, redis_errors, redis_reason
from chatsecure.protocol import limits
from chatsecure.protocol.messages import Peer, cut_nick

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0
"""Seconds between a node's heartbeats (and its checks of the others')."""

NODE_TTL = 5.0
"""Seconds a heartbeat lasts: a node silent for this long is lost, its users leave."""

KEEP = 100_000
"""About how many presence entries the stream keeps (``MAXLEN ~``): far more than a node that
lost Redis for a while has to read again."""

DRAIN_TIMEOUT = 2.0
"""Seconds a stopping node waits for its joins and leaves under way to reach Redis."""

_SUFFIX_LENGTHS = range(2, 8)
"""Lengths of the suffixes ``_2`` ... ``_999999`` the join script may add to a nick."""

_JOIN = (
    SAME_LOG
    + """
local meta, stream, members, nicks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if not same_log(meta, ARGV[#ARGV - 1], ARGV[#ARGV]) then return reset() end
local node, id, addr, keep, client = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nick, folded = ARGV[6], ARGV[7]
local holder = redis.call('HGET', nicks, folded)
if holder and client ~= '' then
  local found = redis.call('HGET', members, holder)
  local m = found and cjson.decode(found)
  if m and m[7] == client then
    -- Its own client again (its old connection broke unseen, on this node or another): the
    -- old one leaves, replaced, and the nick is this one's.
    redis.call('HDEL', members, holder)
    redis.call('HDEL', nicks, folded)
    redis.call('XADD', stream, 'MAXLEN', '~', keep, '*', 'k', 'l',
      'a', redis.call('HGET', meta, 'seq') or '0', 'i', holder, 'n', m[3], 'd', m[4],
      'r', 'replaced')
  end
end
if redis.call('HSETNX', nicks, folded, id) == 0 then
  nick = false
  for n = 2, 999999 do
    local suffix = '_' .. n
    local i = 8 + 2 * (#suffix - 2)
    local candidate = ARGV[i + 1] .. suffix
    if redis.call('HSETNX', nicks, candidate, id) == 1 then
      nick, folded = ARGV[i] .. suffix, candidate
      break
    end
  end
end
local after = redis.call('HGET', meta, 'seq') or '0'
local eid = redis.call('XADD', stream, 'MAXLEN', '~', keep, '*',
  'k', 'j', 'a', after, 'i', id, 'n', nick, 'd', addr)
redis.call('HSET', members, id, cjson.encode({node, id, nick, addr, folded, eid, client}))
return nick
"""
)
"""Let peer ARGV[2] of node ARGV[1], of client ARGV[5] ('' for none), in as ARGV[6] or the first
free variant; ARGV[8..] are, per suffix length, the nick's prefix that leaves room for it and
that prefix casefolded. A member of the same client under the same nick is replaced (it leaves
with reason ``replaced``). The last two ARGV of every script here are the node's epoch and newest
seq seen (``SAME_LOG``)."""

_LEAVE = (
    SAME_LOG
    + """
local meta, stream, members, nicks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if not same_log(meta, ARGV[#ARGV - 1], ARGV[#ARGV]) then return reset() end
local id, reason, keep = ARGV[1], ARGV[2], ARGV[3]
local found = redis.call('HGET', members, id)
if not found then return 0 end
local m = cjson.decode(found)
redis.call('HDEL', members, id)
if redis.call('HGET', nicks, m[5]) == id then redis.call('HDEL', nicks, m[5]) end
local after = redis.call('HGET', meta, 'seq') or '0'
redis.call('XADD', stream, 'MAXLEN', '~', keep, '*',
  'k', 'l', 'a', after, 'i', id, 'n', m[3], 'd', m[4], 'r', reason)
return 1
"""
)
"""Peer ARGV[1] left for ARGV[2]: out of the roster, its nick freed, the leave added; 0 (and
nothing added) if it is not in the roster any more (swept already)."""

_SWEEP = (
    SAME_LOG
    + """
local meta, stream, members, nicks = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nodes, beat, read = KEYS[5], KEYS[6], KEYS[7]
if not same_log(meta, ARGV[#ARGV - 1], ARGV[#ARGV]) then return reset() end
local node, reason, keep = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', beat) == 1 then return -1 end
if redis.call('SREM', nodes, node) == 0 then return -1 end
redis.call('HDEL', read, node)
local after = redis.call('HGET', meta, 'seq') or '0'
local all = redis.call('HGETALL', members)
local gone = 0
for i = 1, #all, 2 do
  local m = cjson.decode(all[i + 1])
  if m[1] == node then
    redis.call('HDEL', members, all[i])
    if redis.call('HGET', nicks, m[5]) == m[2] then redis.call('HDEL', nicks, m[5]) end
    redis.call('XADD', stream, 'MAXLEN', '~', keep, '*',
      'k', 'l', 'a', after, 'i', m[2], 'n', m[3], 'd', m[4], 'r', reason)
    gone = gone + 1
  end
end
return gone
"""
)
"""Claim lost node ARGV[1] (its heartbeat KEYS[6] gone) and add a leave for each of its users;
the lines it has not read are no longer kept for it (KEYS[7]).

-1: nothing to do (the node is alive, or another node claimed it first); else how many left."""

_BEAT = (
    SAME_LOG
    + """
local meta, beat, nodes, read = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local node, ttl, position = ARGV[1], ARGV[2], ARGV[3]
if not same_log(meta, ARGV[#ARGV - 1], ARGV[#ARGV]) then return reset() end
redis.call('SET', beat, 1, 'PX', ttl)
local added = redis.call('SADD', nodes, node)
redis.call('HSET', read, node, position)
return {added, redis.call('SMEMBERS', nodes)}
"""
)
"""Refresh node ARGV[1]'s heartbeat KEYS[2] for ARGV[2] ms, say it has read up to seq ARGV[3];
return whether it had to be added back to the nodes (it was swept) and every node."""


def nick_arguments(wanted: str) -> list[str]:
    """The join script's nick arguments: ``wanted``, casefolded, then per suffix length its
    prefix with room for the suffix, as is and casefolded.

    A suffix is ASCII, so ``casefold(prefix + suffix) == casefold(prefix) + suffix``: the script
    compares exactly what ``Room`` compares on one server."""
    out = [wanted, wanted.casefold()]
    for length in _SUFFIX_LENGTHS:
        prefix = cut_nick(wanted, limits.MAX_NICK - length)
        out += [prefix, prefix.casefold()]
    return out


@dataclass(frozen=True, slots=True)
class _Change:
    """A join (``done`` set: its waiter) or a leave to add, in this node's order."""

    peer_id: str
    reason: str = ""
    wanted: str = ""
    addr: str = ""
    client: str = ""
    done: asyncio.Future[None] | None = None


class ClusterPresence:
    """This node's part of the cluster's presence: its joins, leaves, heartbeat and sweeps.

    ``open`` returns the room's roster; ``start`` makes the log's feed read the presence stream
    along with the lines and hand its events to ``deliver`` (``take``).
    """

    def __init__(self, shared: RedisLog) -> None:
        self._shared = shared
        self._redis = shared.redis
        prefix = shared.prefix
        self._prefix = prefix
        self.key = prefix + "presence"
        """The presence stream (read by ``RedisLog.follow`` through ``also``)."""
        self.position = "0-0"
        """The id of the last presence entry taken."""
        self._keys = [prefix + "meta", self.key, prefix + "members", prefix + "nicks"]
        self._nodes = prefix + "nodes"
        self.node = ""
        """This node's id in the cluster (from a counter in Redis: not reused while Redis keeps
        the room; a Redis that lost it starts again, and so does every node, see LogReset)."""
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._sweep = self._redis.register_script(_SWEEP)
        self._beat_script = self._redis.register_script(_BEAT)
        self._deliver: Callable[[list[PresenceEvent]], None] = lambda events: None
        self._changes: asyncio.Queue[_Change] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._position: Callable[[], int] = lambda: 0
        self._beating_since: float | None = None
        """Loop time of the first of this node's unbroken run of heartbeats (None: broken)."""
        self._restart: Callable[[HistoryError], None] = lambda exc: None
        self.abandoned = False
        """Whether Redis lost the room (``LogReset``): this node changes nothing there again."""

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self, deliver: Callable[[list[PresenceEvent]], None]) -> list[Peer]:
        """Become a node of the cluster (an id, a heartbeat); return the room, in join order."""
        self._deliver = deliver
        try:
            await self._shared.claim_epoch()
            self.node = str(await self._redis.hincrby(self._keys[0], "nodes", 1))
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._beat_key(self.node), 1, px=int(NODE_TTL * 1000))
                pipe.sadd(self._nodes, self.node)
                pipe.hgetall(self._keys[2])
                pipe.xrevrange(self.key, "+", "-", count=1)
                replies = await pipe.execute()
        except RedisError as exc:
            raise HistoryError(
                f"cannot use the Redis at {self._shared.url} ({redis_reason(exc)}): start it, "
                "or fix --cluster"
            ) from exc
        members = cast(dict[bytes, bytes], replies[2])
        newest = cast(list[tuple[bytes, Any]], replies[3])
        self.position = newest[0][0].decode() if newest else "0-0"
        rows = sorted((json.loads(row) for row in members.values()), key=lambda m: _order(m[5]))
        log.info("cluster: node %s; %d in the room on every node", self.node, len(rows))
        return [Peer(row[1], row[2], row[3]) for row in rows]

    def start(self, position: Callable[[], int], restart: Callable[[HistoryError], None]) -> None:
        """Follow the presence stream with the lines; start the heartbeat and the changes.

        Each heartbeat also says how far this node has read the lines (``position()``): the
        log keeps what it has not read yet (``RedisLog.read_key``). A heartbeat, join, leave
        or sweep that finds the room lost by Redis (``LogReset``), or a heartbeat that finds
        this node swept by the others (``Evicted``), calls ``restart``."""
        self._position = position
        self._restart = restart
        self._shared.also = self
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(), name="cluster-heartbeat"),
            loop.create_task(self._change(), name="cluster-presence"),
        ]

    async def close(self) -> None:
        """Leave the cluster: the changes under way go out, then this node's users leave."""
        self._shared.also = None
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changes.join(), DRAIN_TIMEOUT)
        await asyncio.gather(*(cancel(task) for task in self._tasks), return_exceptions=True)
        self._tasks = []
        if not self.node or self.abandoned:
            return  # (a node of a room Redis lost would sweep a new node of the same number)
        try:
            with self._mapped("could not stop the heartbeat"):
                await self._redis.delete(self._beat_key(self.node))
            gone = await self._claim(self.node)
        except HistoryError as exc:
            log.warning("%s; the other nodes will see this node's users leave", exc)
        else:
            log.info("cluster: node %s left the cluster with %d users", self.node, max(gone, 0))

    # -- joins and leaves ----------------------------------------------------------------

    async def join(self, peer_id: str, wanted: str, addr: str, client: str | None) -> None:
        """Add the join of ``peer_id`` (as ``wanted`` or a free variant); the feed brings it.
        A member of the same ``client`` id under ``wanted``, on any node, is replaced.

        A ``HistoryError`` says Redis did not answer: the join may or may not be stored, so
        the caller adds a leave after it (which does nothing if it was not)."""
        done = asyncio.get_running_loop().create_future()
        change = _Change(peer_id, wanted=wanted, addr=addr, client=client or "", done=done)
        self._changes.put_nowait(change)
        await done

    def leave(self, peer_id: str, reason: str) -> None:
        """Add the leave of ``peer_id`` after this node's changes before it (tried until done)."""
        self._changes.put_nowait(_Change(peer_id, reason=reason))

    async def _change(self) -> None:
        """Add this node's joins and leaves to Redis one by one, in order."""
        pause = RETRY_FIRST
        while True:
            change = await self._changes.get()
            try:
                while True:
                    try:
                        await self._apply(change)
                    except LogReset as exc:
                        self.abandon(exc)
                        if change.done is not None and not change.done.done():
                            change.done.set_exception(exc)
                        break
                    except HistoryError as exc:
                        if change.done is not None:
                            if not change.done.done():
                                change.done.set_exception(exc)
                            break
                        log.debug("cluster: leave of %s not added yet: %s", change.peer_id, exc)
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, RETRY_MAX)
                        continue
                    if change.done is not None and not change.done.done():
                        change.done.set_result(None)
                    pause = RETRY_FIRST
                    break
            finally:
                self._changes.task_done()

    async def _apply(self, change: _Change) -> None:
        with self._mapped("could not change the room's presence"):
            if change.done is None:
                args: list[str | int] = [change.peer_id, change.reason, KEEP, *self._same()]
                await self._leave(keys=self._keys, args=args)
            else:
                nicks = nick_arguments(change.wanted)
                args = [self.node, change.peer_id, change.addr, KEEP, change.client]
                args += [*nicks, *self._same()]
                await self._join(keys=self._keys, args=args)

    def take(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """New entries of the presence stream (from ``RedisLog.follow``): to the room."""
        self.position = entries[-1][0].decode()
        self._deliver([_event(fields) for _, fields in entries])

    # -- heartbeats and sweeps -----------------------------------------------------------

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._beat_once(loop.time())
            except LogReset as exc:
                self.abandon(exc)
                return
            except HistoryError as exc:
                self._beating_since = None
                log.debug("cluster: heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def _beat_once(self, now: float) -> None:
        """Refresh this node's heartbeat; sweep the nodes whose heartbeat is gone."""
        with self._mapped("could not refresh the heartbeat"):
            keys = [self._keys[0], self._beat_key(self.node), self._nodes, self._shared.read_key]
            position = self._position()
            args = [self.node, int(NODE_TTL * 1000), position, *self._same(position)]
            added, nodes = await self._beat_script(keys=keys, args=args)
        if added:  # swept: only a sweep takes a node out of the set
            self._restart(Evicted())
            return
        if self._beating_since is None:
            self._beating_since = now
        if now - self._beating_since < NODE_TTL:
            return  # another live node may not have had the time to beat since Redis is back
        others = sorted(n.decode() for n in cast(list[bytes], nodes) if n.decode() != self.node)
        if not others:
            return
        with self._mapped("could not read the heartbeats"):
            beats = await self._redis.mget([self._beat_key(n) for n in others])
        for node, beat in zip(others, beats, strict=True):
            if beat is None:
                gone = await self._claim(node)
                if gone >= 0:
                    log.warning("cluster: node %s is lost; %d of its users left", node, gone)

    async def _claim(self, node: str) -> int:
        """Sweep ``node`` if its heartbeat is gone and nobody did yet: its users' count, or -1."""
        with self._mapped(f"could not sweep node {node}"):
            keys = [*self._keys, self._nodes, self._beat_key(node), self._shared.read_key]
            args: list[str | int] = [node, NODE_LOST, KEEP, *self._same()]
            return int(await self._sweep(keys=keys, args=args))

    def _same(self, seen: int | None = None) -> list[str | int]:
        """The last two arguments of every script: what tells the room Redis lost."""
        return [self._shared.epoch, self._shared.last_seq if seen is None else seen]

    def abandon(self, exc: LogReset) -> None:
        """Redis lost the room: change nothing there any more, and have the server restart
        (once, whoever found it: this node, or its room)."""
        if not self.abandoned:
            self.abandoned = True
            self._restart(exc)

    def _beat_key(self, node: str) -> str:
        return f"{self._prefix}node:{node}"

    def _mapped(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return redis_errors("cluster", doing, self._shared.url)


def _order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _event(fields: dict[bytes, bytes]) -> PresenceEvent:
    peer = Peer(fields[b"i"].decode(), fields[b"n"].decode(), fields[b"d"].decode())
    reason = None if fields[b"k"] == b"j" else fields[b"r"].decode()
    return PresenceEvent(peer, int(fields[b"a"]), reason)
