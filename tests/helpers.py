"""Small helpers shared by the tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from chatsecure.client.core import ChatClient, ClientEvent
from chatsecure.testing import RawClient

E = TypeVar("E")

CHATSECURE = [sys.executable, "-m", "chatsecure"]
"""The installed command line, independent of PATH."""

QUIET = 0.2
"""Seconds to wait before deciding that nothing more is coming."""


def all_silent(*clients: RawClient, wait: float = QUIET) -> bool:
    """True if none of ``clients`` receives a frame within ``wait`` (one wait for all)."""
    time.sleep(wait)
    return all(client.silent(0.01) for client in clients)


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Wait until ``condition()`` is true; fail (saying ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out{': ' + what if what else ''}"
        time.sleep(0.005)


def chat_works(sender: RawClient, receiver: RawClient, text: str = "still chatting") -> None:
    """Assert that a message from ``sender`` reaches ``receiver`` intact."""
    sender.send({"type": "msg", "text": text})
    frame = receiver.expect("msg")
    assert frame["text"] == text


class ServerProcess:
    """``chatsecure server`` in a subprocess, on 127.0.0.1 with an ephemeral port.

    Reads what the server prints at start (where it listens, its fingerprint) with a
    deadline, so that a server that fails to start fails the test instead of hanging it.
    """

    def __init__(self, command: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", "0", "--no-discovery"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self._partial = b""
        """The start of a line the banner's last read ended in (the rest comes later)."""
        self.port = 0
        self.fingerprint = ""
        try:
            self._read_banner(deadline=time.monotonic() + 20)
        except BaseException:
            self.kill()
            raise

    def _read_banner(self, deadline: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()  # raw reads: select() cannot see a reader's buffer
        pending = self._partial
        while not (self.port and self.fingerprint):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"server printed no banner in time: {self.stdout}")
            chunk = os.read(fd, 4096)
            if not chunk:
                _, err = self.proc.communicate(timeout=5)
                raise AssertionError(f"server exited {self.proc.returncode}: {err}")
            *lines, pending = (pending + chunk).split(b"\n")
            for line in map(bytes.decode, lines):
                self.stdout.append(line)
                if match := re.search(r"listening on \S*:(\d+)", line):
                    self.port = int(match.group(1))
                if match := re.search(r"fingerprint: (SHA256:\S+)", line):
                    self.fingerprint = match.group(1)
        self._partial = pending

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        """Send ``sig``; return the exit code and everything the server logged."""
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the exit; return the exit code and everything the server logged."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        # (a line the banner's last read cut is not lost: "history: ..." after the fingerprint)
        self.stdout.append(self._partial.decode() + out)
        self._partial = b""
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def uvloop_server(data_dir: Path, *options: str) -> ServerProcess:
    """``chatsecure server`` on uvloop, its files in ``data_dir``, its senders not paced
    (``--msg-rate 0``), with ``options``."""
    command = [*CHATSECURE, "server", "--data-dir", str(data_dir), "--loop", "uvloop"]
    return ServerProcess([*command, "--msg-rate", "0", *options])


class Terminal:
    """``chatsecure connect ...`` in a subprocess, driven through pipes as a script would."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CHATSECURE, "connect", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.seen: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), name="term-out"),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), name="term-err"),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line.rstrip("\n"))

    @staticmethod
    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        """Run ``chatsecure ARGS`` to the end, with no input."""
        return subprocess.run(
            [*CHATSECURE, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def say(self, line: str) -> None:
        """Type a line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end_input(self) -> None:
        """Close stdin, as at the end of a script."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def expect(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """Read stdout lines until one matches ``pattern`` (a regex searched in the line)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} in {timeout} s; stdout: {self.seen}, "
                    f"stderr: {self.stderr}"
                ) from None
            if line is None:
                raise AssertionError(f"stdout ended before {pattern!r}: {self.seen}")
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def wait(self, timeout: float = 10) -> int:
        """Wait for the exit; return the exit code (stdout and stderr are read to the end)."""
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        while not self._lines.empty():
            line = self._lines.get()
            if line is not None:
                self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def next_of(client: ChatClient, kind: type[E], seen: list[ClientEvent], timeout: float = 10) -> E:
    """The next event of ``kind`` from ``client``; every event read on the way (that one
    included) is added to ``seen``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = client.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {kind.__name__} in {timeout} s: {seen[-5:]}") from None
        seen.append(event)
        if isinstance(event, kind):
            return event
