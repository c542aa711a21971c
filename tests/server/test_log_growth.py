"""A client that connects and quits in a loop cannot grow the server's log without bound."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatsecure.protocol import limits
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls.context import client_context
from tests.helpers import CHATSECURE, ServerProcess

HOST = "127.0.0.1"

CYCLES = 200


def presence_records(caplog: pytest.LogCaptureFixture) -> tuple[int, int, list[str]]:
    """(join/leave lines logged, joins and leaves summarised as not logged, every line)."""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("chatsecure")]
    logged = sum(bool(re.search(r" (joined from|left \()", line)) for line in lines)
    summarised = sum(
        int(m.group(1))
        for line in lines
        if (m := re.search(r": (\d+) more joins and leaves", line))
    )
    return logged, summarised, lines


def test_join_and_leave_lines_are_capped_per_address_and_summarised(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chatsecure")
    server = start_server(idle_timeout=4.0)  # a sweep, and so a summary, every 0.5 s
    for n in range(CYCLES):
        with RawClient(server.host, server.port) as client:
            client.join(f"churn{n}")
            client.send({"type": "quit"})
            assert client.closed()
    server.wait_online(0)
    deadline = time.monotonic() + 5
    while presence_records(caplog)[:2] != (
        limits.PRESENCE_LOG_LINES,
        2 * CYCLES - limits.PRESENCE_LOG_LINES,
    ):
        assert time.monotonic() < deadline, presence_records(caplog)
        time.sleep(0.05)
    logged, summarised, lines = presence_records(caplog)
    assert logged == limits.PRESENCE_LOG_LINES
    assert logged + summarised == 2 * CYCLES, "every join and leave is logged or counted"
    # The first 10 cycles in full, then at most one summary per sweep while it went on.
    assert len(lines) < 100, lines
    assert sum(map(len, lines)) < 8000


def test_event_loop_messages_are_capped_when_clients_hang_up_on_a_long_replay(
    tmp_path: Path, cert_dir: Path
) -> None:
    """A client that asks for a replay of megabytes and hangs up at once, a hundred times:
    the event loop (uvloop: "SSL connection is closed") logs under the same budget as the
    server's own warnings."""
    server = ServerProcess(
        [
            *CHATSECURE, "server",
            "--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key"),
            "--db", str(tmp_path / "history.sqlite3"),
            "--msg-rate", "0", "--max-text", "4000", "--replay-max", "1000",
        ]
    )  # fmt: skip
    try:
        with RawClient(HOST, server.port) as seeder:
            seeder.join("seeder", client="seeder-client")
            for n in range(1000):
                seeder.send({"type": "msg", "text": f"{n} " + "x" * 3990, "ref": str(n)})
            for _ in range(1000):
                seeder.expect("ack", 30)
        hello = {"type": "hello", "nick": "stormy", "client": "storm-client-id", "since": 0}
        for _ in range(100):
            raw = socket.create_connection((HOST, server.port), timeout=5)
            with client_context().wrap_socket(raw) as sock:
                sock.sendall(json.dumps(hello).encode() + b"\n")
        code, err = server.stop()
    finally:
        server.kill()
    assert code == 0, err[-2000:]
    loop_lines = [line for line in err.splitlines() if " asyncio: " in line]
    assert len(loop_lines) <= 20, loop_lines[:5]
