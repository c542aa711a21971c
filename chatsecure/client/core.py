"""The client core: TLS, trust, protocol and reconnects on one background thread.

Front ends (terminal, Tk) never touch the network. They call ``send``/``quit``/``close``
from their own thread and take ``ClientEvent`` values from ``events`` (a ``queue.Queue``).
This module never imports tkinter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import queue
import re
import socket
import ssl
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from chatsecure.client.errors import describe_error
from chatsecure.client.resume import SAVE_EVERY, LastSeen
from chatsecure.discovery.records import host_typo
from chatsecure.errors import (
    ChatError,
    ConfigError,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
    TrustError,
)
from chatsecure.protocol import limits
from chatsecure.protocol.client import (
    Acked,
    ClientSession,
    ClientState,
    Ended,
    HistoryDone,
    Ignored,
    Line,
    Noticed,
    Presence,
    Refused,
    ServerError,
    SessionEvent,
    Welcomed,
)
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import (
    Chat,
    Error,
    Join,
    Leave,
    Notice,
    Peer,
    SendMsg,
    ServerMessage,
    Shutdown,
    Welcome,
    encode,
    shows,
    utf8_encodable,
)
from chatsecure.protocol.ratelimit import WarningBudget
from chatsecure.tls import certs
from chatsecure.tls.certs import fingerprint
from chatsecure.tls.context import client_context
from chatsecure.tls.trust import TrustPolicy, TrustQuestion, host_port, server_key

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds between reconnect attempts after a dropped connection; the last one repeats."""
MAX_RETRIES = 20
"""Reconnect attempts before the client gives up."""
STABLE_SESSION = 30.0
"""Seconds a session must go on working (the server heard from that long after its welcome)
before a drop starts the reconnect count afresh: a server that fails every session right after
welcoming, or welcomes and then says nothing, must not keep a client retrying for ever. A
session in which the server stored an own line or passed on a live one worked too, however
short (a link that drops every few seconds while people chat)."""
EVENT_QUEUE_HIGH = 2000
"""Events waiting for the front end above which the client stops reading from the server (the
server's TCP window then fills): a flood costs bounded memory, never an endless queue."""
EVENT_QUEUE_BYTES = 16 * 1024 * 1024
"""Bytes of memory held by the events waiting for the front end (see ``held_bytes``) above
which the client stops reading from the server, as at ``EVENT_QUEUE_HIGH`` events.

A count alone let a server that sends lines of a million characters (a frame may be
``MAX_SERVER_FRAME`` long) have 2,000 of them wait: 2 GB. Lines are never cut (a server may
allow longer ones than ours), so memory is bounded here instead: 16 MiB is 2,000 lines of
8,000 characters, twice a default server's longest; a front end behind a flood of those loses
nothing, it only makes the server wait. One read more may land on top of the mark: at most
about four times ``MAX_SERVER_FRAME`` (a frame of ASCII and one emoji is stored four bytes a
character)."""
TICK = 1.0
"""Seconds between two checks that a quiet server is still there (see ``ClientSession.tick``)."""
LOGGED_FRAME = 500
"""Bytes of a frame that ``-v`` logs."""
_PASSWORD = re.compile(rb'"password":\s*"(?:[^"\\]|\\.)*"')
"""A room password in a frame, which ``-v`` does not log."""
FINISH_STALL = 60.0
"""Seconds the end of input waits for the server to confirm any line it was sent, while it
answers pings all the same: then the client leaves, naming those lines as not confirmed."""
QUIT_WAIT = 2.0
"""Seconds the client waits for the server to close after ``quit`` before it closes itself."""
QUIT_FLUSH = 0.2
"""Seconds for ``quit`` to go out when the server has not answered for ``ACK_WAIT``."""
ACK_WAIT = 2.0
"""Seconds ``quit`` waits for the acks of the lines the server has already been sent.

A script's ``printf 'done\nquit\n'`` sends its line and its ``quit`` together: leaving at once
would report the line as not stored, although the server stores it an instant later."""

PACED_WAIT_MAX = 60.0
"""Seconds ``quit`` waits at most, on top of ``ACK_WAIT``, for lines still held back by the
pace (a server stating an absurdly slow rate must not keep a client that wants to leave)."""

LEAVE_WAIT_MAX = ACK_WAIT + PACED_WAIT_MAX + QUIT_WAIT
"""Seconds after ``quit`` by which the client has ended, whatever the server does: what a front
end waits for it before giving up (and losing what it would have said about unsent lines)."""

NEVER_STORED = "not sent, never stored"
"""``NotSent.why`` of a line that never reached the server."""

UNCONFIRMED = "sent, but not confirmed: it may or may not be stored"
"""``NotSent.why`` of a line sent whose ack never came (the connection went, or we left)."""


# --- events out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The server welcomed us."""

    welcome: Welcome
    host: str
    port: int
    tls_version: str
    fingerprint: str
    resumed: bool = False
    """Whether this is a return (reconnect or restart) that resumed where we left off."""
    missed: int = 0
    """Lines said while we were away: ``welcome.replay`` of them follow as ``replayed``."""
    resent: int = 0
    """Own lines not acknowledged before the drop, sent again."""


@dataclass(frozen=True, slots=True)
class Received:
    """A frame from the server after ``welcome``: chat, join, leave, error, shutdown.

    A chat line is ``replayed`` when it is part of the replay after ``welcome`` (said while we
    were away, or before we came), ``older`` when it answers a ``history`` request; so is
    the answer's end: its ``history_end``, or the ``error`` that refused the request."""

    message: ServerMessage
    replayed: bool = False
    older: bool = False


@dataclass(frozen=True, slots=True)
class Queued:
    """Our chat line ``ref`` is on its way; it is pending until ``Sent``."""

    ref: str
    text: str


Sent = Acked
"""The server stored our line ``ref`` (as ``seq``; 0 for a server that keeps no log): the
protocol's ``Acked``, under the name the front ends know it by."""


def no_longer_kept(event: Connected) -> int:
    """Of the lines missed, how many the server keeps no more (older than its ``--history``):
    neither replayed nor left out by the replay's cap."""
    welcome = event.welcome
    return max(0, event.missed - welcome.replay - welcome.skipped)


