"""A real server killed with SIGKILL mid-conversation: no acknowledged line lost or doubled.

Three ``ChatClient``s keep typing while the server process is killed (no shutdown, no last
commit) and started again on the same database and port. The clients come back by themselves,
re-send what was not acknowledged, and get what they missed. At the end the database, and every
client's transcript, hold each line once, in one order, with seq 1, 2, 3 ... and no gap.
"""

from __future__ import annotations

import collections
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatsecure.client.core import (
    ChatClient,
    ClientEvent,
    Connected,
    Disconnected,
    Queued,
    Received,
    Reconnecting,
    Sent,
    Target,
)
from chatsecure.protocol.messages import Chat
from chatsecure.tls.trust import KnownServers, TrustPolicy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CLIENTS = 3
LINES = 70
"""Lines each client types."""
PACE = 0.03
"""Seconds between two lines of one client."""
KILL_AFTER = CLIENTS * LINES // 3
"""Acknowledged lines (all clients together) before the kill: a third of the way in."""
DEADLINE = 50.0
"""Seconds the whole test may take, start to finish."""


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's pick), to reuse for the restart."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """``python -m chatsecure.server`` on a fixed port, its output in files."""

    def __init__(self, tmp: Path, cert_dir: Path, port: int, name: str) -> None:
        self.out = tmp / f"{name}.out"
        self.err = tmp / f"{name}.err"
        command = [
            sys.executable,
            "-m",
            "chatsecure.server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-discovery",
            "--cert",
            str(cert_dir / "server.crt"),
            "--key",
            str(cert_dir / "server.key"),
            "--db",
            str(tmp / "room.sqlite3"),
            "--msg-rate",
            "0",  # the clients type faster than people do; this test is not about the limit
        ]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                command, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        deadline = time.monotonic() + 20
        while "listening on" not in self.out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start: {self.err.read_text()}")
            time.sleep(0.05)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Recorder:
    """Takes a client's events off its queue on a thread of its own, as a front end would."""

    def __init__(self, client: ChatClient, deadline: float) -> None:
        self.client = client
        self.events: list[ClientEvent] = []
        self._deadline = deadline
        self._thread = threading.Thread(target=self._drain, name="kill9-events")
        self._thread.start()

    def _drain(self) -> None:
        while time.monotonic() < self._deadline:
            try:
                event = self.client.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self.events.append(event)
            if isinstance(event, Disconnected):
                return

    def join(self) -> None:
        self._thread.join(max(self._deadline - time.monotonic(), 0) + 1)

    def of(self, kind: type[ClientEvent]) -> list[ClientEvent]:
        return [event for event in list(self.events) if isinstance(event, kind)]

    @property
    def queued(self) -> dict[str, str]:
        return {e.ref: e.text for e in self.of(Queued) if isinstance(e, Queued)}

    @property
    def sent(self) -> list[Sent]:
        return [e for e in self.of(Sent) if isinstance(e, Sent)]

    @property
    def received(self) -> list[Chat]:
        return [
            e.message
            for e in self.of(Received)
            if isinstance(e, Received) and isinstance(e.message, Chat) and not e.older
        ]


def wait_until(what: str, done: object, deadline: float) -> None:
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def type_lines(clients: list[ChatClient]) -> None:
    """Each client types ``LINES`` lines, ``PACE`` seconds apart, the clients interleaved."""
    for n in range(LINES):
        for c, client in enumerate(clients):
            client.send(f"c{c} line {n}")
            time.sleep(PACE / CLIENTS)


