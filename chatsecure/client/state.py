"""What the desktop client does, without a screen.

Everything the Tk front end shows or decides that can be tested headless lives here: the
connect form's validation, the connect/chat state machine, the transcript line model, the
room's user list, the text of the trust dialogs, the bridge that lets the network thread ask
the Tk thread a trust question, the remembered nickname, and the ``Controller`` that owns the
``ChatClient``. The Tk module only lays out widgets and wires them to these. No tkinter here.
"""

from __future__ import annotations

import contextlib
import enum
import getpass
import ipaddress
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from chatsecure.client.core import (
    MAX_RETRIES,
    ChatClient,
    ClientEvent,
    Connected,
    Disconnected,
    NotSent,
    Received,
    Reconnecting,
    Target,
    clock,
    describe,
    is_quit,
    parse_target,
    require_sendable,
    safe_text,
)
from chatsecure.discovery.records import (
    DiscoveredServer,
    DiscoveryEvent,
    ServerAdded,
    ServerRemoved,
    ServerUpdated,
    preferred_address,
)
from chatsecure.errors import LocalProtocolError, ProtocolError
from chatsecure.protocol import limits
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import Chat, Error, Join, Leave, Peer, Shutdown, clean_nick
from chatsecure.tls.trust import KnownServers, TrustPolicy, TrustQuestion, config_home, server_key

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

NICK_FILE = "nick"
"""The file in the config folder that remembers the last nickname used in the desktop client."""
TRUST_ANSWER_TIMEOUT = 600.0
"""Seconds the network thread waits for the user to answer a trust dialog before giving up."""
EVENTS_PER_TICK = 500
"""Client events handled per poll of the Tk thread, so that a flood never freezes the window."""
MAX_TRANSCRIPT_LINES = 5000
"""Lines the transcript keeps; older ones are dropped from the top."""
SHORT_FINGERPRINT = 12
"""Base64 characters of a fingerprint shown where space is short (status bar, server list)."""
MAX_PASSWORD = 1024
"""Longest room password the connect form sends: longer than anyone types, and a frame holds it."""


# --- configuration and memory -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuiOptions:
    """What ``chatsecure gui`` was started with."""

    target: str | None = None
    """``HOST[:PORT]`` to fill in and connect to at once."""
    nick: str | None = None
    discovery: bool = True
    cafile: Path | None = None
    fingerprint: str | None = None
    accept_new: bool = False
    cert: Path | None = None
    """Our client certificate, for servers that admit clients by certificate."""
    key: Path | None = None
    password: str | None = field(default=None, repr=False)
    """Prefills the Password field (``--password-file``), for servers that ask for one."""
    reconnect: bool = True


def remembered_nick(home: Path | None = None) -> str:
    """The nickname used last time, else the login name (may be empty)."""
    path = (home or config_home()) / NICK_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        nick = path.read_text(encoding="utf-8").strip()
        if nick:
            return nick
    try:
        return getpass.getuser()[: limits.MAX_NICK]
    except (OSError, KeyError):
        return ""


def remember_nick(nick: str, home: Path | None = None) -> None:
    """Remember ``nick`` for the next start; failing to write is not worth an error."""
    path = (home or config_home()) / NICK_FILE
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(nick + "\n", encoding="utf-8")


def short_fingerprint(fp: str) -> str:
    """``SHA256:qd11Mv3IYZlm…``: enough to recognise, short enough for a status bar."""
    prefix, sep, body = fp.partition(":")
    if not sep:
        return fp[:SHORT_FINGERPRINT] + "…"
    return f"{prefix}:{body[:SHORT_FINGERPRINT]}…"


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the connect form -------------------------------------------------------------------

