"""A client that connects and quits in a loop cannot grow the server's log without bound."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import pytest

from chatsecure.protocol import limits
from chatsecure.testing import RawClient, ServerThread

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
