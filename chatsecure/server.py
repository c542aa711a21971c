"""The chatsecure server in one module: TLS listener, the live session registry, fan-out.

Run it with ``chatsecure server`` or ``python -m chatsecure.server``. The path of one chat line:
``Session.data_received`` -> ``ServerSession`` (frames, validation, state) -> ``Room.say``
(stored in the room's log, in commits of up to 4,096 lines) -> ``Room.broadcast`` (encoded once,
into the loop iteration's frames) -> ``Room.flush`` -> one write per recipient per iteration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import datetime as dt
import errno
import gc
import hmac
import ipaddress
import itertools
import logging
import os
import re
import signal
import socket
import ssl
import sys
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from chatsecure import __version__
from chatsecure.discovery.records import host_typo, ip_of, needs_scope
from chatsecure.errors import ConfigError, RemoteProtocolError
from chatsecure.gate import Gate
from chatsecure.history import HistoryError, RoomLog, SharedLog
from chatsecure.protocol import limits
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import (
    Error,
    Hello,
    HistoryRequest,
    Peer,
    Ping,
    Pong,
    Quit,
    SendMsg,
    ServerInfo,
    Shutdown,
    clean_nick,
    encode,
)
from chatsecure.protocol.ratelimit import FloodMeter, TokenBucket, WarningBudget
from chatsecure.protocol.session import Event, ServerSession
from chatsecure.room import Member, Room, split
from chatsecure.settings import ServerConfig
from chatsecure.tls import certs
from chatsecure.tls.context import check_client_ca, server_context
from chatsecure.tls.trust import host_port

if TYPE_CHECKING:
    from chatsecure.presence import ClusterPresence

log = logging.getLogger(__name__)

READ_BUFFER = 256 * 1024
"""Bytes read from a client at once, into one buffer that all sessions share."""

TLS_READ_SIZE = 4 * 1024
"""Bytes asyncio's own TLS layer reads from a socket at once.

asyncio zero-fills a buffer this size for every connection and keeps it for the connection's
life: 16 KiB (one whole TLS record) made about a third of an idle client's memory. Clients send
short lines, so a bigger record only takes a few more reads.
"""

TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)
"""Linux's cork: a write of several TLS records goes out in full-size packets.

