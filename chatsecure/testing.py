"""Helpers for testing chatsecure and programs built on it: a server on a thread, a raw client.

Everything here uses real TLS sockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

from chatsecure.history import MemoryLog, RoomLog
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.server import ChatServer
from chatsecure.settings import ServerConfig
from chatsecure.tls.certs import cert_fingerprint
from chatsecure.tls.context import client_context, server_context

T = TypeVar("T")


class ServerThread:
    """A real ``ChatServer`` on its own event loop thread, listening on 127.0.0.1."""

    def __init__(self, config: ServerConfig, history: RoomLog | None = None) -> None:
        self.config = config
        # Without a ``db`` of its own, a test server keeps its log in memory: tests share one
        # certificate folder, and must not share a database beside it.
        # A cluster's log is its Redis.
        alone = config.db is None and config.cluster is None
        if history is None and alone and config.history:
            history = MemoryLog(config.history)
        self.server = ChatServer(config, history)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server")

    @property
    def host(self) -> str:
        return self.server.addresses[0][0]

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def fingerprint(self) -> str:
        return self.server.fingerprint

    def start(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def call(self, func: Callable[..., T], *args: object) -> T:
        """Run ``func(*args)`` on the server's loop and return its result."""

        async def run() -> T:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def online(self) -> list[str]:
        """Nicks of the joined sessions, read on the server's own thread."""
        nicks: list[str] = self.call(
            lambda: [s.peer.nick for s in self.server.sessions.values() if s.peer]
        )
        return nicks

    def online_ids(self) -> list[str]:
        """Ids of the joined sessions, in join order."""
        ids: list[str] = self.call(lambda: list(self.server.sessions))
        return ids

    def wait_online(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.online()) != count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} online, have {self.online()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_config(cert_dir: Path, **overrides: Any) -> ServerConfig:  # noqa: ANN401
    """A config for tests: loopback, an ephemeral port, the certificate in ``cert_dir``."""
    base = ServerConfig(
        host="127.0.0.1",
        port=0,
        name="test",
        cert=cert_dir / "server.crt",
        key=cert_dir / "server.key",
    )
    return replace(base, **overrides)


class RawClient:
    """A blocking TLS client that speaks frames, for checking the protocol byte by byte."""

    def __init__(
        self, host: str, port: int, *, timeout: float = 5.0, rcvbuf: int | None = None
    ) -> None:
        """``rcvbuf``: the socket's receive buffer (``SO_RCVBUF``), set before it connects so
        that the server sees a window that small, as over a slow link."""
        raw = _connect(host, port, timeout, rcvbuf)
        self.sock = client_context().wrap_socket(raw)
        self._decoder = FrameDecoder(0)
        self._frames: list[bytes] = []
        self.timeout = timeout
        self.replayed: list[dict[str, Any]] = []
        """The stored lines replayed after the last ``welcome`` (see ``join``)."""

    def send(self, obj: dict[str, Any]) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame as JSON; raises ``TimeoutError`` or ``EOFError``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no frame in time") from None
            except (ssl.SSLError, ConnectionResetError) as exc:
                raise EOFError(f"connection broken: {exc}") from exc
            if not data:
                raise EOFError("server closed the connection")
            self._frames.extend(self._decoder.feed(data))
        result: dict[str, Any] = json.loads(self._frames.pop(0))
        return result

    def expect(self, kind: str, timeout: float | None = None) -> dict[str, Any]:
        """The next frame, which must be of type ``kind``."""
        frame = self.recv(timeout)
        if frame.get("type") != kind:
            raise AssertionError(f"expected {kind!r}, got {frame!r}")
        return frame

    def join(self, nick: str, **hello: Any) -> dict[str, Any]:  # noqa: ANN401
        """Send ``hello`` (with more fields, if given) and return the ``welcome``.

        The stored lines the server replays after it are read into ``replayed``."""
        self.send({"type": "hello", "nick": nick, **hello})
        welcome = self.expect("welcome")
        self.replayed = [self.expect("msg") for _ in range(welcome.get("replay", 0))]
        return welcome

    def silent(self, timeout: float = 0.3) -> bool:
        """True if no frame arrives within ``timeout``."""
        try:
            frame = self.recv(timeout)
        except TimeoutError:
            return True
        self._frames.insert(0, json.dumps(frame).encode())
        return False

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (frames before that are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.recv(deadline - time.monotonic())
            except EOFError:
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(host: str, port: int, timeout: float, rcvbuf: int | None) -> socket.socket:
    """A TCP connection to ``host``, its receive buffer set first if ``rcvbuf`` is given."""
    if rcvbuf is None:
        return socket.create_connection((host, port), timeout=timeout)
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    raw = socket.socket(family, kind, proto)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(address)
    except BaseException:
        raw.close()
        raise
    return raw


@contextlib.contextmanager
def joined(host: str, port: int, *nicks: str) -> Iterator[list[RawClient]]:
    """Clients that joined in order, each having read the joins of those after it."""
    clients: list[RawClient] = []
    try:
        for nick in nicks:
            client = RawClient(host, port)
            clients.append(client)
            client.join(nick)
            for earlier in clients[:-1]:
                earlier.expect("join")
        yield clients
    finally:
        for client in clients:
            client.close()


# --- a server that misbehaves -----------------------------------------------------------


class Mode(enum.Enum):
    """How a ``FakeServer`` misbehaves after (or instead of) a plain ``welcome``."""

    BAD_FIELDS = "bad_fields"
    """Chat lines with a ``ts`` of 1e20, -1e300 or a string, a ``text`` or ``from`` of the
    wrong type; then the line ``after the bad fields``."""
    SILENT = "silent"
    """``welcome``, then never a byte more, and never a close."""
    MUTE = "mute"
    """No ``welcome``: the hello is read, then never a byte, and never a close."""
    HANG_UP = "hang_up"
    """No ``welcome``: the hello is read, then the connection is closed without a word."""
    FLOOD = "flood"
    """``count`` chat lines at once (``flood 1`` ...), then ``end of the flood``."""
    UNKNOWN_FLOOD = "unknown_flood"
    """``count`` frames of an unknown type, then the line ``end of the flood``."""
    MOTD = "motd"
    """A frame of an unknown type (``motd``) before ``welcome``; then ``after the motd``."""
    SHUTDOWN = "shutdown"
    """The first session gets ``welcome``, then ``shutdown`` and a close; later ones are
    served plainly (a graceful restart)."""
    FAIL_AFTER_WELCOME = "fail_after_welcome"
    """Every session is closed right after its ``welcome``."""
    PLAIN = "plain"
    """A minimal honest server: ``welcome``, an ``ack`` for each line, a close on ``quit``."""
    BAD_WELCOME = "bad_welcome"
    """A ``welcome`` without its fields, then nothing more."""
    ACK_THEN_CLOSE = "ack_then_close"
    """As ``PLAIN``, but each session is closed right after its first ``ack``: a link that
    drops every few seconds while the user chats."""
    NO_ACKS = "no_acks"
    """``welcome``, a ``pong`` for each ``ping``, but never an ``ack``."""
    PING_FLOOD = "ping_flood"
    """``welcome``, then ``count`` batches of 4,096 ``ping`` frames as fast as the client
    takes them, never reading its ``pong``s; then a close."""
    PEERS_FLOOD = "peers_flood"
    """A ``welcome`` that announces 2**62 peers, then ``peers`` frames of 10,000 each, up to
    ``count`` of them, as fast as the client takes them."""
    BIG_LINES = "big_lines"
    """``count`` chat lines of ``BIG_LINE`` characters each (``big 1 xxx...``, rising seqs),
    as fast as the client takes them; then ``end of the flood``."""


BIG_LINE: Final = 1_000_000
"""Characters of each chat line of ``Mode.BIG_LINES``: far beyond any sane line, and within
the frame a client accepts from a server."""


FAKE_PEER: Final = {"id": "2", "nick": "eve", "addr": "127.0.0.1"}
"""Who speaks in a ``FakeServer``'s chat lines."""


def fake_chat(text: str, seq: int = 0, **fields: object) -> bytes:
    """A ``msg`` frame from ``FAKE_PEER``, with ``fields`` added or replaced."""
    frame: dict[str, object] = {"type": "msg", "from": FAKE_PEER, "text": text, "ts": 1.7e9}
    if seq:
        frame["seq"] = seq
    frame.update(fields)
    return json.dumps(frame).encode() + b"\n"


BAD_FIELDS: Final = (
    fake_chat("ts far in the future", ts=1e20),
    fake_chat("ts far in the past", ts=-1e300),
    fake_chat("ts a string", ts="noon"),
    fake_chat("ts null", ts=None),
    json.dumps({"type": "msg", "from": FAKE_PEER, "text": 5, "ts": 1}).encode() + b"\n",
    json.dumps({"type": "msg", "from": "eve", "text": "from a string"}).encode() + b"\n",
    json.dumps({"type": "msg", "from": {"id": 2, "nick": [], "addr": 1}, "text": "x"}).encode()
    + b"\n",
    json.dumps({"type": "join", "peer": None}).encode() + b"\n",
    b'{"type":"msg","text":"ts overflows","ts":1e999,"from":'
    + json.dumps(FAKE_PEER).encode()
    + b"}\n",
    fake_chat("after the bad fields"),
)
"""What ``Mode.BAD_FIELDS`` sends after ``welcome``: four lines with a bad ``ts`` (shown with
the time of arrival), four frames that cannot be shown, a ``ts`` of infinity, a good line."""


class FakeServer:
    """A TLS listener on 127.0.0.1 that behaves as ``mode`` says, for testing clients.

    Sessions are served one thread each, for as long as the client stays (or ``stop``).
    ``received`` keeps every frame the clients sent; ``sessions`` counts connections that
    said hello. Use as a context manager, or call ``stop``.
    """

    def __init__(self, cert_dir: Path, mode: Mode, *, count: int = 0, name: str = "fake") -> None:
        self.mode = mode
        self.count = count
        self.name = name
        self._ctx = server_context(cert_dir / "server.crt", cert_dir / "server.key")
        self.fingerprint = cert_fingerprint(cert_dir / "server.crt")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.received: list[dict[str, Any]] = []
        self.sessions = 0
        self.flooded = 0
        """Bytes of flood the client has taken so far (``PING_FLOOD``, ``PEERS_FLOOD``)."""
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="fake-server")
        self._accepter.start()

    @property
    def texts(self) -> list[str]:
        """The texts of the chat lines the clients sent, in order."""
        with self._lock:
            return [f.get("text", "") for f in self.received if f.get("type") == "msg"]

    def wait_for(self, test: Callable[[FakeServer], bool], timeout: float = 10.0) -> None:
        """Wait until ``test(self)`` holds; ``AssertionError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not test(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"not in {timeout} s; received {self.received[-5:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Close the listener and every connection; wait for the threads."""
        self._stop.set()
        self._accepter.join(10)
        for thread in self._threads:
            thread.join(10)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the threads ---------------------------------------------------------------------

    def _accept(self) -> None:
        with self._listener:
            while not self._stop.is_set():
                try:
                    raw, _ = self._listener.accept()
                except TimeoutError:
                    continue
                thread = threading.Thread(target=self._serve, args=(raw,), name="fake-session")
                self._threads.append(thread)
                thread.start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), raw:
            raw.settimeout(5)
            with self._ctx.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(0.1)  # reads wake up to see stop()
                decoder = FrameDecoder(0)
                if self._read_hello(conn, decoder):
                    with self._lock:
                        self.sessions += 1
                        first = self.sessions == 1
                    conn.settimeout(30)  # a flood waits while the client holds back
                    go_on = self._script(conn, first=first)
                    conn.settimeout(0.1)
                    if go_on:
                        self._converse(conn, decoder)

    def _read_hello(self, conn: ssl.SSLSocket, decoder: FrameDecoder) -> bool:
        while not self._stop.is_set():
            frames = self._recv(conn, decoder)
            if frames is None:
                return False
            if frames:
                return True
        return False

    def _recv(self, conn: ssl.SSLSocket, decoder: FrameDecoder) -> list[dict[str, Any]] | None:
        """Frames that came (perhaps none), or None at the end of the connection."""
        try:
            data = conn.recv(65536)
        except TimeoutError:
            return []
        if not data:
            return None
        frames = [json.loads(frame) for frame in decoder.feed(data)]
        with self._lock:
            self.received += frames
        return frames

    def _welcome(self) -> bytes:
        if self.mode is Mode.PEERS_FLOOD:
            return self._peers_flood_welcome()
        if self.mode is Mode.BAD_WELCOME:
            return b'{"type":"welcome","you":"nobody"}\n'
        frame = {
            "type": "welcome",
            "you": {"id": "1", "nick": "bob", "addr": "127.0.0.1"},
            "peers": [FAKE_PEER],
            "server": {"name": self.name, "version": "fake", "protocol": 2},
            "seq": 0,
            "replay": 0,
        }
        return json.dumps(frame).encode() + b"\n"

    def _script(self, conn: ssl.SSLSocket, *, first: bool) -> bool:
        """Send what the mode says after the hello; False to close the connection now."""
        mode, count = self.mode, self.count
        if mode is Mode.MUTE:
            return True
        if mode is Mode.HANG_UP:
            return False
        if mode is Mode.MOTD:
            conn.sendall(b'{"type":"motd","text":"welcome to the fake"}\n')
        conn.sendall(self._welcome())
        if mode is Mode.PEERS_FLOOD:
            peers = [{"id": str(n), "nick": f"p{n}", "addr": "127.0.0.1"} for n in range(10_000)]
            self._flood(conn, json.dumps({"type": "peers", "peers": peers}).encode() + b"\n", count)
            return False
        if mode is Mode.BAD_FIELDS:
            conn.sendall(b"".join(BAD_FIELDS))
        elif mode is Mode.FLOOD:
            for start in range(0, count, 1000):
                end = min(start + 1000, count)
                chunk = b"".join(fake_chat(f"flood {n}") for n in range(start + 1, end + 1))
                conn.sendall(chunk)
            conn.sendall(fake_chat("end of the flood"))
        elif mode is Mode.BIG_LINES:
            for n in range(1, count + 1):
                head = f"big {n} "
                if not self._send(conn, fake_chat(head + "x" * (BIG_LINE - len(head)), n)):
                    return False
            conn.sendall(fake_chat("end of the flood", count + 1))
        elif mode is Mode.UNKNOWN_FLOOD:
            frame = b'{"type":"zzz","n":1}\n'
            for start in range(0, count, 1000):
                conn.sendall(frame * (min(start + 1000, count) - start))
            conn.sendall(fake_chat("end of the flood"))
        elif mode is Mode.MOTD:
            conn.sendall(fake_chat("after the motd"))
        elif mode is Mode.SHUTDOWN and first:
            conn.sendall(b'{"type":"shutdown"}\n')
            return False
        elif mode is Mode.FAIL_AFTER_WELCOME:
            return False
        elif mode is Mode.PING_FLOOD:
            self._flood(conn, b'{"type":"ping"}\n' * 4096, count)
            return False
        return True

    def _flood(self, conn: ssl.SSLSocket, batch: bytes, count: int) -> None:
        """Send ``batch`` ``count`` times, or until ``stop``; ``flooded`` counts the bytes."""
        conn.settimeout(0.2)
        view = memoryview(batch)
        for _ in range(count):
            done = 0
            while done < len(batch):
                if self._stop.is_set():
                    return
                try:
                    done += conn.send(view[done:])
                except TimeoutError:
                    continue
                except ssl.SSLWantWriteError:
                    time.sleep(0.01)
                    continue
            with self._lock:
                self.flooded += len(batch)

    def _send(self, conn: ssl.SSLSocket, data: bytes) -> bool:
        """Send ``data`` as the client takes it, however long it holds back; False if ``stop``
        came first. ``flooded`` counts the bytes."""
        conn.settimeout(0.2)
        view, done = memoryview(data), 0
        while done < len(data):
            if self._stop.is_set():
                return False
            try:
                sent = conn.send(view[done:])
            except TimeoutError:
                continue
            except ssl.SSLWantWriteError:
                time.sleep(0.01)
                continue
            done += sent
            with self._lock:
                self.flooded += sent
        conn.settimeout(30)
        return True

    def _peers_flood_welcome(self) -> bytes:
        frame = {
            "type": "welcome",
            "you": {"id": "1", "nick": "bob", "addr": "127.0.0.1"},
            "peers": [],
            "peers_total": 2**62,
            "server": {"name": self.name, "version": "fake", "protocol": 2},
            "seq": 0,
            "replay": 0,
        }
        return json.dumps(frame).encode() + b"\n"

    def _converse(self, conn: ssl.SSLSocket, decoder: FrameDecoder) -> None:
        """Answer the client until it goes (a silent server only reads, and never closes)."""
        silent = self.mode in (Mode.SILENT, Mode.MUTE)
        while not self._stop.is_set():
            frames = self._recv(conn, decoder)
            if frames is None:
                return
            for frame in frames:
                kind = frame.get("type")
                if kind == "quit" and not silent:
                    return
                if silent:
                    continue
                if kind == "ping":
                    conn.sendall(b'{"type":"pong"}\n')
                elif (
                    kind == "msg"
                    and isinstance(frame.get("ref"), str)
                    and self.mode is not Mode.NO_ACKS
                ):
                    ack = {"type": "ack", "ref": frame["ref"], "seq": next(self._seq), "ts": 1.7e9}
                    conn.sendall(json.dumps(ack).encode() + b"\n")
                    if self.mode is Mode.ACK_THEN_CLOSE:
                        return