FormField = Literal["host", "port", "nick", "password"]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A validated connect form."""

    host: str
    port: int
    nick: str
    advertised: str | None = None
    """The fingerprint discovery advertised, when the server was picked from the list."""
    password: str | None = field(default=None, repr=False)
    """The room password sent in ``hello``; never written to disk."""

    def target(self, options: GuiOptions) -> Target:
        return Target(
            self.host,
            self.port,
            cafile=options.cafile,
            advertised=self.advertised,
            cert=options.cert,
            key=options.key,
        )


@dataclass(frozen=True, slots=True)
class FormResult:
    """Either a request or, per field, what is wrong with it."""

    request: ConnectRequest | None
    errors: dict[FormField, str] = field(default_factory=dict)


_HOST_PUNCTUATION = frozenset(".-_:%[]")


def validate_form(
    host: str, port: str, nick: str, advertised: str | None = None, password: str = ""
) -> FormResult:
    """Check the connect form; the host may carry its own port (``10.0.0.5:7000``).

    The password is optional and taken as typed (spaces count); empty means none.
    """
    errors: dict[FormField, str] = {}
    host_text = host.strip()
    parsed_host, parsed_port = "", 0
    if not host_text:
        errors["host"] = "Enter the server's IP address or host name."
    elif not all(c.isalnum() or c in _HOST_PUNCTUATION for c in host_text):
        errors["host"] = "Not an IP address or host name."
    else:
        try:
            parsed_host, parsed_port = parse_target(host_text, default_port=0)
        except ValueError as exc:
            errors["host"] = str(exc).capitalize() + "."
    if parsed_port == 0:
        port_text = port.strip()
        if not port_text:
            errors["port"] = f"Enter a port (the default is {limits.DEFAULT_PORT})."
        elif not port_text.isdigit() or not 0 < int(port_text) < 65536:
            errors["port"] = "A number from 1 to 65535."
        else:
            parsed_port = int(port_text)
    try:
        clean = require_sendable(clean_nick(nick), "the nick")
    except ProtocolError:
        errors["nick"] = f"1 to {limits.MAX_NICK} visible characters."
        clean = ""
    if len(password) > MAX_PASSWORD:
        errors["password"] = f"At most {MAX_PASSWORD} characters."
    else:
        try:
            require_sendable(password, "the password")
        except ProtocolError:
            errors["password"] = "Only characters that can be typed."  # noqa: S105 - a message
    if errors:
        return FormResult(None, errors)
    request = ConnectRequest(parsed_host, parsed_port, clean, advertised, password or None)
    return FormResult(request)


# --- the transcript ---------------------------------------------------------------------

LineKind = Literal["chat", "own", "join", "leave", "error", "info"]

LEAVE_REASONS = {  # every reason a server sends (protocol.codes.LEAVE_REASONS); others shown raw
    "quit": "left",
    "closed": "left (connection closed)",
    "timeout": "left (timed out)",
    "error": "left (connection broken)",
    "slow_consumer": "was dropped (too far behind reading)",
    "flooding": "was dropped for flooding",
    "frame_too_long": "was dropped (sent an over-long frame)",
}


@dataclass(frozen=True, slots=True)
class Line:
    """One transcript line. ``segments`` says how to style each part."""

    kind: LineKind
    stamp: str
    text: str
    nick: str | None = None
    addr: str | None = None

    def segments(self) -> tuple[tuple[str, str], ...]:
        """(text, style) pairs; styles are ``time``, ``nick``, ``addr`` and ``body``."""
        parts: list[tuple[str, str]] = [(f"[{self.stamp}] ", "time")]
        if self.nick is None:
            parts.append((self.text, "body"))
            return tuple(parts)
        who = [(safe_text(self.nick), "nick"), (f" ({safe_text(self.addr or '')})", "addr")]
        if self.kind in {"chat", "own"}:
            parts += [*who, (": ", "body"), (safe_text(self.text), "body")]
        else:
            arrow = "→ " if self.kind == "join" else "← "
            parts += [(arrow, "body"), *who, (f" {self.text}", "body")]
        return tuple(parts)

    def __str__(self) -> str:
        return "".join(text for text, _ in self.segments())


def chat_line(peer: Peer, text: str, ts: float | None = None, *, own: bool = False) -> Line:
    return Line("own" if own else "chat", clock(ts), text, peer.nick, peer.addr)


def notice(kind: Literal["info", "error"], text: str, ts: float | None = None) -> Line:
    return Line(kind, clock(ts), text)


# --- who is here ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RosterRow:
    peer_id: str
    text: str
    me: bool


class Roster:
    """The people in the room, as the welcome, joins and leaves say."""

    def __init__(self) -> None:
        self.me: Peer | None = None
        self._peers: dict[str, Peer] = {}

    def reset(self, me: Peer | None, peers: Iterable[Peer] = ()) -> None:
        self.me = me
        self._peers = {p.id: p for p in peers}
        if me is not None:
            self._peers[me.id] = me

    def join(self, peer: Peer) -> None:
        self._peers[peer.id] = peer

    def leave(self, peer: Peer) -> None:
        self._peers.pop(peer.id, None)

    def __len__(self) -> int:
        return len(self._peers)

    def rows(self) -> list[RosterRow]:
        """You first, then everyone else by nick."""
        me_id = self.me.id if self.me is not None else None

        def order(p: Peer) -> tuple[bool, str, str]:
            return (p.id != me_id, p.nick.casefold(), p.id)

        return [
            RosterRow(
                p.id,
                describe(p) + ("  — you" if p.id == me_id else ""),
                p.id == me_id,
            )
            for p in sorted(self._peers.values(), key=order)
        ]


# --- the state machine ------------------------------------------------------------------


class Phase(enum.Enum):
    """Which view is shown and what it allows.

    ``CONNECT`` and ``CONNECTING`` show the connect view; ``CHAT``, ``RECONNECTING`` and
    ``ENDED`` (the connection is gone, the transcript stays readable) show the chat view.
    """

    CONNECT = "connect"
    CONNECTING = "connecting"
    CHAT = "chat"
    RECONNECTING = "reconnecting"
    ENDED = "ended"

    @property
    def view(self) -> Literal["connect", "chat"]:
        return "connect" if self in {Phase.CONNECT, Phase.CONNECTING} else "chat"


@dataclass(frozen=True, slots=True)
class Notice:
    """A message on the connect view: why the last attempt failed, or what is happening."""

    kind: Literal["info", "error"]
    text: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What to do with the text typed in the message box."""

    send: str | None = None
    quit: bool = False
    line: Line | None = None
    clear: bool = False
    """Whether the message box should be emptied."""


