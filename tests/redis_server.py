"""A private redis-server for the tests: loopback only, stopped at the end.

No persistence unless asked (``persistent``: AOF with ``appendfsync always``, so a ``kill()``
loses nothing acknowledged and ``restart()`` on the same port finds it all).

Never the system's Redis service: each run starts its own process on a free 127.0.0.1 port,
with its files in a temporary folder.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CHATSECURE, ServerProcess

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1."""

    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        self.folder = folder
        self.port = 0
        self.persistent = persistent
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        for _ in range(5):  # another process may take the free port first: try another
            self.port = free_port()
            if self._spawn():
                return self
            self.stop()
        raise AssertionError(f"redis-server did not start: {self.log()}")

    def _spawn(self) -> bool:
        assert REDIS_SERVER is not None
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        self._process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                *aof,
                "--dir", str(self.folder),
                "--logfile", str(self.folder / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return self._wait_ready()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, no final save."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        """Start it again on the same port and folder (after ``kill``)."""
        assert self._process is None
        deadline = time.monotonic() + 10
        while not self._spawn():  # the port may linger a moment after the kill
            self.stop()
            assert time.monotonic() < deadline, f"redis-server did not restart: {self.log()}"
            time.sleep(0.2)

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None


def redis_server_fixture(factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Start a private redis-server (skip when none is installed); stop it at the end."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def room_name() -> str:
    """A room of its own for one test, so tests sharing a Redis never see each other's lines."""
    return f"test {uuid.uuid4().hex[:12]}"


def cluster_node(redis: RedisServer, room: str, cert_dir: Path, *options: str) -> ServerProcess:
    """``chatsecure server --cluster`` of ``room`` in a subprocess, on loopback, no discovery."""
    return ServerProcess(
        [
            *CHATSECURE, "server",
            "--cluster", redis.url,
            "--name", room,
            "--cert", str(cert_dir / "server.crt"),
            "--key", str(cert_dir / "server.key"),
            "--msg-rate", "0",
            *options,
        ]
    )  # fmt: skip


def private_redis(tmp_path: Path, *, persistent: bool = False) -> Iterator[RedisServer]:
    """A Redis of one test only (skipped when none is installed), stopped at its end."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder, persistent=persistent).start()
    try:
        yield server
    finally:
        server.stop()


def cluster_nodes(redis: RedisServer, cert_dir: Path, count: int) -> Iterator[list[ServerProcess]]:
    """``count`` nodes of one new room on ``redis`` (subprocesses), killed at the end."""
    room = room_name()
    started: list[ServerProcess] = []
    try:
        started.extend(cluster_node(redis, room, cert_dir) for _ in range(count))
        yield started
    finally:
        for process in started:
            process.kill()