EVENT_OVERHEAD = 400
"""Bytes ``held_bytes`` counts for the objects of an event around its strings (a chat line:
the event, its ``Chat``, its ``Peer`` and their numbers, about 400 bytes on CPython)."""

_size = sys.getsizeof


def held_bytes(event: ClientEvent) -> int:
    """About the bytes of memory ``event`` holds while it waits for the front end: its strings
    (each of a server's may be a frame long), and ``EVENT_OVERHEAD`` for the rest."""
    if isinstance(event, Received) and isinstance(chat := event.message, Chat):
        # (Most events: written out, four times faster than the walk below.)
        peer = chat.sender
        strings = _size(chat.text) + _size(peer.nick) + _size(peer.addr) + _size(peer.id)
        return EVENT_OVERHEAD + strings
    return EVENT_OVERHEAD + _strings_in(event)


def _strings_in(value: object) -> int:
    """Bytes of the strings in ``value``, an event or a part of one (slotted dataclasses,
    tuples of them)."""
    if isinstance(value, str):
        return _size(value)
    if isinstance(value, Peer):
        return _size(value.nick) + _size(value.addr) + _size(value.id) + 100
    if isinstance(value, tuple):
        return _size(value) + sum(map(_strings_in, value))
    return sum(_strings_in(getattr(value, name)) for name in getattr(type(value), "__slots__", ()))


def shown_seq(event: ClientEvent) -> int:
    """The seq a front end that has shown ``event`` passes to ``ChatClient.shown`` (0: none)."""
    match event:
        case Received(message=Chat(seq=seq), older=False) | Acked(seq=seq):
            return seq
    return 0


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection dropped; the next attempt is in ``delay`` seconds."""

    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The client stopped for good. ``error`` is False after quit or a server shutdown."""

    reason: str
    error: bool
    code: str | None = None
    """The server's ``error`` code when it refused us (``auth_failed``, ``server_full`` ...)."""


@dataclass(frozen=True, slots=True)
class NotSent:
    """A chat line given to ``send`` that the server did not acknowledge: the connection was
    gone by then, or the server refused it, or the client left before its ack came."""

    text: str
    ref: str | None = None
    why: str = NEVER_STORED
    """What became of it, for the user: ``NEVER_STORED``, ``UNCONFIRMED``, or the server's
    reason for refusing it."""


class Unreachable(ChatError):
    """None of a target's several addresses could be connected to; says what each did."""


class ServerRefused(ConnectionClosed):
    """The server answered ``hello`` with an ``error`` instead of ``welcome``."""

    def __init__(self, code: str, message: str) -> None:
        if code == ErrorCode.REPLACED:
            said = f"{REPLACED_TEXT} ({safe_text(message)})"
        else:
            said = f"the server refused: {safe_text(message)} ({safe_text(code)})"
        super().__init__(said)
        self.code = code


REPLACED_TEXT = (
    "this client connected to the room again with the same nick, from another window or "
    "program that uses the same config folder"
)
"""Why a client ends after ``replaced``: its identity (``client_id``) is in the room anew."""


NO_CLIENT_CERT = (
    "before welcoming us (does it admit only clients with a certificate from its CA? "
    "then give yours with --cert)"
)
"""Said of a connection closed before the welcome, by a client without a certificate."""

OTHER_CA = (
    "before welcoming us (does it admit only clients with a certificate from its CA? yours "
    "may be from another)"
)
"""Said of a connection closed before the welcome, by a client with a certificate."""


def _cert_hint(cert: Path) -> str:
    """Why a server that admits clients by certificate may have closed on ``cert``: its
    dates, if they are out (the server only resets the connection), else another CA."""
    with contextlib.suppress(ConfigError, ValueError):
        wrong = certs.out_of_date(certs.load_cert(cert))
        if wrong is not None:
            return (
                f"before welcoming us (your certificate {cert} {wrong}, and {certs.clock_says()}:"
                " if the clock is wrong, set it right; if not, ask for a new certificate)"
            )
    return OTHER_CA


FINAL_REFUSALS = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.BAD_NICK, ErrorCode.REPLACED})
"""Refusals that trying again cannot fix: the client stops instead of reconnecting."""


ClientEvent = Connected | Received | Queued | Sent | Reconnecting | Disconnected | NotSent


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect and how to judge the server."""

    host: str
    port: int = limits.DEFAULT_PORT
    cafile: Path | None = None
    """Verify with this CA bundle and the host name instead of pinning."""
    advertised: str | None = None
    """Fingerprint the server advertised over mDNS; a different certificate is refused."""
    cert: Path | None = None
    """Our own certificate, for servers that admit clients by certificate (``--client-ca``)."""
    key: Path | None = None
    others: tuple[tuple[str, int], ...] = ()
    """More addresses of the same room (the servers of one cluster), tried in order after
    ``host:port`` when it cannot be reached; their certificate is the one pinned for any of
    them (see ``TrustPolicy.check``)."""

    def __post_init__(self) -> None:
        for host, _ in self.addresses:  # (parse_target said so already: this is a backstop)
            check_host(host)

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every address of the room, ``host:port`` first."""
        return ((self.host, self.port), *self.others)