class ChatModel:
    """The desktop client's state: fed client events, it says what to show."""

    def __init__(self) -> None:
        self.phase = Phase.CONNECT
        self.roster = Roster()
        self.request: ConnectRequest | None = None
        self.connection: Connected | None = None
        self.notice: Notice | None = None
        self.form_errors: dict[FormField, str] = {}
        """What is wrong with each field of the connect form: from checking it, or the server."""
        self.banner: str | None = None
        """The chat view's warning while reconnecting or after the connection ended."""
        self.declined: TrustQuestion | None = None

    # -- what the user did ---------------------------------------------------------------

    def invalid(self, errors: dict[FormField, str]) -> None:
        """The connect form did not pass its check: show why, next to each field."""
        self.form_errors = dict(errors)

    def connecting(self, request: ConnectRequest) -> None:
        self.form_errors = {}
        self.phase = Phase.CONNECTING
        self.request = request
        self.connection = None
        self.declined = None
        self.banner = None
        self.roster.reset(None)
        where = host_port(request.host, request.port)
        self.notice = Notice("info", f"Connecting to {where}…")

    def cancelled(self) -> None:
        """The user gave up waiting for the connection."""
        self.phase = Phase.CONNECT
        self.notice = Notice("info", "Connection cancelled.")

    def left(self) -> None:
        """The user quit (or went back after the connection ended)."""
        if self.phase in {Phase.CHAT, Phase.RECONNECTING} and self.connection is not None:
            self.notice = Notice("info", f"You left '{self.server_name}'.")
        self.phase = Phase.CONNECT
        self.banner = None
        self.roster.reset(None)

    def outgoing(self, text: str, ts: float | None = None) -> Outgoing:
        """Decide what typing ``text`` and pressing Enter does."""
        if is_quit(text):
            return Outgoing(quit=True, clear=True)
        if not text.strip():
            return Outgoing(clear=True)
        if self.phase is not Phase.CHAT or self.roster.me is None:
            return Outgoing(line=notice("error", "Not connected: the message was not sent.", ts))
        # How long a text may be is the server's to say (text_too_long); the core refuses
        # what cannot be sent at all (Controller.submit).
        return Outgoing(send=text, line=chat_line(self.roster.me, text, ts, own=True), clear=True)

    # -- what the network said -----------------------------------------------------------

    def apply(self, event: ClientEvent, ts: float | None = None) -> list[Line]:
        """Take one client event; return the transcript lines it adds."""
        match event:
            case Connected():
                return self._connected(event, ts)
            case Received(message=message):
                return self._received(message, ts)
            case Reconnecting(attempt=attempt, delay=delay, reason=reason):
                self.phase = Phase.RECONNECTING
                self.banner = (
                    f"Connection lost ({reason}). Reconnecting in {delay:.0f} s "
                    f"(attempt {attempt} of {MAX_RETRIES})…"
                )
                return [notice("error", self.banner, ts)]
            case Disconnected(reason=reason, error=error, code=code):
                return self._disconnected(reason, error, code, ts)
            case NotSent(text=text):
                return [
                    notice("error", f"Not sent, the connection was lost: {safe_text(text)}", ts)
                ]
        return []

    def _connected(self, event: Connected, ts: float | None) -> list[Line]:
        again = self.phase is Phase.RECONNECTING
        self.phase = Phase.CHAT
        self.connection = event
        self.banner = None
        self.notice = None
        welcome = event.welcome
        self.roster.reset(welcome.you, welcome.peers)
        verb = "Reconnected to" if again else "Connected to"
        lines = [
            notice(
                "info",
                f"{verb} '{self.server_name}' at {self.where} as {safe_text(welcome.you.nick)} "
                f"({event.tls_version}).",
                ts,
            )
        ]
        if self.request is not None and welcome.you.nick != self.request.nick:
            lines.append(
                notice(
                    "info",
                    f"The nick '{safe_text(self.request.nick)}' was taken; "
                    f"you are '{safe_text(welcome.you.nick)}'.",
                    ts,
                )
            )
        others = sorted(welcome.peers, key=lambda p: p.nick.casefold())
        here = ", ".join(describe(p) for p in others)
        lines.append(notice("info", f"Here: {here}." if here else "Nobody else is here yet.", ts))
        return lines

    def _received(self, message: object, ts: float | None) -> list[Line]:
        match message:
            case Chat(sender=sender, text=text, ts=sent):
                own = self.roster.me is not None and sender.id == self.roster.me.id
                return [chat_line(sender, text, sent, own=own)]
            case Join(peer=peer):
                self.roster.join(peer)
                return [Line("join", clock(ts), "joined", peer.nick, peer.addr)]
            case Leave(peer=peer, reason=reason):
                self.roster.leave(peer)
                said = LEAVE_REASONS.get(reason, f"left ({safe_text(reason)})")
                return [Line("leave", clock(ts), said, peer.nick, peer.addr)]
            case Error(code=code, message=text):
                refused = f"The server refused: {safe_text(text)} ({safe_text(code)})."
                return [notice("error", refused, ts)]
            case Shutdown():
                return [notice("error", "The server is shutting down.", ts)]
        return []

    def _disconnected(
        self, reason: str, error: bool, code: str | None, ts: float | None
    ) -> list[Line]:
        if self.phase is Phase.CONNECTING:
            self.phase = Phase.CONNECT
            if code == ErrorCode.AUTH_FAILED:
                self._password_refused()
            else:
                self.notice = Notice("error", self._failure(reason))
            return []
        if self.phase in {Phase.CHAT, Phase.RECONNECTING}:
            self.phase = Phase.ENDED
            self.banner = f"Disconnected: {reason}."
            self.roster.reset(self.roster.me)
            return [notice("error" if error else "info", self.banner, ts)]
        return []

    def _password_refused(self) -> None:
        where = self.where
        if self.request is not None and self.request.password is not None:
            self.form_errors = {"password": "Wrong password: check it and try again."}
            text = f"Not connected: {where} did not accept the password."
        else:
            self.form_errors = {"password": "This room needs a password."}
            text = f"Not connected: {where} asks for a room password. Type it and connect again."
        self.notice = Notice("error", text)

    def _failure(self, reason: str) -> str:
        where = self.where
        declined = self.declined
        if declined is not None and declined.changed:
            return (
                f"Not connected: the certificate of {where} has changed and you kept the "
                "old pin. Ask the server's owner whether they made a new certificate."
            )
        if declined is not None:
            return f"Not connected: you did not trust {where}."
        return f"Could not connect to {where}: {reason}"

    # -- what to show --------------------------------------------------------------------

    @property
    def server_name(self) -> str:
        """The name the server gave itself, made safe to show; else its address."""
        conn = self.connection
        name = conn.welcome.server.name if conn is not None else ""
        return safe_text(name) if name else self.where

    @property
    def where(self) -> str:
        if self.request is None:
            return "?"
        return host_port(self.request.host, self.request.port)

    def status(self) -> str:
        """The status bar: server, nick, TLS version and a short fingerprint."""
        match self.phase:
            case Phase.CONNECT:
                return "Not connected"
            case Phase.CONNECTING:
                return f"Connecting to {self.where}…"
        conn = self.connection
        if conn is None:  # pragma: no cover - chat phases always have a connection
            return self.where
        me = self.roster.me or conn.welcome.you
        parts = [
            f"{self.server_name} at {self.where}",
            f"you are {safe_text(me.nick)}",
            conn.tls_version,
            short_fingerprint(conn.fingerprint),
        ]
        if self.phase is Phase.RECONNECTING:
            parts.insert(0, "Reconnecting…")
        elif self.phase is Phase.ENDED:
            parts.insert(0, "Disconnected")
        else:
            parts.append(f"{len(self.roster)} here")
        return " · ".join(parts)

    def title(self) -> str:
        conn = self.connection
        if self.phase.view == "chat" and conn is not None:
            return f"{safe_text(conn.welcome.you.nick)} @ {self.server_name} — chatsecure"
        return "chatsecure"


