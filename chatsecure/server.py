"""The chatsecure server in one module: TLS listener, the live session registry, fan-out.

Run it with ``chatsecure server`` or ``python -m chatsecure.server``. The path of one chat line:
``Session.data_received`` -> ``ServerSession`` (frames, validation, state) ->
``ChatServer.broadcast`` (encoded once) -> every other ``Session.send`` -> one TLS write per
recipient per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from chatsecure import __version__
from chatsecure.errors import ConfigError, RemoteProtocolError
from chatsecure.protocol import limits
from chatsecure.protocol.codes import ErrorCode
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
    ServerInfo,
    Shutdown,
    Welcome,
    clean_nick,
    encode,
)
from chatsecure.protocol.session import ServerSession
from chatsecure.tls import certs
from chatsecure.tls.context import server_context

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 2.0
"""Seconds the server waits for clients to take ``shutdown`` (or an error) before it aborts."""


def default_name() -> str:
    """A friendly server name from the host name: ``chat on <host>``."""
    return f"chat on {socket.gethostname().split('.')[0] or 'localhost'}"


@dataclass(slots=True)
class ServerConfig:
    """Everything a server needs to start. ``0`` turns a limit off."""

    host: str | None = None
    """Listen address; ``None`` listens on every interface, IPv4 and IPv6 on one socket."""
    port: int = limits.DEFAULT_PORT
    name: str = field(default_factory=default_name)
    cert: Path = certs.DEFAULT_CERT_DIR / certs.CERT_NAME
    key: Path = certs.DEFAULT_CERT_DIR / certs.KEY_NAME
    max_frame: int = limits.MAX_FRAME
    send_buffer_limit: int = limits.SEND_BUFFER_LIMIT
    hello_timeout: float = limits.HELLO_TIMEOUT
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT
    tls13_only: bool = False


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


class Session(asyncio.Protocol):
    """One client connection: the transport, its protocol state and its outgoing queue."""

    def __init__(self, server: ChatServer, session_id: str) -> None:
        self.server = server
        self.id = session_id
        self.protocol = ServerSession(server.config.max_frame)
        self.peer: Peer | None = None
        self.addr = "?"
        self.log: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(log, {})
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._closing = False
        self._hello_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - stream server
        self._transport = transport
        self.addr = client_address(transport.get_extra_info("peername"))
        self.log = logging.LoggerAdapter(log, {"peer": f"{self.id}@{self.addr}"})
        limit = self.server.config.send_buffer_limit
        if limit:
            transport.set_write_buffer_limits(high=limit)
        if self.server.config.hello_timeout:
            self._hello_timer = asyncio.get_running_loop().call_later(
                self.server.config.hello_timeout, self._hello_timed_out
            )
        self.server.connection_made(self)
        ssl_object = transport.get_extra_info("ssl_object")
        self.log.debug(
            "TLS connection from %s (%s)", self.addr, ssl_object and ssl_object.version()
        )

    def data_received(self, data: bytes) -> None:
        for event in self.protocol.receive_data(data):
            if isinstance(event, RemoteProtocolError):
                self._refuse(event)
            elif isinstance(event, SendMsg):
                self.server.broadcast_chat(self, event.text)
            elif isinstance(event, Hello):
                self._joined(event)
            elif isinstance(event, Ping):
                self.send(encode(Pong()))
            elif isinstance(event, Quit):
                self.close("quit")

    def eof_received(self) -> bool:
        self.close("closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self._closing = True
        self._pending.clear()
        reason = "closed" if exc is None else "error"
        if exc is not None:
            self.log.debug("connection lost: %s", exc)
        self.server.remove(self, reason)

    def pause_writing(self) -> None:
        # More than send_buffer_limit bytes are waiting for this client: it is not reading.
        # Dropping it here (not waiting) is what keeps broadcast from ever blocking on it.
        asyncio.get_running_loop().call_soon(self.drop, ErrorCode.SLOW_CONSUMER, "too far behind")

    # -- sending -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one loop iteration goes out as one TLS write."""
        if self._closing:
            return
        if not self._pending:
            self.server.mark_dirty(self)
        self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if pending and self._transport is not None and not self._closing:
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()

    def close(self, reason: str) -> None:
        """Flush what is queued, close the connection and tell the others, once."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        self.server.remove(self, reason)
        if self._transport is not None:
            self._transport.close()
            # A client that stops reading never lets close() finish; do not wait forever.
            asyncio.get_running_loop().call_later(SHUTDOWN_GRACE, self._transport.abort)

    def drop(self, code: ErrorCode, message: str) -> None:
        """Send a last ``error`` and close. Used when the client broke a rule."""
        if self._closing:
            return
        self.log.warning("dropping client: %s (%s)", message, code)
        self.send(encode(Error(code, message)))
        self.close("error")

    # -- events --------------------------------------------------------------------------

    def _refuse(self, error: RemoteProtocolError) -> None:
        self.log.debug("refused frame: %s (%s)", error.message, error.code)
        if error.fatal:
            self.drop(error.code, error.message)
        else:
            self.send(encode(Error(error.code, error.message)))

    def _joined(self, hello: Hello) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        try:
            nick = clean_nick(hello.nick)
        except RemoteProtocolError as exc:
            self._refuse(exc)
            return
        self.server.join(self, nick)

    def _hello_timed_out(self) -> None:
        if self.peer is None:
            self.drop(ErrorCode.HELLO_TIMEOUT, "no hello in time")


class ChatServer:
    """The live session registry and its fan-out."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}
        """The joined sessions, by id: everyone who receives broadcasts."""
        self.connections: set[Session] = set()
        """Every open connection, joined or not."""
        self.fingerprint = ""
        self.addresses: list[tuple[str, int]] = []
        self._ids = itertools.count(1)
        self._info = ServerInfo(config.name, __version__, limits.PROTOCOL_VERSION)
        self._dirty: list[Session] = []
        self._servers: list[asyncio.Server] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load (or make) the certificate, bind and start accepting connections."""
        if certs.ensure(certs.CertFiles(self.config.cert, self.config.key)):
            log.info("no certificate found: generated %s and %s", self.config.cert, self.config.key)
        ctx = server_context(self.config.cert, self.config.key, tls13_only=self.config.tls13_only)
        self.fingerprint = certs.cert_fingerprint(self.config.cert)
        self._loop = asyncio.get_running_loop()
        for sock in listen_sockets(self.config.host, self.config.port):
            server = await self._loop.create_server(
                self._new_session,
                sock=sock,
                ssl=ctx,
                ssl_handshake_timeout=self.config.handshake_timeout or None,
            )
            self._servers.append(server)
            self.addresses.append(sock.getsockname()[:2])
        log.info(
            "listening on %s as %r, fingerprint %s",
            ", ".join(format_address(*a) for a in self.addresses),
            self.config.name,
            self.fingerprint,
        )

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def shutdown(self) -> None:
        """Tell every client ``shutdown``, close every connection and stop listening."""
        for server in self._servers:
            server.close()
        frame = encode(Shutdown())
        for session in list(self.connections):
            session.send(frame)
            session.close("shutdown")
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for server in self._servers:
            await server.wait_closed()
        log.info("stopped")

    # -- registry ------------------------------------------------------------------------

    def _new_session(self) -> Session:
        return Session(self, str(next(self._ids)))

    def connection_made(self, session: Session) -> None:
        self.connections.add(session)

    def join(self, session: Session, wanted: str) -> None:
        nick = self._unique_nick(wanted)
        session.peer = Peer(session.id, nick, session.addr)
        others = tuple(s.peer for s in self.sessions.values() if s.peer is not None)
        session.send(encode(Welcome(session.peer, others, self._info)))
        self.broadcast(encode(Join(session.peer)))
        self.sessions[session.id] = session
        session.log.info("%s joined from %s; %d online", nick, session.addr, len(self.sessions))

    def remove(self, session: Session, reason: str) -> None:
        """Forget ``session``; if it had joined, send ``leave`` to the rest. Idempotent."""
        self.connections.discard(session)
        if self.sessions.pop(session.id, None) is None or session.peer is None:
            return
        self.broadcast(encode(Leave(session.peer, reason)))
        session.log.info("%s left (%s); %d online", session.peer.nick, reason, len(self.sessions))

    def _unique_nick(self, wanted: str) -> str:
        taken = {s.peer.nick.casefold() for s in self.sessions.values() if s.peer is not None}
        if wanted.casefold() not in taken:
            return wanted
        for n in itertools.count(2):
            suffix = f"_{n}"
            candidate = wanted[: limits.MAX_NICK - len(suffix)] + suffix
            if candidate.casefold() not in taken:
                return candidate
        raise AssertionError("unreachable")  # pragma: no cover

    # -- fan-out -------------------------------------------------------------------------

    def broadcast_chat(self, sender: Session, text: str) -> None:
        if sender.peer is None:  # pragma: no cover - the state machine forbids it
            return
        sender.log.debug("msg of %d characters", len(text))
        self.broadcast(encode(Chat(sender.peer, text, time.time())), exclude=sender)

    def broadcast(self, frame: bytes, exclude: Session | None = None) -> None:
        """Queue one already-encoded frame for every joined session but ``exclude``."""
        for session in self.sessions.values():
            if session is not exclude:
                session.send(frame)

    def mark_dirty(self, session: Session) -> None:
        if not self._dirty:
            assert self._loop is not None  # noqa: S101 - set in start()
            self._loop.call_soon(self._flush)
        self._dirty.append(session)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            session.flush()


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_sockets(host: str | None, port: int) -> list[socket.socket]:
    """Bound listening sockets: one dual-stack socket for all interfaces, or one per address."""
    backlog = 1024
    if host in (None, "", "*"):
        if socket.has_dualstack_ipv6():
            return [
                socket.create_server(
                    ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=backlog
                )
            ]
        return [socket.create_server(("0.0.0.0", port), backlog=backlog)]  # noqa: S104
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    try:
        return [socket.create_server(address[:2], family=family, backlog=backlog)]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {format_address(host, port)}: {exc.strerror}") from exc


async def serve(
    config: ServerConfig,
    *,
    ready: Callable[[ChatServer], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a server until SIGINT/SIGTERM (or ``stop``), then shut it down cleanly."""
    server = ChatServer(config)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on port {config.port}: {exc.strerror}") from exc
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        if ready is not None:
            result = ready(server)
            if result is not None:
                await result
        await stop.wait()
        log.info("shutting down; %d online", len(server.sessions))
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await server.shutdown()


def main(argv: list[str] | None = None) -> int:
    """``python -m chatsecure.server``: the same as ``chatsecure server``."""
    from chatsecure.cli import main as cli_main

    return cli_main(["server", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
