"""The client core: TLS, trust, protocol and reconnects on one background thread.

Front ends (terminal, Tk) never touch the network. They call ``send``/``quit``/``close``
from their own thread and take ``ClientEvent`` values from ``events`` (a ``queue.Queue``).
This module never imports tkinter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import ssl
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from chatsecure.client.errors import describe_error
from chatsecure.errors import (
    ChatError,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
    TrustError,
)
from chatsecure.protocol import limits
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.protocol.messages import (
    Chat,
    Error,
    Hello,
    Join,
    Leave,
    Peer,
    Ping,
    Pong,
    Quit,
    SendMsg,
    ServerMessage,
    Shutdown,
    Welcome,
    encode,
    parse_server,
    utf8_encodable,
)
from chatsecure.tls.certs import fingerprint
from chatsecure.tls.context import client_context
from chatsecure.tls.trust import TrustPolicy, TrustQuestion, server_key

log = logging.getLogger(__name__)

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds between reconnect attempts after a dropped connection; the last one repeats."""
MAX_RETRIES = 20
"""Reconnect attempts before the client gives up."""


# --- events out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The server welcomed us."""

    welcome: Welcome
    host: str
    port: int
    tls_version: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Received:
    """A frame from the server after ``welcome``: chat, join, leave, error, shutdown."""

    message: ServerMessage


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
    """A chat line given to ``send`` did not go out: the connection was gone by then."""

    text: str