# --- trust questions between threads ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustPrompt:
    """The words and buttons of a trust dialog."""

    title: str
    heading: str
    body: str
    fingerprint: str
    pinned: str | None
    advertised_note: str | None
    danger: bool
    accept: str
    cancel: str
    confirm: str | None
    """A checkbox the user must tick before ``accept`` is enabled (changed certificates)."""


def trust_prompt(question: TrustQuestion) -> TrustPrompt:
    """What the dialog for ``question`` says."""
    name = server_key(question.host, question.port)
    note = None
    if question.advertised is not None:
        if question.advertised == question.fingerprint:
            note = "✔ It matches the fingerprint the server announced on this network."
        else:
            note = "✘ It does NOT match the fingerprint the server announced on this network."
    if question.changed:
        return TrustPrompt(
            title="Certificate changed",
            heading=f"WARNING: the certificate of {name} has changed!",
            body=(
                "Someone may be intercepting this connection, or the server made a new "
                "certificate. Do not connect unless the server's owner tells you the new "
                "fingerprint below is genuine."
            ),
            fingerprint=question.fingerprint,
            pinned=question.pinned,
            advertised_note=note,
            danger=True,
            accept="Replace pin and connect",
            cancel="Don't connect",
            confirm="I checked the new fingerprint with the server's owner",
        )
    return TrustPrompt(
        title="New server",
        heading=f"First connection to {name}",
        body=(
            "This server is not known yet. Compare its certificate fingerprint with the one "
            "the server printed when it started (ask its owner). If they match, trust it: it "
            "will be remembered, and you will be warned if it ever changes."
        ),
        fingerprint=question.fingerprint,
        pinned=None,
        advertised_note=note,
        danger=False,
        accept="Trust",
        cancel="Cancel",
        confirm=None,
    )


