"""A node that falls behind the room's stream still gets every line: real nodes, real Redis.

The log keeps the newest ``--history`` lines, and more while a live node has not read them
(its heartbeat says how far it read). A node is made to lag by stopping its process (SIGSTOP)
for less than the time after which the others would take it for lost.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chatsecure.history.redis import room_prefix
from chatsecure.testing import RawClient
from tests.helpers import ServerProcess
from tests.redis_server import RedisServer, cluster_node, room_name

HOST = "127.0.0.1"
KEEP = 10
"""The nodes' ``--history``: the test says far more lines than this while one node sleeps."""


@pytest.fixture
def room() -> str:
    return room_name()


@pytest.fixture
def two_nodes(
    redis_server: RedisServer, cert_dir: Path, room: str
) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    options = ("--history", str(KEEP))
    try:
        started.extend(cluster_node(redis_server, room, cert_dir, *options) for _ in range(2))
        yield started
    finally:
        for process in started:
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGCONT)
            process.kill()


def test_a_node_that_lags_far_behind_loses_no_line(
    two_nodes: list[ServerProcess], redis_server: RedisServer, room: str
) -> None:
    a, b = two_nodes
    stream = room_prefix(room) + "log"
    count = 5 * KEEP
    with RawClient(HOST, a.port) as ann, RawClient(HOST, b.port) as bob:
        ann.join("ann")
        bob.join("bob", client="client-bob-01")
        ann.expect("join")
        read_by_all(redis_server, room, 0)  # both nodes' heartbeats say where they read
        b.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            for n in range(count):
                ann.send({"type": "msg", "text": f"line {n}", "ref": f"r{n}"})
            assert [ann.expect("ack")["seq"] for _ in range(count)] == list(range(1, count + 1))
            # Well before b could be taken for lost (presence.NODE_TTL): it is only slow.
            assert time.monotonic() - stopped < 3.0
            assert redis_length(redis_server, stream) == count  # kept for b
        finally:
            b.proc.send_signal(signal.SIGCONT)
        got = [(m["seq"], m["text"]) for m in (bob.expect("msg") for _ in range(count))]
        assert got == [(n + 1, f"line {n}") for n in range(count)]
        assert bob.silent()
        # Once b has read them (its next heartbeat says so), the next store trims the log.
        read_by_all(redis_server, room, count)
        ann.send({"type": "msg", "text": "after", "ref": "r-after"})
        assert ann.expect("ack")["seq"] == count + 1
        assert redis_length(redis_server, stream) == KEEP
        assert bob.expect("msg")["text"] == "after"


def read_by_all(server: RedisServer, room: str, seq: int, timeout: float = 10.0) -> None:
    """Wait until both nodes' heartbeats say they have read up to ``seq``."""
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(server.url) as client:
        while time.monotonic() < deadline:
            positions = client.hvals(room_prefix(room) + "read")
            if len(positions) == 2 and min(int(p) for p in positions) >= seq:
                return
            time.sleep(0.1)
    raise AssertionError(f"the nodes have not both read up to {seq} within {timeout} s")


def redis_length(server: RedisServer, stream: str) -> int:
    with redis.Redis.from_url(server.url) as client:
        return int(client.xlen(stream))
