"""The client's side of the protocol as an object: bytes in, events and bytes out. Pure, no I/O.

One ``ClientSession`` lives as long as the client wants to be in the room, across connections:
it keeps the lines not yet acknowledged (the outbox) and the last ``seq`` seen, so that a new
connection resumes where the old one stopped (``since``), re-sends what was not acknowledged
(same ``ref``: the server stores it once) and shows nothing twice.

    state        input                 ->  result
    -----------  --------------------      ----------------------------------------------
    OFFLINE      connect()                 HELLO: hello queued
    HELLO        welcome                   JOINED: Welcomed, then the replay, the outbox
                 (v2: once the ``peers`` frames after it brought ``peers_total`` peers)
    HELLO        error                     OFFLINE: Refused
    HELLO/JOINED shutdown                  OFFLINE: Ended (the server is stopping)
    JOINED       msg                       Line (a seq seen before is dropped; one far
                                           beyond the room's is Ignored)
    JOINED       ack                       Acked (the line leaves the outbox)
    JOINED       notice                    Noticed (news about the server, e.g. Redis lost)
    JOINED       join/leave/joins/leaves   Presence, one per peer
    any          ping                      pong queued
    any          unknown type, bad field   Ignored (the adapter logs it, rate-limited)
    any          connection_lost()         OFFLINE (the outbox is kept)

The I/O adapter writes ``data_to_send()`` after each call, calls ``tick(now)`` now and then
(it says when a silent server is dead), and ``connection_lost()`` when the connection goes.

Own lines go out no faster than the server takes them: at ``PACE`` of the rate its ``welcome``
states (its defaults if it states none), so that pasted or piped lines, or an outbox sent again
after a reconnect, are never refused as a flood. ``send_delay(now)`` says when the adapter must
call ``pace(now)`` for the next ones; a line refused anyway (``rate_limited`` with its ``ref``)
waits its turn again.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from chatsecure.errors import LocalProtocolError, RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.protocol.limits import (
    MAX_ROOM,
    MAX_SERVER_FRAME,
    MSG_BURST,
    MSG_RATE,
    PING_AFTER,
    PONG_TIMEOUT,
    SEQ_AHEAD_MAX,
)
from chatsecure.protocol.messages import (
    Ack,
    Chat,
    Error,
    Hello,
    HistoryEnd,
    HistoryRequest,
    Join,
    Joins,
    Leave,
    Leaves,
    Notice,
    Peer,
    PeersMore,
    Ping,
    Pong,
    Quit,
    SendMsg,
    ServerMessage,
    Shutdown,
    Welcome,
    encode,
    parse_server,
)
from chatsecure.protocol.ratelimit import TokenBucket

PACE = 0.9
"""Of the server's rate, what own lines are sent at: the slack absorbs the network's jitter."""
PACE_BURST_SLACK = 2
"""Frames of the server's burst kept in hand (pings, a history request)."""


