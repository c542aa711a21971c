"""A flood of ``history`` requests from one address: the room keeps chatting at full speed."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chatsecure.history import Draft
from chatsecure.history.sqlite import SqliteLog
from chatsecure.protocol.limits import HISTORY_WAITING_MAX
from chatsecure.protocol.messages import Peer
from chatsecure.testing import RawClient, joined
from tests.helpers import CHATSECURE, ServerProcess

HOST = "127.0.0.1"
LINES = 300
"""Stored lines, each the longest a client may say in the widest characters (16 KB of UTF-8):
a full page of history (200 lines) is about 3.2 MB."""
BIG = "\U0001f600" * 3990
FLOODERS = 3
"""Threads that each connect, ask for 20 full pages at once (the whole burst of the frame
rate limit) and hang up, again every ``FLOOD_EVERY`` seconds, for ``FLOOD_SECONDS``: the
audit's reproduction (which made 8 connections a second), a little faster."""
FLOOD_EVERY = 0.15
FLOOD_SECONDS = 5.0
SAY_EVERY = 0.25
"""Seconds between alice's lines: within the frame rate limit (5 a second)."""
PAGES = 20
PAGE = 5
"""The patient asker's requests: ``PAGES`` pages of ``PAGE`` lines, paging back, all sent at
once; each must be answered in full, in order."""
LINE_TIMEOUT = 10.0
"""Seconds a line may take before the test gives up on it."""
LATENCY_MEDIAN = 0.05
LATENCY_P90 = 0.15
"""An honest line's ack (and its receipt by another member) during the flood. Measured on 2
shared cores: before answers to one address were paced, the history reads queued up on the
log's thread ahead of the commits, and the lines took 0.45, 0.85, 1.9, 3.4, 7.3 s, then more
than 10 s (the server busy 21 s of CPU meanwhile); after, a median of 1.5-1.8 ms, p90 5-12 ms
(0.2-0.4 s of CPU in the 5 s of the flood)."""


def seed(path: Path) -> None:
    """Store ``LINES`` big lines in a room log at ``path``, before its server starts."""

    async def fill() -> None:
        log = SqliteLog(path, 10_000)
        await log.open(0)
        peer = Peer("1", "seeder", HOST)
        for first in range(1, LINES + 1, 100):
            drafts = [
                Draft(peer, f"{n} {BIG}", time.time(), None, None)
                for n in range(first, first + 100)
            ]
            await log.append(drafts)
        await log.close()

    asyncio.run(fill())


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood(port: int, stop: threading.Event, name: str, connections: list[int]) -> None:
    """Connect, ask for ``PAGES`` full pages at once, hang up; again until ``stop``."""
    ask = b'{"type":"history","limit":200}\n' * PAGES
    for n in range(1000):
        started = time.monotonic()
        with RawClient(HOST, port) as client:
            client.join(f"{name}x{n}")
            client.send_raw(ask)
        connections.append(1)
        if stop.wait(max(0.0, started + FLOOD_EVERY - time.monotonic())):
            return


def patient(port: int, answers: list[list[int]], errors: list[str]) -> None:
    """Ask for ``PAGES`` pages, paging back, as many at once as may wait
    (``HISTORY_WAITING_MAX``), and read every answer to its end."""

    def ask(client: RawClient, page: int) -> None:
        before = LINES + 1 - page * PAGE
        client.send({"type": "history", "before": before, "limit": PAGE, "ref": str(page)})

    try:
        with RawClient(HOST, port, timeout=60) as client:
            client.join("patient")
            for page in range(HISTORY_WAITING_MAX):
                ask(client, page)
            for page in range(PAGES):
                seqs: list[int] = []
                while True:
                    frame = client.recv()
                    if frame["type"] == "history_end":
                        assert frame["ref"] == str(page), frame
                        assert frame["count"] == len(seqs), frame
                        break
                    if frame["type"] == "msg" and frame.get("history"):  # (not alice's)
                        assert frame["text"] == f"{frame['seq']} {BIG}"
                        seqs.append(frame["seq"])
                answers.append(seqs)
                if page + HISTORY_WAITING_MAX < PAGES:  # (this one is answered: one more)
                    ask(client, page + HISTORY_WAITING_MAX)
    except (AssertionError, OSError, EOFError, TimeoutError) as exc:
        errors.append(repr(exc)[:300])


