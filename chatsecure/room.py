"""The room: who is here, the order of what is said, and the fan-out to everyone.

A ``Room`` owns presence (the joined members, their nicks), sequencing (every accepted line
gets its ``seq`` from the room's log, and is acknowledged and broadcast only once the log says
it is stored) and the broadcast of one event-loop iteration (encoded once, one write per
member). It knows nothing of sockets or TLS: a member is anything with the few methods of
``Member``; the server's sessions are members.

The path of one line: ``say`` -> a batch of ``Draft``s -> ``RoomLog.append`` (one commit for
everything said in an iteration, off the loop for a database) -> ``_stored``: ``ack`` to the
sender, the ``msg`` into the iteration's broadcast -> ``_flush``: one write per member.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from chatsecure.cluster import NODE_LOST, REFUSED, Evicted, PresenceEvent, StreamFeed
from chatsecure.history import (
    Appends,
    Draft,
    Fed,
    HistoryError,
    LogReset,
    Record,
    RoomLog,
    SharedLog,
)
from chatsecure.pacing import HistoryPacer
from chatsecure.protocol import limits
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import (
    Error,
    Hello,
    HistoryEnd,
    HistoryRequest,
    Peer,
    SendMsg,
    ServerInfo,
    as_history,
    cut_nick,
    encode,
    encode_ack,
    encode_chat,
    encode_join,
    encode_leave,
    encode_leaves,
    encode_peer,
    encode_peers,
    encode_welcome,
    encode_welcome_v2,
    with_ref,
)

if TYPE_CHECKING:
    from chatsecure.presence import ClusterPresence

log = logging.getLogger(__name__)

HISTORY_WAITING_TEXT = "too many history requests waiting; ask again once one is answered"
HISTORY_UNAVAILABLE_TEXT = "the history cannot be read now; ask again later"
"""The ``error`` for a ``history`` request the log could not answer (its Redis is away)."""

WRITE_CHUNK = 16 * 1024
"""Most bytes handed to a TLS transport at once: one full TLS record.

The TLS layer encrypts a write into a memory buffer that keeps its largest size for the life
of the connection (OpenSSL's memory BIO never shrinks): one 120 KB welcome would cost that
connection 136 KiB of resident memory for ever, 16 KiB pieces 37 KiB, 4 KiB pieces 21 KiB.
"""

CROWD = 1000
"""Members from which the room writes in ``CROWD_WRITE_CHUNK`` pieces instead."""

CROWD_WRITE_CHUNK = 4 * 1024
"""Write size in a crowded room: memory per connection counts more than bulk throughput.

4 KiB pieces cost fan-out about a fifth of its deliveries/s against 16 KiB ones, and save
about 16 KiB on every connection (10,000 idle clients: 46 -> about 32 KiB each).
"""


class Member(Protocol):
    """What the room needs of a joined connection."""

    id: str
    peer: Peer | None
    peer_json: bytes
    client_id: str | None

    def send(self, data: bytes) -> None: ...

    def send_bulk(self, frames: list[bytes]) -> None:
        """Queue a long answer (a welcome and its replay, a history page), ``frames`` in order:
        it may take the client a while, and what is queued after it comes after it."""

    def skip_log(self) -> None: ...

    def end_iteration(
        self, shared: list[bytes] | list[memoryview], senders: set[Member]
    ) -> None: ...

    @property
    def gone(self) -> bool: ...

    def hold(self) -> None:
        """Read nothing more from this member until ``release`` (the log is behind)."""

    def release(self) -> None:
        """Read from this member again."""

    def replace(self, how: str) -> None:
        """Another connection of this member's client took its place (``how``: "from ADDR",
        say): tell it, and close it."""

    def abort(self) -> None:
        """Cut the connection at once, writing nothing more: a write to it failed."""


BATCH_START = 256
BATCH_MAX = 4096
"""The most lines one commit stores: ``BATCH_START`` once the log has caught up, then twice
as many as the commit before while lines keep waiting, up to ``BATCH_MAX`` (with a shared log,
whose commit is a round trip, everything queued).

While the event loop acknowledges and broadcasts a batch, the log's thread commits the next.
Without a bound, the lines read during one commit all waited for the next, and the loop had
nothing to do meanwhile: a burst of 10,000 lines was 3 or 4 commits, the largest of 8,840. A
small first commit gets the broadcasts going; growing ones keep a long burst to few commits
(each costs the two threads about 0.8 ms of CPU in hand-overs).
"""
STORE_HIGH = 1000
"""Lines said and not yet broadcast (``Room.unstored``) from which a member that says one more
is no longer read.

