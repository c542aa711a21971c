"""A client given several servers of one cluster moves to the next when its own is killed.

Two real ``chatsecure server`` processes on one Redis; node A is killed with SIGKILL while a
``ChatClient`` is on it. The client reconnects to node B by itself, trusts it because it shows
the certificate pinned for A (nodes share one), and resumes with no gap and no duplicate.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from chatsecure.client.core import (
    ChatClient,
    ClientEvent,
    Connected,
    Received,
    Reconnecting,
    Sent,
    Target,
)
from chatsecure.protocol.messages import Chat
from chatsecure.testing import RawClient
from chatsecure.tls.trust import KnownServers, TrustPolicy
from tests.helpers import ServerProcess, next_of
from tests.redis_server import RedisServer, cluster_nodes

E = TypeVar("E")
HOST = "127.0.0.1"


@pytest.fixture
def two_nodes(redis_server: RedisServer, cert_dir: Path) -> Iterator[list[ServerProcess]]:
    yield from cluster_nodes(redis_server, cert_dir, 2)


def chats(seen: list[ClientEvent]) -> list[tuple[int, str]]:
    return [
        (e.message.seq, e.message.text)
        for e in seen
        if isinstance(e, Received) and isinstance(e.message, Chat)
    ]


def test_a_client_whose_node_is_killed_resumes_on_the_next_with_no_gap_and_no_duplicate(
    two_nodes: list[ServerProcess],
) -> None:
    a, b = two_nodes
    store = KnownServers()
    store.pin(HOST, a.port, a.fingerprint)  # only A is known: B must be taken for the same room
    carol = ChatClient(
        Target(HOST, a.port, others=((HOST, b.port),)),
        "carol",
        TrustPolicy(store),  # no question can be asked, no new server accepted blindly
        client_id="client-carol-01",
    )
    seen: list[ClientEvent] = []
    carol.start()
    try:
        first = next_of(carol, Connected, seen)
        assert (first.port, first.fingerprint) == (a.port, a.fingerprint)
        with RawClient(HOST, b.port) as bob:
            bob.join("bob")
            for n in range(3):
                carol.send(f"carol {n}")
                assert next_of(carol, Sent, seen).seq == 2 * n + 1
                bob.send({"type": "msg", "text": f"bob {n}", "ref": f"b{n}"})
                assert bob.expect("msg")["text"] == f"carol {n}"
                assert bob.expect("ack")["seq"] == 2 * n + 2
                while len(chats(seen)) < n + 1:
                    next_of(carol, Received, seen)

            a.proc.send_signal(signal.SIGKILL)
            a.wait()
            for n in range(2):  # said while carol is away
                bob.send({"type": "msg", "text": f"missed {n}", "ref": f"m{n}"})
                assert bob.expect("ack")["seq"] == 7 + n

            next_of(carol, Reconnecting, seen)
            back = next_of(carol, Connected, seen, timeout=20)
            assert (back.port, back.fingerprint) == (b.port, a.fingerprint)
            assert (back.resumed, back.missed) == (True, 2)
            assert store.get(HOST, b.port) == a.fingerprint  # pinned now, without a question
            while len(chats(seen)) < 5:
                next_of(carol, Received, seen)
            # Her place on the dead node is taken at once: no carol_2 until A is swept.
            assert back.welcome.you.nick == "carol"
            assert bob.expect("leave")["reason"] == "replaced"
            assert bob.expect("join")["peer"]["nick"] == "carol"
            carol.send("carol is back")
            assert next_of(carol, Sent, seen).seq == 9
            line = bob.expect("msg")
            assert (line["seq"], line["text"]) == (9, "carol is back")
            bob.send({"type": "msg", "text": "welcome back", "ref": "w"})
            assert bob.expect("ack")["seq"] == 10
            while len(chats(seen)) < 6:
                next_of(carol, Received, seen)
            # Everything bob said, once each, in order, and nothing else.
            assert chats(seen) == [
                (2, "bob 0"),
                (4, "bob 1"),
                (6, "bob 2"),
                (7, "missed 0"),
                (8, "missed 1"),
                (10, "welcome back"),
            ]
            assert bob.silent()
    finally:
        carol.close()