class ClientState(enum.Enum):
    OFFLINE = "offline"
    HELLO = "hello"
    JOINED = "joined"


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The server let us in. ``missed``: lines said since we last saw the room (resume)."""

    welcome: Welcome
    resumed: bool
    """Whether we said where we left off (``since``): the replay is what we missed."""
    missed: int
    """Lines stored since our ``since`` (replayed and skipped), 0 for a newcomer."""
    resent: int
    """Own lines not acknowledged before, sent again now."""


@dataclass(frozen=True, slots=True)
class Line:
    """A chat line for the transcript. ``replayed``: part of the replay after ``welcome``;
    ``older``: an answer to a ``history`` request (goes above what is shown)."""

    chat: Chat
    replayed: bool = False
    older: bool = False


@dataclass(frozen=True, slots=True)
class Acked:
    """The server stored our line ``ref`` as ``seq``: it is sent, for good."""

    ref: str
    text: str
    seq: int
    ts: float


@dataclass(frozen=True, slots=True)
class Presence:
    """Someone joined or left."""

    message: Join | Leave


@dataclass(frozen=True, slots=True)
class Noticed:
    """The server told us about its state (``notice``): to show, nothing to do."""

    notice: Notice


@dataclass(frozen=True, slots=True)
class ServerError:
    """The server refused something we sent; the connection goes on.

    ``dropped`` is the text of the line it refused for good (any error but ``rate_limited``
    naming its ``ref``): it left the outbox, and is not sent again.
    """

    error: Error
    dropped: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryDone:
    """The end of an answer to ``history``: its ``history_end``, or the ``error`` that
    refused the request (not one for the rate limit: the request goes again at the pace)."""

    end: HistoryEnd | Error


@dataclass(frozen=True, slots=True)
class Refused:
    """The server answered ``hello`` with an error: not in."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The server said ``shutdown``: this connection is over (it is usually back soon)."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A frame that could not be used; ``kind`` groups them for a rate-limited warning."""

    kind: str
    reason: str


SessionEvent = (
    Welcomed
    | Line
    | Acked
    | Presence
    | Noticed
    | ServerError
    | HistoryDone
    | Refused
    | Ended
    | Ignored
)


# --- the session ------------------------------------------------------------------------


class _Unsent:
    """Refs of the outbox waiting to go out on this connection, in the outbox's order, each
    once: a heap by rank (where the ref stands in the outbox) and the set of its refs.

    A line refused for the pace goes back in its place in O(log n), and a ref already waiting
    costs O(1): a server may name the same ref again and again, and an outbox may hold many
    thousand lines (a file piped in)."""

    __slots__ = ("_heap", "_refs")

    def __init__(self, ranked: Iterable[tuple[int, str]] = ()) -> None:
        self._heap = sorted(ranked)  # (a sorted list is a heap)
        self._refs = {ref for _, ref in self._heap}

    def __len__(self) -> int:
        return len(self._heap)

    def put(self, rank: int, ref: str) -> None:
        if ref not in self._refs:
            self._refs.add(ref)
            heapq.heappush(self._heap, (rank, ref))

    def first(self) -> str:
        return self._heap[0][1]

    def pop(self) -> str:
        _, ref = heapq.heappop(self._heap)
        self._refs.discard(ref)
        return ref

    def clear(self) -> None:
        self._heap.clear()
        self._refs.clear()


class ClientSession:
    """One client's conversation with one server, across connections."""

    def __init__(
        self,
        nick: str,
        *,
        password: str | None = None,
        client_id: str | None = None,
        last_seq: int | None = None,
        max_frame: int = MAX_SERVER_FRAME,
        ping_after: float = PING_AFTER,
        pong_timeout: float = PONG_TIMEOUT,
    ) -> None:
        """``client_id``: None makes one for this session alone, so that the server still
        knows a line re-sent after a reconnect (without one it would store it again); the
        shipped clients keep theirs in the config folder. ``ping_after`` and
        ``pong_timeout`` replace ``PING_AFTER`` and ``PONG_TIMEOUT`` (tests shorten them to
        see a dead server noticed in seconds)."""
        self.nick = nick
        self.password = password
        self.client_id = client_id or secrets.token_urlsafe(18)
        self.last_seq = last_seq
        """The newest ``seq`` seen (or own line acknowledged); ``None`` before any."""
        self.log_id: str | None = None
        """The log ``last_seq`` counts in (a welcome's ``log``); None: not known."""
        self.state = ClientState.OFFLINE
        self.me: Peer | None = None
        self.welcome: Welcome | None = None
        self.outbox: dict[str, str] = {}
        """Own lines not acknowledged yet, ref -> text, oldest first."""
        self._ranks: dict[str, int] = {}
        """Where each ref of the outbox stands in it (the order ``send`` was given them)."""
        self._unsent = _Unsent()
        """Refs of the outbox not sent on this connection yet (paced), oldest first."""
        self._holding = False
        """``hold_back`` was called: no own line goes out any more, on any connection."""
        self._written: set[str] = set()
        """Refs of the outbox sent at least once: the server may have stored those."""
        self._resume_from: int | None = None
        """The seq to resume from while ``last_seq`` is None after a server said 0 (see
        ``_welcomed``)."""
        self._pace: TokenBucket | None = None
        """Paces own lines to the server's rate limit; None: it has none (or v1)."""
        self._ref_prefix = secrets.token_hex(4)
        """Refs must be unique per client id for ever: this run's prefix, then a counter."""
        self._refs = itertools.count(1)
        self._max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._out: list[bytes] = []
        self._replay_left = 0
        """Lines of the replay the welcome announced that have not come yet."""
        self._replay_pinged = False
        """A ping went out while the replay was awaited: its pong comes after the replay."""
        self._head = 0
        """The newest seq the server has stated on this connection (its welcome's, a line's,
        an ack's): one more than ``SEQ_AHEAD_MAX`` above it is a lie (see ``_credible``)."""
        self._history: HistoryRequest | None = None
        """A ``history`` request the pace holds back."""
        self._history_out: HistoryRequest | None = None
        """The ``history`` request sent and not answered yet."""
        self._refs_echoed = False
        """Whether this connection's server names our requests (a ``history_end`` with a
        ``ref``, or an ``error`` with one of ours): then an ``error`` without ``ref`` is never
        about our request."""
        self._gathering: tuple[Welcome, list[Peer]] | None = None
        """A v2 welcome waiting for the rest of the room (``peers`` frames)."""
        self._v2 = False
        """Whether the server keeps a log and acknowledges lines (protocol 2)."""
        self._last_heard = 0.0
        self._ping_sent: float | None = None
        self.ping_after = ping_after
        self.pong_timeout = pong_timeout

    # -- what the adapter calls ----------------------------------------------------------

    def connect(self, now: float = 0.0) -> None:
        """A new connection is up (TLS done): say hello, with where we left off."""
        if self.state is not ClientState.OFFLINE:
            raise LocalProtocolError(ErrorCode.ALREADY_JOINED, f"connect() in {self.state.value}")
        self._decoder = FrameDecoder(self._max_frame)
        self._out.clear()
        self.state = ClientState.HELLO
        self._last_heard, self._ping_sent = now, None
        since = self._since()
        log = self.log_id if since is not None else None
        # Back as the nick the server gave us (alice_2 when alice was taken): the room sees
        # the same name, and the server replaces our own ghost, which holds that nick.
        nick = self.nick if self.me is None else self.me.nick
        self._out.append(encode(Hello(nick, self.password, self.client_id, since, log)))

    def connection_lost(self) -> None:
        """The connection is gone; the outbox waits for the next one."""
        self.state = ClientState.OFFLINE
        self._out.clear()
        self._unsent.clear()
        self._history = self._history_out = None
        self._refs_echoed = False
        self._replay_left = 0
        self._replay_pinged = False
        self._gathering = None

    def data_to_send(self) -> bytes:
        """Bytes the adapter must write now (and forget)."""
        out, self._out = self._out, []
        return b"".join(out)

    def receive_data(self, data: bytes, now: float = 0.0) -> list[SessionEvent]:
        """Feed bytes from the server; return what they mean. Raises ``RemoteProtocolError``
        only for what ends the connection: a ``frame_too_long``, a welcome that breaks the
        protocol (a room larger than ``MAX_ROOM``, say)."""
        self._last_heard, self._ping_sent = now, None
        if self._decoder.error is not None:
            raise self._decoder.error
        events: list[SessionEvent] = []
        for frame in self._decoder.feed(data):
            if self.state is ClientState.OFFLINE:
                break  # refused or shut down: nothing after that counts
            try:
                message = parse_server(frame)
            except RemoteProtocolError as exc:
                events.append(Ignored(exc.code.value, exc.message))
                continue
            events += self._receive(message)
        if self._decoder.error is not None and self.state is not ClientState.OFFLINE:
            raise self._decoder.error
        return events

    def send(self, text: str, now: float = 0.0) -> str:
        """Queue a chat line; return its ref. It goes out now if joined (and the pace allows),
        else after the next welcome, and stays in the outbox until the server acknowledges it."""
        rank = next(self._refs)
        ref = f"{self._ref_prefix}-{rank}"
        if self.state is not ClientState.JOINED or self._holding:
            self.outbox[ref], self._ranks[ref] = text, rank
        elif self._v2:
            self.outbox[ref], self._ranks[ref] = text, rank
            self._unsent.put(rank, ref)
            self.pace(now)
        else:
            self._out.append(encode(SendMsg(text)))  # a v1 server: sent is all we can know
        return ref

    def pace(self, now: float) -> None:
        """Send the history request and own lines that the pace allows by ``now``."""
        if self._history is not None and self.state is ClientState.JOINED:
            if self._replay_left:
                # Its answer's lines, like the replay's, are "history": sent now, they could
                # pass for the rest of a replay announced and never sent. It waits for the
                # replay's end; the pong of a ping sent now comes after the replay, whatever
                # the welcome said, and ends the wait (see ``_receive``).
                if not self._replay_pinged:
                    self._replay_pinged = True
                    self._out.append(encode(Ping()))
            # (It counts against the server's rate limit like a line: refused, it would get
            # an error and no answer.)
            elif self._pace is not None and not self._pace.take(now):
                return
            else:
                self._out.append(encode(self._history))
                self._history_out, self._history = self._history, None
        while self._unsent and self.state is ClientState.JOINED:
            ref = self._unsent.first()
            if ref in self.outbox and self._pace is not None and not self._pace.take(now):
                return
            self._unsent.pop()
            if ref in self.outbox:  # else acknowledged meanwhile (a replay brought it)
                self._out.append(encode(SendMsg(self.outbox[ref], ref)))
                self._written.add(ref)

    def send_delay(self, now: float) -> float | None:
        """Seconds until ``pace`` has a frame to send; None when none waits."""
        history = self._history is not None and not self._replay_left
        if (not self._unsent and not history) or self.state is not ClientState.JOINED:
            return None
        return 0.0 if self._pace is None else self._pace.wait(now)

    def sending_time(self, now: float) -> float:
        """About how long the lines not sent yet take to go out at the pace."""
        delay = self.send_delay(now)
        if delay is None or self._pace is None or not self._unsent:
            return 0.0
        return delay + (len(self._unsent) - 1) / self._pace.rate

    def request_history(self, before: int | None, limit: int, now: float) -> None:
        """Ask for up to ``limit`` lines before ``before`` (answered as ``Line(older=True)``),
        at the pace (``pace``); it replaces a request the pace has held back so far."""
        if self.state is ClientState.JOINED and self._v2:
            ref = f"{self._ref_prefix}-h{next(self._refs)}"
            self._history = HistoryRequest(before, limit, ref)
            self.pace(now)

    def hold_back(self) -> None:
        """Send no more own lines, on this connection or a later one (the user interrupted):
        those not sent yet, and those given to ``send`` from now on, stay in the outbox,
        unsent."""
        self._holding = True
        self._unsent.clear()

    @property
    def settled(self) -> bool:
        """Nothing waits to go out, and every own line sent has its ack (lines held back may
        still be in the outbox; one sent on an earlier connection waits for its ack too)."""
        return not self._unsent and self._written.isdisjoint(self.outbox)

    def quit(self) -> None:
        """Say we are leaving; the server closes the connection. Lines not sent yet stay in
        the outbox, unsent: nothing may follow ``quit``."""
        if self.state is not ClientState.OFFLINE:
            self._out.append(encode(Quit()))
            self.hold_back()

    def not_reading(self, now: float) -> None:
        """Nothing is read from the server for now (the front end is behind): the silence
        is ours, not the server's, so it is timed from ``now`` on."""
        self._last_heard, self._ping_sent = now, None

    def tick(self, now: float) -> bool:
        """Keep a quiet connection checked; False when the server must be taken for dead.

        After ``ping_after`` seconds of silence we ping; no answer (no byte at all) within
        ``pong_timeout`` seconds more, and the connection is dead.
        """
        if self.state is ClientState.OFFLINE:
            return True
        if self._ping_sent is not None:
            return now - self._ping_sent < self.pong_timeout
        if now - self._last_heard >= self.ping_after:
            self._ping_sent = now
            self._out.append(encode(Ping()))
        return True

    @property
    def unacknowledged(self) -> list[tuple[str, bool]]:
        """Own lines not acknowledged, oldest first: their texts, and whether each was sent
        (then the server may have stored it, its ack lost with the connection)."""
        return [(text, ref in self._written) for ref, text in self.outbox.items()]

    # -- what the server said ------------------------------------------------------------

    def _receive(self, message: ServerMessage) -> list[SessionEvent]:
        if self._gathering is not None:
            if isinstance(message, PeersMore):
                return self._more_peers(message)
            # The server sent fewer peers than it said: the room is what we got.
            return self._welcomed(self._gathered()) + self._receive(message)
        if self._replay_left and not isinstance(message, Chat | Ping):
            # The replay comes right after the welcome, before any other frame (a ping of
            # the server's own may wait behind it): this one says it is over, whatever the
            # welcome announced.
            self._replay_over()
        event: SessionEvent | None = None
        match message:
            case Chat():
                return self._chat(message)
            case Ack():
                return self._ack(message)
            case Ping():
                self._out.append(encode(Pong()))
            case Welcome():
                return self._welcome(message)
            case Join() | Leave():
                if self.state is ClientState.JOINED:
                    event = Presence(message)
            case Notice():
                if self.state is ClientState.JOINED:
                    event = Noticed(message)
            case Joins(peers=peers) if self.state is ClientState.JOINED:
                return [Presence(Join(peer)) for peer in peers]
            case Leaves(leaves=leaves) if self.state is ClientState.JOINED:
                return [Presence(leave) for leave in leaves]
            case PeersMore():
                event = Ignored("peers", "peers that no welcome announced")
            case Error(code=code, message=text):
                if self.state is ClientState.HELLO or code == ErrorCode.REPLACED:
                    # (replaced: this client connected again, and the new connection is in)
                    self.state = ClientState.OFFLINE
                    event = Refused(code, text)
                elif self._history_out is not None and message.ref == self._history_out.ref:
                    self._refs_echoed = True
                    event = self._history_refused(message)
                elif (message.ref or "").startswith(f"{self._ref_prefix}-h"):
                    # For a history request of ours that no longer waits for an answer.
                    self._refs_echoed = True
                elif message.ref is None and self._history_out and not self._refs_echoed:
                    # A server older than refs on history names no request: an error while
                    # ours is out is taken for its refusal (a late answer is told apart by
                    # its ``before`` and seqs).
                    event = self._history_refused(message)
                elif code == ErrorCode.RATE_LIMITED and message.ref in self.outbox:
                    # Refused for our pace, not for what it says: it goes again in its place
                    # among those not sent yet (several may come back at once, in any order,
                    # and again), at the default pace if the server said it had no limit;
                    # after ``hold_back``, it stays unsent. (A copy sent on an earlier
                    # connection may be stored all the same: it stays among those written.)
                    if not self._holding:
                        self._unsent.put(self._ranks[message.ref], message.ref)
                    self._pace = self._pace or _pace_for(None, None, self._last_heard)
                    if self._pace is not None:  # (it always is: the defaults limit)
                        self._pace.drain(self._last_heard)
                elif message.ref in self.outbox:
                    # Refused for good (too long, empty, not stored): it is never sent again.
                    event = ServerError(message, self._forget(message.ref))
                else:
                    event = ServerError(message)
            case HistoryEnd():
                out = self._history_out
                self._refs_echoed = self._refs_echoed or message.ref is not None
                if message.ref is None or (out is not None and message.ref == out.ref):
                    self._history_out = None
                    event = HistoryDone(message)
                elif not message.ref.startswith(f"{self._ref_prefix}-h"):
                    event = HistoryDone(message)
                # (Else the end of an answer to a request of ours given up for refused, an
                # error without ref taken for its refusal: nobody waits for it any more.)
            case Shutdown():
                self.state = ClientState.OFFLINE
                event = Ended()
        return [] if event is None else [event]

    def _history_refused(self, error: Error) -> SessionEvent | None:
        """An ``error`` for our ``history`` request: over the rate limit, it goes again at the
        pace; else it is not answered (the front end hears why)."""
        request, self._history_out = self._history_out, None
        if error.code != ErrorCode.RATE_LIMITED:
            return HistoryDone(error)
        self._history = self._history or request
        self._pace = self._pace or _pace_for(None, None, self._last_heard)
        if self._pace is not None:
            self._pace.drain(self._last_heard)
        return None

    def _since(self) -> int | None:
        """What ``hello`` says as ``since``: the last seq seen, or the one kept over a visit
        to a server at seq 0."""
        return self.last_seq if self.last_seq is not None else self._resume_from

    def _welcome(self, welcome: Welcome) -> list[SessionEvent]:
        if self.state is not ClientState.HELLO:
            return [Ignored("welcome", "a second welcome")]
        if welcome.peers_total is not None and welcome.peers_total > len(welcome.peers):
            if welcome.peers_total > MAX_ROOM:
                self.state = ClientState.OFFLINE
                raise RemoteProtocolError(
                    ErrorCode.BAD_MESSAGE,
                    f"the server says the room holds {welcome.peers_total} people, more than "
                    f"this client takes ({MAX_ROOM})",
                )
            self._gathering = (welcome, list(welcome.peers))
            return []
        return self._welcomed(welcome)

    def _more_peers(self, more: PeersMore) -> list[SessionEvent]:
        assert self._gathering is not None  # noqa: S101 - only called while gathering
        welcome, peers = self._gathering
        peers += more.peers[: (welcome.peers_total or 0) - len(peers)]  # never past the total
        if len(peers) < (welcome.peers_total or 0):
            return []
        return self._welcomed(self._gathered())

    def _gathered(self) -> Welcome:
        """The welcome waiting for its peers, with those that came."""
        assert self._gathering is not None  # noqa: S101
        welcome, peers = self._gathering
        self._gathering = None
        return dataclasses.replace(welcome, peers=tuple(peers))

    def _welcomed(self, welcome: Welcome) -> list[SessionEvent]:
        """In, with the whole room: say so, then send what waited for this."""
        self.state = ClientState.JOINED
        self.me, self.welcome = welcome.you, welcome
        self._v2 = welcome.server.protocol >= 2
        self._replay_left = welcome.replay
        self._head = welcome.seq
        since = self._since()
        if since is not None and welcome.log is not None and self.log_id not in {None, welcome.log}:
            # Not the log that ``since`` counts in (its server lost the one we saw): the
            # server replays this one from its start, and all of it is new to us.
            since, self.last_seq, self._resume_from = 0, None, None
        if welcome.log is not None:
            self.log_id = welcome.log
        # (A log at seq 0 is empty, or the server keeps none: there is nothing to resume.)
        resumed = since is not None and welcome.seq >= since and self._v2 and welcome.seq > 0
        missed = welcome.seq - since if resumed and since is not None else 0
        if since is not None and welcome.seq < since:
            # This log is not the one we saw (a new database): start afresh with it. At 0 it
            # may be a server that keeps no log (--history 0): a return to the log we saw
            # must not show it all again, so its seq is what the next hello says (and what
            # stays saved) until a line of a new log comes.
            self.last_seq = None
            self._resume_from = None if welcome.seq else since
        if self.last_seq is None and self._v2 and not welcome.replay and (welcome.seq or not since):
            # Nothing replayed to a newcomer (an empty room, or --replay 0): it has seen the
            # room up to here all the same, so that its next return says what came after.
            self.last_seq = welcome.seq
        elif resumed and not welcome.replay:
            # Missed lines and none replayed (--replay-max 0): the front end shows them as a
            # gap to load. Counted from the old seq again, the next return would call them
            # missed a second time, and make a second gap over the first.
            self.last_seq = welcome.seq
        events: list[SessionEvent] = [Welcomed(welcome, resumed, missed, len(self.outbox))]
        if self._holding:  # (we are leaving: what waits stays unsent, on this connection too)
            return events
        if not self._v2:  # a v1 server never acknowledges: sent is all we can know
            self._out += [encode(SendMsg(text)) for text in self.outbox.values()]
            events += [Acked(ref, text, 0, 0.0) for ref, text in self.outbox.items()]
            self.outbox.clear()
            self._ranks.clear()
            self._written.clear()
            return events
        self._pace = _pace_for(welcome.server.msg_rate, welcome.server.msg_burst, self._last_heard)
        self._unsent = _Unsent((self._ranks[ref], ref) for ref in self.outbox)
        self.pace(self._last_heard)
        return events

    def _chat(self, chat: Chat) -> list[SessionEvent]:
        if self.state is not ClientState.JOINED:
            return [Ignored("msg", "a chat line before welcome")]
        if chat.ref is not None and chat.ref in self.outbox:
            # Our own line, stored as the connection broke, its ack lost with it: this is the
            # ack (the re-send that follows is a duplicate the server only acknowledges).
            if chat.history and self._replay_left:
                self._replay_left -= 1
                if not self._replay_left:
                    self._replay_over()
            return self._ack(Ack(chat.ref, chat.seq, chat.ts))
        if chat.history and self._replay_left:
            self._replay_left -= 1
            events = self._seen(chat, replayed=True)
            if not self._replay_left:
                self._replay_over()
            return events
        if chat.history:
            return [Line(chat, older=True)]
        self._replay_over()  # a live line: whatever replay was announced is over
        return self._seen(chat, replayed=False)

    def _seen(self, chat: Chat, *, replayed: bool) -> list[SessionEvent]:
        if chat.seq:
            if not self._credible(chat.seq):
                # Taken for the newest, it would hide every line after it (as seen before).
                return [self._incredible("a chat line", chat.seq)]
            if self.last_seq is not None and chat.seq <= self.last_seq:
                return []  # seen before this reconnect: never shown twice
            self.last_seq = chat.seq
        return [Line(chat, replayed=replayed)]

    def _replay_over(self) -> None:
        """No more of the replay is awaited: a history request it held back goes out."""
        self._replay_left = 0
        if self._history is not None:
            self.pace(self._last_heard)

    def _forget(self, ref: str) -> str | None:
        """Take line ``ref`` out of the outbox (stored, or refused for good); its text, or None
        if it is not there."""
        self._ranks.pop(ref, None)
        self._written.discard(ref)
        return self.outbox.pop(ref, None)

    def _ack(self, ack: Ack) -> list[SessionEvent]:
        text = self._forget(ack.ref)
        if text is None:
            return []  # the ack of a re-send we already had, or of nothing of ours
        if not self._credible(ack.seq):
            # Stored, the server says, and that much it knows; not as what it says.
            return [self._incredible("an ack", ack.seq), Acked(ack.ref, text, 0, ack.ts)]
        if ack.seq and (self.last_seq is None or ack.seq > self.last_seq):
            self.last_seq = ack.seq
        return [Acked(ack.ref, text, ack.seq, ack.ts)]

    def _credible(self, seq: int) -> bool:
        """Whether ``seq`` is one an honest server may send next (see ``SEQ_AHEAD_MAX``);
        the newest so far, if so."""
        if seq > self._head + SEQ_AHEAD_MAX:
            return False
        self._head = max(self._head, seq)
        return True

    def _incredible(self, what: str, seq: int) -> Ignored:
        return Ignored(
            "seq",
            f"{what} with seq {seq}, far beyond the newest the server has said ({self._head})",
        )


def _pace_for(rate: float | None, burst: int | None, now: float) -> TokenBucket | None:
    """A bucket a little slower than the server's limit as it states it (None: its defaults);
    None for a server that takes any rate."""
    rate = MSG_RATE if rate is None else rate
    burst = MSG_BURST if burst is None else burst
    if rate <= 0:
        return None
    return TokenBucket(rate * PACE, max(1, burst - PACE_BURST_SLACK), now)
