"""Helpers for testing chatsecure and programs built on it: a server on a thread, a raw client.

Everything here uses real TLS sockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from chatsecure.history import MemoryLog
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.server import ChatServer
from chatsecure.settings import ServerConfig
from chatsecure.tls.context import client_context

T = TypeVar("T")


class ServerThread:
    """A real ``ChatServer`` on its own event loop thread, listening on 127.0.0.1."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # Without a ``db`` of its own, a test server keeps its log in memory: tests share one
        # certificate folder, and must not share a database beside it.
        # A cluster's log is its Redis.
        alone = config.db is None and config.cluster is None
        memory = MemoryLog(config.history) if alone and config.history else None
        self.server = ChatServer(config, memory)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server")
        self._failed: BaseException | None = None

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

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        raw = socket.create_connection((host, port), timeout=timeout)
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
