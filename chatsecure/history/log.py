"""The room log's interface: the values it stores and the protocol every implementation follows.

The server gives every chat line it accepts a ``seq``: an integer that grows by exactly one per
stored line, with no gaps and no reuse, not even across a crash and restart. Clients use it to ask
for what they missed (``since``) and to page back (``before``); a ``(client, ref)`` pair lets a
client resend a line after a reconnect without it being stored twice.

Implementations: ``MemoryLog`` (tests, and a server without a database), ``SqliteLog``
(durable) and ``RedisLog`` (``history/redis.py``: shared by the servers of a cluster, and a
``SharedLog``). A new backend copies their semantics; ``tests/history`` runs the same tests on
each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from chatsecure.errors import ConfigError
from chatsecure.protocol.messages import Peer, encode_chat, encode_peer

DEFAULT_DB = Path("certs") / "history.sqlite3"
"""Where the server keeps its history unless told otherwise: beside its certificate."""


class HistoryError(ConfigError):
    """The history database cannot be used; the message names the file and says what to do."""


class LogReset(HistoryError):
    """A shared log is no longer the one this server was using: it lost what it held (a Redis
    restarted without persistence, or flushed). Its seqs and ids start again, so the server
    must start again on it, as after a restart of its own."""


# The types made once or more per line (here, and ``SendMsg``, ``_Said``, ``_Stored``) are not
# frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, which costs
# 4.5 times as much (0.53 against 0.12 us for six fields). Never change one once made. Nor do
# their fields have defaults or keyword-only parts: a class called with keywords gets them as a
# dict (a ``_Said`` cost 870 ns so made, against 262 ns with its values in order).
@dataclass(slots=True)
class Draft:
    """A line the server accepted and has not stored yet.

    ``sender`` is the peer as it was when it spoke (a later nick change does not rewrite history).
    ``client`` and ``ref`` identify the line for deduplication; either being ``None`` (a v1 client,
    or a client that does not care) means the line is never a duplicate.
    """

    sender: Peer
    text: str
    ts: float
    client: str | None
    ref: str | None


@dataclass(slots=True)
class Record:
    """A stored line."""

    seq: int
    sender: Peer
    text: str
    ts: float
    client: str | None
    ref: str | None


@dataclass(slots=True)
class Appended:
    """What became of one draft.

    ``duplicate`` is True when its ``(client, ref)`` was already stored: then ``record`` is the
    original line (its seq, ts and text), and nothing new was stored.
    """

    record: Record
    duplicate: bool


@dataclass(slots=True)
class Appends:
    """What became of a batch of drafts: the answer of ``RoomLog.append``.

    The drafts that were not duplicates got consecutive seqs in order, the first of them
    ``first`` (which means nothing when none was stored: ``last`` is None then);
    ``originals`` holds, by its index in the batch, the stored original of each draft that was
    a duplicate. So the answer costs nothing per line: a server reads ``first`` and
    ``originals`` as it goes through its batch. Iterating gives an ``Appended`` per draft.
    """

    drafts: Sequence[Draft]
    first: int
    originals: dict[int, Record] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.drafts)

    def __iter__(self) -> Iterator[Appended]:
        seq = self.first
        for index, draft in enumerate(self.drafts):
            original = self.originals.get(index)
            if original is not None:
                yield Appended(original, duplicate=True)
                continue
            record = Record(seq, draft.sender, draft.text, draft.ts, draft.client, draft.ref)
            yield Appended(record, duplicate=False)
            seq += 1

    @property
    def last(self) -> int | None:
        """The seq of the last line stored, ``None`` if none was (all were duplicates)."""
        stored = len(self.drafts) - len(self.originals)
        return self.first + stored - 1 if stored else None


@dataclass(frozen=True, slots=True)
class Opened:
    """The state of a log just opened, for the server to carry on from."""

    last_seq: int
    """Newest seq ever assigned, 0 for a new log. The next stored line gets ``last_seq + 1``."""
    tail: list[Record]
    """The newest records (as many as ``open`` asked for), ascending seq."""
    max_peer_id: int
    """Highest numeric ``sender.id`` ever stored, so a restarted server does not reuse ids.

    A ``SharedLog`` returns the start of a block of ids reserved for this server alone, above
    every id any server of the cluster used: peer ids stay unique across servers."""
    first_seq: int = 1
    """The oldest seq still kept (``last_seq + 1`` when none is): the lines before it are
    gone, however many ``keep`` allows now (a server restarted with a larger ``--history``
    after a smaller one). 1 from a log that does not say."""
    log_id: str = ""
    """This log's own id (16 characters of ``CLIENT_ID``'s, made with the log): a database
    or a Redis that lost the log has another, so that its seqs, which start again, are not
    taken for positions in the old one. Sent in ``welcome`` as ``log``."""


class RoomLog(Protocol):
    """An ordered, deduplicating log of a room's lines, keeping the newest ``keep``.

    Every method runs on the event loop and never blocks it. Only the newest ``keep`` records
    are visible (to reads and to deduplication), however lazily an implementation frees the
    older ones; ``last_seq`` and ``max_peer_id`` remember everything ever stored.
    """

    async def open(self, tail: int) -> Opened:
        """Open (or create) the log and return its state with the newest ``tail`` records."""
        ...

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        """Store ``drafts`` in one transaction; say what became of each.

        Non-duplicate drafts get consecutive seqs in order. Durable when it returns. A
        ``(client, ref)`` repeated inside the batch is a duplicate of its first occurrence.
        """
        ...

    async def before(self, seq: int | None, limit: int) -> list[Record]:
        """Up to ``limit`` records just below ``seq`` (``None``: the newest), ascending seq."""
        ...

    async def since(self, seq: int, limit: int) -> tuple[list[Record], int]:
        """The newest ``limit`` records after ``seq``, ascending, and how many were left out.

        The count ("skipped") covers records still kept that ``limit`` cut; records already
        trimmed away are not counted (the gap in seqs shows them).
        """
        ...

    async def close(self) -> None:
        """Release the storage; the log cannot be used after this."""
        ...

    @property
    def last_seq(self) -> int:
        """Newest seq ever assigned and committed, 0 for a new log."""
        ...

    @property
    def keep(self) -> int:
        """How many of the newest records are kept (and visible)."""
        ...


MSG_HEAD = b'{"type":"msg",'
"""How every ``msg`` frame begins; ``Fed.body`` is what follows it (after the seq)."""


@dataclass(slots=True)
class Fed:
    """A stored line as a cluster's feed brings it: what a server needs to broadcast it.

    ``body`` is the line's ``msg`` frame after ``{"type":"msg",`` and its seq, encoded once by
    the server that stored it: the others broadcast it without decoding or encoding it again.
    """

    seq: int
    sender_id: str
    client: str | None
    ref: str | None
    body: bytes

    @classmethod
    def of(cls, record: Record) -> Fed:
        return cls(record.seq, record.sender.id, record.client, record.ref, chat_body(record))

    def frame(self) -> bytes:
        """The ``msg`` frame of this line."""
        return b'{"type":"msg","seq":%d,%b' % (self.seq, self.body)


def chat_body(line: Record | Draft) -> bytes:
    """``Fed.body`` of a line: its ``msg`` frame without the head and the seq."""
    return encode_chat(encode_peer(line.sender), line.text, line.ts)[len(MSG_HEAD) :]


@runtime_checkable
class SharedLog(RoomLog, Protocol):
    """A room log that several servers append to: each one follows what all of them store."""

    def follow(self, after: int) -> AsyncIterator[list[Fed]]:
        """Every line stored after seq ``after``, by any server, in seq order, in batches.

        It goes on until cancelled, or a ``HistoryError`` says the log is out of reach (then
        follow again from the last seq received). An empty batch says the log answered with
        nothing new (so a follower knows it is reachable again).
        """
        ...


def peer_number(peer_id: str) -> int:
    """``peer_id`` as an integer when it is one (the server's ids are), else 0."""
    return int(peer_id) if peer_id.isascii() and peer_id.isdigit() else 0


def check_limit(name: str, value: int) -> None:
    """Refuse a negative count: a caller bug, not bad input from a peer."""
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