def parse_target(
    text: str, default_port: int = limits.DEFAULT_PORT, *, check: bool = True
) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port).

    ``check``: refuse a host that cannot be dialled as written (``check_host``); without it
    (a pin to forget, which is only a name) any host is taken."""
    text = text.strip()
    if not text:
        raise ValueError("enter a host name or IP address")
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"no ']' after the IPv6 address in {text!r}")
        if not _is_ipv6(host):
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError(f"a ':' goes between ']' and the port in {text!r}")
        port_text = rest.removeprefix(":")
        if rest == ":":
            raise ValueError(f"no port after ':' in {text!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise ValueError(f"no port after ':' in {text!r}")
    elif ":" in text and not _is_ipv6(text):
        # (not taken for an IPv6 address to connect to: http://host:port, host:port:x)
        raise ValueError(f"{text!r} is neither host:port nor an IPv6 address")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if check:
        check_host(host)
    if not port_text:
        return host, default_port
    if (port := port_number(port_text)) is None:
        raise ValueError(f"port must be a number from 1 to 65535, not {port_text!r}")
    return host, port


def check_host(host: str) -> None:
    """Refuse (``ValueError``) a host that would be dialled as another address than it reads,
    or that cannot be dialled at all for a reason the system would not name.

    A typo must not dial some other machine (``host_typo``). An IPv6 link-local address
    needs its interface (``connect`` says "Invalid argument" without it), and one that
    exists here (else "Name or service not known").
    """
    if (typo := host_typo(host)) is not None:
        raise ValueError(typo)
    if not _is_ipv6(host):
        return
    address, _, zone = host.partition("%")
    if not zone:
        if ipaddress.IPv6Address(address).is_link_local:
            raise ValueError(
                f"the link-local address {address} needs its network interface, like {address}%eth0"
            )
    elif not _interface_exists(zone):
        raise ValueError(f"there is no network interface {zone!r} on this machine ({host})")


def dialable(host: str) -> bool:
    """Whether ``host`` passes ``check_host`` (an interface a discovered address was heard
    on may have gone since)."""
    try:
        check_host(host)
    except ValueError:
        return False
    return True


def _interface_exists(zone: str) -> bool:
    """Whether ``zone`` names a network interface here, by name or by number."""
    try:
        if re.fullmatch("[0-9]+", zone):
            socket.if_indextoname(int(zone))
        else:
            socket.if_nametoindex(zone)
    except (OSError, ValueError, OverflowError):
        return False
    return True


def port_hint(host: str, port: int) -> str:
    """A hint for an IPv6 address whose last group may be a port meant without brackets
    (``fd77::1:7468`` is dialled as ``[fd77::1:7468]:7467``), else ``""``."""
    if port != limits.DEFAULT_PORT or not _is_ipv6(host) or "%" in host:
        return ""
    address, _, last = host.rpartition(":")
    if port_number(last) is None or not _is_ipv6(address):
        return ""
    return f"to give a port with an IPv6 address, write [{address}]:{last}"


def port_number(text: str) -> int | None:
    """``text`` as a TCP port (ASCII digits, 1 to 65535), or None. (``str.isdigit()`` also
    takes an Arabic-Indic 3, which ``int()`` reads as 3.)"""
    if not re.fullmatch("[0-9]{1,5}", text) or not 0 < int(text) < 65536:
        return None
    return int(text)


def _is_ipv6(text: str) -> bool:
    """Whether ``text`` is an IPv6 address (with a zone, ``fe80::1%eth0``, or without).

    A zone with a ``:`` in it is refused: ``fe80::1%eth0:7000`` is an address and a port
    written without the brackets, not a zone named ``eth0:7000``."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return ":" not in text.partition("%")[2]


# --- display ----------------------------------------------------------------------------


JOINERS = frozenset("\u200c\u200d")
"""Invisible characters shown as they are: ZWNJ and ZWJ only join or pick glyphs (Persian, the
Indic scripts, emoji sequences such as a family), and can neither break a line nor reorder it.
The tag characters (U+E0020-E007F) stay visible as escapes: besides the flags of subdivisions,
they can carry a whole hidden text."""


def safe_text(text: str) -> str:
    """``text`` with anything that could fake a new line or reorder the display made visible."""
    if text.isprintable():
        return text
    return "".join(
        c
        if c.isprintable() or c == " " or c in JOINERS
        else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        if unicodedata.category(c) != "Cc"
        else repr(c)[1:-1]
        for c in text
    )


CONTINUED = "    "
"""What each further line of a message of several lines (a pasted paragraph) starts with, in
a terminal: indented, it cannot pass for a line of its own, which starts with its time."""


def safe_paragraph(text: str, joiner: str = "\n" + CONTINUED) -> str:
    """``safe_text`` of each line of ``text``, joined by ``joiner``: a message of several lines
    as a terminal shows it, each line after the first indented."""
    return joiner.join(safe_text(line) for line in re.split(r"\r?\n", text))


SHORT_FINGERPRINT = 12
"""Base64 characters of a fingerprint shown where space is short (status bar, server list)."""


def short_fingerprint(fp: str) -> str:
    """``SHA256:qd11Mv3IYZlm…``: enough to recognise, short enough for a status bar."""
    prefix, sep, body = fp.partition(":")
    if not sep:
        return fp[:SHORT_FINGERPRINT] + "…"
    return f"{prefix}:{body[:SHORT_FINGERPRINT]}…"


def clock(ts: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def sent_clock(sent: float, now: float | None = None) -> str:
    """When a line was said: ``HH:MM:SS``, with the date if it was not on ``now``'s day (a
    line replayed from yesterday must not pass for one of today)."""
    when = time.localtime(sent)
    if time.localtime(now)[:3] != when[:3]:
        return time.strftime("%Y-%m-%d %H:%M:%S", when)
    return time.strftime("%H:%M:%S", when)


def describe(peer: Peer) -> str:
    """``nick (addr)``, both from the server, made safe to show."""
    return f"{safe_text(peer.nick)} ({safe_text(peer.addr)})"


def format_message(message: ServerMessage, ts: float | None = None) -> str | None:
    """One transcript line, as the terminal prints it: ``[HH:MM:SS] nick (ip): text`` (a
    line of another day than ``ts``, now by default, with its date)."""
    match message:
        case Chat(sender=sender, text=text, ts=sent):
            return f"[{sent_clock(sent, ts)}] {describe(sender)}: {safe_paragraph(text)}"
        case Join(peer=peer):
            return f"[{clock(ts)}] * {describe(peer)} joined"
        case Leave(peer=peer, reason=reason):
            return f"[{clock(ts)}] * {describe(peer)} left ({safe_text(reason)})"
        case Error(code=code, message=text):
            return f"[{clock(ts)}] ! server refused: {safe_text(text)} ({safe_text(code)})"
        case Notice(message=text):
            return f"[{clock(ts)}] ! {safe_text(text)}"
        case Shutdown():
            return f"[{clock(ts)}] ! the server is shutting down"
    return None


def is_quit(text: str) -> bool:
    """Whether a typed line is the command ``quit`` (alone, spaces around it allowed), or
    ``/quit`` as IRC clients have taught many to type it; in any case (a phone keyboard's
    ``Quit``, IRC's ``/QUIT``)."""
    return text.strip().lower() in {"quit", "/quit"}


def is_help(text: str) -> bool:
    """Whether a typed line is the command ``/help`` (alone, in any case)."""
    return text.strip().lower() == "/help"


def is_who(text: str) -> bool:
    """Whether a typed line is the command ``/who`` (alone, in any case)."""
    return text.strip().lower() == "/who"


def require_sendable(text: str, what: str) -> str:
    """``text`` if UTF-8 can carry it; else ``LocalProtocolError`` naming ``what``."""
    if not utf8_encodable(text):
        raise LocalProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"{what} holds a character that is not valid text (a byte that is not UTF-8?)",
        )
    return text