def chat_latencies(
    alice: RawClient, bob: RawClient, seconds: float, latencies: list[float]
) -> None:
    """Alice says a line every ``SAY_EVERY``: for each, the later of its ack and bob's
    receipt."""
    for i in range(int(seconds / SAY_EVERY)):
        sent = time.monotonic()
        alice.send({"type": "msg", "text": f"line {i}", "ref": f"r{i}"})
        acked = got = False
        while not (acked and got):
            if not acked:
                frame: dict[str, Any] = alice.recv(LINE_TIMEOUT)
                acked = frame["type"] == "ack" and frame["ref"] == f"r{i}"
            else:
                frame = bob.recv(LINE_TIMEOUT)
                got = frame["type"] == "msg" and frame["text"] == f"line {i}"
        latencies.append(time.monotonic() - sent)
        time.sleep(max(0.0, sent + SAY_EVERY - time.monotonic()))


def test_a_history_flood_from_one_address_leaves_the_room_chatting_fast(
    tmp_path: Path, cert_dir: Path
) -> None:
    """The audit's flood (connections from one address each asking for 20 pages of 3.2 MB
    and hanging up), bounded: the other members' lines keep their usual latency, and a
    member of that address asking for 20 pages at once gets each of them whole, in order."""
    db = tmp_path / "history.sqlite3"
    seed(db)
    server = ServerProcess(
        [
            *CHATSECURE, "server",
            "--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key"),
            "--db", str(db), "--replay", "0",  # (the welcome's replay is another matter)
        ]
    )  # fmt: skip
    try:
        with joined(HOST, server.port, "alice", "bob") as (alice, bob):
            quiet: list[float] = []
            chat_latencies(alice, bob, 1.0, quiet)
            busy: list[float] = []
            stop = threading.Event()
            connections: list[int] = []
            answers: list[list[int]] = []
            errors: list[str] = []
            threads = [
                threading.Thread(target=flood, args=(server.port, stop, f"f{n}", connections))
                for n in range(FLOODERS)
            ]
            threads.append(threading.Thread(target=patient, args=(server.port, answers, errors)))
            cpu0 = cpu_seconds(server.proc.pid)
            for thread in threads:
                thread.start()
            stalled = False
            try:
                chat_latencies(alice, bob, FLOOD_SECONDS, busy)
            except TimeoutError:
                stalled = True
            finally:
                stop.set()
                cpu = cpu_seconds(server.proc.pid) - cpu0
                for thread in threads:
                    thread.join(60)
            if stalled:
                pytest.fail(
                    f"a line had no ack in {LINE_TIMEOUT} s, those before took {busy}; "
                    f"{len(connections)} flooding connections, server CPU {cpu:.1f} s"
                )
        code, err = server.stop()
    finally:
        server.kill()
    assert code == 0, err[-2000:]
    busy.sort()
    median, p90 = statistics.median(busy), busy[int(len(busy) * 0.9)]
    print(
        f"{len(connections)} flooding connections; server CPU {cpu:.1f} s in {FLOOD_SECONDS} s; "
        f"a line before: median {statistics.median(quiet) * 1e3:.1f} ms; during: median "
        f"{median * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms, max {busy[-1] * 1e3:.0f} ms"
    )
    assert errors == []
    expected = [list(range(LINES + 1 - (p + 1) * PAGE, LINES + 1 - p * PAGE)) for p in range(PAGES)]
    assert answers == expected, "every page whole, in order"
    assert len(connections) >= 10, "the flood went on"
    assert median < LATENCY_MEDIAN, f"a line took {median:.3f} s (median) during the flood"
    assert p90 < LATENCY_P90, f"a line took {p90:.3f} s (p90) during the flood"
