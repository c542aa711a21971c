"""``RedisLog``: the room log in Redis, shared by every server of one room (``--cluster``).

Why these choices:
- A Redis **stream** holds the lines, one entry per line with the stream id ``SEQ-0``: it is
  ordered, persistent and re-readable from any point, so a node that blinks reads on from where
  it stopped (pub/sub would lose what it missed). ``follow`` reads it with ``XREAD BLOCK``.
- One Lua script stores a whole batch: for each draft it looks up the ``(client, ref)``
  dedup hash, ``HINCRBY``s the room's counter and ``XADD``s the entry, and trims the stream to
  the newest ``keep`` (forgetting the trimmed lines' refs), but never a line some live node has
  not read yet (each node's heartbeat says how far it read), up to ``LAG_KEEP`` more. Redis
  runs a script alone, so seqs are gapless and cluster-wide however many nodes append at once,
  and a batch is one round trip.
- Keys share the hash tag ``{ROOM}`` (``chatsecure:{ROOM}:log`` ...), so a Redis Cluster keeps a
  room's keys on one shard, as a script that touches several keys needs.
- Peer ids must be unique across nodes (clients tell their own lines by the sender's id): each
  ``open`` reserves a block of ``ID_BLOCK`` ids from a shared counter, and reports its start as
  ``max_peer_id``, so the server numbers its connections from there.
- No retries inside redis-py: a batch whose reply was lost may or may not be stored, and only
  the room (through ``not_stored`` and the clients' re-sends with the same ``ref``) may decide
  what happens next. Reads and ``follow`` are retried by their callers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from chatsecure.history.log import (
    Appends,
    Draft,
    Fed,
    HistoryError,
    LogReset,
    Opened,
    Record,
    chat_body,
    check_limit,
)
from chatsecure.protocol.messages import Peer

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - the extra is installed wherever tests run
    raise HistoryError(
        "--cluster needs the redis package: pip install 'chatsecure[cluster]'"
    ) from exc

log = logging.getLogger(__name__)

ID_BLOCK = 1_000_000_000
"""Peer ids a node reserves when it opens the log: its connections are numbered inside them."""

FOLLOW_BLOCK_MS = 2000
"""How long one ``XREAD BLOCK`` waits for new lines before it asks again."""

FOLLOW_COUNT = 1000
"""Most stream entries one ``XREAD`` returns."""

CONNECT_TIMEOUT = 5.0
"""Seconds to reach Redis before the node says it cannot."""

LAG_KEEP = 100_000
"""Lines kept beyond ``keep`` while a node has not read them (it lags, or is paused): a node
further behind than this misses the oldest of them (its log says which)."""

SOCKET_TIMEOUT = 10.0
"""Seconds a Redis reply may take (more than ``FOLLOW_BLOCK_MS``) before the call fails."""

RESET = "CHATSECURE_LOG_RESET"
"""The error a script answers when the room's Redis lost what it held (see ``SAME_LOG``)."""

SAME_LOG = f"""
local function same_log(meta, epoch, seen)
  return redis.call('HGET', meta, 'epoch') == epoch
    and tonumber(redis.call('HGET', meta, 'seq') or '0') >= tonumber(seen)
end
local function reset() return redis.error_reply('{RESET}') end
"""
"""Lua for scripts that change the room: ``same_log(meta, epoch, seen)`` says whether Redis
still holds the log this node opened: the epoch it read then (``RedisLog.claim_epoch``), and a
counter at least at the newest seq it has seen. A Redis that restarted empty has neither (or a
new epoch, written by a node that started since); one that failed over to a replica that lagged
has a counter behind. Its seqs and ids start again there: a node that went on would store lines
nobody reads and mix its ids with new ones, so it must start again (``LogReset``)."""