# --- the client -------------------------------------------------------------------------


class ServerShutdown(ConnectionClosed):
    """The server said ``shutdown``: it is stopping, usually to come back soon."""

    def __init__(self) -> None:
        super().__init__("the server shut down")


_LONGEST_REF = "r" * limits.MAX_REF
"""For the frame-size check of ``send``: the ref added to a line is never longer."""


class ChatClient:
    """A connection to one server on its own thread. Thread-safe public methods.

    The protocol itself is a ``ClientSession``; this class only moves its bytes over TLS,
    keeps time for it, reconnects, and turns its events into ``ClientEvent``s for the front end.
    """

    def __init__(
        self,
        target: Target,
        nick: str,
        policy: TrustPolicy,
        *,
        password: str | None = None,
        reconnect: bool = True,
        events: queue.Queue[ClientEvent] | None = None,
        client_id: str | None = None,
        last_seen: LastSeen | None = None,
        shows: bool = False,
        ping_after: float = limits.PING_AFTER,
        pong_timeout: float = limits.PONG_TIMEOUT,
    ) -> None:
        """``shows``: the front end calls ``shown`` for each line it shows, and ``last_seen``
        keeps what it has shown, not only what has arrived (a client killed with lines in
        its queue shows them after the restart). ``ping_after``/``pong_timeout``: how soon
        a silent server is pinged and given up (``limits.PING_AFTER``,
        ``limits.PONG_TIMEOUT``); tests shorten them."""
        self.target = target
        self.nick = require_sendable(nick, "the nick")
        self.policy = policy
        self.password = password if password is None else require_sendable(password, "the password")
        self.reconnect = reconnect
        self.events: queue.Queue[ClientEvent] = events if events is not None else queue.Queue()
        self.session = ClientSession(
            self.nick,
            password=self.password,
            client_id=client_id,
            ping_after=ping_after,
            pong_timeout=pong_timeout,
        )
        """The protocol; touched only on the network thread."""
        self._last_seen = last_seen
        self._unshown: collections.deque[tuple[int, int, str | None]] | None = (
            collections.deque() if shows and last_seen is not None else None
        )
        """The lines given to the front end and not shown yet, oldest first: their number in
        the order given (see ``_given``), their seq, and the log it counts in. A restart
        resumes before the first of them (see ``shown``)."""
        self._given = 0
        """Lines given to the front end so far that it counts with ``shown``."""
        self._shown = 0
        """How many of those the front end has shown (written by its thread only)."""
        self._shown_save = False
        """A save of what is shown is asked of the network thread and has not run yet."""
        self._remember_lock = threading.Lock()
        """``_remember`` runs on the front end's thread too, once the network thread ended."""
        self._fingerprint: str | None = None
        """The certificate of the first connection: the key of what ``last_seen`` keeps."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._stopping = False
        self._finishing = False
        """``finish`` was called: leave as soon as every line is stored."""
        self._held_back = False
        """Ctrl-C came while own lines waited: only the acks of those sent are waited for."""
        self._fresh_pin: tuple[str, int, str] | None = None
        """The pin this connection made (host, port, fingerprint), until the server answers
        as a chatsecure server (see ``_unpin``)."""
        self._not_understood: str | None = None
        """Why a frame before the welcome was ignored (a broken or hostile server)."""
        self._acks = 0
        """Lines the server has confirmed (a count: progress, for ``FINISH_STALL``)."""
        self._leave_timer: asyncio.TimerHandle | None = None
        """``quit`` waits for acks: it leaves when this fires at the latest."""
        self._pace_timer: asyncio.TimerHandle | None = None
        """Sends the next own lines when the pace allows (``_flush_out``)."""
        self._save_timer: asyncio.TimerHandle | None = None
        """A write of the last seq that ``last_seen`` put off (``_remember``)."""
        self._stop_requested: asyncio.Event | None = None
        """Set by ``quit``, so that a reconnect backoff ends at once instead of sleeping on."""
        self._session_task: asyncio.Task[None] | None = None
        """The current attempt; ``quit`` cancels it until the server has welcomed us."""
        self._joined = False
        """Whether the current session was welcomed (``Connected`` went out)."""
        self._welcomed_at: float | None = None
        self._heard_at = 0.0
        """When the server last sent anything (loop time)."""
        self._served = False
        """This session acknowledged an own line or passed on a live one (it worked)."""
        self._dead: str | None = None
        """Why the current connection was given up from our side (a server gone silent)."""
        self._attempt = 0
        """Reconnect attempts since the last session that lasted ``STABLE_SESSION``."""
        self._index = 0
        """Which of ``target.addresses`` is tried first: the last one that answered."""
        self._warnings: dict[str, WarningBudget] = {}
        self._held: collections.deque[int] = collections.deque()
        """``held_bytes`` of the events put in ``events``, oldest first, down to the oldest
        that may still be there: the front end takes them in order, so ``events.qsize()``
        says how many of these are gone (see ``queued_bytes``)."""
        self._held_total = 0
        self._held_lock = threading.Lock()
        self._started = threading.Event()
        self._call_lock = threading.Lock()
        self._ended = False
        """Set once the network thread takes no more calls; guarded by ``_call_lock``."""
        self._thread = threading.Thread(
            target=self._thread_main, name="chatsecure-net", daemon=True
        )

    # -- called from the front end's thread ----------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def send(self, text: str) -> None:
        """Send a chat line; the line ``quit`` (or ``/quit``) alone quits instead.

        The line is ``Queued`` at once, and ``Sent`` once the server stored it; a dropped
        connection keeps it and sends it again after the reconnect. Raises
        ``LocalProtocolError`` for a text UTF-8 cannot carry, or too long for one frame:
        sent, it would cost the connection (``frame_too_long``), so the front end says so
        instead. A line that finds the client ended comes back as ``NotSent``.
        """
        if is_quit(text):
            self.quit()
        elif shows(text):  # (a line that shows nothing is one the server refuses)
            frame = encode(SendMsg(require_sendable(text, "message not sent: it"), _LONGEST_REF))
            if len(frame) > limits.MAX_FRAME:
                raise LocalProtocolError(
                    ErrorCode.TEXT_TOO_LONG,
                    f"message not sent: it is too long ({len(text)} characters; "
                    f"the limit is {limits.MAX_TEXT})",
                )
            if not self._call(self._send_chat, text):
                self._emit(NotSent(text))  # the network thread has ended

    def request_history(self, before: int | None, limit: int = limits.HISTORY_PAGE_MAX) -> None:
        """Ask for older lines (they come as ``Received(..., older=True)``)."""
        self._call(self._request_history, before, limit)

    def finish(self) -> None:
        """Leave once every line given to ``send`` is stored (the end of a script's input)."""
        self._call(self._finish)

    def quit(self, *, at_once: bool = False) -> None:
        """Say ``quit`` to the server and stop, once the lines it was sent are acknowledged
        (``ACK_WAIT`` seconds at most; lines waiting for a reconnect are not waited for). Lines
        held back by the pace go out first, unless ``at_once`` (Ctrl-C): then none goes out
        any more, and those are ``NotSent``. Either way the client has ended within
        ``LEAVE_WAIT_MAX`` seconds."""
        self._call(self._leave, at_once)

    def shown(self, count: int = 1) -> None:
        """The front end has shown ``count`` more of the events it got for which
        ``shown_seq`` is not 0 (a line, an own line stored), in the order it got them; call
        it once they are on screen (with ``shows``)."""
        self._shown += count
        if self._shown_save:
            return
        self._shown_save = True
        if not self._call(self._save_shown):  # the network thread is over: save it here
            self._shown_save = False
            self._remember(force=True)

    def close(self, timeout: float = 5.0) -> None:
        """Quit at once and wait for the network thread to end."""
        if self._thread.is_alive():
            self.quit(at_once=True)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued_bytes(self) -> int:
        """About the bytes of memory the events waiting in ``events`` hold (``held_bytes``)."""
        with self._held_lock:
            # Only this client puts into ``events``, and the front end takes from its head.
            while len(self._held) > self.events.qsize():
                self._held_total -= self._held.popleft()
            return self._held_total

    @property
    def me(self) -> Peer | None:
        return self.session.me

    def _call(self, func: object, *args: object) -> bool:
        """Run ``func(*args)`` on the network thread; whether it will run."""
        with self._call_lock:
            if self._loop is None or self._ended:
                return False
            self._loop.call_soon_threadsafe(func, *args)  # type: ignore[arg-type]
            return True

    # -- the network thread --------------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._started.set()
        # Whatever happens, the front end gets a last event: it must never wait for nothing.
        final = Disconnected("the connection ended unexpectedly", error=True)
        try:
            try:
                final = loop.run_until_complete(self._run())
            except Exception as exc:
                log.exception("the client's network thread failed")
                final = Disconnected(describe_error(exc), error=True)
            with self._call_lock:
                self._ended = True  # from here on send() reports NotSent itself
            # Run what was handed over before that (a send's NotSent), so it comes first.
            loop.stop()
            loop.run_forever()
        finally:
            with self._call_lock:
                self._ended = True
            loop.close()
            self._remember(force=True)
            for text, sent in self.session.unacknowledged:  # never lost in silence
                self._emit(NotSent(text, why=UNCONFIRMED if sent else NEVER_STORED))
            self._emit(final)

    def _emit(self, event: ClientEvent) -> None:
        if self._unshown is not None and (seq := shown_seq(event)):
            self._unshown.append((self._given, seq, self.session.log_id))
            self._given += 1
        held = held_bytes(event)
        with self._held_lock:  # (put inside: qsize never counts an event not in _held yet)
            self._held.append(held)
            self._held_total += held
            self.events.put(event)

    async def _run(self) -> Disconnected:
        """Connect, chat and reconnect until done; return the final event for the front end."""
        left = Disconnected("you left the chat", error=False)
        self._stop_requested = asyncio.Event()
        while True:
            if self._stopping:  # quit came before the first attempt began
                return left
            self._session_task = asyncio.create_task(self._connection())
            try:
                await self._session_task
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                # Quit before the welcome: the session went without a word to the server.
                return left
            except TrustError as exc:
                return Disconnected(str(exc), error=True)
            except ServerRefused as exc:
                if self._stopping:  # (replaced while leaving: it left all the same)
                    return left
                if exc.code in FINAL_REFUSALS or not self.reconnect or self.session.me is None:
                    return Disconnected(str(exc), error=True, code=exc.code)
                reason = str(exc)
            except ServerShutdown as exc:
                if not self.reconnect:
                    return Disconnected(str(exc), error=False)
                reason = "the server shut down"  # (to restart, most often: we try again)
            except (ChatError, OSError, ssl.SSLError, EOFError) as exc:
                reason = describe_error(exc)
                typed = self.target.advertised is None  # (nobody typed a discovered address)
                if (
                    self.session.me is None
                    and typed
                    and (hint := port_hint(*self.target.addresses[0]))
                ):
                    reason = f"{reason} ({hint})"
            else:  # quit while connecting, or after the welcome
                return left
            if self._stopping:
                return left
            welcomed, served = self._welcomed_at, self._served
            if welcomed is not None and (served or self._heard_at - welcomed >= STABLE_SESSION):
                self._attempt = 0  # that session worked: a new drop starts the count afresh
            self._welcomed_at, self._served = None, False
            if not (self.reconnect and self.session.me is not None):
                return Disconnected(reason, error=True)
            if self._attempt >= MAX_RETRIES:
                return Disconnected(f"{reason} (gave up after {MAX_RETRIES} tries)", error=True)
            delay = RETRY_DELAYS[min(self._attempt, len(RETRY_DELAYS) - 1)]
            self._attempt += 1
            self._emit(Reconnecting(self._attempt, delay, reason))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
            if self._stopping:
                return left

    @property
    def _address_key(self) -> str:
        """Where ``last_seen`` also keeps the last seq: by the address first given, for a
        server whose certificate changes (its log, named in ``hello``, says if it is the
        same room)."""
        return "address " + server_key(self.target.host, self.target.port)

    @property
    def address(self) -> tuple[str, int]:
        """The address of the server this client talks to (or tries first next time)."""
        return self.target.addresses[self._index]

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Connect to the current address or, when it cannot be reached, the next ones.

        The servers of a cluster are one room with one log: whichever answers, the session
        resumes where it stopped. The one that answered is the first tried next time.
        """
        addresses = self.target.addresses
        failed: list[str] = []
        for step in range(len(addresses)):
            index = (self._index + step) % len(addresses)
            try:
                opened = await self._open_at(*addresses[index])
            except OSError as exc:  # refused, unreachable, timed out, a broken handshake
                failed.append(f"{host_port(*addresses[index])} ({describe_error(exc)})")
                if step == len(addresses) - 1:
                    if len(addresses) == 1:
                        raise
                    raise Unreachable(
                        "none of the server's addresses answered: " + "; ".join(failed)
                    ) from exc
                log.info(
                    "cannot reach %s (%s); trying %s",
                    host_port(*addresses[index]),
                    describe_error(exc),
                    host_port(*addresses[(index + 1) % len(addresses)]),
                )
                continue
            self._index = index
            return opened
        raise AssertionError("unreachable")  # pragma: no cover - a target has an address

    async def _open_at(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        target = self.target
        ctx = client_context(target.cafile, cert=target.cert, key=target.key)
        loop = asyncio.get_running_loop()
        # asyncio.open_connection, but keeping hold of the protocol: see _Protocol.
        reader = asyncio.StreamReader(loop=loop)
        protocol = _Protocol(reader, loop=loop)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol,
                    host,
                    port,
                    ssl=ctx,
                    server_hostname=host if target.cafile else None,
                ),
                limits.CONNECT_TIMEOUT,
            )
        except BaseException:
            if protocol.transport is not None:
                protocol.transport.abort()
            raise
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        ssl_object = writer.get_extra_info("ssl_object")
        presented = fingerprint(ssl_object.getpeercert(binary_form=True))
        return reader, writer, presented

    async def _verified(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Connect and check the certificate before a single byte of chat is sent."""
        reader, writer, presented = await self._open()
        host, port = self.address
        new = self.target.cafile is None and self.policy.store.get(host, port) is None
        try:
            question = self._judge(presented)
        except TrustError:
            await _close_writer(writer)
            raise
        if new:  # pinned now: kept once the server answers as a chatsecure server does
            self._fresh_pin = (host, port, presented)
        if question is None:
            return reader, writer, presented
        # The user may take a while to decide; do not hold the server's hello timer meanwhile.
        await _close_writer(writer)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.policy.resolve, question)
        reader, writer, again = await self._open()
        if again != presented:
            await _close_writer(writer)
            raise TrustError("the server's certificate changed while you were deciding")
        return reader, writer, presented

    def _judge(self, presented: str) -> TrustQuestion | None:
        """Trust ``presented`` (None), refuse it (``TrustError``) or ask the user (a question)."""
        target = self.target
        host, port = self.address
        if target.cafile is None:
            siblings = [a for a in target.addresses if a != (host, port)]
            return self.policy.check(host, port, presented, target.advertised, siblings)
        # The CA vouched for the chain and the name already; a server picked from the
        # network must still be the one that advertised itself.
        if target.advertised is not None and presented != target.advertised:
            raise TrustError(
                f"{server_key(host, port)} presented {presented}, but the server "
                f"found on the network advertised {target.advertised}; refusing (someone may "
                "be impersonating it)"
            )
        return None

    async def _connection(self) -> None:
        """One connection: hello, welcome, then chat until it ends."""
        reader, writer, presented = await self._verified()
        self._writer = writer
        session = self.session
        loop = asyncio.get_running_loop()
        self._dead = None
        try:
            # quit cancels this task, and a cancel that comes as a step completes may be
            # lost (asyncio.wait_for in 3.11 swallows one): so look again before each step.
            if self._stopping:
                return
            if self._fingerprint is None:
                self._fingerprint = presented
                if self._last_seen is not None and session.last_seq is None:
                    session.last_seq, session.log_id = self._last_seen.get(presented)
                    if session.last_seq is None:  # a new certificate (renewed, say)
                        seq, log_id = self._last_seen.get(self._address_key)
                        if log_id is not None:  # (the server says whether it is its log)
                            session.last_seq, session.log_id = seq, log_id
            session.connect(loop.time())
            self._flush_out()
            self._not_understood = None
            try:
                # (In this task, not in one of wait_for's: nothing else runs between the read
                # that brings the welcome and the handling of what came with it, such as a save
                # of the last seq, which has counted the replay in it already.)
                waiting = limits.WELCOME_TIMEOUT + (limits.AUTH_DELAY_MAX if self.password else 0)
                async with asyncio.timeout(waiting):
                    welcomed, rest = await self._welcome(reader)
            except TimeoutError:
                self._unpin()
                # It did answer, with TLS at least: "the server did not answer" would send the
                # user looking for a firewall.
                if self._not_understood is None:
                    raise ConnectionClosed(
                        f"the server took the TLS connection but sent no welcome in "
                        f"{waiting:g} s: is it a chatsecure server?"
                    ) from None
                raise ConnectionClosed(
                    f"the server's answer was not understood ({self._not_understood})"
                ) from None
            except asyncio.CancelledError:
                session.quit()  # hello is out: leave properly, not by a cut
                self._flush_out()
                raise
            except (ssl.SSLError, RemoteProtocolError, EOFError):  # (no chatsecure frame yet)
                self._unpin()
                raise
            if self._stopping:
                session.quit()
                self._flush_out()
                return
            self._joined = True
            self._welcomed_at = loop.time()
            version = writer.get_extra_info("ssl_object").version() or "TLS"
            host, port = self.address
            self._emit(
                Connected(
                    welcomed.welcome,
                    host,
                    port,
                    version,
                    presented,
                    welcomed.resumed,
                    welcomed.missed,
                    welcomed.resent,
                )
            )
            self._handle(rest)
            await self._read_loop(reader)
        finally:
            self._writer = None
            self._joined = False
            self._stop_pacing()
            session.connection_lost()
            self._remember(force=True)
            await _close_writer(writer)

    async def _welcome(self, reader: asyncio.StreamReader) -> tuple[Welcomed, list[SessionEvent]]:
        """The welcome, and the events that came in the same read after it."""
        while True:
            try:
                events = await self._read_events(reader)
            except (ConnectionClosed, ConnectionResetError) as exc:
                self._unpin()
                if self._dead:
                    raise
                # A server that admits clients by certificate (--client-ca) ends the
                # connection right after the handshake (TLS 1.3), without a word.
                hint = NO_CLIENT_CERT if self.target.cert is None else _cert_hint(self.target.cert)
                raise ConnectionClosed(f"{describe_error(exc)} {hint}") from None
            for n, event in enumerate(events):
                if isinstance(event, Welcomed | Refused | Ended):
                    self._fresh_pin = None  # a chatsecure server: its pin stays
                if isinstance(event, Welcomed):
                    return event, events[n + 1 :]
                if isinstance(event, Refused):
                    raise ServerRefused(event.code, event.message)
                if isinstance(event, Ended):
                    raise ConnectionClosed("the server is shutting down")
                if isinstance(event, Ignored):
                    self._not_understood = safe_text(event.reason)
                    self._warn(event)

    def _unpin(self) -> None:
        """The server ended (or let time run out) before a frame of chatsecure: the pin made
        for it on this connection goes again. Else anything that speaks TLS on a port
        (another program, a port mistyped) would stay pinned, and the chatsecure server
        started there later be refused as a changed certificate."""
        if self._fresh_pin is None:
            return
        host, port, presented = self._fresh_pin
        self._fresh_pin = None
        try:
            if self.policy.store.remove(host, port, only=presented):
                log.info(
                    "%s did not answer as a chatsecure server: its certificate is not remembered",
                    host_port(host, port),
                )
        except OSError as exc:
            log.warning("cannot write %s: %s", self.policy.store.path, exc)

    async def _read_events(self, reader: asyncio.StreamReader) -> list[SessionEvent]:
        data = await reader.read(65536)
        if not data:
            raise ConnectionClosed(self._dead or "the server closed the connection")
        self._heard_at = now = asyncio.get_running_loop().time()
        if log.isEnabledFor(logging.DEBUG):
            _log_frames("<-", data)
        events = self.session.receive_data(data, now)
        self._flush_out()  # pongs, and the outbox after a welcome
        return events

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        ticker = asyncio.create_task(self._ticker())
        try:
            if self._finishing:
                self._finish()
            while True:
                # Backpressure: while the front end is behind, read nothing more; the
                # server's writes then wait in TCP buffers, not in our memory.
                while (
                    self.events.qsize() >= EVENT_QUEUE_HIGH
                    or self.queued_bytes >= EVENT_QUEUE_BYTES
                ):
                    await asyncio.sleep(0.02)
                    self.session.not_reading(asyncio.get_running_loop().time())
                # Nor while the server does not read what we answer (a pong per ping): our
                # answers wait in its buffers, not ours.
                if self._writer is not None:
                    with contextlib.suppress(ConnectionError):
                        await self._writer.drain()
                self._handle(await self._read_events(reader))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _ticker(self) -> None:
        """Ping a quiet server; give the connection up when it stopped answering."""
        loop = asyncio.get_running_loop()
        # Shortened timings (tests) need finer ticks to be kept to.
        every = min(TICK, self.session.ping_after / 4, self.session.pong_timeout / 4)
        confirmed_at, acks = loop.time(), self._acks
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            if not self.session.tick(now):
                self._dead = "the server stopped answering"
                self._abort()
                return
            self._flush_out()
            waiting = self._finishing and any(sent for _, sent in self.session.unacknowledged)
            if not waiting or self._acks != acks:
                confirmed_at, acks = now, self._acks
            elif now - confirmed_at >= FINISH_STALL:
                log.warning(
                    "the server has confirmed none of the lines it was sent for %.0f s: leaving",
                    FINISH_STALL,
                )
                self._quit()
                return

    def _handle(self, events: list[SessionEvent]) -> None:
        for event in events:
            match event:
                case Line(chat=chat, replayed=replayed, older=older):
                    self._served = self._served or not (replayed or older)
                    self._emit(Received(chat, replayed, older))
                case Acked(ref=ref, text=text, seq=seq, ts=ts):
                    self._served = True
                    self._acks += 1
                    self._emit(Sent(ref, text, seq, ts or time.time()))
                case Presence(message=message):
                    self._emit(Received(message))
                case Noticed(notice=notice):
                    self._emit(Received(notice))
                case ServerError(error=error, dropped=str(text)):
                    refused = f"not stored: the server refused it ({error.message}; {error.code})"
                    self._emit(NotSent(text, error.ref, safe_text(refused)))
                case ServerError(error=error):
                    self._emit(Received(error))
                case HistoryDone(end=end):
                    self._emit(Received(end, older=True))
                case Ignored():
                    self._warn(event)
                case Ended():
                    self._emit(Received(Shutdown()))
                    raise ServerShutdown
                case Refused(code=code, message=message):  # (replaced by a new connection)
                    raise ServerRefused(code, message)
        self._remember()
        if self._finishing and (
            not self.session.outbox or (self._held_back and self.session.settled)
        ):
            self._quit()

    def _warn(self, event: Ignored) -> None:
        """One warning per kind of bad frame a minute, however many a server sends."""
        budget = self._warnings.setdefault(event.kind, WarningBudget(count=1, period=60.0))
        allowed, dropped = budget.allow(time.monotonic())
        if allowed:
            more = f" ({dropped} more like it in the last minute)" if dropped else ""
            log.warning("ignoring a frame from the server: %s%s", safe_text(event.reason), more)

    def _save_shown(self) -> None:
        self._shown_save = False
        self._remember()

    def _remember(self, *, force: bool = False) -> None:
        with self._remember_lock:
            saved = self._save(force)
        if not saved and self._save_timer is None and self._loop is not None and not self._ended:
            # Put off while lines keep coming: written once they pause, so that a client that
            # is then killed (or its machine loses power) does not show those lines again.
            self._save_timer = self._loop.call_later(SAVE_EVERY, self._remember_later)

    def _save(self, force: bool) -> bool:
        """Write the last seq seen (and shown); False when ``last_seen`` put it off."""
        seq = self.session.last_seq
        if self._last_seen is None or self._fingerprint is None or seq is None:
            return True
        unshown = self._unshown
        if unshown is not None:
            while unshown and unshown[0][0] < self._shown:
                unshown.popleft()
            # The lines before the first not shown yet are; of a log the server has lost
            # meanwhile, none can be shown after a restart anyway.
            log_id = self.session.log_id
            first = next((seq for _, seq, log in unshown if log == log_id), None)
            if first is not None:
                seq = min(seq, first - 1)
        return self._last_seen.put(
            self._fingerprint, seq, self.session.log_id, force=force, also=self._address_key
        )

    def _remember_later(self) -> None:
        self._save_timer = None
        self._remember()

    def _flush_out(self) -> None:
        """Write what the session has to send, if there is a connection; come back when the
        pace lets the next own line go."""
        data = self.session.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            if log.isEnabledFor(logging.DEBUG):
                _log_frames("->", data)
            self._writer.write(data)
        if self._pace_timer is None and self._loop is not None:
            delay = self.session.send_delay(self._loop.time())
            if delay is not None:
                self._pace_timer = self._loop.call_later(delay, self._paced)

    def _paced(self) -> None:
        self._pace_timer = None
        assert self._loop is not None  # noqa: S101 - a timer of the loop
        self.session.pace(self._loop.time())
        self._flush_out()

    def _stop_pacing(self) -> None:
        """The connection is over (or we quit): its pace no longer says anything."""
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()

    def _send_chat(self, text: str) -> None:
        assert self._loop is not None  # noqa: S101 - called on the loop
        ref = self.session.send(text, self._loop.time())
        self._emit(Queued(ref, text))
        self._flush_out()
        if ref not in self.session.outbox:  # a v1 server: it acknowledges nothing
            self._emit(Sent(ref, text, 0, time.time()))

    def _request_history(self, before: int | None, limit: int) -> None:
        assert self._loop is not None  # noqa: S101 - called on the loop
        self.session.request_history(before, limit, self._loop.time())
        self._flush_out()

    def _finish(self) -> None:
        self._finishing = True
        if not self.session.outbox and self.session.state is not ClientState.HELLO:
            self._quit()

    def _leave(self, at_once: bool = False) -> None:
        if self._joined and self.session.outbox and not self._stopping:
            # Like finish, but bounded: a server that does not answer must not keep us.
            self._finishing = True
            if at_once:  # interrupted: what was not sent stays unsent
                self._held_back = True
                self.session.hold_back()
                self._stop_pacing()
                if self.session.settled:
                    self._quit()
                    return
            assert self._loop is not None  # noqa: S101
            # Lines still paced go out first: the wait for acks starts after them.
            paced = 0.0 if at_once else self.session.sending_time(self._loop.time())
            wait = ACK_WAIT + min(paced, PACED_WAIT_MAX)
            if self._leave_timer is not None:  # asked again (Ctrl-C after quit): the sooner
                if self._leave_timer.when() <= self._loop.time() + wait:
                    return
                self._leave_timer.cancel()
            self._leave_timer = self._loop.call_later(wait, self._quit, True)
            return
        self._quit()

    def _quit(self, unanswered: bool = False) -> None:
        """Say ``quit`` and end; ``unanswered``: after waiting in vain for acks, when the
        server is unlikely to close its side either (it is stopped, or gone)."""
        if self._stopping:
            return  # once is enough; a second cancel would cut the session's own closing short
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()
        if not self._joined:
            # Still connecting (or asking the user about trust): stop there, without a hello,
            # so the room never sees us come and go and no password is sent.
            if self._session_task is not None:
                self._session_task.cancel()
            return
        self._stop_pacing()
        self.session.quit()
        self._flush_out()  # the server answers by closing the connection
        # A server that never closes its side must not keep us: give it QUIT_WAIT seconds
        # (the time for the quit to go out, if it did not answer in ACK_WAIT).
        assert self._loop is not None  # noqa: S101
        self._loop.call_later(QUIT_FLUSH if unanswered else QUIT_WAIT, self._abort)


def _log_frames(way: str, data: bytes) -> None:
    """``-v``: the frames of ``data`` (as read: a frame may be cut between two reads)."""
    for line in data.splitlines():
        line = _PASSWORD.sub(rb'"password":"***"', line)  # (a hello's room password)
        shown = safe_text(line[:LOGGED_FRAME].decode(errors="replace"))
        more = f" ... ({len(line)} bytes)" if len(line) > LOGGED_FRAME else ""
        log.debug("%s %s%s", way, shown, more)


class _Protocol(asyncio.StreamReaderProtocol):
    """A stream protocol that shows its transport.

    Cancelled just after the TLS handshake, ``create_connection`` starts a graceful close of
    the connection it made and forgets it; the client's loop ends before that close does, and
    the socket would be left open. With the transport at hand, ``_open`` aborts it at once.
    """

    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            self.transport = transport
        super().connection_made(transport)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (OSError, ssl.SSLError):
        pass  # the connection broke on its own: closed all the same
    except TimeoutError:
        writer.transport.abort()  # no answer to our close_notify: do not leave it open