def stored_lines(db: Path) -> list[tuple[int, str, str, str]]:
    """(seq, client id, nick, text) of every stored line, read-only."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT seq, client, nick, text FROM lines_named ORDER BY seq"
        ).fetchall()
    conn.close()
    return [(int(seq), str(client), str(nick), str(text)) for seq, client, nick, text in rows]


def test_a_server_killed_mid_conversation_loses_and_doubles_no_acknowledged_line(
    tmp_path: Path, cert_dir: Path
) -> None:
    deadline = time.monotonic() + DEADLINE
    port = free_port()
    server = Server(tmp_path, cert_dir, port, "first")
    clients: list[ChatClient] = []
    recorders: list[Recorder] = []
    typist: threading.Thread | None = None
    try:
        for c in range(CLIENTS):
            client = ChatClient(
                Target("127.0.0.1", port),
                f"user{c}",
                TrustPolicy(KnownServers(tmp_path / f"known{c}"), accept_new=True),
                reconnect=True,
                client_id=f"kill9-client-{c}",
            )
            clients.append(client)
            recorders.append(Recorder(client, deadline))
            client.start()
        wait_until("everyone is in", lambda: all(r.of(Connected) for r in recorders), deadline)

        typist = threading.Thread(target=type_lines, args=(clients,), name="kill9-typist")
        typist.start()
        wait_until(
            f"{KILL_AFTER} lines are acknowledged",
            lambda: sum(len(r.sent) for r in recorders) >= KILL_AFTER,
            deadline,
        )
        server.kill9()  # mid-stream: lines on the wire, in a commit, acked but unread ...
        acked_before = sum(len(r.sent) for r in recorders)
        server = Server(tmp_path, cert_dir, port, "second")

        typist.join(max(deadline - time.monotonic(), 0))
        assert not typist.is_alive(), "typing never ended"
        wait_until(
            "every line is acknowledged",
            lambda: all(
                len(r.queued) == LINES and {s.ref for s in r.sent} == set(r.queued)
                for r in recorders
            ),
            deadline,
        )
        total = CLIENTS * LINES
        wait_until(
            "everyone has everyone's lines",
            lambda: all(
                len({m.seq for m in r.received} | {s.seq for s in r.sent}) >= total
                for r in recorders
            ),
            deadline,
        )
    finally:
        if typist is not None:
            typist.join(max(deadline - time.monotonic(), 0))
        for client in clients:
            client.close()
        for recorder in recorders:
            recorder.join()
        server.stop()

    assert acked_before < CLIENTS * LINES, "the kill came after the end: it proves nothing"
    for c, recorder in enumerate(recorders):
        assert recorder.of(Reconnecting), f"client {c} never noticed the kill"
        connected = [e for e in recorder.of(Connected) if isinstance(e, Connected)]
        assert len(connected) >= 2
        assert connected[-1].resumed, f"client {c} was not resumed: the log went back"

    # The database: seq 1, 2, 3 ..., every line typed exactly once, from whoever typed it.
    rows = stored_lines(tmp_path / "room.sqlite3")
    assert [seq for seq, *_ in rows] == list(range(1, len(rows) + 1)), "a gap or a reused seq"
    texts = collections.Counter(text for *_, text in rows)
    typed = {f"c{c} line {n}" for c in range(CLIENTS) for n in range(LINES)}
    assert set(texts) == typed
    assert [t for t, count in texts.items() if count > 1] == [], "stored twice"
    for _, client_id, nick, text in rows:
        c = text.split()[0][1:]
        assert (client_id, nick) == (f"kill9-client-{c}", f"user{c}")
    log = [(seq, text) for seq, _, _, text in rows]

    for c, recorder in enumerate(recorders):
        sent = [(s.seq, s.text) for s in recorder.sent]
        received = [(m.seq, m.text) for m in recorder.received]
        # Every acknowledged line is in the database as the seq the ack said.
        assert set(sent) <= set(log), f"client {c} was told a seq the database does not hold"
        assert len({s.ref for s in recorder.sent}) == len(sent), "acked twice"
        # Nothing received twice, and in order as it came.
        seqs = [seq for seq, _ in received]
        assert seqs == sorted(set(seqs)), f"client {c} received a seq twice or out of order"
        # Received and own lines together: the database, in its order, each line once (an
        # own line whose ack the kill took comes back in the replay as that ack).
        assert not set(sent) & set(received), f"client {c} shows a line twice"
        assert sorted([*sent, *received]) == log, f"client {c} shows another history"
