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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from chatsecure.protocol.frames import FrameDecoder
from chatsecure.testing import RawClient
from chatsecure.tls.context import client_context

PEER_PROCESS = Path(__file__).with_name("peer_process.py")


class Proc:
    """A child process whose stdout lines are collected by a thread, killed at the end."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
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
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"pid {self.pid} printed nothing in {timeout} s; stderr: {self.stderr_so_far()}"
            ) from None
        self.seen.append(line)
        return line

    def frames_until(
        self, done: Callable[[dict[str, Any]], bool], timeout: float
    ) -> list[dict[str, Any]]:
        """JSON lines up to and including the first for which ``done`` is true."""
        deadline = time.monotonic() + timeout
        frames: list[dict[str, Any]] = []
        while True:
            frame = json.loads(self.line(max(0.01, deadline - time.monotonic())))
            frames.append(frame)
            if done(frame):
                return frames

    def frames_for(self, seconds: float) -> list[dict[str, Any]]:
        """Every JSON line printed within ``seconds``."""
        time.sleep(seconds)
        frames = []
        while True:
            try:
                frames.append(json.loads(self._lines.get_nowait()))
            except queue.Empty:
                return frames

    def stderr_so_far(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return "(still running)"
        return self.popen.stderr.read()[-2000:]

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
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return self.popen.returncode


def peer_argv(*args: str, netns: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, sys.executable, str(PEER_PROCESS), *args]


class ServerProcess(Proc):
    """A chatsecure server in its own process, so that its memory can be measured."""

    def __init__(self, config: dict[str, Any], netns: str | None = None) -> None:
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in config.items()}
        super().__init__(peer_argv("server", json.dumps(fields), netns=netns))
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
def server_process(config: dict[str, Any], netns: str | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(config, netns)
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exited with {code}: {server.stderr_so_far()}"


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
            client.send({"type": "hello", "nick": nick, **hello})
            client.expect("welcome")
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
