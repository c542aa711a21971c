"""Redis restarted empty under running nodes: each node starts again on what Redis holds now.

A Redis without persistence that restarts (or is flushed) loses the room: its seq counter, its
ids and its presence start again. Nodes that read on from their old seq would acknowledge new
lines that reach nobody. Two real ``chatsecure server`` processes on a real redis-server that is
killed and started again empty: both find it, tell their clients ``shutdown``, start again on
the same ports, and lines said afterwards reach everyone, with the new log's seqs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatsecure.client.core import ChatClient, ClientEvent, Connected, Received, Sent, Target
from chatsecure.cluster import Evicted
from chatsecure.protocol.messages import Chat
from chatsecure.server import ChatServer, serve
from chatsecure.testing import RawClient, server_config
from chatsecure.tls.trust import KnownServers, TrustPolicy
from tests.helpers import ServerProcess, next_of
from tests.redis_server import RedisServer, cluster_nodes, free_port, private_redis, room_name

E = TypeVar("E")
HOST = "127.0.0.1"
WITHIN = 20.0
"""Seconds for a node to find the reset (a heartbeat a second), start again, and a client to
come back (its first pause)."""


@pytest.fixture
def empty_on_restart(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test only, with no persistence: a restart finds it empty."""
    yield from private_redis(tmp_path)


@pytest.fixture
def two_nodes(empty_on_restart: RedisServer, cert_dir: Path) -> Iterator[list[ServerProcess]]:
    yield from cluster_nodes(empty_on_restart, cert_dir, 2)


def next_chat(client: ChatClient, seen: list[ClientEvent]) -> tuple[int, str]:
    while True:
        message = next_of(client, Received, seen).message
        if isinstance(message, Chat):
            return message.seq, message.text


def frames_until(raw: RawClient, kind: str, timeout: float = WITHIN) -> list[dict[str, Any]]:
    """Frames ``raw`` gets up to the first of ``kind`` (bounded by ``timeout``)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not got or got[-1]["type"] != kind:
        got.append(raw.recv(max(0.1, deadline - time.monotonic())))
    return got


def test_nodes_start_again_on_a_redis_that_restarted_empty_and_lines_reach_everyone(
    empty_on_restart: RedisServer, two_nodes: list[ServerProcess]
) -> None:
    a, b = two_nodes
    carol = ChatClient(Target(HOST, b.port), "carol", TrustPolicy(KnownServers(), accept_new=True))
    carol.start()
    seen: list[ClientEvent] = []
    try:
        next_of(carol, Connected, seen)
        with RawClient(HOST, a.port) as alice:
            alice.join("alice", client="alice-id-1")
            for n in range(3):
                alice.send({"type": "msg", "text": f"before {n}", "ref": f"r{n}"})
                assert alice.expect("ack")["seq"] == n + 1
                assert next_chat(carol, seen) == (n + 1, f"before {n}")

            empty_on_restart.kill()
            empty_on_restart.restart()
            alice.send({"type": "msg", "text": "as it went", "ref": "r-gone"})

            # Node A finds that Redis lost the room and starts again: its clients are told.
            # The line said meanwhile is not refused (a refusal is final): it is the client's
            # to send again after the restart.
            got = frames_until(alice, "shutdown")
            assert got[-1] == {"type": "shutdown"}
            assert [f for f in got if f["type"] == "error"] == []

        # Carol's client comes back to node B by itself, into the new log.
        back = next_of(carol, Connected, seen, WITHIN)
        assert back.welcome.seq == 0
        # Node A listens again on the same port; its roster is the new room's.
        with RawClient(HOST, a.port, timeout=WITHIN) as alice:
            welcome = alice.join("alice", client="alice-id-1")
            assert [p["nick"] for p in welcome["peers"]] == ["carol"]
            carol.send("after the reset")
            assert next_of(carol, Sent, seen).seq == 1
            line = alice.expect("msg", WITHIN)
            assert (line["seq"], line["text"]) == (1, "after the reset")
            alice.send({"type": "msg", "text": "heard you", "ref": "r-after"})
            assert alice.expect("ack")["seq"] == 2
            assert next_chat(carol, seen) == (2, "heard you")
    finally:
        carol.close()

    for node in (a, b):
        code, err = node.stop()
        assert code == 0, err
        assert err.count("Redis lost what it held") == 1, err


@pytest.mark.parametrize("fixed", [False, True], ids=["ephemeral port", "fixed port"])
def test_a_server_that_cannot_reopen_the_log_at_once_tries_again_on_the_same_port(
    empty_on_restart: RedisServer, cert_dir: Path, fixed: bool
) -> None:
    redis = empty_on_restart
    port = free_port() if fixed else 0
    config = server_config(
        cert_dir, cluster=redis.url, name=room_name(), discovery=False, port=port
    )
    stop = asyncio.Event()
    running: list[ChatServer] = []
    loops: list[asyncio.AbstractEventLoop] = []
    failed: list[BaseException] = []

    def ready(server: ChatServer) -> None:
        running.append(server)
        loops.append(asyncio.get_running_loop())

    def run() -> None:
        try:
            asyncio.run(serve(config, ready=ready, stop=stop))
        except BaseException as exc:  # the test says what ended it
            failed.append(exc)

    thread = threading.Thread(target=run, name="test-serve")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not running:
            assert not failed, failed
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server, loop = running[0], loops[0]
        with RawClient(HOST, server.port) as alice:
            alice.join("alice")
            redis.kill()
            # What a heartbeat does when it finds this node swept; Redis is gone meanwhile,
            # so the new start fails, and is tried again.
            loop.call_soon_threadsafe(server.room._restart, Evicted())
            assert frames_until(alice, "shutdown")[-1] == {"type": "shutdown"}
        time.sleep(2.5)  # a failed start, and a pause, at least
        assert not failed, failed
        if fixed:  # let go meanwhile: a client is refused at once, not left to time out
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((HOST, server.port), timeout=5).close()
        redis.restart()
        deadline = time.monotonic() + WITHIN
        while True:  # (a fixed port refuses until the next try binds it again)
            try:
                back = RawClient(HOST, server.port, timeout=WITHIN)
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "not back on its port"
                time.sleep(0.2)
            else:
                break
        with back as alice:
            assert alice.join("alice")["you"]["nick"] == "alice"
    finally:
        if loops:
            loops[0].call_soon_threadsafe(stop.set)
        thread.join(30)
    assert not thread.is_alive()
    assert not failed, failed