_APPEND = (
    SAME_LOG
    + """
local meta, stream, refs, read = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local keep, most = tonumber(ARGV[1]), tonumber(ARGV[2])
if not same_log(meta, ARGV[3], ARGV[4]) then return reset() end
local out = {}
for i = 5, #ARGV, 4 do
  local key, payload, body, sender = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local original = nil
  if key ~= '' then
    local seq = redis.call('HGET', refs, key)
    if seq then
      local found = redis.call('XRANGE', stream, seq .. '-0', seq .. '-0')
      if #found > 0 then original = {tonumber(seq), found[1][2][2]} end
    end
  end
  if original then
    out[#out + 1] = original
  else
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    if key ~= '' then
      redis.call('XADD', stream, seq .. '-0', 'r', payload, 'm', body, 'i', sender, 'k', key)
      redis.call('HSET', refs, key, seq)
    else
      redis.call('XADD', stream, seq .. '-0', 'r', payload, 'm', body, 'i', sender)
    end
    local length = redis.call('XLEN', stream)
    local excess = length - keep
    if excess > 0 then
      local floor = nil
      for _, position in ipairs(redis.call('HVALS', read)) do
        local n = tonumber(position)
        if floor == nil or n < floor then floor = n end
      end
      if floor ~= nil then
        local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
        local read_by_all = floor - tonumber(string.sub(oldest[1][1], 1, -3)) + 1
        excess = math.max(math.min(excess, read_by_all), length - most)
      end
      -- Once a node far behind has caught up, shrink back a little per line, not all at once.
      excess = math.min(excess, 1000)
    end
    if excess > 0 then
      for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)) do
        local old = entry[2][8]
        if old and redis.call('HGET', refs, old) == string.sub(entry[1], 1, -3) then
          redis.call('HDEL', refs, old)
        end
      end
      redis.call('XTRIM', stream, 'MAXLEN', length - excess)
    end
    out[#out + 1] = {seq}
  end
end
return out
"""
)
"""Store a batch: ARGV is ``keep`` and ``most``, this node's epoch and newest seq seen (see
``SAME_LOG``), then per draft its dedup key ('' for none), its payload (``r``: everything, as
JSON), its ``Fed.body`` (``m``) and its sender's id (``i``).

Returns per draft ``{seq}`` for a new line, or ``{seq, payload}`` of the original for a
duplicate. The stream keeps the newest ``keep`` lines, and more (up to ``most``) while a node
has not read them (its position in the ``read`` hash, see ``LAG_KEEP``); each line trims at
most 1,000 (a script that trimmed 100,000 at once would stall Redis for everyone). A trimmed
entry's ref is forgotten only if it still points at that entry.
"""

_Entry = tuple[bytes, dict[bytes, bytes]]


class Companion(Protocol):
    """Another stream that ``follow`` reads in the same ``XREAD`` as the lines.

    One ``XREAD`` is one snapshot of both streams: what the companion adds is ordered against
    the lines by what its entries say (the presence of ``chatsecure.presence``).
    """

    key: str
    """The companion stream's key."""
    position: str
    """The id of its last entry taken: ``follow`` reads on after it."""

    def take(self, entries: list[_Entry]) -> None:
        """New entries of the companion stream, before the lines of the same read."""


def room_prefix(room: str) -> str:
    """The keys' prefix for ``room``: ``chatsecure:{ROOM}:``, the name percent-encoded.

    Encoding keeps any name (spaces, braces) from breaking the ``{...}`` hash tag.
    """
    return f"chatsecure:{{{quote(room, safe='')}}}:"


