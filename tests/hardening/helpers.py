"""Helpers of the hardening tests: processes to kill and measure, clients made to measure."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from chatsecure.protocol.frames import FrameDecoder
from chatsecure.testing import RawClient
from chatsecure.tls.context import client_context

PEER_PROCESS = Path(__file__).with_name("peer_process.py")


class Proc:
    """A child process whose stdout lines are collected by a thread, killed at the end.

    Its stderr goes to a file rather than a pipe that nobody reads, which could fill and stall it.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"proc-{self.popen.pid}")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 10.0) -> str:
        """The next line the process printed; fails if none comes in time."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"pid {self.pid} printed nothing in {timeout} s; stderr: {self.stderr()}"
            ) from None

    def stderr(self) -> str:
        """What the process wrote to stderr so far (the end of it)."""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL, the way a crash or a pulled plug ends a program."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit; always reaps it and its reader."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode

    def close(self) -> None:
        self._stderr.close()


def peer_argv(*args: str) -> list[str]:
    """The command line of ``peer_process.py`` with ``args``."""
    return [sys.executable, str(PEER_PROCESS), *args]


class ServerProcess(Proc):
    """A chatsecure server in its own process, so that its memory can be measured."""

    def __init__(self, config: dict[str, Any]) -> None:
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
        super().__init__(peer_argv("server", json.dumps(fields)))
        first = self.line(15)
        assert first.startswith("port "), first
        self.port = int(first.split()[1])

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")


@contextlib.contextmanager
def server_process(config: dict[str, Any]) -> Iterator[ServerProcess]:
    """A server process with ``config`` (ServerConfig fields); it must stop cleanly."""
    server = ServerProcess(config)
    try:
        yield server
    finally:
        code = server.stop()
        errors = server.stderr()
        server.close()
        assert code == 0, f"server exited with {code}: {errors}"


class TLSClient(RawClient):
    """A ``RawClient`` with a chosen TLS context and, optionally, source address."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        context: ssl.SSLContext | None = None,
        source: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        raw = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        try:
            self.sock = (context or client_context()).wrap_socket(raw)
        except BaseException:
            raw.close()
            raise
        self._decoder = FrameDecoder(0)
        self._frames: list[bytes] = []
        self.timeout = timeout


def pair_chats(host: str, port: int, **hello: Any) -> None:
    """Two new clients join, chat both ways and quit: the server still serves."""
    clients: list[RawClient] = []
    try:
        for nick in ("healthy1", "healthy2"):
            client = RawClient(host, port)
            clients.append(client)
            client.join(nick, **hello)
        first, second = clients
        first.expect("join")
        for sender, receiver in ((first, second), (second, first)):
            text = f"hello from {sender.sock.getsockname()[1]}"
            sender.send({"type": "msg", "text": text})
            assert receiver.expect("msg")["text"] == text
        for client in clients:
            client.send({"type": "quit"})
            assert client.closed(5)
    finally:
        for client in clients:
            client.close()


def client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "a TLS handshake record"
    return hello


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes ``sock`` (EOF or reset) within ``timeout``; reads are discarded."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            return True
    return False
