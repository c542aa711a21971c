"""Redis lost while the nodes run: a real redis-server killed (SIGKILL) and restarted.

The Redis keeps its data in an append-only file synced at every write (``appendfsync always``),
in the test's folder, so what was acknowledged before the kill is there after the restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatsecure.client.core import (
    ChatClient,
    ClientEvent,
    Connected,
    NotSent,
    Received,
    Sent,
    Target,
)
from chatsecure.protocol.codes import ErrorCode, NoticeCode
from chatsecure.protocol.messages import Error, Notice
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls.trust import KnownServers, TrustPolicy
from tests.helpers import next_of
from tests.redis_server import RedisServer, private_redis, room_name

E = TypeVar("E")

BACK_WITHIN = 15.0
"""Seconds a node may take to find Redis back (its feed retries every 5 s at most)."""


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test only, that keeps what it acknowledged across a kill."""
    yield from private_redis(tmp_path, persistent=True)


def told(seen: list[ClientEvent]) -> list[str]:
    """The codes of the notices among the events ``seen``."""
    return [
        e.message.code for e in seen if isinstance(e, Received) and isinstance(e.message, Notice)
    ]


def frames_until(receiver: RawClient, done: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    """Frames ``receiver`` gets until ``done`` says enough (bounded by ``BACK_WITHIN``)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + BACK_WITHIN
    while not done(got):
        got.append(receiver.recv(max(0.1, deadline - time.monotonic())))
    return got


def client_of(node: ServerThread, nick: str) -> ChatClient:
    """A client core started on ``node``, trusting it on first use."""
    client = ChatClient(
        Target(node.host, node.port), nick, TrustPolicy(KnownServers(), accept_new=True)
    )
    client.start()
    return client


def notices(received: list[dict[str, Any]]) -> list[str]:
    return [f["code"] for f in received if f["type"] == "notice"]


def test_redis_killed_and_restarted_keeps_clients_refuses_lines_and_loses_nothing(
    redis: RedisServer,  # first: stopped after the nodes
    start_server: Callable[..., ServerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = room_name()
    a, b = (start_server(cluster=redis.url, name=room, msg_rate=0) for _ in range(2))
    carol = client_of(b, "carol")
    seen: list[ClientEvent] = []
    try:
        next_of(carol, Connected, seen)
        with RawClient(a.host, a.port) as alice, RawClient(b.host, b.port) as bob:
            alice.join("alice")
            bob.join("bob")  # carol and alice are in bob's welcome, carol in alice's
            assert alice.expect("join")["peer"]["nick"] == "bob"
            # Before the kill: lines said on both nodes, each acknowledged.
            for n in range(5):
                alice.send({"type": "msg", "text": f"a{n}", "ref": f"a{n}"})
                assert alice.expect("ack")["seq"] == n + 1
            assert [m["text"] for m in frames_until(bob, lambda got: len(got) == 5)] == [
                f"a{n}" for n in range(5)
            ]
            for n in range(5):
                bob.send({"type": "msg", "text": f"b{n}", "ref": f"b{n}"})
                assert bob.expect("ack")["seq"] == n + 6
            assert [m["text"] for m in frames_until(alice, lambda got: len(got) == 5)] == [
                f"b{n}" for n in range(5)
            ]
            before = [f"a{n}" for n in range(5)] + [f"b{n}" for n in range(5)]

            caplog.set_level(logging.DEBUG, logger="chatsecure")
            redis.kill()

            # Both nodes keep their clients and tell them, once; lines said now are refused.
            for n in range(3):
                alice.send({"type": "msg", "text": f"lost {n}", "ref": f"x{n}"})
            got = frames_until(
                alice, lambda got: len([f for f in got if f["type"] == "error"]) == 3
            )
            errors = [f for f in got if f["type"] == "error"]
            assert [(e["code"], e["ref"]) for e in errors] == [
                (ErrorCode.NOT_STORED, f"x{n}") for n in range(3)
            ]
            assert "out of reach" in errors[0]["message"]
            if not notices(got):  # the store may fail before or after the feed notices
                got += frames_until(alice, lambda more: bool(notices(more)))
            assert notices(got) == [NoticeCode.CLUSTER_UNAVAILABLE]
            assert notices(frames_until(bob, notices)) == [NoticeCode.CLUSTER_UNAVAILABLE]
            carol.send("while down")
            assert next_of(carol, NotSent, seen).text == "while down"
            lost_logged = [
                r
                for r in caplog.records
                if r.name == "chatsecure.cluster" and "refused until" in r.getMessage()
            ]
            assert len(lost_logged) == 2, lost_logged  # once per node, not once per line

            redis.restart()

            for watcher in (alice, bob):
                back = frames_until(watcher, notices)
                assert notices(back) == [NoticeCode.CLUSTER_AVAILABLE]
                assert [f for f in back if f["type"] == "msg"] == []
            while len(told(seen)) < 2:
                next_of(carol, Received, seen, BACK_WITHIN)
            assert told(seen) == [NoticeCode.CLUSTER_UNAVAILABLE, NoticeCode.CLUSTER_AVAILABLE]

            # A new line after the restart reaches everyone once, with the next seq.
            bob.send({"type": "msg", "text": "after", "ref": "b-after"})
            assert bob.expect("ack", BACK_WITHIN)["seq"] == 11
            line = alice.expect("msg")
            assert (line["seq"], line["text"]) == (11, "after")
            received = next_of(carol, Received, seen).message
            assert (getattr(received, "seq", None), getattr(received, "text", None)) == (
                11,
                "after",
            )
            carol.send("carol is back")
            assert next_of(carol, Sent, seen).seq == 12
            assert (alice.expect("msg")["seq"], bob.expect("msg")["seq"]) == (12, 12)
            assert alice.silent()
            assert bob.silent()

            # Everything acknowledged before the kill is in Redis, nothing refused is.
            alice.send({"type": "history", "limit": 50})
            stored = frames_until(alice, lambda got: bool(got) and got[-1]["type"] == "history_end")
            texts = [f["text"] for f in stored if f["type"] == "msg"]
            assert texts == [*before, "after", "carol is back"]
            assert [f["seq"] for f in stored if f["type"] == "msg"] == list(range(1, 13))
    finally:
        carol.close()


def test_history_asked_while_redis_is_away_is_refused_by_name_and_answered_once_it_is_back(
    redis: RedisServer,  # first: stopped after the node
    start_server: Callable[..., ServerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = start_server(cluster=redis.url, name=room_name(), msg_rate=0)
    with RawClient(node.host, node.port) as alice:
        alice.join("alice")
        for n in range(3):
            alice.send({"type": "msg", "text": f"l{n}", "ref": f"r{n}"})
            alice.expect("ack")
        redis.kill()
        for ref in ("h-1", "h-2"):
            alice.send({"type": "history", "limit": 10, "ref": ref})
            got = frames_until(alice, lambda got: any(f["type"] == "error" for f in got))
            [error] = [f for f in got if f["type"] == "error"]
            assert (error["code"], error["ref"]) == (ErrorCode.HISTORY_UNAVAILABLE, ref)
            assert "history_end" not in [f["type"] for f in got]
        warned = [r for r in caplog.records if "history requests cannot be answered" in r.message]
        assert len(warned) == 1, "logged once while it lasts, not once per request"

        redis.restart()
        frames_until(alice, lambda got: NoticeCode.CLUSTER_AVAILABLE in notices(got))
        alice.send({"type": "history", "limit": 10, "ref": "h-3"})
        got = frames_until(alice, lambda got: bool(got) and got[-1]["type"] == "history_end")
        assert [f["text"] for f in got if f["type"] == "msg"] == ["l0", "l1", "l2"]
        assert got[-1] == {"type": "history_end", "before": None, "count": 3, "ref": "h-3"}


def test_a_client_hears_its_history_request_refused_as_the_end_of_its_answer(
    redis: RedisServer,  # first: stopped after the node
    start_server: Callable[..., ServerThread],
) -> None:
    """The front ends take only an answer's end (``older``) for the end of their request."""
    node = start_server(cluster=redis.url, name=room_name(), msg_rate=0)
    carol = client_of(node, "carol")
    seen: list[ClientEvent] = []
    try:
        next_of(carol, Connected, seen)
        carol.send("one")
        next_of(carol, Sent, seen)
        carol.request_history(None, 10)
        answer = [next_of(carol, Received, seen) for _ in range(2)]
        assert [(type(r.message).__name__, r.older) for r in answer] == [
            ("Chat", True),
            ("HistoryEnd", True),
        ]
        redis.kill()
        carol.request_history(None, 10)
        refused = next_of(carol, Received, seen)
        while isinstance(refused.message, Notice):  # (the outage's notice may come first)
            refused = next_of(carol, Received, seen)
        assert isinstance(refused.message, Error)
        assert (refused.message.code, refused.older) == (ErrorCode.HISTORY_UNAVAILABLE, True)
    finally:
        carol.close()