def public_url(url: str) -> str:
    """``url`` without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisLog:
    """The log of room ``room`` in the Redis at ``url``, keeping the newest ``keep`` lines.

    Every node of a cluster opens one with the same URL, room and ``keep``. ``last_seq`` is
    the newest seq this node has seen (stored itself or read in ``follow``); the log's own
    counter in Redis is the cluster's.
    """

    def __init__(self, url: str, room: str, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep} (keep 0 means no log at all)")
        self._url = public_url(url)
        self._keep = keep
        prefix = room_prefix(room)
        self._meta = prefix + "meta"
        self._stream = prefix + "log"
        self._refs = prefix + "refs"
        self.read_key = prefix + "read"
        """A hash of node -> the newest seq it has read: lines no node has read are kept."""
        parts = urlsplit(url)
        database = parts.path.strip("/") if parts.scheme in ("redis", "rediss") else ""
        if database and not database.isdecimal() and "db" not in parse_qs(parts.query):
            # redis-py would quietly use database 0 (another room's, perhaps) instead.
            raise HistoryError(
                f"--cluster {self._url}: the database is a number (redis://HOST:PORT/0), "
                f"not {database!r}"
            )
        try:
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                # RESP2 replies have one shape in every redis-py from 5 on (8 defaults to RESP3,
                # where XREAD answers a map).
                protocol=2,
            )
        except ValueError as exc:
            raise HistoryError(f"--cluster {self._url} is not a Redis URL ({exc})") from exc
        self._append = self._redis.register_script(_APPEND)
        self._last_seq = 0
        self._epoch: str | None = None
        self._closed = False
        self.prefix = prefix
        """The keys' prefix (``room_prefix``): other keys of the room start with it too."""
        self.also: Companion | None = None
        """A stream ``follow`` reads along with the lines (cluster presence), if any."""

    @property
    def redis(self) -> aioredis.Redis:
        """The client (and its connection pool), for other keys of the same room."""
        return self._redis

    @property
    def url(self) -> str:
        """The Redis URL without its password, for logs and errors."""
        return self._url

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def epoch(self) -> str:
        """The epoch of the log this node opened (``claim_epoch``; "" before)."""
        return self._epoch or ""

    async def claim_epoch(self) -> str:
        """This node's epoch of the log: a random id that the first node to open the room's
        keys (new, or lost by Redis) writes there, and every other node reads. ``RedisError``
        is the caller's to turn into a ``HistoryError``: this is part of opening."""
        if self._epoch is None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._meta, "epoch", secrets.token_hex(8))
                pipe.hget(self._meta, "epoch")
                _, epoch = await pipe.execute()
            self._epoch = cast(bytes, epoch).decode()
        return self._epoch

    @property
    def keep(self) -> int:
        return self._keep

    async def open(self, tail: int) -> Opened:
        """Reach Redis, reserve a block of peer ids, and return the newest ``tail`` lines."""
        check_limit("tail", tail)
        try:
            await self.claim_epoch()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(self._meta, "ids", ID_BLOCK)
                pipe.hget(self._meta, "seq")
                pipe.xrevrange(self._stream, "+", "-", count=max(tail, 1))
                ids_end, seq, newest = await pipe.execute()
        except RedisError as exc:
            raise HistoryError(
                f"cannot use the Redis at {self._url} ({redis_reason(exc)}): "
                "start it, or fix --cluster"
            ) from exc
        self._last_seq = int(seq or 0)
        entries = cast(list[_Entry], newest)
        records = [_entry_record(entry) for entry in reversed(entries)] if tail else []
        log.info("history: the room's log is in Redis at %s, seq %d", self._url, self._last_seq)
        return Opened(self._last_seq, records, int(ids_end) - ID_BLOCK, log_id=self.epoch)

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        appends = Appends(drafts, self._last_seq + 1)
        if not drafts:
            return appends
        args: list[str | int | bytes] = [
            self._keep,
            self._keep + LAG_KEEP,
            self.epoch,
            self._last_seq,
        ]
        for draft in drafts:
            key = _dedup_key(draft.client, draft.ref)
            args += [key, _payload(draft), chat_body(draft), draft.sender.id]
        with self._mapped("could not store lines"):
            replies = await self._append(
                keys=[self._meta, self._stream, self._refs, self.read_key], args=args
            )
        replies = cast(list[list[Any]], replies)
        if len(replies) != len(drafts):  # never: the script answers each draft
            raise HistoryError(f"Redis answered {len(replies)} of {len(drafts)} lines stored")
        first = None
        for index, reply in enumerate(replies):
            seq = int(reply[0])
            if len(reply) > 1:
                appends.originals[index] = _record(seq, reply[1])
            elif first is None:
                first = seq  # the others follow it: the script runs alone in Redis
        if first is not None:
            appends.first = first
            self._last_seq = max(self._last_seq, cast(int, appends.last))
        return appends

    async def before(self, seq: int | None, limit: int) -> list[Record]:
        check_limit("limit", limit)
        if limit == 0 or (seq is not None and seq <= 1):
            return []
        end = "+" if seq is None else f"({seq}-0"
        with self._mapped("could not read history"):
            entries = cast(
                list[_Entry], await self._redis.xrevrange(self._stream, end, "-", count=limit)
            )
        return [_entry_record(entry) for entry in reversed(entries)]

    async def since(self, seq: int, limit: int) -> tuple[list[Record], int]:
        check_limit("limit", limit)
        start = f"({seq}-0" if seq > 0 else "-"
        with self._mapped("could not read history"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrange(self._stream, "-", "+", count=1)
                pipe.xrevrange(self._stream, "+", start, count=max(limit, 1))
                oldest, newest = await pipe.execute()
        if not newest:
            return [], 0
        # Kept seqs are consecutive: how many follow ``seq`` is arithmetic.
        first, last = _seq(oldest[0][0]), _seq(newest[0][0])
        available = last - max(seq, first - 1)
        records = [_entry_record(entry) for entry in reversed(newest[:limit])]
        return records, available - len(records)

    async def follow(self, after: int) -> AsyncIterator[list[Fed]]:
        """Every line stored after ``after``, by any node, in seq order, batch by batch, forever.

        An empty batch says the log answered with nothing new (every ``FOLLOW_BLOCK_MS``).

        A ``HistoryError`` ends it (Redis is gone); follow again from the last seq received.
        Lines trimmed before they were read are missing: the seqs show the gap.
        """
        position = f"{after}-0"
        while True:
            streams: dict[Any, Any] = {self._stream: position}
            if (also := self.also) is not None:
                streams[also.key] = also.position
            with self._mapped("lost the room's stream"):
                reply = await self._redis.xread(streams, count=FOLLOW_COUNT, block=FOLLOW_BLOCK_MS)
            entries: list[_Entry] = []
            for key, got in cast(list[list[Any]], reply or []):
                if also is not None and key.decode() == also.key:
                    also.take(got)
                    if len(got) >= FOLLOW_COUNT:
                        # Cut at the count: some of its entries may belong before these
                        # lines. They come again in the next read, after the rest of it.
                        entries = []
                        break
                else:
                    entries = got
            if not entries:
                yield []  # the log answered, with no new line: it is reachable
                continue
            fed = [_entry_fed(entry) for entry in entries]
            position = entries[-1][0].decode()
            self._last_seq = max(self._last_seq, fed[-1].seq)
            yield fed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()

    def _mapped(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return redis_errors("history", doing, self._url)


@contextlib.contextmanager
def redis_errors(who: str, doing: str, url: str) -> Iterator[None]:
    """Turn a ``RedisError`` into a ``HistoryError`` naming the URL (the one boundary)."""
    try:
        yield
    except ResponseError as exc:
        if RESET in str(exc):
            raise LogReset(
                f"{who}: the room's log in the Redis at {url} is not the one this server "
                "opened: Redis lost what it held (restarted without persistence, flushed, or "
                "failed over to a replica that lagged)"
            ) from exc
        raise HistoryError(f"{who}: {doing} in the Redis at {url}: {redis_reason(exc)}") from exc
    except RedisError as exc:
        raise HistoryError(f"{who}: {doing} in the Redis at {url}: {redis_reason(exc)}") from exc


def redis_reason(exc: RedisError) -> str:
    """Why redis-py failed, to go inside a sentence (its own may end in a period)."""
    return (str(exc) or type(exc).__name__).rstrip(".")


def _dedup_key(client: str | None, ref: str | None) -> str:
    """The refs hash's field for a line, '' when it has no (client, ref); unambiguous."""
    return "" if client is None or ref is None else f"{len(client)}:{client}{ref}"


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""One encoder: ``json.dumps`` with options builds a new one for every call."""


def _payload(draft: Draft) -> str:
    sender = draft.sender
    return _dumps(
        [draft.ts, sender.id, sender.nick, sender.addr, draft.text, draft.client, draft.ref]
    )


def _record(seq: int, payload: bytes) -> Record:
    ts, peer_id, nick, addr, text, client, ref = json.loads(payload)
    return Record(seq, Peer(peer_id, nick, addr), text, float(ts), client, ref)


def _seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _entry_fed(entry: _Entry) -> Fed:
    """What ``follow`` gives of an entry, read without decoding the line's JSON."""
    entry_id, fields = entry
    client: str | None = None
    ref: str | None = None
    key = fields.get(b"k")
    if key is not None:  # "LEN:CLIENTREF" (see _dedup_key)
        length, _, rest = key.decode().partition(":")
        client, ref = rest[: int(length)], rest[int(length) :]
    return Fed(_seq(entry_id), fields[b"i"].decode(), client, ref, fields[b"m"])


def _entry_record(entry: _Entry) -> Record:
    entry_id, fields = entry
    return _record(_seq(entry_id), fields[b"r"])