class PendingQuestion:
    """A trust question waiting for the user; answered once, from any thread."""

    def __init__(self, question: TrustQuestion) -> None:
        self.question = question
        self.prompt = trust_prompt(question)
        self._answered = threading.Event()
        self._answer = False

    def answer(self, yes: bool) -> None:
        if not self._answered.is_set():
            self._answer = yes
            self._answered.set()

    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    def wait(self, timeout: float) -> bool:
        """The answer; False if none came in ``timeout`` seconds."""
        return self._answer if self._answered.wait(timeout) else False


class TrustBridge:
    """Carries trust questions from the network thread to the Tk thread and answers back.

    ``ask`` is the ``TrustPolicy.ask`` of one client: it runs on the network thread, queues
    the question and blocks until the front end answers (or ``close`` answers no).
    """

    def __init__(self, timeout: float = TRUST_ANSWER_TIMEOUT) -> None:
        self.questions: queue.Queue[PendingQuestion] = queue.Queue()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._open: list[PendingQuestion] = []
        self._closed = False

    def ask(self, question: TrustQuestion) -> bool:
        pending = PendingQuestion(question)
        with self._lock:
            if self._closed:
                return False
            self._open.append(pending)
        self.questions.put(pending)
        try:
            return pending.wait(self.timeout)
        finally:
            with self._lock:
                self._open.remove(pending)

    def next(self) -> PendingQuestion | None:
        """The next question not yet answered, if any (front-end thread)."""
        while True:
            try:
                pending = self.questions.get_nowait()
            except queue.Empty:
                return None
            if not pending.answered:
                return pending

    def close(self) -> None:
        """Answer no to every open question and refuse later ones."""
        with self._lock:
            self._closed = True
            waiting = list(self._open)
        for pending in waiting:
            pending.answer(False)


