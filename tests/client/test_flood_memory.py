"""Peak memory of the clients under a flood of 200,000 chat lines from a FakeServer, and
under a flood of 200 lines of a million characters that the front end does not take at once.

Each client runs in a child process of its own, whose peak RSS (VmHWM) is read at its end.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatsecure.testing import BIG_LINE, FakeServer, Mode
from tests.client.rss_probe import peak_rss_kib
from tests.helpers import CHATSECURE

PROBE = [sys.executable, "-m", "tests.client.rss_probe"]
FLOOD = 200_000
LIMIT_MIB = 120
BIG_LINES = 200
"""Lines of ``BIG_LINE`` characters: 200 MB, more than the limit, if the client took them all."""


def probe_peak_mib(cert_dir: Path, mode: Mode, count: int) -> float:
    """The peak RSS of a client core (``rss_probe``, its front end 3 s behind) taking all of
    a ``FakeServer``'s flood of ``count`` lines and its last one."""
    with FakeServer(cert_dir, mode, count=count) as server:
        done = subprocess.run(
            [*PROBE, str(server.port), "end of the flood", "3"],
            capture_output=True,
            text=True,
            timeout=110,
            check=True,
        )
    match = re.search(r"lines=(\d+) maxrss_kib=(\d+)", done.stdout)
    assert match, (done.stdout, done.stderr)
    assert int(match.group(1)) == count + 1
    return int(match.group(2)) / 1024


def start_terminal(
    port: int,
) -> tuple[subprocess.Popen[bytes], threading.Thread, list[bytes]]:
    """``chatsecure connect`` to a server on 127.0.0.1:``port``, with pipes; its stderr is
    collected (into the list returned) by a thread, for ``reap`` to join."""
    proc = subprocess.Popen(
        [*CHATSECURE, "connect", f"127.0.0.1:{port}", "--nick", "bob", "--accept-new",
         "--no-discovery"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    stderr: list[bytes] = []
    assert proc.stderr is not None
    err = proc.stderr
    err_reader = threading.Thread(target=lambda: stderr.extend(err), name="err")
    err_reader.start()
    return proc, err_reader, stderr


def reap(proc: subprocess.Popen[bytes], err_reader: threading.Thread) -> None:
    """End a terminal client (killed if it has not ended), its output read and closed."""
    if proc.returncode is None:
        proc.kill()
        proc.wait()
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.read()
    err_reader.join(10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()


@pytest.mark.slow
def test_client_core_peak_rss_under_a_flood_stays_under_120_mib(cert_dir: Path) -> None:
    peak_mib = probe_peak_mib(cert_dir, Mode.FLOOD, FLOOD)
    print(f"client core: peak RSS {peak_mib:.1f} MiB under {FLOOD} lines")
    assert peak_mib < LIMIT_MIB


@pytest.mark.slow
def test_terminal_client_peak_rss_under_a_flood_stays_under_120_mib(cert_dir: Path) -> None:
    with FakeServer(cert_dir, Mode.FLOOD, count=FLOOD) as server:
        proc, err_reader, stderr = start_terminal(server.port)
        assert proc.stdin is not None
        assert proc.stdout is not None
        lines = 0
        try:
            for line in proc.stdout:  # counted, not kept: the test's memory is not measured
                lines += b": flood " in line
                if line.endswith(b": end of the flood\n"):
                    break
            peak_kib = peak_rss_kib(str(proc.pid))  # the flood is over: its peak is known
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
            started = time.monotonic()
            proc.wait(10)
            left_in = time.monotonic() - started
        finally:
            reap(proc, err_reader)
    assert lines == FLOOD
    assert proc.returncode == 0, stderr
    assert left_in < 3.0
    peak_mib = peak_kib / 1024
    print(f"terminal client: peak RSS {peak_mib:.1f} MiB under {FLOOD} lines")
    assert peak_mib < LIMIT_MIB


@pytest.mark.slow
def test_client_core_peak_rss_under_huge_lines_it_does_not_take_stays_under_120_mib(
    cert_dir: Path,
) -> None:
    peak_mib = probe_peak_mib(cert_dir, Mode.BIG_LINES, BIG_LINES)
    print(f"client core: peak RSS {peak_mib:.1f} MiB under {BIG_LINES} lines of {BIG_LINE:,}")
    assert peak_mib < LIMIT_MIB


@pytest.mark.slow
def test_terminal_client_peak_rss_under_huge_lines_into_a_pipe_not_read_stays_under_120_mib(
    cert_dir: Path,
) -> None:
    """``chatsecure connect ... | less``, with ``less`` not reading for a while."""
    with FakeServer(cert_dir, Mode.BIG_LINES, count=BIG_LINES) as server:
        proc, err_reader, stderr = start_terminal(server.port)
        assert proc.stdin is not None
        assert proc.stdout is not None
        shown: list[bytes] = []
        try:
            time.sleep(3)  # nobody reads the pipe: the printer waits, the events pile up
            for line in proc.stdout:  # (their starts only: the test's memory is not measured)
                shown.append(line[:80])
                if line.endswith(b": end of the flood\n"):
                    break
            peak_kib = peak_rss_kib(str(proc.pid))
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
            proc.wait(10)
        finally:
            reap(proc, err_reader)
    big = [line.split(b": ", 1)[1].split(b" x", 1)[0] for line in shown if b": big " in line]
    assert big == [b"big %d" % n for n in range(1, BIG_LINES + 1)]
    assert proc.returncode == 0, stderr
    peak_mib = peak_kib / 1024
    print(f"terminal client: peak RSS {peak_mib:.1f} MiB under {BIG_LINES} lines of {BIG_LINE:,}")
    assert peak_mib < LIMIT_MIB