Without a bound a fast sender grows the queue (and everyone's wait for their lines) as far as
its socket lets it. Held members are read again once fewer lines wait.
"""


class Room:
    """Presence, sequencing and fan-out of one chat room."""

    def __init__(
        self,
        info: ServerInfo,
        history: RoomLog | None,
        *,
        replay: int = limits.REPLAY,
        replay_max: int = limits.REPLAY_MAX,
        presence_pace: float = limits.PRESENCE_PACE,
        presence_hold_max: float = limits.PRESENCE_HOLD_MAX,
        cluster: ClusterPresence | None = None,
        history_rate: float = limits.HISTORY_RATE,
        history_burst: float = limits.HISTORY_BURST,
    ) -> None:
        self.info = info
        self.members: dict[str, Member] = {}
        """The joined members, by id, in join order: everyone who receives broadcasts."""
        self._clients: dict[str, dict[str, Member]] = {}
        """The joined members that gave a ``client`` id, by that id and their casefolded nick
        (two programs on one config folder may be in under two nicks)."""
        self.seq = 0
        """The newest ``seq`` broadcast: what a ``welcome`` sent now says."""
        self.log_id: str | None = None
        """The log's own id (``Opened.log_id``), told in ``welcome``; None without a log."""
        self._first_kept = 1
        """The oldest seq the log kept when it opened (``Opened.first_seq``)."""
        self.frames: list[bytes | _Presence] = []
        """Frames broadcast in this loop iteration; ``_flush`` writes them to everyone."""
        self.frames_skip: list[Member | None] = []
        """For each frame in ``frames``, the member it is not for (its sender)."""
        self._senders: set[Member] = set()
        self._dirty: list[Member] = []
        self._flush_scheduled = False
        self._peers_json: dict[str, bytes] = {}
        """``encode_peer`` of every member, in join order: the welcome's peer list."""
        self._nicks: set[str] = set()
        """The casefolded nicks in use."""
        self._chunks: list[tuple[bytes, bytes]] = []
        """The roster's first full ``PEERS_CHUNK``s, each as its peers joined by commas and as
        a ``peers`` frame: built once, shared by every v2 newcomer until someone leaves."""
        self._v2: set[str] = set()
        """Members that get presence as v2 frames (``peers``, ``joins``, ``leaves``)."""
        self._serial: dict[str, int] = {}
        """Each member's place in the order of presence events (its join's serial)."""
        self._serials = itertools.count(1)
        self._held: list[_Event] = []
        """Joins and leaves not announced yet (a storm paces them, see ``PRESENCE_PACE``)."""
        self._release: asyncio.Handle | None = None
        self._next_release = 0.0
        self._recent: dict[str, Member] = {}
        """Newcomers that may not have heard yet of every event before their join: each
        gets its own cut of the presence batches (``pending_for``)."""
        self._pace = presence_pace
        self._hold_max = presence_hold_max
        self._history = history
        self._replay = replay
        self._replay_max = replay_max
        tail = max(replay, replay_max)
        if history is not None:
            tail = min(tail, history.keep)
        self._tail: collections.deque[_Stored] = collections.deque(maxlen=tail)
        """The newest stored lines (``msg`` frames, and whose they are), ending at ``seq``:
        every replay after a ``welcome`` comes from here, with no database read while others
        wait. No more than the log keeps: a line it no longer has is replayed to nobody."""
        self._queue: list[_Said | bytes | _Presence | _Gone] = []
        """What happened since the last commit began, in order: lines said, and the presence
        frames (join, leave) that must not overtake them."""
        self._committing: asyncio.Task[None] | None = None
        self._answered: collections.deque[
            tuple[list[_Said | bytes | _Presence | _Gone], int, Appends]
        ] = collections.deque()
        """Batches stored (or refused: then only their presence is left), and how many lines
        each had, not yet acknowledged and broadcast."""
        self._answer_scheduled = False
        self._refused = 0
        """Lines refused since the last commit that worked (a full disk, say)."""
        self._batch = BATCH_START
        """The most lines the next commit takes (see ``BATCH_START``)."""
        self._presence_queued = 0
        """Presence batches queued behind lines (in ``_queue``, the commit under way,
        ``_answered`` or ``_due``) and not broadcast yet."""
        self.unstored = 0
        """Lines said and not yet broadcast: in ``_queue``, in the commit under way, or
        stored and waiting in ``_answered``."""
        self._not_read: set[Member] = set()
        """Members not read from until the log catches up (``STORE_HIGH``)."""
        self._tasks: set[asyncio.Task[None]] = set()
        """``history`` answers being read from the log (a task per address whose requests
        wait), and joins on their way through a cluster."""
        self._history_unreadable = False
        """Whether the last history request failed (a warning is logged when it starts)."""
        self._pacer: HistoryPacer[Member] = HistoryPacer(
            self._answer_history, self._spawn, rate=history_rate, burst=history_burst
        )
        """``history`` requests waiting their turn, and each address's budget."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._feed: StreamFeed | None = None
        """In a cluster: every server's lines, broadcast by ``_followed`` in seq order."""
        self._due: dict[int, list[tuple[Member | None, bytes | _Presence | PresenceEvent]]] = {}
        """In a cluster: acks (for a member) and presence (for all: ``None``) waiting until
        the feed has broadcast the line of that seq."""
        self._cluster = cluster
        """In a cluster: presence on every server (the roster is theirs, joins go through it)."""
        self._joining: dict[str, _Joining] = {}
        """In a cluster: members whose join is on its way through the feed, by id."""
        self._appended = 0
        """In a cluster: the newest seq this server's own appends were given."""
        self._unacked: dict[tuple[str, str], list[_Said]] = {}
        """In a cluster: lines with a ``ref`` being stored, by (sender id, ref), not acked yet.

        The feed may bring a line before its store's answer comes (both are replies from the
        log, read in whichever order the loop sees them): the line's ack goes out then, in its
        place among the lines, not after lines of higher seqs."""
        self.restart_why: HistoryError | None = None
        """In a cluster: why this room must start again on the shared log, if it must (Redis
        lost the room, ``LogReset``; or the other servers took this one for lost, ``Evicted``)."""
        self.on_restart: Callable[[HistoryError], None] = lambda exc: None
        """Called once when the room must start again: the server restarts."""

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> int:
        """Open the log and load its newest lines; return the highest sender id it holds."""
        self._loop = asyncio.get_running_loop()
        if self._history is None:
            return 0
        if self._cluster is not None:
            # Before the log: presence added meanwhile comes through the feed, not lost.
            for peer in await self._cluster.open(self._fed_presence):
                self._peers_json[peer.id] = encode_peer(peer)
        opened = await self._history.open(self._tail.maxlen or 0)
        self.seq = opened.last_seq
        self._first_kept = opened.first_seq
        self.log_id = opened.log_id or None
        self._tail.extend(_tail_entry(r) for r in opened.tail)
        if isinstance(self._history, SharedLog):
            deliver = self._followed if self._cluster is None else self._fed_lines
            self._feed = StreamFeed(
                self._history, deliver, lambda: self.seq, self.broadcast, self._restart
            )
            self._feed.start()
        if self._cluster is not None:
            self._cluster.start(lambda: self.seq, self._restart)
        return opened.max_peer_id

    def _restart(self, exc: HistoryError) -> None:
        """This room must start again (once); if Redis lost it, nothing more goes there."""
        if self._cluster is not None and isinstance(exc, LogReset):
            self._cluster.abandon(exc)  # (also after an Evicted: its Redis is not ours now)
        if self.restart_why is None:
            self.restart_why = exc
            # What members say from now on stays with them: they send it again after the
            # restart, instead of being refused, or stored after the room saw them leave.
            for member in self.members.values():
                member.hold()
            self.on_restart(exc)

    async def drain(self) -> None:
        """Store, acknowledge and broadcast every line said so far (for a clean shutdown)."""
        while self._committing is not None:
            await asyncio.shield(self._committing)
        if self._feed is not None:
            await self._caught_up()

    async def close(self) -> None:
        """Finish what is being stored and close the log."""
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._feed is not None:
            await self._feed.stop()
        if self._cluster is not None:
            # After the feed: its own leaves would wake the feed's read as it is cancelled.
            await self._cluster.close()
        if self._history is not None:
            await self._history.close()

    # -- presence ------------------------------------------------------------------------

    def join(self, member: Member, wanted: str, hello: Hello, addr: str) -> Peer:
        """Let ``member`` in as ``wanted`` (or a free variant): welcome, replay, tell the rest."""
        peer = Peer(member.id, self._unique_nick(wanted), addr)
        serial = self._welcome(member, peer, hello)
        self._peers_json[member.id] = member.peer_json
        self._nicks.add(peer.nick.casefold())
        self._announce(_Event(serial, member.peer_json))
        return peer

    def _welcome(self, member: Member, peer: Peer, hello: Hello) -> int:
        """Welcome ``member`` as ``peer`` to the room as it is, replay, and count it in.

        Returns its place in the order of presence events (its join's serial)."""
        member.peer = peer
        member.peer_json = encode_peer(peer)
        since = hello.since
        if since is not None and hello.log is not None and hello.log != self.log_id:
            since = 0  # a position in a log this one is not: all of this one is new to it
        replayed, skipped = self._replay_for(since, hello.client)
        counts = (self.seq, len(replayed), skipped, self.log_id)
        v2 = hello.client is not None or hello.since is not None
        if v2:
            welcome = self._welcome_v2(member.peer_json, *counts)
        else:
            welcome = [
                encode_welcome(member.peer_json, self._peers_json.values(), self.info, *counts)
            ]
        member.send_bulk(welcome + replayed)  # (MBs, with a long replay or a big room)
        member.skip_log()
        serial = next(self._serials)
        self.members[member.id] = member
        if member.client_id is not None:
            self._clients.setdefault(member.client_id, {})[peer.nick.casefold()] = member
        self._serial[member.id] = serial
        self._recent[member.id] = member
        if v2:
            self._v2.add(member.id)
        return serial

    def _welcome_v2(
        self, you: bytes, seq: int, replay: int, skipped: int, log: str | None
    ) -> list[bytes]:
        """A v2 welcome and the ``peers`` frames after it: the roster in ``PEERS_CHUNK``s.

        Full chunks are encoded once and their bytes shared by every newcomer; only the last
        part of the roster (fewer than ``PEERS_CHUNK`` peers) is encoded for each."""
        peers, size = self._peers_json, limits.PEERS_CHUNK
        chunks = self._chunks
        while (len(chunks) + 1) * size <= len(peers):
            part = itertools.islice(peers.values(), len(chunks) * size, (len(chunks) + 1) * size)
            joined = b",".join(part)
            chunks.append((joined, b'{"type":"peers","peers":[%b]}\n' % joined))
        tail = list(itertools.islice(peers.values(), len(chunks) * size, None))
        if chunks:
            first, more = chunks[0][0], [frame for _, frame in chunks[1:]]
            if tail:
                more.append(encode_peers("peers", tail))
        else:
            first, more = b",".join(tail), []
        welcome = encode_welcome_v2(you, first, len(peers), self.info, seq, replay, skipped, log)
        return [welcome, *more]

    def _announce(self, event: _Event) -> None:
        """Tell the room of a join or leave: at the end of this loop iteration, or in a storm
        with the others of the next ``PRESENCE_PACE`` window (never after a later line)."""
        self._held.append(event)
        if self._release is not None:
            return
        loop = self._loop or asyncio.get_running_loop()
        delay = self._next_release - loop.time()
        if delay > 0:
            self._release = loop.call_later(delay, self._release_presence)
        else:
            self._release = loop.call_soon(self._release_presence)

    def _release_presence(self) -> None:
        """Announce the held joins and leaves, after the lines said before them are stored."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if not self._held:
            return
        batch, self._held = _Presence(self._held), []
        loop = self._loop or asyncio.get_running_loop()
        hold = min(self._hold_max, self._pace * len(self.members))
        self._next_release = loop.time() + hold
        if self._committing is None or self._cluster is not None:
            self.broadcast(batch)  # (in a cluster, the feed put it in its place)
        else:
            self._queue.append(batch)
            self._presence_queued += 1

    def remove(self, member: Member, reason: str) -> bool:
        """Forget ``member`` and tell the rest it left; False if it was not in. Idempotent."""
        if self._cluster is not None:
            return self._leave_cluster(member, reason)
        if self.members.pop(member.id, None) is None or member.peer is None:
            return False
        self._forget_client(member)
        del self._peers_json[member.id]
        self._nicks.discard(member.peer.nick.casefold())
        self._v2.discard(member.id)
        self._serial.pop(member.id, None)
        self._recent.pop(member.id, None)
        self._chunks = []  # the roster's order changed: the shared chunks are wrong now
        self._announce(_Event(next(self._serials), member.peer_json, reason))
        return True

    def clear(self) -> list[Member]:
        """Everyone out at once, nobody told (the server is stopping); return who was in."""
        members = list(self.members.values())
        self.members.clear()
        self._clients.clear()
        self._peers_json.clear()
        self._nicks.clear()
        self._chunks, self._held = [], []
        self._v2.clear()
        self._serial.clear()
        self._recent.clear()
        self._joining.clear()
        if self._release is not None:
            self._release.cancel()
            self._release = None
        return members

    def _unique_nick(self, wanted: str) -> str:
        taken = self._nicks
        if wanted.casefold() not in taken:
            return wanted
        for n in itertools.count(2):
            suffix = f"_{n}"
            candidate = cut_nick(wanted, limits.MAX_NICK - len(suffix)) + suffix
            if candidate.casefold() not in taken:
                return candidate
        raise AssertionError("unreachable")  # pragma: no cover

    def _replay_for(self, since: int | None, client: str | None) -> tuple[list[bytes], int]:
        """The stored lines a joining client gets, and how many the cap left out.

        Its own lines carry their ``ref``: an ack lost with the connection is found again there,
        so the client neither shows its line twice nor takes it for someone else's."""
        tail = self._tail
        if since is None or since > self.seq:
            # A newcomer; or a client whose last seq this log never reached (a new database):
            # what it saw is not this log's, so it starts afresh like a newcomer.
            count, wanted = min(self._replay, len(tail)), None
        else:
            # (Lines the log no longer keeps are not left out by the cap: no one can have them.)
            kept = self.seq
            if self._history is not None:
                kept = min(self.seq - self._first_kept + 1, self._history.keep)
            wanted = min(self.seq - since, kept)
            count = min(wanted, self._replay_max, len(tail))
        stored = itertools.islice(tail, len(tail) - count, None) if count else ()
        replayed = [
            with_ref(as_history(frame), ref)
            if client is not None and by == client and ref is not None
            else as_history(frame)
            for frame, by, ref in stored
        ]
        return replayed, 0 if wanted is None else wanted - count

    # -- what members say ----------------------------------------------------------------

    def say(self, member: Member, message: SendMsg) -> None:
        """``member`` said ``message``: store it, then acknowledge and broadcast it."""
        if member.peer is None:  # pragma: no cover - the state machine forbids it
            return
        if self._held:  # presence stays in its place among the lines
            self._release_presence()
        ts = time.time()
        if self._history is None:  # no log: broadcast at once, as protocol v1 did
            if message.ref is not None:
                member.send(encode_ack(message.ref, 0, ts))
            self.broadcast(encode_chat(member.peer_json, message.text, ts), exclude=member)
            return
        said = _Said(
            member.peer,
            message.text,
            ts,
            member.client_id,
            message.ref,
            member,
            member.peer_json,
        )
        self._queue.append(said)
        self.unstored += 1
        if self.unstored >= STORE_HIGH and member not in self._not_read:
            self._not_read.add(member)
            member.hold()
        if self._committing is None:
            assert self._loop is not None  # noqa: S101 - set in open()
            self._committing = self._loop.create_task(self._store())

    async def _store(self) -> None:
        """Store the lines said so far, a batch per commit (see ``BATCH_START``).

        Without a shared log, a batch's acks and broadcasts wait for the next loop iteration
        when more lines are waiting: the worker commits those meanwhile.
        """
        assert self._history is not None  # noqa: S101 - only called with a log
        try:
            await self._store_queued(self._history)
        finally:
            self._committing = None  # (whatever happened, the next line starts a commit)

    async def _store_queued(self, history: RoomLog) -> None:
        # A task's first step runs in the next loop iteration: every line read in this one
        # is queued by then.
        while self._queue:
            batch, said = self._take()
            if self._feed is not None:
                self._expect_acks(said)
            try:
                appends = await history.append(said) if said else Appends(said, 0)
            except Exception as exc:
                # A full disk, a broken database, Redis lost: those lines are refused, not lost
                # in silence, and the room goes on (a later commit may work again).
                refused = self._refusal(exc, len(said))
                # (Redis lost the room: the restart ends these connections at once, and their
                # clients send those lines again after it; no refusal, which would be final.)
                for item in [] if isinstance(exc, LogReset) else said:
                    # In a cluster the batch may be stored after all, and the feed may have
                    # brought (and acknowledged) a line of it already: no refusal for that one.
                    if self._feed is None or self._still_to_ack(item):
                        error = Error(ErrorCode.NOT_STORED, refused, item.ref)
                        item.member.send(encode(error))
                appends = Appends([], 0)
                batch = [item for item in batch if not isinstance(item, _Said)]
            else:
                if said and self._refused:  # (a batch of presence alone stores nothing)
                    self._storing_again()
            if self._feed is not None and appends.drafts:
                self._feed.reached()
            self._answered.append((batch, len(said), appends))
            if self._queue and self._feed is None:
                if not self._answer_scheduled:
                    assert self._loop is not None  # noqa: S101 - set in open()
                    self._loop.call_soon(self._answer)
                    self._answer_scheduled = True
            else:
                self._answer()

    def _take(self) -> tuple[list[_Said | bytes | _Presence | _Gone], list[_Said]]:
        """The next batch from the queue, and its lines: ``_batch`` lines at most (with a
        shared log, everything queued: a commit there is a round trip)."""
        queue = self._queue
        most = self._batch if self._feed is None else len(queue)
        said: list[_Said] = []
        for end, item in enumerate(queue):
            if isinstance(item, _Said):
                if len(said) == most:
                    self._queue = queue[end:]
                    self._batch = min(2 * most, BATCH_MAX)
                    return queue[:end], said
                said.append(item)
        self._queue = []
        self._batch = BATCH_START
        return queue, said

    def _answer(self) -> None:
        """Acknowledge and broadcast the batches stored so far, in order."""
        self._answer_scheduled = False
        while self._answered:
            batch, count, appends = self._answered.popleft()
            try:
                (self._stored if self._feed is None else self._acknowledged)(batch, appends)
            except Exception:
                # A bug past the commit, not the log: said with its traceback, and the room
                # goes on (stuck here, no line after would ever be acknowledged).
                log.exception("could not acknowledge or broadcast %s", _lines(count))
            self.unstored -= count
            if self._not_read and self.unstored < STORE_HIGH:
                held, self._not_read = self._not_read, set()
                for member in held:
                    member.release()

    def _refusal(self, exc: Exception, count: int) -> str:
        """Log a failed commit (an outage of the shared log once); the clients' error text."""
        if self._feed is not None and isinstance(exc, HistoryError):
            self._feed.lost(exc)
            return REFUSED
        # The details (a file name, a disk) are for the server's log, not its clients; once
        # per outage, not a traceback per line for as long as the disk is full.
        if not self._refused and isinstance(exc, HistoryError):  # it says what and where
            log.error(
                "could not store %s: %s; lines are refused until a commit works",
                _lines(count),
                exc,
            )
        elif not self._refused:  # a bug, not the disk: its traceback
            log.exception(
                "could not store %s; lines are refused until a commit works", _lines(count)
            )
        else:
            log.debug("could not store %s more: %r", _lines(count), exc)
        self._refused += count
        return "the server could not store your line"

    def _storing_again(self) -> None:
        refused = self._refused
        log.warning(
            "lines are stored again; %s refused meanwhile",
            f"{_lines(refused)} {'was' if refused == 1 else 'were'}",
        )
        self._refused = 0

    def _stored(self, batch: list[_Said | bytes | _Presence | _Gone], appends: Appends) -> None:
        """Acknowledge and broadcast a stored batch, presence frames in their places.

        The common path of every line: no object is made for it here but its frames.
        """
        seq, originals, index = appends.first, appends.originals, -1
        for item in batch:
            if not isinstance(item, _Said):
                if isinstance(item, _Presence):
                    self._presence_queued -= 1
                if not isinstance(item, _Gone):  # (only a cluster queues a _Gone)
                    self.broadcast(item)
                continue
            index += 1
            member, ref = item.member, item.ref
            if originals and (original := originals.get(index)) is not None:
                # A re-send after a reconnect: stored and broadcast the first time.
                if ref is not None:
                    member.send(encode_ack(ref, original.seq, original.ts))
                continue
            if ref is not None:
                member.send(encode_ack(ref, seq, item.ts))
            frame = encode_chat(item.peer_json, item.text, item.ts, seq)
            self.seq = seq
            seq += 1
            self._tail.append((frame, item.client, ref))
            if member.gone and ref is not None:
                # The sender's connection broke before this commit: if it is back already,
                # its new connection gets the line with its ref, which it takes as the ack.
                back = self.member_of(item.client, item.sender.nick)
                if back is None:  # back under another nick (bob_2, after a failover)
                    back = self.member_of(item.client)
                if back is not None:
                    back.send(with_ref(frame, ref))
                    member = back
            self.broadcast(frame, exclude=member)

    def member_of(self, client: str | None, nick: str | None = None) -> Member | None:
        """The member joined as ``client`` under ``nick`` (if None, the one that joined last:
        a sender back on a new connection, most likely)."""
        members = None if client is None else self._clients.get(client)
        if not members:
            return None
        if nick is None:
            return next(reversed(members.values()))
        return members.get(nick.casefold())

    def _forget_client(self, member: Member) -> None:
        client, peer = member.client_id, member.peer
        if client is None or peer is None or (members := self._clients.get(client)) is None:
            return
        if members.get(nick := peer.nick.casefold()) is member:
            del members[nick]
            if not members:
                del self._clients[client]

    def history(self, member: Member, request: HistoryRequest, address: str) -> None:
        """Answer ``history``: up to ``limit`` lines before ``before``, then ``history_end``.

        With a log, in turn with the other requests of ``address`` (the client's address, an
        IPv6 one's /64), paced to its budget (see ``chatsecure.pacing``)."""
        if self._history is None:
            member.send(encode(HistoryEnd(request.before, 0, request.ref)))
            return
        if self._pacer.waiting(member) >= limits.HISTORY_WAITING_MAX:
            member.send(encode(Error(ErrorCode.RATE_LIMITED, HISTORY_WAITING_TEXT, request.ref)))
            return
        self._pacer.ask(member, address, request)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as one of the room's tasks (``close`` cancels them)."""
        assert self._loop is not None  # noqa: S101 - set in open()
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_history(self, member: Member, request: HistoryRequest) -> int:
        """Read and send the answer to ``request``; return what it cost, in bytes."""
        assert self._history is not None  # noqa: S101
        before = request.before
        if before is None or before > self.seq:
            before = self.seq + 1  # not lines stored but not yet broadcast
        try:
            records = await self._history.before(before, request.limit)
        except HistoryError as exc:
            if not self._history_unreadable:  # once while it lasts, not once per request
                log.warning("history requests cannot be answered: %s", exc)
            self._history_unreadable = True
            if not member.gone:
                error = Error(ErrorCode.HISTORY_UNAVAILABLE, HISTORY_UNAVAILABLE_TEXT, request.ref)
                member.send(encode(error))
            return 0
        if self._history_unreadable:
            log.info("history requests are answered again")
            self._history_unreadable = False
        if member.gone:
            # Read for nothing, and not encoded: its texts' length stands for its cost.
            return sum(len(r.text) for r in records)
        frames = [_history_frame(r) for r in records]
        frames.append(encode(HistoryEnd(request.before, len(records), request.ref)))
        member.send_bulk(frames)
        return sum(map(len, frames))

    # -- cluster: the feed broadcasts every server's lines -------------------------------

    def _acknowledged(
        self, batch: list[_Said | bytes | _Presence | _Gone], appends: Appends
    ) -> None:
        """In a cluster: a stored batch's acks and presence frames, once the feed is there.

        The lines themselves come back through the feed, like everyone else's. An ack must not
        overtake a line of a lower seq (a client takes the ack's seq as seen, and would drop
        that line), so it waits in ``_due`` until the feed has broadcast its seq. Nor may it come
        late, after lines of higher seqs: if the feed was first, it sent the ack then
        (``_ack_fed``), and only a duplicate's ack (its line came long ago) is sent here.
        """
        results = iter(appends)
        for item in batch:
            if isinstance(item, _Gone):
                if self._cluster is not None:  # its lines before are stored: now the leave
                    self._cluster.leave(item.peer_id, item.reason)
                continue
            if not isinstance(item, _Said):
                self._after(self._appended, None, item)
                continue
            appended = next(results)
            record, ref = appended.record, item.ref
            self._appended = max(self._appended, record.seq)
            if ref is None:
                continue
            if not self._still_to_ack(item):
                continue  # the feed brought it first, and acknowledged it then
            self._after(record.seq, item.member, encode_ack(ref, record.seq, record.ts))

    def _expect_acks(self, said: list[_Said]) -> None:
        """Lines of the batch going out whose ack the feed may give (``_ack_fed``).

        Only lines with a ``client`` as well as a ``ref``: the shared log keeps a line's ref
        only with its client (the dedup key), so the feed cannot tell the others apart; their
        ack comes with the store's answer, possibly after lines of higher seqs."""
        for item in said:
            if item.ref is not None and item.client is not None:
                self._unacked.setdefault((item.member.id, item.ref), []).append(item)

    def _still_to_ack(self, item: _Said) -> bool:
        """Whether ``item``'s ack is still to be sent (the feed did not send it); in either
        case, stop waiting for it."""
        if item.ref is None or item.client is None:
            return True  # never waited for (see ``_expect_acks``)
        key = (item.member.id, item.ref)
        waiting = self._unacked.get(key)
        if waiting is None:
            return False
        for i, other in enumerate(waiting):
            if other is item:
                del waiting[i]
                if not waiting:
                    del self._unacked[key]
                return True
        return False

    def _ack_fed(self, record: Fed) -> None:
        """The feed brought a line of this server whose store has not answered: ack it now."""
        assert record.ref is not None  # noqa: S101 - checked by the caller
        if record.seq <= self._appended:
            return  # a line of a batch already answered: what waits is a re-send of it
        key = (record.sender_id, record.ref)
        waiting = self._unacked.get(key)
        if waiting is None:
            return
        item = waiting.pop(0)
        if not waiting:
            del self._unacked[key]
        item.member.send(encode_ack(record.ref, record.seq, item.ts))

    def _after(self, seq: int, member: Member | None, frame: bytes | _Presence) -> None:
        """Send ``frame`` to ``member`` (``None``: broadcast it) once line ``seq`` is out."""
        if seq <= self.seq:
            self._deliver_due(member, frame)
        else:
            self._due.setdefault(seq, []).append((member, frame))

    def _deliver_due(self, member: Member | None, frame: bytes | _Presence | PresenceEvent) -> None:
        if isinstance(frame, PresenceEvent):
            self._apply_presence(frame)
            self._release_presence()  # the next line must not overtake it
        elif member is None:
            if isinstance(frame, _Presence):
                self._presence_queued -= 1
            self.broadcast(frame)
        elif isinstance(frame, bytes):  # an ack; presence is only ever broadcast
            member.send(frame)

    def _followed(self, records: list[Fed]) -> None:
        """In a cluster: broadcast lines any server stored, in seq order, each once."""
        for record in records:
            if record.seq <= self.seq:
                continue  # broadcast already (the feed read on from an older seq)
            if record.seq != self.seq + 1:
                log.warning(
                    "cluster: lines %d to %d were trimmed unread", self.seq + 1, record.seq - 1
                )
                for seq in sorted(s for s in self._due if s < record.seq):
                    for member, due in self._due.pop(seq):
                        self._deliver_due(member, due)
            frame = record.frame()  # as the server that stored it encoded it
            self.seq = record.seq
            self._tail.append((frame, record.client, record.ref))
            self.broadcast(frame, exclude=self._own(record, frame))
            if record.ref is not None and self._unacked:
                self._ack_fed(record)
            for member, due in self._due.pop(record.seq, ()):
                self._deliver_due(member, due)

    def _own(self, record: Fed, frame: bytes) -> Member | None:
        """The member of this server whose line ``record`` is, if any: it is not sent the line.

        Its sender takes the ack instead; a client whose connection broke and came back (here,
        or here after another server) takes the line with its ``ref`` as the ack.
        """
        sender = self.members.get(record.sender_id)  # peer ids are unique in a cluster
        if sender is not None and not sender.gone:
            return sender
        if record.ref is None:
            return None
        back = self.member_of(record.client)
        if back is not None:
            back.send(with_ref(frame, record.ref))
        return back

    async def _caught_up(self, timeout: float = 5.0) -> None:
        """Wait (a while) until the feed has broadcast this server's own lines and their acks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.seq < self._appended and loop.time() < deadline:
            await asyncio.sleep(0.01)

    # -- cluster: presence on every server, in the feed's order ----------------------------

    @property
    def clustered(self) -> bool:
        """Whether joins go through the cluster (``enter``) instead of ``join``."""
        return self._cluster is not None

    def enter(
        self,
        member: Member,
        wanted: str,
        hello: Hello,
        addr: str,
        then: Callable[[Peer | None], None],
    ) -> None:
        """In a cluster: let ``member`` in as ``wanted`` (or a variant free on every server).

        Its welcome comes when the feed brings its join back (see ``chatsecure.presence``),
        then ``then(peer)``; ``then(None)`` if the cluster cannot take it (Redis out of reach).
        """
        if self._cluster is None or (self._feed is not None and not self._feed.up):
            then(None)
            return
        self._joining[member.id] = _Joining(member, hello, then)
        assert self._loop is not None  # noqa: S101 - set in open()
        task = self._loop.create_task(self._claim(member, wanted, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, member: Member, wanted: str, addr: str) -> None:
        assert self._cluster is not None  # noqa: S101 - only called in a cluster
        try:
            await self._cluster.join(member.id, wanted, addr, member.client_id)
        except HistoryError as exc:
            if self._feed is not None:
                self._feed.lost(exc)
            joining = self._joining.pop(member.id, None)
            if joining is None:
                return  # welcomed (it was stored) or gone (its leave is on its way)
            self._cluster.leave(member.id, "error")  # stored after all, its answer lost?
            joining.then(None)

    def _leave_cluster(self, member: Member, reason: str) -> bool:
        """In a cluster: ``member`` is gone; its leave reaches everyone through the feed."""
        assert self._cluster is not None  # noqa: S101 - only called in a cluster
        joined = self.members.pop(member.id, None) is not None
        self._forget_client(member)
        if not joined and self._joining.pop(member.id, None) is None:
            return False
        self._v2.discard(member.id)
        self._serial.pop(member.id, None)
        self._recent.pop(member.id, None)
        if self._committing is None:
            self._cluster.leave(member.id, reason)
        else:  # after the lines it said before: nobody may see them after its leave
            self._queue.append(_Gone(member.id, reason))
        return joined

    def _fed_presence(self, events: list[PresenceEvent]) -> None:
        """Joins and leaves from the feed: each after the line it follows, once that is out."""
        for event in events:
            if event.after <= self.seq:
                self._apply_presence(event)
            else:
                self._due.setdefault(event.after, []).append((None, event))

    def _fed_lines(self, records: list[Fed]) -> None:
        """Lines from the feed, in a cluster: after the presence held back (paced) so far."""
        if self._held:
            self._release_presence()
        self._followed(records)

    def _apply_presence(self, event: PresenceEvent) -> None:
        """A join or leave on any server: the roster changes and the room is told.

        A join of this server's is the moment its member is welcomed."""
        peer = event.peer
        if event.reason == NODE_LOST and peer.id in self.members:
            # A live member of ours swept: the others took this node for lost (it was
            # paused). Start again at once, as the heartbeat would find a moment later,
            # rather than tell our users that they themselves left.
            self._restart(Evicted())
            return
        if event.reason is not None:
            if (
                event.reason == ErrorCode.REPLACED
                and (member := self.members.get(peer.id)) is not None
            ):
                # Its client came back through another server (or this one, its join queued
                # behind a commit) before this one saw its connection break.
                member.replace("on another connection to the room")
            peer_json = self._peers_json.pop(peer.id, None)
            if peer_json is not None:
                self._chunks = []  # the roster's order changed: the shared chunks are wrong now
                self._announce(_Event(next(self._serials), peer_json, event.reason))
            return
        joining = self._joining.pop(peer.id, None)
        if joining is not None and joining.member.gone:
            joining = None
        serial = (
            next(self._serials)
            if joining is None
            else self._welcome(joining.member, peer, joining.hello)
        )
        peer_json = encode_peer(peer)
        self._peers_json[peer.id] = peer_json
        self._announce(_Event(serial, peer_json))
        if joining is not None:
            joining.then(peer)

    # -- fan-out -------------------------------------------------------------------------

    def broadcast(self, frame: bytes | _Presence, exclude: Member | None = None) -> None:
        """Queue one already-encoded frame for every member but ``exclude``.

        No per-recipient work here: the frame goes into this iteration's list, and ``_flush``
        writes the whole list to each member once.
        """
        if not self._flush_scheduled:
            self._schedule_flush()
        self.frames.append(frame)
        self.frames_skip.append(exclude)
        if exclude is not None:
            self._senders.add(exclude)

    def mark_dirty(self, member: Member) -> None:
        """``member`` has frames of its own queued: write them at the end of the iteration."""
        if not self._flush_scheduled:
            self._schedule_flush()
        self._dirty.append(member)

    def write_chunk(self) -> int:
        """Bytes per transport write now (see ``WRITE_CHUNK`` and ``CROWD``)."""
        return CROWD_WRITE_CHUNK if len(self.members) >= CROWD else WRITE_CHUNK

    def _schedule_flush(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self.flush)
        self._flush_scheduled = True

    def flush(self) -> None:
        """End of a loop iteration: one write per member with everything queued for it.

        A write is split into ``write_chunk()`` pieces, each one TLS record.
        """
        self._flush_scheduled = False
        if self.frames:
            frames, senders = self.frames, self._senders
            presence = [f for f in frames if isinstance(f, _Presence)]
            v1 = v2 = split(_blob(frames, v2=False), self.write_chunk())
            if presence:
                v2 = split(_blob(frames, v2=True), self.write_chunk())
                # Newcomers since the first of these events take only what followed their join.
                first = presence[0].events[0].serial
                serial = self._serial
                senders = senders | {m for i, m in self._recent.items() if serial[i] >= first}
            chosen = self._v2
            try:
                # Nothing in here changes the registry (a write that fails closes its
                # connection later, from the loop), so no copy of it per iteration.
                for member in self.members.values():
                    try:
                        member.end_iteration(v2 if member.id in chosen else v1, senders)
                    except Exception:  # (nothing is lost to the members after it)
                        self._not_written(member)
            finally:
                self.frames, self.frames_skip, self._senders = [], [], set()
            if not self._held and not self._presence_queued:
                self._recent.clear()  # every event so far is out: nobody needs a cut
        dirty, self._dirty = self._dirty, []
        no_senders: set[Member] = set()
        for member in dirty:
            try:
                member.end_iteration([], no_senders)
            except Exception:
                self._not_written(member)

    def _not_written(self, member: Member) -> None:
        """A write to ``member`` failed, a bug (a broken connection fails later, from the loop):
        said with its traceback, and its connection cut, so that its client resumes from the
        last line it got. The other members' writes of the iteration go on."""
        log.exception("could not write to member %s; its connection is cut", member.id)
        try:
            member.abort()
        except Exception:
            log.exception("could not cut member %s", member.id)

    def pending_for(self, member: Member, start: int) -> list[bytes]:
        """This iteration's broadcasts from ``start`` on that are for ``member``."""
        if self.members.get(member.id) is not member:
            return []  # not joined (yet, or any more): broadcasts are not for it
        skip, v2, serial = self.frames_skip, member.id in self._v2, self._serial[member.id]
        out = []
        for i, frame in enumerate(self.frames[start:], start):
            if isinstance(frame, bytes):
                if skip[i] is not member:
                    out.append(frame)
            elif data := frame.render(v2, serial):
                out.append(data)
        return out


_Stored = tuple[bytes, str | None, str | None]
"""A stored line as the replay sends it (its ``msg`` frame) and whose it is (``client`` and
``ref``: its sender gets the ref back). A tuple: one is made per line."""


@dataclass(slots=True)  # made per line: not frozen, for speed (see history.log)
class _Said(Draft):
    """A line waiting for its commit: the draft the log stores, who said it, and their peer
    JSON at that moment (one object per line, not two)."""

    member: Member
    peer_json: bytes


@dataclass(frozen=True, slots=True)
class _Joining:
    """In a cluster: a member whose join is on its way, and what to do once it is in."""

    member: Member
    hello: Hello
    then: Callable[[Peer | None], None]


@dataclass(frozen=True, slots=True)
class _Gone:
    """In a cluster: a leave to add once the lines said before it are stored."""

    peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Event:
    """A join (``reason`` None) or a leave, and its place in the order of presence."""

    serial: int
    peer: bytes
    reason: str | None = None


class _Presence:
    """Joins and leaves announced together, rendered once for v1 and once for v2 members.

    A member hears of the events after its own join only (``serial``): what happened before
    is in its welcome."""

    __slots__ = ("_whole", "events")

    def __init__(self, events: list[_Event]) -> None:
        self.events = events
        self._whole: dict[bool, bytes] = {}

    def render(self, v2: bool, after: int = 0) -> bytes:
        """The frames for a member that joined as event ``after`` (0: before all of them)."""
        if after < self.events[0].serial:
            whole = self._whole.get(v2)
            if whole is None:
                whole = self._whole[v2] = _render(self.events, v2)
            return whole
        return _render([e for e in self.events if e.serial > after], v2)


def _render(events: list[_Event], v2: bool) -> bytes:
    """v1: a ``join`` or ``leave`` per event; v2: a ``joins``/``leaves`` frame per run of
    (two or more, up to ``PEERS_CHUNK``) events of a kind."""
    if not v2:
        return b"".join(
            encode_join(e.peer) if e.reason is None else encode_leave(e.peer, e.reason)
            for e in events
        )
    out = []
    for joins, group in itertools.groupby(events, key=lambda e: e.reason is None):
        run = list(group)
        for i in range(0, len(run), limits.PEERS_CHUNK):
            part = run[i : i + limits.PEERS_CHUNK]
            if len(part) == 1:
                e = part[0]
                out.append(
                    encode_join(e.peer) if e.reason is None else encode_leave(e.peer, e.reason)
                )
            elif joins:
                out.append(encode_peers("joins", (e.peer for e in part)))
            else:
                out.append(encode_leaves((e.peer, e.reason or "") for e in part))
    return b"".join(out)


def _lines(count: int) -> str:
    return "1 line" if count == 1 else f"{count} lines"


def _blob(frames: list[bytes | _Presence], *, v2: bool) -> bytes:
    """The iteration's broadcasts as one piece of bytes, presence rendered for v1 or v2."""
    if len(frames) == 1 and isinstance(frames[0], bytes):
        return frames[0]
    return b"".join(f if isinstance(f, bytes) else f.render(v2) for f in frames)


def _msg_frame(record: Record) -> bytes:
    return encode_chat(encode_peer(record.sender), record.text, record.ts, record.seq)


def _history_frame(record: Record) -> bytes:
    return as_history(_msg_frame(record))


def _tail_entry(record: Record) -> _Stored:
    return _msg_frame(record), record.client, record.ref


def split(data: bytes, size: int) -> list[bytes] | list[memoryview]:
    """``data`` in pieces of at most ``size`` bytes (no copies)."""
    if len(data) <= size:
        return [data]
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(data), size)]