# --- discovery ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One line of "Servers on this network"."""

    key: str
    name: str
    host: str
    port: int
    fingerprint: str | None

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    @property
    def short_fingerprint(self) -> str:
        return short_fingerprint(self.fingerprint) if self.fingerprint else "—"

    def fill(self) -> tuple[str, str]:
        """What the Host/IP and Port fields get when this row is picked."""
        return self.host, str(self.port)


class ServerList:
    """The discovered servers, in order of name, fed by the browser's events."""

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = list(networks)
        """The networks this host is on: an address on one of them is the one to use."""
        self._rows: dict[str, ServerRow] = {}

    def apply(self, event: DiscoveryEvent) -> None:
        match event:
            case ServerAdded(server=server) | ServerUpdated(server=server):
                self.put(server)
            case ServerRemoved(key=key):
                self._rows.pop(key.lower(), None)

    def put(self, server: DiscoveredServer) -> ServerRow | None:
        """Add or update ``server``; one without an address is left out."""
        key = server.key.lower()
        if not server.addresses:
            self._rows.pop(key, None)
            return None
        host = preferred_address(server, self.networks)
        row = ServerRow(key, safe_text(server.name), host, server.port, server.fingerprint)
        self._rows[key] = row
        return row

    def get(self, key: str) -> ServerRow | None:
        return self._rows.get(key.lower())

    def rows(self) -> list[ServerRow]:
        return sorted(self._rows.values(), key=lambda r: (r.name.casefold(), r.address))