class ServerRefused(ConnectionClosed):
    """The server answered ``hello`` with an ``error`` instead of ``welcome``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"the server refused: {safe_text(message)} ({safe_text(code)})")
        self.code = code


FINAL_REFUSALS = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.BAD_NICK})
"""Refusals that trying again cannot fix: the client stops instead of reconnecting."""


ClientEvent = Connected | Received | Reconnecting | Disconnected | NotSent


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


def parse_target(text: str, default_port: int = limits.DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if not text:
        raise ValueError("enter a host name or IP address")
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"no ']' after the IPv6 address in {text!r}")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)


# --- display ----------------------------------------------------------------------------


def safe_text(text: str) -> str:
    """``text`` with anything that could fake a new line or reorder the display made visible."""
    if text.isprintable():
        return text
    return "".join(
        c
        if c.isprintable() or c == " "
        else f"\\u{ord(c):04x}"
        if unicodedata.category(c) != "Cc"
        else repr(c)[1:-1]
        for c in text
    )


SHORT_FINGERPRINT = 12
"""Base64 characters of a fingerprint shown where space is short (status bar, server list)."""


def short_fingerprint(fp: str) -> str:
    """``SHA256:qd11Mv3IYZlm…``: enough to recognise, short enough for a status bar."""
    prefix, sep, body = fp.partition(":")
    if not sep:
        return fp[:SHORT_FINGERPRINT] + "…"
    return f"{prefix}:{body[:SHORT_FINGERPRINT]}…"


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def clock(ts: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def describe(peer: Peer) -> str:
    """``nick (addr)``, both from the server, made safe to show."""
    return f"{safe_text(peer.nick)} ({safe_text(peer.addr)})"


def format_message(message: ServerMessage, ts: float | None = None) -> str | None:
    """One transcript line, as the terminal prints it: ``[HH:MM:SS] nick (ip): text``."""
    match message:
        case Chat(sender=sender, text=text, ts=sent):
            return f"[{clock(sent)}] {describe(sender)}: {safe_text(text)}"
        case Join(peer=peer):
            return f"[{clock(ts)}] * {describe(peer)} joined"
        case Leave(peer=peer, reason=reason):
            return f"[{clock(ts)}] * {describe(peer)} left ({safe_text(reason)})"
        case Error(code=code, message=text):
            return f"[{clock(ts)}] ! server refused: {safe_text(text)} ({safe_text(code)})"
        case Shutdown():
            return f"[{clock(ts)}] ! the server is shutting down"
    return None


def is_quit(text: str) -> bool:
    """Whether a typed line is the command ``quit`` (alone, spaces around it allowed)."""
    return text.strip() == "quit"


def require_sendable(text: str, what: str) -> str:
    """``text`` if UTF-8 can carry it; else ``LocalProtocolError`` naming ``what``."""
    if not utf8_encodable(text):
        raise LocalProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"{what} holds a character that is not valid text (a byte that is not UTF-8?)",
        )
    return text


# --- the client -------------------------------------------------------------------------


class ChatClient:
    """A connection to one server on its own thread. Thread-safe public methods."""

    def __init__(
        self,
        target: Target,
        nick: str,
        policy: TrustPolicy,
        *,
        password: str | None = None,
        reconnect: bool = False,
        events: queue.Queue[ClientEvent] | None = None,
    ) -> None:
        self.target = target
        self.nick = require_sendable(nick, "the nick")
        self.policy = policy
        self.password = password if password is None else require_sendable(password, "the password")
        self.reconnect = reconnect
        self.events: queue.Queue[ClientEvent] = events if events is not None else queue.Queue()
        self.me: Peer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        """Set by ``quit``, so that a reconnect backoff ends at once instead of sleeping on."""
        self._session_task: asyncio.Task[None] | None = None
        """The current attempt; ``quit`` cancels it until the server has welcomed us."""
        self._joined = False
        """Whether the current session was welcomed (``Connected`` went out)."""
        self._attempt = 0
        """Reconnect attempts since the last welcome."""
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
        """Send a chat line; the line ``quit`` alone quits instead.

        Raises ``LocalProtocolError`` for a text UTF-8 cannot carry, or too long for one frame:
        sent, it would cost the connection (``frame_too_long``), so the front end says so
        instead. A text under that but over the server's text limit gets the server's
        ``text_too_long``. A text that finds no connection to go out on comes back as a
        ``NotSent`` event.
        """
        if is_quit(text):
            self.quit()
        elif text:
            frame = encode(SendMsg(require_sendable(text, "message not sent: it")))
            if len(frame) > limits.MAX_FRAME:
                raise LocalProtocolError(
                    ErrorCode.TEXT_TOO_LONG,
                    f"message not sent: it is too long ({len(text)} characters; "
                    f"the limit is {limits.MAX_TEXT})",
                )
            if not self._call(self._send_chat, text, frame):
                self._emit(NotSent(text))  # the network thread has ended

    def quit(self) -> None:
        """Say ``quit`` to the server and stop."""
        self._call(self._quit)

    def close(self, timeout: float = 5.0) -> None:
        """Quit and wait for the network thread to end."""
        if self._thread.is_alive():
            self.quit()
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

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
            self._emit(final)

    def _emit(self, event: ClientEvent) -> None:
        self.events.put(event)

    async def _run(self) -> Disconnected:
        """Connect, chat and reconnect until done; return the final event for the front end."""
        self._stop_requested = asyncio.Event()
        while True:
            if self._stopping:  # quit came before the first attempt began
                return Disconnected("you left the chat", error=False)
            self._session_task = asyncio.create_task(self._session())
            try:
                await self._session_task
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                # Quit before the welcome: the session went without a word to the server.
                return Disconnected("you left the chat", error=False)
            except TrustError as exc:
                return Disconnected(str(exc), error=True)
            except ServerRefused as exc:
                if exc.code in FINAL_REFUSALS or not self.reconnect or self.me is None:
                    return Disconnected(str(exc), error=True, code=exc.code)
                reason = str(exc)
            except (ChatError, OSError, ssl.SSLError, EOFError) as exc:
                reason = describe_error(exc)
            else:  # a shutdown, or quit while connecting
                if self._stopping:
                    return Disconnected("you left the chat", error=False)
                return Disconnected("the server shut down", error=False)
            if self._stopping:
                return Disconnected("you left the chat", error=False)
            if not (self.reconnect and self.me is not None) or self._attempt >= MAX_RETRIES:
                return Disconnected(reason, error=True)
            delay = RETRY_DELAYS[min(self._attempt, len(RETRY_DELAYS) - 1)]
            self._attempt += 1
            self._emit(Reconnecting(self._attempt, delay, reason))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
            if self._stopping:
                return Disconnected("you left the chat", error=False)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
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
                    target.host,
                    target.port,
                    ssl=ctx,
                    server_hostname=target.host if target.cafile else None,
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
        try:
            question = self._judge(presented)
        except TrustError:
            await _close_writer(writer)
            raise
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
        if target.cafile is None:
            return self.policy.check(target.host, target.port, presented, target.advertised)
        # The CA vouched for the chain and the name already; a server picked from the
        # network must still be the one that advertised itself.
        if target.advertised is not None and presented != target.advertised:
            raise TrustError(
                f"{server_key(target.host, target.port)} presented {presented}, but the server "
                f"found on the network advertised {target.advertised}; refusing (someone may "
                "be impersonating it)"
            )
        return None

    async def _session(self) -> None:
        reader, writer, presented = await self._verified()
        self._writer = writer
        try:
            # quit cancels this task, but asyncio.wait_for (3.11) swallows a cancel that
            # comes as what it waits for is done: so look again before each step.
            if self._stopping:
                return
            writer.write(encode(Hello(self.nick, self.password)))
            decoder = FrameDecoder(limits.MAX_SERVER_FRAME)
            try:
                welcome, rest = await asyncio.wait_for(
                    self._first_frame(reader, decoder), limits.CONNECT_TIMEOUT
                )
            except asyncio.CancelledError:
                writer.write(encode(Quit()))  # hello is out: leave properly, not by a cut
                raise
            if self._stopping:
                writer.write(encode(Quit()))
                return
            self.me = welcome.you
            self._joined = True
            self._attempt = 0  # that session worked: a new drop starts the backoff afresh
            version = writer.get_extra_info("ssl_object").version() or "TLS"
            host, port = self.target.host, self.target.port
            self._emit(Connected(welcome, host, port, version, presented))
            await self._read_loop(reader, decoder, rest)
        finally:
            self._writer = None
            self._joined = False
            await _close_writer(writer)

    async def _first_frame(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder
    ) -> tuple[Welcome, list[bytes]]:
        """The welcome, and the frames that came in the same read after it."""
        while True:
            frames = await _read_frames(reader, decoder)
            for n, frame in enumerate(frames):
                message = parse_server(frame)
                if isinstance(message, Welcome):
                    return message, frames[n + 1 :]
                if isinstance(message, Error):
                    raise ServerRefused(message.code, message.message)
                if isinstance(message, Shutdown):
                    raise ConnectionClosed("the server is shutting down")

    async def _read_loop(
        self, reader: asyncio.StreamReader, decoder: FrameDecoder, frames: list[bytes]
    ) -> None:
        while True:
            for frame in frames:
                try:
                    message = parse_server(frame)
                except RemoteProtocolError as exc:
                    log.warning("ignoring a frame from the server: %s", exc.message)
                    continue
                if isinstance(message, Ping):  # the server checks that we are still here
                    self._write(encode(Pong()))
                    continue
                self._emit(Received(message))
                if isinstance(message, Shutdown):
                    return  # the end: _run says so
            frames = await _read_frames(reader, decoder)

    def _write(self, data: bytes) -> bool:
        """Write ``data`` if there is a connection; whether there was."""
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(data)
        return True

    def _send_chat(self, text: str, frame: bytes) -> None:
        if not self._write(frame):
            self._emit(NotSent(text))  # dropped meanwhile: the front end must not think it went

    def _quit(self) -> None:
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
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(encode(Quit()))  # the server answers by closing the connection


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


async def _read_frames(reader: asyncio.StreamReader, decoder: FrameDecoder) -> list[bytes]:
    if decoder.error is not None:  # the frames before an over-long line were handled: stop
        raise decoder.error
    data = await reader.read(65536)
    if not data:
        raise ConnectionClosed("the server closed the connection")
    return decoder.feed(data)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (OSError, ssl.SSLError):
        pass  # the connection broke on its own: closed all the same
    except TimeoutError:
        writer.transport.abort()  # no answer to our close_notify: do not leave it open