Each record is one ``write()``. A client that keeps up (its socket's queue empty) got one packet
per 16 KiB record; corked, the kernel sends them when the write is done, in packets of up to
64 KiB on loopback. In fanout N=50 the packets halved (29,000 to 14,000 for 440 MB): less
kernel work per byte for the server and for every reader. A write of one record is not corked.
"""

BULK_WINDOW = 256 * 1024
"""Most bytes of a long answer (a welcome and its replay, a history page) a client's transport
holds at once; no more than the send-buffer limit either.

A replay of 1,000 lines of 16 KB is 16 MB: written at once, it passed the send-buffer limit at
once, and the client was dropped as ``slow_consumer`` however fast it read. It is handed over
as the transport drains instead (see ``Session.send_bulk``), and what the transport holds,
encrypted and waiting for the socket, stays small.
"""

BULK_SMALL = 256 * 1024
"""A long answer of at most this many bytes (or a quarter of a smaller send-buffer limit), with
none on its way, is written at once like any frame: it cannot get its client dropped by
itself, and a join (a welcome with its roster and a short replay) costs what it did. Paced,
joins to a room of 2,000 (whose rosters pass 64 KiB) cost about 19% more server CPU each
(``hold -n 2000``, uvloop)."""

BULK_ANSWERS = 2
"""Long answers that may wait for a client at once without counting against the send-buffer
limit: a welcome with its replay, and a history page.

The clients in this repository ask for the next page once a page has come. One that asks for
more while it takes nothing would have the server hold page after page for it (5 a second at
the rate limit, 3 MB each): a third counts as what waits behind, and drops it.
"""

LISTEN_BACKLOG = 1024
"""Connections the kernel holds for the server before it accepts them (a burst of clients)."""

IDLE_CHECKS = 8
"""Idle sweeps per idle timeout. A silent session is dropped at the last sweep before its
silence reaches the timeout, so never later than the timeout and at most 1/8 of it earlier."""

SHUTDOWN_GRACE = 2.0
"""Seconds the server waits for clients to take ``shutdown`` (or an error) before it aborts."""

RELEASE_EVERY = 256
"""Connections gone, or accepted and never made (their TLS handshake failed or is under way),
between two hand-backs of the memory closed connections held.

A connection whose TLS handshake fails (a port scan, a client that vanishes, a flood of
half-open handshakes) stays in memory as a reference cycle inside asyncio (the exception, its
traceback, the TLS objects), until a full garbage collection, which may be long in coming;
and glibc keeps freed memory for itself. Each 1,000 such clients left the server about
20 MB bigger. A collection and ``malloc_trim`` give it back: a pause of a few milliseconds,
some tens with thousands of clients online, at most once a second (a second after a burst of
connections or of clients gone), and at the idle sweep after any connection. A connection
whose handshake succeeds is not counted once made: a storm of clients coming back after a
restart left nothing to give back, and collected a heap of thousands of sessions every second.
"""


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS, Windows)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


_malloc_trim = _find_malloc_trim()

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter for the size from which ``malloc`` maps fresh memory."""

MMAP_THRESHOLD = 128 * 1024
"""glibc's first mmap threshold, kept fixed by ``fix_mmap_threshold``."""


def fix_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at 128 KiB, so that big buffers never come from used heap.

    uvloop's TLS layer mallocs a 256 KiB read buffer for every connection, of which a chat
    client's short lines touch a page or two. glibc maps such a request afresh (untouched
    pages cost nothing) until a mapped block is freed: then it raises its threshold to that
    block's size and serves the next ones from the heap, out of memory that earlier
    connections dirtied. ``hold -n 5000 --storm 32 --loop uvloop``: 62.9 KiB per client, 31.8
    with the threshold fixed (setting it turns glibc's adjustment off). The environment's
    ``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES`` threshold wins; elsewhere than glibc
    this does nothing.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in tunables:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_memory() -> None:
    """Free the reference cycles of closed connections and give the memory back to the system."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


_FREE = (Quit, Hello)
"""Frames the rate limit never refuses: leaving and joining must always work."""

PING = encode(Ping())
PONG = encode(Pong())
RATE_LIMITED_TEXT = "too fast; frame dropped"
RATE_LIMITED = encode(Error(ErrorCode.RATE_LIMITED, RATE_LIMITED_TEXT))
"""Frames the server sends as they are, encoded once."""


RESTART_FIRST = 1.0
"""Seconds before a server that must start again (its Redis lost the room) tries again, if
the shared log cannot be opened yet; doubled each time, up to ``RESTART_MAX``."""
RESTART_MAX = 30.0


class LoopLogBudget(logging.Filter):
    """Caps what the event loop itself logs (``asyncio``: "SSL connection is closed", "Fatal
    error on SSL transport") as the server caps its own warnings: a client that connects,
    asks for a long replay and hangs up at once, a hundred times, made uvloop log 2,370
    lines in 4 s. Once the budget is back, the next line says how many were left out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._budget = WarningBudget()
        self._clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # (-v: asked for, and not what a client can make it write)
        allowed, dropped = self._budget.allow(self._clock())
        if allowed and dropped:
            record.msg = f"{record.msg} ({dropped} more event-loop messages were left out)"
        return allowed


class PeerLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every record with the connection it is about: ``[id@address]``."""

    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:  # noqa: ANN401 - logging's API
        return f"[{self.extra and self.extra.get('peer')}] {msg}", kwargs


def client_address(peername: object) -> str:
    """The client's IP as people know it: IPv4-mapped IPv6 addresses shown as plain IPv4."""
    if not isinstance(peername, tuple) or not peername:
        return "?"
    host = str(peername[0])
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(host.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
    return host


def backoff_key(addr: str) -> str:
    """Whose wrong passwords ``addr``'s count with (and whose budget of ``history`` answers
    it shares): IPv4 addresses alone, IPv6 by their /64.

    One IPv6 host commonly holds a whole /64 and can pick a fresh address in it for every
    guess; counted per address, it would never wait.
    """
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(addr.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return addr


def _cork(sock: socket.socket, on: bool) -> bool:
    """Set ``TCP_CORK`` on ``sock``; False if the connection is broken."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, cast(int, TCP_CORK), on)
    except (OSError, ValueError):
        # (uvloop's socket of a connection it has closed, before ``connection_lost``, has no
        # descriptor left: "ValueError: negative file descriptor".)
        return False
    return True


class Session(asyncio.BufferedProtocol):
    """One client connection: the transport, its protocol state and its outgoing queue."""

    def __init__(self, server: ChatServer, session_id: str) -> None:
        self.server = server
        self.room = server.room
        self.id = session_id
        self.client_id: str | None = None
        """The id the client gave in ``hello`` (v2): it scopes the ``ref`` of its lines."""
        self.protocol = ServerSession(server.config.max_frame, server.config.max_text)
        self.peer: Peer | None = None
        self.addr = "?"
        self.log: logging.LoggerAdapter[logging.Logger] = PeerLog(log, {"peer": session_id})
        self.last_heard = 0.0
        """Loop time of the last bytes from this client, for the idle timeout."""
        self.peer_json = b""
        """``peer`` encoded once at join, for every frame that names this client."""
        self._transport: asyncio.Transport | None = None
        self._socket: socket.socket | None = None
        """The TCP socket under the TLS transport, for ``TCP_CORK``; None without the option."""
        self._pending: list[bytes] = []
        """Frames for this client alone (welcome, pong, errors), in order with broadcasts."""
        self._log_pos = 0
        """How much of the server's broadcast log of this loop iteration is in ``_pending``."""
        self._outbox: collections.deque[tuple[bytes | memoryview, bool]] | None = None
        """While a long answer is on its way (``send_bulk``): the bytes not handed to the
        transport yet, in order, each marked True if it is part of a long answer. None (the
        common case): everything is written at once."""
        self._outbox_at = 0
        """How much of the outbox's first piece the transport has taken."""
        self._behind = 0
        """Bytes in the outbox that are not part of a long answer: what the slow-consumer rule
        counts while one is on its way."""
        self._answers = 0
        """Long answers in the outbox (``BULK_ANSWERS`` at most)."""
        self._paused = False
        """Whether the transport is over its high-water mark (``pause_writing``)."""
        self._stall: asyncio.TimerHandle | None = None
        """Set while a long answer waits on a paused transport: drops a client that takes
        nothing of it for half the idle timeout."""
        self._closing = False
        self.lost = False
        """True once the connection is gone (``connection_lost`` ran)."""
        self._hello_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        """Set by ``close``: cuts a connection whose close does not finish in time."""
        self._bucket: TokenBucket | None = None
        self._flood: FloodMeter | None = None
        self._blanks_charged = 0
        """How many of the blank lines received were charged to the rate limit."""
        self._pings_out = 0
        """Our pings not yet answered: only that many ``pong`` pass the rate limit for free."""

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self._transport = transport = cast(asyncio.Transport, transport)
        self.addr = client_address(transport.get_extra_info("peername"))
        if TCP_CORK is not None:
            self._socket = transport.get_extra_info("socket")
        self.log = PeerLog(log, {"peer": f"{self.id}@{self.addr}"})
        config = self.server.config
        loop = asyncio.get_running_loop()
        self.last_heard = now = loop.time()
        if config.send_buffer_limit:
            transport.set_write_buffer_limits(high=config.send_buffer_limit)
        if config.msg_rate:
            self._bucket = TokenBucket(config.msg_rate, config.msg_burst, now)
            self._flood = FloodMeter(config.msg_rate, config.flood_window, now)
        refusal = self.server.admit(self)
        if refusal is not None:
            self.drop(*refusal)
            return
        if config.hello_timeout:
            self._hello_timer = loop.call_later(config.hello_timeout, self._hello_timed_out)
        ssl_object = transport.get_extra_info("ssl_object")
        self.log.debug(
            "TLS connection from %s (%s)", self.addr, ssl_object and ssl_object.version()
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        # One receive buffer for all sessions: each read is consumed before the next starts.
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        loop_time = self.last_heard = asyncio.get_running_loop().time()
        self._handle(self.protocol.receive_data(data), loop_time)
        if self._bucket is not None and self.protocol.blank_lines != self._blanks_charged:
            self._charge_blank_lines(loop_time)
        if self.protocol.closed and not self._closing:  # pragma: no cover - a safety net
            # The state machine ended the stream but nothing above closed the connection: such
            # a session would stay joined and answer nothing. Never let one linger.
            self.close("error")

    def _handle(self, events: list[Event], now: float) -> None:
        for event in events:
            if self._bucket is not None and not self._admit(event, now):
                if self._closing:
                    return
                continue
            if isinstance(event, SendMsg):  # by far the most common
                self.room.say(self, event)
            elif isinstance(event, RemoteProtocolError):
                self._refuse(event)
            elif isinstance(event, Hello):
                self._joined(event)  # the last event: the state machine holds what follows
            elif isinstance(event, Ping):
                self.send(PONG)
            elif isinstance(event, HistoryRequest):
                self.room.history(self, event, backoff_key(self.addr))
            elif isinstance(event, Quit):
                self.close("quit")

    def _admit(self, event: Event, now: float) -> bool:
        """Charge ``event`` to the rate limit; False if it is refused (and answered so)."""
        if isinstance(event, RemoteProtocolError) and event.fatal:
            return True  # the stream is over, whatever the rate: it must not be skipped
        if isinstance(event, _FREE):
            return True  # leaving and joining must always work
        if isinstance(event, Pong) and self._pings_out:
            self._pings_out -= 1
            return True  # the answer to our ping keeps the session alive, however busy
        return self._within_rate(now, event)

    def _charge_blank_lines(self, now: float) -> None:
        """Blank lines make no event, but a flood of them costs like any other frame."""
        blank = self.protocol.blank_lines - self._blanks_charged
        self._blanks_charged += blank
        for _ in range(blank):
            if not self._within_rate(now) and self._closing:
                return

    def _within_rate(self, now: float, event: Event | None = None) -> bool:
        """Charge one frame; over the limit, say so (naming a line's ``ref``, so that its
        client can send it again later) or, for a flood, drop the client."""
        assert self._bucket is not None  # noqa: S101 - only called when rate-limited
        assert self._flood is not None  # noqa: S101
        if self._bucket.take(now):
            return True
        if self._flood.refused(now):
            self.drop(ErrorCode.FLOODING, "kept sending far above the rate limit")
        elif isinstance(event, SendMsg | HistoryRequest | RemoteProtocolError) and event.ref:
            # (a refused msg too: its client sends it again later, and hears why it is refused)
            self.send(encode(Error(ErrorCode.RATE_LIMITED, RATE_LIMITED_TEXT, event.ref)))
        else:
            self.send(RATE_LIMITED)
        return False

    def eof_received(self) -> bool:
        self.close("closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.closing.discard(self)
        for timer in (self._hello_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._closing = True
        self._pending.clear()
        self._outbox = None
        self._stop_stall_timer()
        reason = "closed" if exc is None else "error"
        if exc is not None:
            self.log.debug("connection lost: %s", exc)
        self.server.remove(self, reason)
        # asyncio's TLS protocol keeps our bound methods: through the transport, this session
        # would be in a reference cycle that only the cyclic gc frees, so that thousands of
        # clients gone at once would keep their memory until a collection comes. Break it.
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True
        if self._outbox is not None:
            # A long answer is on its way, paced by this window (``BULK_WINDOW``): the client
            # is taking it, or stopped reading (``_queue_behind``, ``_start_stall_timer``).
            self._start_stall_timer()
            return
        # More than send_buffer_limit bytes are waiting for this client: it is not reading.
        # Dropping it here (not waiting) is what keeps broadcast from ever blocking on it.
        if not self.server.config.send_buffer_limit:
            return  # the limit is off: the transport's default high-water mark means nothing
        asyncio.get_running_loop().call_soon(self.drop, ErrorCode.SLOW_CONSUMER, "too far behind")

    def resume_writing(self) -> None:
        self._paused = False
        self._stop_stall_timer()
        if self._outbox is not None:
            self._pump()  # the client took most of what the transport held: the next part

    def hold(self) -> None:
        if not self._closing and self._transport is not None:
            self._transport.pause_reading()

    def release(self) -> None:
        if not self._closing and self._transport is not None:
            self._transport.resume_reading()

    # -- sending -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one loop iteration goes out in one write."""
        if self._closing:
            return
        if self._log_pos < len(self.room.frames):
            self._take_log()  # broadcasts queued before ``data`` go out before it
        if not self._pending:
            self.room.mark_dirty(self)
        self._pending.append(data)

    def send_bulk(self, frames: list[bytes]) -> None:
        """Queue a long answer the server chose to send (a welcome and its replay, a history
        page): it goes to the transport as the client takes it, and what is queued after it
        waits behind it, in order.

        Written at once, a replay of many MB passed the send-buffer limit at once, and a client
        reading as fast as it could was dropped as a slow consumer. Paced, it costs the
        transport ``BULK_WINDOW`` at most; the rest waits here, bounded by what the server chose
        to send (``--replay-max``, a history page), and what is queued behind it by the
        send-buffer limit (``_queue_behind``).
        """
        if self._closing or not frames:
            return
        if self._outbox is None and sum(map(len, frames)) <= self._small():
            # (Most welcomes: written at once, as any frame, costs a join least.)
            for frame in frames:
                self.send(frame)
            return
        if self._log_pos < len(self.room.frames):
            self._take_log()  # broadcasts queued before the answer go out before it
        # Always: the frames queued so far go into the outbox with the answer, and a member
        # that had them (broadcasts taken from the log) has nothing left for ``flush`` to see.
        self.room.mark_dirty(self)  # (the end of the iteration hands over the first part)
        data = b"".join([*self._pending, *frames])
        self._pending.clear()
        if self._outbox is not None:
            if self._answers < BULK_ANSWERS:
                self._answers += 1
                self._outbox.append((data, True))
            else:
                self._queue_behind([data])
            return
        self._outbox = collections.deque([(data, True)])
        self._outbox_at, self._answers, self._behind = 0, 1, 0
        if self._transport is not None:
            # The transport's own flow control paces it: it pauses us above the window (no
            # drop while a long answer is on its way) and resumes us below a quarter. (It may
            # call ``resume_writing`` at once: the outbox is whole by then.)
            self._transport.set_write_buffer_limits(high=self._bulk_window())

    def _small(self) -> int:
        """``BULK_SMALL``, or a quarter of a smaller send-buffer limit."""
        limit = self.server.config.send_buffer_limit
        return min(BULK_SMALL, limit // 4) if limit else BULK_SMALL

    def _bulk_window(self) -> int:
        limit = self.server.config.send_buffer_limit
        return min(BULK_WINDOW, limit) if limit else BULK_WINDOW

    def ping(self) -> None:
        """Send ``ping``; its answer is not charged to the rate limit."""
        self._pings_out += 1
        self.send(PING)

    def flush(self) -> None:
        """Write what is queued for this client, broadcasts included (``write_chunk`` pieces)."""
        if self._log_pos < len(self.room.frames):
            self._take_log()
        pending = self._pending
        if pending and self._transport is not None and not self._closing:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            self._write(self._transport, split(data, self.room.write_chunk()))
        elif self._outbox is not None:
            self._pump()  # (a long answer queued this iteration, with nothing after it)
        pending.clear()

    def end_iteration(self, shared: list[bytes] | list[memoryview], senders: set[Member]) -> None:
        """The loop iteration is over: write everything it queued for this client.

        ``shared`` is the iteration's broadcast log, split into write pieces: the same bytes
        for every client that has nothing else queued. A client with frames of its own (a
        welcome, a pong, an error), or whose own lines are in the log, gets its own blob.
        """
        if self._pending or self._log_pos or self in senders:
            self.flush()
        elif self._transport is not None:
            self._write(self._transport, shared)
        self._log_pos = 0

    def _write(self, transport: asyncio.Transport, pieces: list[bytes] | list[memoryview]) -> None:
        """Write ``pieces``, a TLS record each; several are corked (see ``TCP_CORK``).

        Behind a long answer on its way, they wait for it instead (``send_bulk``)."""
        if self._outbox is not None:
            self._queue_behind(pieces)
            return
        self._write_now(transport, pieces)

    def _write_now(
        self, transport: asyncio.Transport, pieces: Sequence[bytes | memoryview]
    ) -> None:
        corked = len(pieces) > 1 and self._socket is not None and _cork(self._socket, True)
        for piece in pieces:
            transport.write(piece)
        if corked:
            # Never left corked: the last packet would wait for the kernel's 200 ms timer.
            _cork(cast(socket.socket, self._socket), False)

    def _queue_behind(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Queue ``pieces`` behind the long answer on its way, and hand over what the
        transport takes now.

        The slow-consumer rule counts what waits behind the answer: a client that lets more
        than the send-buffer limit pile up there is not reading, and is dropped as
        ``pause_writing`` drops one (from the loop: this runs in the room's fan-out).
        """
        outbox = self._outbox
        assert outbox is not None  # noqa: S101 - only called while one is on its way
        for piece in pieces:
            outbox.append((piece, False))
            self._behind += len(piece)
        limit = self.server.config.send_buffer_limit
        if limit and self._behind > limit:
            asyncio.get_running_loop().call_soon(
                self.drop, ErrorCode.SLOW_CONSUMER, "too far behind"
            )
        self._pump()

    def _pump(self) -> None:
        """Hand the outbox over, a TLS record at a time, until the transport pauses; once
        all of it is handed over and the transport is not paused, writes go straight to it
        again, under the send-buffer limit."""
        outbox, transport = self._outbox, self._transport
        if outbox is None or transport is None:
            return
        size = self.room.write_chunk()
        corked = False
        # (``pause_writing`` comes within the write that crosses the window.)
        while outbox and not self._paused:
            piece = self._take_piece(outbox, size)
            if not corked and outbox and self._socket is not None:
                corked = _cork(self._socket, True)
            transport.write(piece)
        if corked:
            _cork(cast(socket.socket, self._socket), False)
        if not outbox and not self._paused and self._outbox is outbox:
            self._outbox = None
            transport.set_write_buffer_limits(high=self.server.config.send_buffer_limit or None)

    def _take_piece(
        self, outbox: collections.deque[tuple[bytes | memoryview, bool]], size: int
    ) -> bytes | memoryview:
        """The next ``size`` bytes at most of the outbox's first piece, taken off it."""
        data, bulk = outbox[0]
        start, end = self._outbox_at, self._outbox_at + size
        if end < len(data):
            self._outbox_at = end
            return memoryview(data)[start:end]
        outbox.popleft()
        self._outbox_at = 0
        if bulk:
            self._answers -= 1
        else:
            self._behind -= len(data)
        return memoryview(data)[start:] if start else data

    def _hand_over_all(self, transport: asyncio.Transport) -> None:
        """Write everything the outbox holds at once (the connection is closing: its last
        frames are behind it; the abort timer bounds how long it may take)."""
        outbox, self._outbox = self._outbox, None
        self._stop_stall_timer()
        if not outbox:
            return
        size, start = self.room.write_chunk(), self._outbox_at
        pieces: list[bytes | memoryview] = []
        for data, _ in outbox:
            view = memoryview(data)
            pieces += (view[i : i + size] for i in range(start, len(view), size))
            start = 0
        self._write_now(transport, pieces)

    def _start_stall_timer(self) -> None:
        """A long answer waits on a paused transport: a client that takes nothing of it for
        half the idle timeout has stopped reading (a silent one is pinged then)."""
        config = self.server.config
        if self._stall is None and config.idle_timeout and config.send_buffer_limit:
            loop = asyncio.get_running_loop()
            self._stall = loop.call_later(config.idle_timeout / 2, self._stalled)

    def _stop_stall_timer(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        self.drop(ErrorCode.SLOW_CONSUMER, "too far behind")

    def abort(self) -> None:
        """Cut the connection at once, writing nothing more (a write to it failed);
        ``connection_lost`` removes the session, and its client resumes from what it got."""
        self._closing = True  # (nothing more is written to it meanwhile)
        if self._transport is not None:
            self._transport.abort()

    def skip_log(self) -> None:
        """Take none of the broadcasts queued so far in this iteration (its welcome has them)."""
        self._log_pos = len(self.room.frames)

    @property
    def gone(self) -> bool:
        """Whether nothing more can be sent to this client."""
        return self._closing

    def _take_log(self) -> None:
        """Move this iteration's broadcasts since ``_log_pos`` (not its own) into ``_pending``."""
        start, self._log_pos = self._log_pos, len(self.room.frames)
        self._pending += self.room.pending_for(self, start)

    def close(self, reason: str) -> None:
        """Flush what is queued, close the connection and tell the others, once."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        self.protocol.close()
        self.server.remove(self, reason)
        self.server.closing.add(self)
        if self._transport is not None:
            if self._outbox is not None:
                self._hand_over_all(self._transport)
            self._transport.close()
            # A client that stops reading never lets close() finish; do not wait forever.
            self._abort_timer = asyncio.get_running_loop().call_later(
                SHUTDOWN_GRACE, self._transport.abort
            )

    def replace(self, how: str) -> None:
        # Routine after a network change: no warning.
        if self._closing:
            return
        self.log.info("replaced by a new connection of its client %s", how)
        self.send(encode(Error(ErrorCode.REPLACED, f"it connected again {how}")))
        self.close(ErrorCode.REPLACED.value)

    def drop(self, code: ErrorCode, message: str, reason: str | None = None) -> None:
        """Send a last ``error`` and close. Used when the client broke a rule or a limit bit.

        The others see the ``leave`` with ``reason`` (the error code unless given), so that a
        client dropped as ``slow_consumer`` does not look like one that left.
        """
        if self._closing:
            return
        self.server.warn(self, "dropping client: %s (%s)", message, code)
        self.send(encode(Error(code, message)))
        self.close(reason or code.value)

    # -- events --------------------------------------------------------------------------

    def _refuse(self, error: RemoteProtocolError) -> None:
        self.log.debug("refused frame: %s (%s)", error.message, error.code)
        if error.fatal:
            self.drop(error.code, error.message)
        else:
            self.send(encode(Error(error.code, error.message, error.ref)))

    def _joined(self, hello: Hello, *, waited: bool = False) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        config = self.server.config
        if config.password is not None and not hmac.compare_digest(
            (hello.password or "").encode(), config.password.encode()
        ):
            self._auth_failed()
            return
        if (
            config.password is not None
            and not waited
            and (delay := self.server.auth_delay(self.addr))
        ):
            # This address guessed wrong lately: a right password is answered no sooner than a
            # wrong one, or a guesser could hang up early and tell them apart by the timing.
            assert self._transport is not None  # noqa: S101
            self._transport.pause_reading()
            asyncio.get_running_loop().call_later(delay, self._joined_late, hello)
            return
        try:
            nick = self._certificate_nick() if config.client_ca else clean_nick(hello.nick)
        except RemoteProtocolError as exc:
            self._refuse(exc)
            return
        self.server.auth_succeeded(self.addr)
        self.client_id = hello.client
        old = self.room.member_of(hello.client, nick)
        if old is not None and not old.gone:
            # Its own ghost (a connection that broke unseen) must not keep its nick from it.
            # (Under another nick it is another person on the same config folder: both stay.)
            old.replace(f"from {self.addr}")
        if self.room.clustered:  # welcomed once every server knows (``then``)
            self.room.enter(self, nick, hello, self.addr, self._entered)
            return
        self._entered(self.room.join(self, nick, hello, self.addr))

    def _entered(self, peer: Peer | None) -> None:
        """The room let this client in as ``peer`` (``None``: the cluster could not)."""
        if peer is None:
            self.drop(ErrorCode.CLUSTER_UNAVAILABLE, "the room's shared log is out of reach")
            return
        self.server.presence(
            self, "%s joined from %s; %d online", peer.nick, self.addr, len(self.room.members)
        )
        # What the client sent after its hello waited for the welcome; now it counts.
        self._handle(self.protocol.accept(), asyncio.get_running_loop().time())

    def _joined_late(self, hello: Hello) -> None:
        if self._closing or self._transport is None:
            return
        self._transport.resume_reading()
        self._joined(hello, waited=True)

    def _certificate_nick(self) -> str:
        """The common name of the client's certificate: with --client-ca it is the nick."""
        assert self._transport is not None  # noqa: S101
        cert = self._transport.get_extra_info("peercert") or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return clean_nick(value)
        raise RemoteProtocolError(ErrorCode.BAD_NICK, "certificate has no common name")

    def _auth_failed(self) -> None:
        # Answer late, and later for each failure from this address, without blocking anyone.
        assert self._transport is not None  # noqa: S101
        self._transport.pause_reading()
        delay = self.server.auth_failed(self.addr)
        self.server.warn(self, "wrong password; answering in %.1f s", delay)
        asyncio.get_running_loop().call_later(
            delay, self.drop, ErrorCode.AUTH_FAILED, "wrong or missing password"
        )

    def _hello_timed_out(self) -> None:
        if self.peer is None:
            self.drop(ErrorCode.HELLO_TIMEOUT, "no hello in time")


class ChatServer:
    """The listener: connections, admission, limits and timers; the room does the chat."""

    def __init__(self, config: ServerConfig, history: RoomLog | None = None) -> None:
        """``history`` replaces the log that ``config`` describes (tests give a memory one)."""
        self.config = config
        info = ServerInfo(
            config.name,
            __version__,
            limits.PROTOCOL_VERSION,
            msg_rate=config.msg_rate,
            msg_burst=max(config.msg_burst, 1),  # the burst the bucket keeps (0: one at a time)
        )
        shared = history if history is not None else open_history(config)
        self.room = Room(
            info,
            shared,
            replay=config.replay,
            replay_max=config.replay_max,
            cluster=open_cluster_presence(shared),
        )
        self.connections: set[Session] = set()
        """Every open connection, joined or not."""
        self.closing: set[Session] = set()
        """Sessions closed whose connections are not gone yet; shutdown waits for them too."""
        self.fingerprint = ""
        self.addresses: list[tuple[str, int]] = []
        self.listening: list[Listening] = []
        """Each listening socket, with what it takes (``addresses``, said in words)."""
        self._ids = itertools.count(1)
        self.read_buffer = memoryview(bytearray(READ_BUFFER))
        self._gate: Gate | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._per_ip: collections.Counter[str] = collections.Counter()
        self._auth_failures: collections.OrderedDict[str, tuple[int, float]] = (
            collections.OrderedDict()
        )
        """Wrong passwords by ``backoff_key``: (count, monotonic time of the last), oldest first."""
        self._warnings = WarningBudget()
        self._presence_budgets: collections.OrderedDict[str, WarningBudget] = (
            collections.OrderedDict()
        )
        """Join/leave lines logged per address (see ``presence``), the last used last."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._swept_at = 0.0
        """Loop time of the last idle sweep: a long gap since means the server was paused."""
        self._stopping = False
        self._accepted = 0
        """Connections accepted so far (TLS finished or not)."""
        self._churn = 0
        """Connections accepted and never made, and connections gone: what may have left
        memory behind."""
        self._released_churn = 0
        """``_churn`` when memory was last released (see ``RELEASE_EVERY``)."""
        self._released_at = 0
        """``_accepted`` when memory was last released: the idle sweep releases it after any
        connection (not after every departure: a collection there would delay the sweep)."""
        self._release: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expires_at: dt.datetime | None = None
        """When the certificate in use expires (a renewed file takes a restart)."""
        self._sockets: list[socket.socket] = []
        self.must_restart = asyncio.Event()
        """Set when the room must start again (``Room.restart_why``): ``serve`` restarts."""
        self.room.on_restart = lambda exc: self.must_restart.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Bind, load (or make) the certificate, open the log and start accepting connections.

        Binding comes first: a server that cannot listen (a port in use) leaves nothing
        behind, no data folder, certificate, key or history file; nor does one whose
        certificate files, client CA or cluster are wrong or out of reach (the certificate is
        made last). ``sockets``: listen on these instead (those of a server before this one,
        see ``keep_listening``).
        """
        config = self.config
        if sockets is None:
            sockets = listen_sockets(config.host, config.port)
        self._sockets = sockets
        try:
            files = certs.CertFiles(config.cert, config.key)
            make = certs.must_make(files, allowed=config.make_cert)
            if config.client_ca is not None:
                check_client_ca(config.client_ca)
            # A certificate there is loaded first (a key that is not its own stops it here);
            # one to make is made last.
            ctx = None if make else self._load_certificate(files, make=False)
            config.make_data_dir()
            self._loop = asyncio.get_running_loop()
            # Ids go on from the highest in the log, so no stored line names a newcomer.
            self._ids = itertools.count(await self.room.open() + 1)
            if ctx is None:
                ctx = self._load_certificate(files, make=True)
            trim_asyncio_tls_buffer()
            await self._listen(ctx, sockets)
        except BaseException:
            if self._gate is not None:
                self._gate.close()
            for sock in sockets:
                sock.close()
            await self.room.close()
            raise
        self._expiry = self._loop.call_later(self._next_expiry_check(), self._check_expiry)
        if config.idle_timeout:
            self._swept_at = self._loop.time()
            self._sweeper = self._loop.call_later(
                config.idle_timeout / IDLE_CHECKS, self._sweep_idle
            )
        log.info(
            "listening on %s as %r, certificate %s, fingerprint %s",
            ", ".join(map(str, self.listening)),
            self.config.name,
            config.cert.absolute(),
            self.fingerprint,
        )

    def _load_certificate(self, files: certs.CertFiles, *, make: bool) -> ssl.SSLContext:
        """The server's TLS context; with ``make``, a certificate is made first (and said so,
        loudly)."""
        config = self.config
        if make:
            certs.generate(files.cert.parent)
        self.fingerprint = certs.cert_fingerprint(config.cert)
        if make:
            log.warning(
                "generated a new certificate with fingerprint %s at %s (key %s); if this server "
                "had one before (started from another folder?), clients that trusted it will be "
                "warned that it changed",
                self.fingerprint,
                config.cert.absolute(),
                config.key.absolute(),
            )
        certs.check_key_permissions(config.key)
        certs.check_expiry(config.cert, limits.CERT_WARN_DAYS)
        self._expires_at = certs.load_cert(config.cert).not_valid_after_utc
        return server_context(
            config.cert, config.key, tls13_only=config.tls13_only, client_ca=config.client_ca
        )

    async def _listen(self, ctx: ssl.SSLContext, sockets: list[socket.socket]) -> None:
        config = self.config
        # Handshakes count against the limits of connections too, before TLS is up: one
        # address can half-open no more connections than it may have (see Gate).
        self._gate = Gate(
            ctx,
            self._new_session,
            handshake_timeout=config.handshake_timeout or limits.HANDSHAKE_TIMEOUT_OFF,
            per_address=config.max_per_ip,
            total=config.max_sessions,
            key=backoff_key,
            address=client_address,
        )
        for sock in sockets:
            self._gate.open(sock)
            self.addresses.append(sock.getsockname()[:2])
            self.listening.append(Listening.of(sock))

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def keep_listening(self) -> list[int]:
        """Copies of the listening sockets' descriptors, open after ``shutdown``: a server
        started on them (``socket.socket(fileno=...)``) takes the connections that came in
        meanwhile, on the same port."""
        return [os.dup(sock.fileno()) for sock in self._sockets]

    @property
    def sessions(self) -> dict[str, Member]:
        """The joined sessions, by id: everyone who receives broadcasts."""
        return self.room.members

    async def shutdown(self) -> None:
        """Tell every client ``shutdown``, close every connection and stop listening."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._release is not None:
            self._release.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._gate is not None:
            self._gate.close()
        # Every line taken is stored, acknowledged and broadcast before the end.
        await self.room.drain()
        # What was queued in this iteration (a line taken just before) goes out first: the
        # flush scheduled for it would find the registry empty.
        self.room.flush()
        frame = encode(Shutdown())
        # Everyone gets ``shutdown``; nobody needs a ``leave`` for each of the others first.
        self.room.clear()
        sessions = list(self.connections)
        for session in sessions:
            session.send(frame)
            session.close("shutdown")
        sessions += self.closing  # closed earlier (an error, a wrong password) and not gone yet
        # close() took them out of the registry at once; wait until their connections are
        # really gone (close() aborts those that are still there after SHUTDOWN_GRACE).
        deadline = time.monotonic() + SHUTDOWN_GRACE + 1
        while not all(s.lost for s in sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._gate is not None:
            await self._gate.wait_closed()
        await self.room.close()
        log.info("stopped")

    # -- registry ------------------------------------------------------------------------

    def _new_session(self) -> Session:
        self._accepted += 1
        self._churned()
        return Session(self, str(next(self._ids)))

    def _churned(self) -> None:
        """A connection came or went: after a burst of them, hand the memory back."""
        self._churn += 1
        if self._churn - self._released_churn >= RELEASE_EVERY and self._release is None:
            assert self._loop is not None  # noqa: S101 - set in start()
            # A second later this burst is mostly over; at most one pause (ms) a second.
            self._release = self._loop.call_later(1.0, self._release_memory)

    def _release_memory(self) -> None:
        self._release = None
        self._released_at, self._released_churn = self._accepted, self._churn
        release_memory()

    def admit(self, session: Session) -> tuple[ErrorCode, str] | None:
        """Register a new connection, or say why it is refused (before it may say anything)."""
        config = self.config
        if self._stopping:
            return ErrorCode.SHUTTING_DOWN, "the server is shutting down"
        if config.max_sessions and len(self.connections) >= config.max_sessions:
            most = config.max_sessions
            connections = "1 connection" if most == 1 else f"{most} connections"
            return ErrorCode.SERVER_FULL, f"the server is full ({connections})"
        if config.max_per_ip and self._per_ip[session.addr] >= config.max_per_ip:
            return (
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"at most {config.max_per_ip} connections from one address",
            )
        self.connections.add(session)
        self._churn -= 1  # made: its handshake left nothing behind (its departure will count)
        self._per_ip[session.addr] += 1
        return None

    def warn(self, session: Session, msg: str, *args: object) -> None:
        """A WARNING about a client, rate-limited so that no client can fill the disk."""
        assert self._loop is not None  # noqa: S101
        allowed, dropped = self._warnings.allow(self._loop.time())
        if allowed:
            if dropped:
                log.warning("(%d similar warnings were not logged)", dropped)
            session.log.warning(msg, *args)

    def presence(self, session: Session, msg: str, *args: object) -> None:
        """An INFO line of a join or leave, at most ``PRESENCE_LOG_LINES`` per address in
        ``PRESENCE_LOG_PERIOD``; the rest are counted, and the counts logged by the sweep."""
        assert self._loop is not None  # noqa: S101
        budgets, addr = self._presence_budgets, session.addr
        budget = budgets.pop(addr, None) or WarningBudget(
            limits.PRESENCE_LOG_LINES, limits.PRESENCE_LOG_PERIOD
        )
        budgets[addr] = budget
        allowed, dropped = budget.allow(self._loop.time())
        if allowed:
            self._presence_summary(addr, dropped)
            session.log.info(msg, *args)
        while len(budgets) > limits.AUTH_TRACKED:
            oldest, budget = budgets.popitem(last=False)
            self._presence_summary(oldest, budget.suppressed)

    @staticmethod
    def _presence_summary(addr: str, dropped: int) -> None:
        if dropped:
            log.info("%s: %d more joins and leaves not logged", addr, dropped)

    def _summarise_presence(self, now: float) -> None:
        """Log the join/leave lines left out since the last sweep; forget quiet addresses."""
        for addr, budget in list(self._presence_budgets.items()):
            dropped, budget.suppressed = budget.suppressed, 0
            self._presence_summary(addr, dropped)
            if budget.expired(now):
                del self._presence_budgets[addr]

    def auth_failed(self, addr: str) -> float:
        """Count a wrong password from ``addr``; return how long to wait before answering."""
        now = time.monotonic()
        key = backoff_key(addr)
        table = self._auth_failures
        failures, last = table.pop(key, (0, now))
        if now - last > limits.AUTH_FORGET:
            failures = 0
        delay = min(limits.AUTH_DELAY * 2.0**failures, limits.AUTH_DELAY_MAX)
        table[key] = (failures + 1, now)  # the newest goes last
        # Bounded memory under a spray of addresses: the oldest go first, so a guesser who
        # keeps guessing keeps its penalty however many others fail meanwhile (a clear() here
        # once let a spray of addresses wipe every penalty).
        while len(table) > limits.AUTH_TRACKED:
            table.popitem(last=False)
        while now - next(iter(table.values()))[1] > limits.AUTH_FORGET:
            table.popitem(last=False)  # forgotten anyway; the newest entry never is
        return delay

    def auth_delay(self, addr: str) -> float:
        """How long a wrong password from ``addr`` would wait now; 0 if it has no recent ones."""
        failures, last = self._auth_failures.get(backoff_key(addr), (0, 0.0))
        if not failures or time.monotonic() - last > limits.AUTH_FORGET:
            return 0.0
        return min(limits.AUTH_DELAY * 2.0**failures, limits.AUTH_DELAY_MAX)

    def auth_succeeded(self, addr: str) -> None:
        self._auth_failures.pop(backoff_key(addr), None)

    def _next_expiry_check(self) -> float:
        """Seconds to the next look at the certificate's expiry: a day, or its expiry."""
        if self._expires_at is None:
            return limits.CERT_CHECK_EVERY
        left = (self._expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        return min(limits.CERT_CHECK_EVERY, left + 1) if left > 0 else limits.CERT_CHECK_EVERY

    def _check_expiry(self) -> None:
        """A server that runs for months warns before its certificate expires, and says
        when it has (else the first sign is a start refused, after a reboot)."""
        assert self._loop is not None  # noqa: S101 - set in start()
        self._expiry = self._loop.call_later(self._next_expiry_check(), self._check_expiry)
        cert, expires = self.config.cert, self._expires_at
        if expires is None:
            return
        left = (expires - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        if left >= limits.CERT_WARN_DAYS:
            return
        try:
            on_disk = certs.load_cert(cert).not_valid_after_utc
            advice = certs.renewal(cert)
        except (ConfigError, OSError, ValueError) as exc:  # being replaced, say
            on_disk, advice = expires, f"and {cert} cannot be read now ({exc})"
        if on_disk > expires:  # renewed on disk (certbot, say): only the restart is missing
            advice = f"{cert} holds a renewed one: restart the server to use it"
        if left <= 0:
            log.error(
                "the certificate %s has expired; clients that check it refuse to connect; %s",
                cert,
                advice,
            )
        else:
            log.warning("the certificate %s expires in %.0f days; %s", cert, left, advice)

    def _sweep_idle(self) -> None:
        """Ping sessions silent for half the idle timeout; drop those that would outlast it.

        A sweep comes every ``timeout / IDLE_CHECKS`` seconds, so a session is dropped at the
        last sweep before its silence reaches the timeout: after between 7/8 of it and all of it.
        """
        assert self._loop is not None  # noqa: S101
        timeout = self.config.idle_timeout
        every = timeout / IDLE_CHECKS
        now = self._loop.time()
        if now - self._swept_at > 2 * every + 1:
            # The server itself stood still (SIGSTOP, a debugger, a frozen VM; not a suspended
            # machine, during which the loop's monotonic clock stands still too): its clients'
            # bytes wait unread in its sockets. Silence counts from now, not from before.
            log.warning(
                "the server was paused for %.0f s; idle clients are timed anew",
                now - self._swept_at,
            )
            for session in self.connections:
                session.last_heard = max(session.last_heard, now - every)
        self._swept_at = now
        for session in list(self.connections):
            silent = now - session.last_heard
            if silent + every > timeout:  # the next sweep would be too late
                session.drop(ErrorCode.IDLE_TIMEOUT, "nothing heard for too long", "timeout")
            elif silent >= timeout / 2:
                session.ping()
        self._summarise_presence(now)
        if self._accepted != self._released_at and self._release is None:
            self._release_memory()  # after fewer than RELEASE_EVERY, or the end of a burst
        self._sweeper = self._loop.call_later(every, self._sweep_idle)

    def remove(self, session: Session, reason: str) -> None:
        """Forget ``session``; if it had joined, the room tells the rest. Idempotent."""
        if session in self.connections:
            self.connections.discard(session)
            if not self._stopping:
                self._churned()  # thousands gone at once must not keep their memory
            self._per_ip[session.addr] -= 1
            if not self._per_ip[session.addr]:
                del self._per_ip[session.addr]
        if self.room.remove(session, reason) and session.peer is not None:
            online = len(self.room.members)
            self.presence(session, "%s left (%s); %d online", session.peer.nick, reason, online)


def open_history(config: ServerConfig) -> RoomLog | None:
    """The room log ``config`` asks for: Redis, SQLite, or none at all with ``history`` 0."""
    if config.cluster is not None:
        return open_cluster_log(config)
    if not config.history:
        return None
    from chatsecure.history.sqlite import SqliteLog

    return SqliteLog(config.db_path, config.history, config.durability)


def open_cluster_log(config: ServerConfig) -> RoomLog:
    """The log shared by the servers of a cluster: in the Redis at ``config.cluster``."""
    if not config.history:
        raise ConfigError("--cluster keeps the room's lines in Redis: --history cannot be 0")
    from chatsecure.history.redis import RedisLog

    return RedisLog(config.cluster or "", config.name, config.history)


def open_cluster_presence(shared: RoomLog | None) -> ClusterPresence | None:
    """Presence shared by the servers of a cluster, when the log is a cluster's (Redis)."""
    if not isinstance(shared, SharedLog):
        return None
    from chatsecure.history.redis import RedisLog
    from chatsecure.presence import ClusterPresence

    return ClusterPresence(shared) if isinstance(shared, RedisLog) else None


def trim_asyncio_tls_buffer() -> None:
    """Make asyncio's TLS layer allocate 4 KiB per connection instead of 256 KiB.

    CPython's ``asyncio.sslproto.SSLProtocol`` zero-fills a ``max_size`` (256 KiB) receive
    buffer for every connection: 2.5 GiB of resident memory for 10,000 idle clients. Clients
    of a chat server send short lines, so one TLS record per read is plenty. uvloop has its
    own TLS layer, which ignores this and does not fill its buffer (see
    ``fix_mmap_threshold``).
    """
    sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, TLS_READ_SIZE)


@dataclass(frozen=True, slots=True)
class Listening:
    """One listening socket: its address, and the IP versions it takes connections over."""

    host: str
    port: int
    ipv4: bool
    ipv6: bool

    @classmethod
    def of(cls, sock: socket.socket) -> Listening:
        address = sock.getsockname()
        host, port = _shown(address), address[1]
        if sock.family != socket.AF_INET6:
            return cls(str(host), int(port), ipv4=True, ipv6=False)
        # (The system's default for IPV6_V6ONLY varies; the socket says what it does.)
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        return cls(str(host), int(port), ipv4=host == "::" and not v6only, ipv6=True)

    def __str__(self) -> str:
        """``[::]:7467 (every interface, IPv4 and IPv6)``: the address, and where in words."""
        return f"{host_port(self.host, self.port)} ({self.where})"

    @property
    def where(self) -> str:
        """Where connections come from, in words: for a wildcard, over which IP versions."""
        if self.host not in {"::", "0.0.0.0"}:  # noqa: S104
            return self.host
        versions = " and ".join(v for v, on in (("IPv4", self.ipv4), ("IPv6", self.ipv6)) if on)
        return f"every interface, {versions}{'' if self.ipv4 and self.ipv6 else ' only'}"

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts to advertise for: a dual-stack wildcard is both wildcards."""
        return ("0.0.0.0", "::") if self.host == "::" and self.ipv4 else (self.host,)  # noqa: S104


FREE_PORT_TRIES = 5
"""Ports tried with ``--port 0`` on a name of several addresses: the free port picked on the
first address may be taken on another."""


def listen_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Bound listening sockets: one dual-stack socket for all interfaces, or one per address
    ``host`` resolves to (``localhost``: 127.0.0.1 and ::1), all on one port.

    ``::`` is dual-stack too, where the system allows it (else IPv6 only, and said so). An
    address of a name that this machine does not have (``::1`` with IPv6 off, as in a
    container) is left out, with a warning, as long as another one is listened on.
    """
    addresses: list[tuple[int, tuple[Any, ...]]] = [(socket.AF_INET, ("", port))]
    named = False
    if host and host != "*":
        named = ip_of(listen_host(host)) is None
        addresses = _resolve(listen_host(host), port)
    elif socket.has_dualstack_ipv6():
        addresses = [(socket.AF_INET6, ("::", port))]
    tries = 0
    while True:
        tries += 1
        bound: list[socket.socket] = []
        missing: list[tuple[tuple[Any, ...], OSError]] = []
        try:
            for family, sockaddr in addresses:
                # (The whole sockaddr: an IPv6 link-local address's scope id is in it.)
                at = (sockaddr[0], bound[0].getsockname()[1] if bound else port, *sockaddr[2:])
                try:
                    bound.append(_listening_socket(family, at))
                except OSError as absent:
                    if not (named and absent.errno in NOT_HERE):
                        raise
                    missing.append((at, absent))
            if not bound and missing:
                at = missing[0][0]
                raise missing[0][1]
        except OSError as exc:
            for sock in bound:
                sock.close()
            if bound and not port and exc.errno == errno.EADDRINUSE and tries < FREE_PORT_TRIES:
                continue
            raise ConfigError(_listen_failure(exc, _shown(at), at[1])) from exc
        for left_out, why in missing:
            log.warning(
                "not listening on %s, an address of %s: %s",
                host_port(_shown(left_out), left_out[1]),
                host,
                os.strerror(why.errno) if why.errno else why,
            )
        return bound


NOT_HERE = frozenset({errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
"""Errors of a bind to an address this machine does not have (IPv6 turned off, say)."""


def _resolve(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """Each distinct (family, sockaddr) ``host`` resolves to, in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    return list(dict.fromkeys((int(info[0]), tuple(info[4])) for info in infos))


def _shown(sockaddr: tuple[Any, ...]) -> str:
    """A sockaddr's address as people write it: a scope id as ``%interface``."""
    address = str(sockaddr[0])
    if len(sockaddr) == 4 and sockaddr[3] and "%" not in address:
        try:
            address += f"%{socket.if_indextoname(sockaddr[3])}"
        except OSError:
            address += f"%{sockaddr[3]}"
    return address


def _listening_socket(family: int, sockaddr: tuple[Any, ...]) -> socket.socket:
    # (Without dualstack_ipv6, create_server makes an IPv6 socket IPv6 only.)
    dualstack = family == socket.AF_INET6 and sockaddr[0] == "::" and socket.has_dualstack_ipv6()
    return socket.create_server(
        sockaddr,
        family=socket.AddressFamily(family),
        dualstack_ipv6=dualstack,
        backlog=LISTEN_BACKLOG,
    )


def listen_host(text: str) -> str:
    """``--host`` as an address or name: an IPv6 address may come in brackets, as clients
    take it (``[::1]``); a port in it is refused, with where it goes (``--port``)."""
    inner = text.removeprefix("[").removesuffix("]")
    if f"[{inner}]" == text and (ip := ip_of(inner)) is not None and ip.version == 6:
        return inner
    if re.fullmatch(r"(\[[^]]*\]|[^:\[\]]*):[0-9]*", text):
        raise ConfigError(
            f"cannot listen on {text!r}: give the address alone, and the port with --port"
        )
    if (typo := host_typo(text)) is not None:  # (not a name to ask the resolver about)
        raise ConfigError(f"cannot listen there: {typo}")
    return text


def _listen_failure(exc: OSError, host: str, port: int) -> str:
    """What went wrong binding ``host:port``, in words, naming the address once."""
    on = "this machine" if host in {"", "::", "0.0.0.0"} else host  # noqa: S104
    if exc.errno == errno.EADDRINUSE:
        return (
            f"another program (perhaps another chatsecure server) is already using port {port} "
            f"on {on}: stop it, or choose another port with --port"
        )
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return f"port {port} needs root (ports below 1024 do): choose another port with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host_port(host, port)}: {host} is not an address of this machine"
    if exc.errno == errno.EINVAL and needs_scope(host):
        return (
            f"cannot listen on {host_port(host, port)}: a link-local address needs its "
            f"interface, as in {host}%eth0"
        )
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"cannot listen on {host_port(host or '*', port)}: {reason}"


def raise_open_file_limit() -> None:
    """Let this process open as many files as the hard limit allows: one per connection."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.debug("open-file limit raised from %d to %d", soft, hard)


async def serve(
    config: ServerConfig,
    *,
    ready: Callable[[ChatServer], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a server until SIGINT, SIGTERM or SIGHUP (or ``stop``), then shut it down cleanly."""
    raise_open_file_limit()
    fix_mmap_threshold()
    loop_log = LoopLogBudget()
    logging.getLogger("asyncio").addFilter(loop_log)
    try:
        await _serve(config, ready, stop)
    finally:
        logging.getLogger("asyncio").removeFilter(loop_log)


async def _serve(
    config: ServerConfig,
    ready: Callable[[ChatServer], Awaitable[None] | None] | None,
    stop: asyncio.Event | None,
) -> None:
    server = ChatServer(config)
    await server.start()  # its errors are ConfigErrors that say what is wrong, from where
    running: ChatServer | None = server
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    # SIGHUP too: the terminal a server was started in closed, or an operator's reload.
    # There is no reload: it stops cleanly, and a service manager or the operator starts it
    # again (clients resume); dying of the signal's default left clients no shutdown. A
    # signal ignored at start stays ignored: ``nohup chatsecure server`` outlives its shell.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    advertiser = None
    if config.discovery:
        from chatsecure.discovery.mdns import Advertiser
        from chatsecure.discovery.records import cluster_id

        listening = [host for each in server.listening for host in each.hosts]
        cluster = None if config.cluster is None else cluster_id(config.cluster, config.name)
        advertiser = Advertiser(
            config.name,
            server.port,
            server.fingerprint,
            config.advertise_ips,
            listening=listening,
            cluster=cluster,
        )
        advertiser.start()  # returns at once: probing and announcing run on their own thread
    try:
        if ready is not None:
            result = ready(server)
            if result is not None:
                await result
        while not await _stopped(stop, server):
            # Redis lost the room, or the cluster this server: start again on what it holds.
            log.error("%s; starting again on it", server.room.restart_why)
            kept = server.keep_listening()
            running = None
            await server.shutdown()
            running = await _start_again(config, kept, stop)
            if running is None:
                return  # stopped meanwhile
            server = running
        log.info("shutting down; %d online", len(server.sessions))
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        # (None: stopped while starting again; the server before is shut down already.)
        stopping = [] if running is None else [running.shutdown()]
        if advertiser is not None:  # goodbye packets, off the loop, while clients are told
            stopping.append(asyncio.to_thread(advertiser.stop))
        await asyncio.gather(*stopping)


async def _start_again(
    config: ServerConfig, kept: list[int], stop: asyncio.Event
) -> ChatServer | None:
    """A new server on the ``kept`` listening sockets, once the shared log opens (Redis may
    be out of reach for a while yet: tried again with growing pauses, the port bound again
    then if it is a fixed one); None if ``stop`` comes first."""
    pause = RESTART_FIRST
    try:
        while not stop.is_set():
            server = ChatServer(config)
            # (A failed start closes the sockets it was given: these are copies.)
            sockets = [socket.socket(fileno=os.dup(fd)) for fd in kept] if kept else None
            try:
                await server.start(sockets)
            except HistoryError as exc:
                log.warning("%s; trying again in %.0f s", exc, pause)
                if config.port and kept:
                    # Its port let go meanwhile, a client is refused at once (and tries
                    # another server of its list) instead of waiting out a handshake.
                    for fd in kept:
                        os.close(fd)
                    kept = []
            else:
                return server
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(2 * pause, RESTART_MAX)
        return None
    finally:
        for fd in kept:
            os.close(fd)


async def _stopped(stop: asyncio.Event, server: ChatServer) -> bool:
    """Wait until ``stop`` is set (True) or ``server`` lost its shared log (False)."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.must_restart.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return stop.is_set()


def main(argv: list[str] | None = None) -> int:
    """``python -m chatsecure.server``: the same as ``chatsecure server``."""
    from chatsecure.cli import main as cli_main

    return cli_main(["server", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