# --- the controller ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """What changed in one poll: transcript lines to add, whether views must be refreshed."""

    lines: list[Line]
    changed: bool


class Controller:
    """Owns the model and the current ``ChatClient``; every method runs on the UI thread."""

    def __init__(
        self,
        options: GuiOptions,
        store: KnownServers | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.store = store or KnownServers()
        self.model = ChatModel()
        self.client: ChatClient | None = None
        self.bridge: TrustBridge | None = None
        self._retired: list[tuple[ChatClient, TrustBridge]] = []
        self._now = now

    def connect(self, request: ConnectRequest) -> None:
        """Start connecting; a client still running is retired first."""
        self._retire()
        bridge = TrustBridge()
        policy = TrustPolicy(
            self.store,
            ask=bridge.ask,
            accept_new=self.options.accept_new,
            fingerprint=self.options.fingerprint,
        )
        client = ChatClient(
            request.target(self.options),
            request.nick,
            policy,
            password=request.password,
            reconnect=self.options.reconnect,
        )
        self.model.connecting(request)
        self.client, self.bridge = client, bridge
        client.start()

    def cancel(self) -> None:
        """Stop a connection attempt."""
        if self.model.phase is Phase.CONNECTING:
            self._retire()
            self.model.cancelled()

    def leave(self) -> None:
        """Quit the server (if still connected) and go back to the connect view."""
        self._retire()
        self.model.left()

    def submit(self, text: str) -> Outgoing:
        """The user pressed Enter in the message box."""
        now = self._now()
        out = self.model.outgoing(text, now)
        if out.quit:
            self.leave()
        elif out.send is not None and self.client is not None:
            try:
                self.client.send(out.send)
            except LocalProtocolError as exc:  # too long for a frame, or not valid text
                said = exc.message[:1].upper() + exc.message[1:]
                return Outgoing(line=notice("error", f"{said}.", now))
        return out

    def next_question(self) -> PendingQuestion | None:
        return self.bridge.next() if self.bridge is not None else None

    def answer(self, pending: PendingQuestion, yes: bool) -> None:
        """The user answered a trust dialog."""
        if not yes:
            self.model.declined = pending.question
        pending.answer(yes)

    def poll(self, limit: int = EVENTS_PER_TICK) -> Update:
        """Apply the events the client queued since the last poll."""
        lines: list[Line] = []
        changed = False
        self._reap()
        client = self.client
        if client is None:
            return Update(lines, changed)
        ended = False
        for _ in range(limit):
            try:
                event = client.events.get_nowait()
            except queue.Empty:
                break
            changed = True
            lines += self.model.apply(event, self._now())
            if isinstance(event, Connected) and self.model.request is not None:
                remember_nick(self.model.request.nick)
            # Only the NotSent of a line typed meanwhile can follow Disconnected: show it too.
            ended = ended or isinstance(event, Disconnected)
        if ended:
            self._retire()
        return Update(lines, changed)

    def close(self, timeout: float = 3.0) -> None:
        """Quit and wait (up to ``timeout`` seconds in all) for every network thread."""
        self._retire()
        deadline = time.monotonic() + timeout
        for client, _ in self._retired:
            client.close(max(0.0, deadline - time.monotonic()))
        self._reap()

    @property
    def busy(self) -> bool:
        """Whether any network thread is still running."""
        self._reap()
        return self.client is not None or bool(self._retired)

    def _retire(self) -> None:
        if self.client is not None and self.bridge is not None:
            self.bridge.close()
            self.client.quit()
            self._retired.append((self.client, self.bridge))
        self.client, self.bridge = None, None

    def _reap(self) -> None:
        self._retired = [(c, b) for c, b in self._retired if c.alive]
