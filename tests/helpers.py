"""Small helpers shared by the tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from chatsecure.testing import RawClient

CHATSECURE = [sys.executable, "-m", "chatsecure"]
"""The installed command line, independent of PATH."""

QUIET = 0.2
"""Seconds to wait before deciding that nothing more is coming."""


def all_silent(*clients: RawClient, wait: float = QUIET) -> bool:
    """True if none of ``clients`` receives a frame within ``wait`` (one wait for all)."""
    time.sleep(wait)
    return all(client.silent(0.01) for client in clients)


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
        pending = b""
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
        self.stdout.append(out)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
