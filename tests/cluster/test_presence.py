"""Presence across the nodes of a cluster: real servers, a real redis-server, loopback only.

Rosters are rebuilt by the real client session (``ClientSession``) from the frames it gets;
a killed node is a ``chatsecure server`` subprocess sent SIGKILL.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsecure.presence import nick_arguments
from chatsecure.protocol.client import ClientSession, Presence, SessionEvent, Welcomed
from chatsecure.protocol.messages import Join, Leave, Peer
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls.context import client_context
from tests.helpers import ServerProcess
from tests.redis_server import RedisServer, cluster_nodes, room_name

Start = Callable[..., ServerThread]
Nodes = Callable[[int], list[ServerThread]]
HOST = "127.0.0.1"

LOST_WITHIN = 10.0
"""Seconds within which the users of a killed node must be gone from everyone's roster."""


@pytest.fixture
def nodes(start_server: Start, redis_server: RedisServer) -> Nodes:
    """Start ``count`` servers of one new room on the test Redis (one certificate for all)."""

    def start(count: int) -> list[ServerThread]:
        room = room_name()
        return [start_server(cluster=redis_server.url, name=room, msg_rate=0) for _ in range(count)]

    return start


class Member:
    """A real ``ClientSession`` on a blocking TLS socket, and the roster it rebuilt."""

    def __init__(self, node: ServerThread, nick: str) -> None:
        raw = socket.create_connection((node.host, node.port), timeout=5)
        self.sock = client_context().wrap_socket(raw)
        self.session = ClientSession(nick, client_id=f"client-{uuid.uuid4().hex}")
        self.roster: dict[str, Peer] = {}
        self.me: Peer | None = None
        self.session.connect()
        self.sock.sendall(self.session.data_to_send())
        self.until(lambda: self.me is not None)

    def take(self, events: list[SessionEvent]) -> None:
        for event in events:
            match event:
                case Welcomed(welcome=welcome):
                    self.me = welcome.you
                    self.roster = {p.id: p for p in (welcome.you, *welcome.peers)}
                case Presence(message=Join(peer=peer)):
                    assert peer.id not in self.roster, f"{peer} joined twice"
                    self.roster[peer.id] = peer
                case Presence(message=Leave(peer=peer)):
                    assert self.roster.pop(peer.id, None) is not None, f"{peer} left twice"

    def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read and take frames until ``done()`` (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"not done in {timeout} s; roster {sorted(self.nicks())}"
            self.sock.settimeout(min(remaining, 0.2))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            assert data, "the server closed the connection"
            self.take(self.session.receive_data(data))
            if out := self.session.data_to_send():
                self.sock.sendall(out)

    def nicks(self) -> set[str]:
        return {p.nick for p in self.roster.values()}

    def close(self) -> None:
        self.session.quit()
        self.sock.sendall(self.session.data_to_send())
        self.sock.close()


@pytest.fixture
def members() -> Iterator[Callable[[ServerThread, str], Member]]:
    opened: list[Member] = []

    def join(node: ServerThread, nick: str) -> Member:
        member = Member(node, nick)
        opened.append(member)
        return member

    yield join
    for member in opened:
        member.sock.close()


def room_of(*servers: ServerThread) -> dict[str, Peer]:
    """Everyone joined on any of ``servers``, by id, as the servers know them."""
    room: dict[str, Peer] = {}
    for server in servers:
        peers = server.call(lambda s=server: [m.peer for m in s.server.room.members.values()])
        room.update({p.id: p for p in peers if p is not None})
    return room


def test_every_roster_is_the_union_of_the_nodes_after_joins_and_leaves_on_both(
    nodes: Nodes, members: Callable[[ServerThread, str], Member]
) -> None:
    a, b = nodes(2)
    alice, bob, carol, dave = (
        members(a, "alice"),
        members(b, "bob"),
        members(a, "carol"),
        members(b, "dave"),
    )
    everyone = [alice, bob, carol, dave]
    for member in everyone:
        member.until(lambda m=member: len(m.roster) == 4)  # type: ignore[misc]
    room = room_of(a, b)
    assert sorted(p.nick for p in room.values()) == ["alice", "bob", "carol", "dave"]
    for member in everyone:
        assert member.roster == room

    carol.close()  # on A
    dave.close()  # on B
    erin = members(b, "erin")
    still = [alice, bob, erin]
    for member in still:
        member.until(lambda m=member: m.nicks() == {"alice", "bob", "erin"})  # type: ignore[misc]
    room = room_of(a, b)
    assert len(room) == 3
    for member in still:
        assert member.roster == room


def test_a_nick_taken_on_one_node_gets_a_suffix_on_the_other(nodes: Nodes) -> None:
    a, b = nodes(2)
    with RawClient(a.host, a.port) as first:
        assert first.join("alice")["you"]["nick"] == "alice"
        with RawClient(b.host, b.port) as second, RawClient(a.host, a.port) as third:
            assert second.join("alice")["you"]["nick"] == "alice_2"
            assert third.join("ALICE")["you"]["nick"] == "ALICE_3"  # compared casefolded
    with RawClient(a.host, a.port) as watcher:
        watcher.join("watcher")
        for _ in range(10):  # the leaves reach Redis a moment after the connections close
            with RawClient(b.host, b.port) as again:
                if again.join("alice")["you"]["nick"] == "alice":
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("the nick was not freed when its owner left")


def test_a_long_nick_taken_on_another_node_keeps_its_last_letter_with_its_accent(
    nodes: Nodes,
) -> None:
    a, b = nodes(2)
    long = "a" * 29 + "q\u0301x"
    with RawClient(a.host, a.port) as first, RawClient(b.host, b.port) as second:
        assert first.join(long)["you"]["nick"] == long
        assert second.join(long)["you"]["nick"] == "a" * 29 + "_2"


def test_the_join_script_gets_the_nick_cut_as_one_server_cuts_it() -> None:
    wanted = "A" * 29 + "Q\u0301x"
    args = nick_arguments(wanted)
    assert args[:2] == [wanted, wanted.casefold()]
    # Per suffix length 2 ... 7, the prefix that leaves room for it: with "_2" the accented Q
    # is dropped whole, never kept as a plain Q.
    prefixes = list(zip(args[2::2], args[3::2], strict=True))
    assert prefixes == [("A" * n, "a" * n) for n in (29, 29, 28, 27, 26, 25)]


def test_the_same_nick_asked_at_once_on_two_nodes_is_given_once(nodes: Nodes) -> None:
    a, b = nodes(2)
    for round_ in range(5):
        wanted = f"zed{round_}"
        with RawClient(a.host, a.port) as one, RawClient(b.host, b.port) as two:
            one.send({"type": "hello", "nick": wanted})
            two.send({"type": "hello", "nick": wanted})
            given = {one.expect("welcome")["you"]["nick"], two.expect("welcome")["you"]["nick"]}
            assert given == {wanted, f"{wanted}_2"}


def presence(frame: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """A presence frame as (kind, nick, reason) per peer, batches unrolled; [] for others."""
    kind = frame["type"]
    if kind == "join":
        return [("join", frame["peer"]["nick"], None)]
    if kind == "joins":
        return [("join", p["nick"], None) for p in frame["peers"]]
    if kind == "leave":
        return [("leave", frame["peer"]["nick"], frame["reason"])]
    if kind == "leaves":
        return [("leave", e["peer"]["nick"], e["reason"]) for e in frame["leaves"]]
    return []


def test_a_peer_is_announced_before_its_lines_and_gone_after_them_on_every_node(
    nodes: Nodes,
) -> None:
    a, b = nodes(2)
    with RawClient(b.host, b.port) as watcher, RawClient(a.host, a.port) as near:
        watcher.join("watcher", client="client-watcher-01")
        near.join("near", client="client-near-01")
        assert presence(watcher.expect("join")) == [("join", "near", None)]
        for round_ in range(5):
            nick = f"quick{round_}"
            # hello, lines and quit in one write: the server takes them as fast as it can.
            frames = [{"type": "hello", "nick": nick, "client": f"client-{nick}"}]
            frames += [{"type": "msg", "text": f"{nick} {n}", "ref": f"r{n}"} for n in range(5)]
            frames.append({"type": "quit"})
            with RawClient(a.host, a.port) as quick:
                quick.send_raw(b"".join(_line(f) for f in frames))
                for watching in (watcher, near):  # another node, and its own
                    seen: list[tuple[str, str, str | None]] = []
                    while not seen or seen[-1][0] != "leave":
                        frame = watching.recv()
                        if frame["type"] == "msg":
                            seen.append(("msg", frame["from"]["nick"], frame["text"]))
                        else:
                            seen += presence(frame)
                    lines = [("msg", nick, f"{nick} {n}") for n in range(5)]
                    assert seen == [("join", nick, None), *lines, ("leave", nick, "quit")]


def _line(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame).encode() + b"\n"


@pytest.fixture
def three_nodes(redis_server: RedisServer, cert_dir: Path) -> Iterator[list[ServerProcess]]:
    yield from cluster_nodes(redis_server, cert_dir, 3)


def test_the_users_of_a_killed_node_leave_once_with_node_lost_within_10_s(
    three_nodes: list[ServerProcess],
) -> None:
    a, b, c = three_nodes  # b and c both survive: they race to sweep a
    with (
        RawClient(HOST, b.port) as on_b,
        RawClient(HOST, c.port) as on_c,
        RawClient(HOST, a.port) as ann,
        RawClient(HOST, a.port) as art,
    ):
        on_b.join("on_b", client="client-on-b")  # v2: leaves may come as one ``leaves``
        on_c.join("on_c")  # v1: a ``leave`` each
        ann.join("ann")
        art.join("art")
        for watcher in (on_b, on_c):
            joined: list[tuple[str, str, str | None]] = []
            while len(joined) < 2 + (watcher is on_b):
                joined += presence(watcher.recv())
            assert [nick for _, nick, _ in joined][-2:] == ["ann", "art"]

        a.proc.send_signal(signal.SIGKILL)
        a.wait()
        killed = time.monotonic()
        for watcher in (on_b, on_c):
            left: list[tuple[str, str, str | None]] = []
            while len(left) < 2:
                remaining = LOST_WITHIN - (time.monotonic() - killed)
                assert remaining > 0, f"only {left} within {LOST_WITHIN} s"
                left += presence(watcher.recv(remaining))
            assert sorted(left) == [("leave", "ann", "node_lost"), ("leave", "art", "node_lost")]
        # Both survivors looked for lost nodes again meanwhile: nothing comes twice.
        time.sleep(2.5)
        assert on_b.silent()
        assert on_c.silent()
        # The lost users' nicks are free again.
        with RawClient(HOST, c.port) as again:
            assert again.join("ann")["you"]["nick"] == "ann"


def test_a_node_paused_until_taken_for_lost_starts_again_and_its_users_come_back(
    three_nodes: list[ServerProcess],
) -> None:
    a, b, _ = three_nodes
    with RawClient(HOST, b.port) as bob:
        bob.join("bob")
        with RawClient(HOST, a.port) as ann:
            ann.join("ann")
            assert presence(bob.recv()) == [("join", "ann", None)]

            a.proc.send_signal(signal.SIGSTOP)  # a suspended machine, a stalled process
            try:
                assert presence(bob.recv(LOST_WITHIN)) == [("leave", "ann", "node_lost")]
            finally:
                a.proc.send_signal(signal.SIGCONT)

            # Awake, node A finds itself swept: its users were told ann left, and would talk
            # on unseen in the roster. It starts again instead; ann is told, as at a restart,
            # and never that she herself left.
            got = [ann.recv(LOST_WITHIN)]
            while got[-1]["type"] != "shutdown":
                got.append(ann.recv(LOST_WITHIN))
            assert [f["type"] for f in got] == ["shutdown"], got
        with RawClient(HOST, a.port, timeout=LOST_WITHIN) as ann:
            assert ann.join("ann")["you"]["nick"] == "ann"
            assert presence(bob.recv()) == [("join", "ann", None)]
            ann.send({"type": "msg", "text": "back"})
            assert bob.expect("msg")["text"] == "back"
    code, err = a.stop()
    assert code == 0, err
    assert err.count("this node was taken for lost") == 1, err


def test_a_client_back_through_another_node_replaces_its_ghost_and_keeps_its_nick(
    nodes: Nodes,
) -> None:
    a, b = nodes(2)
    with RawClient(a.host, a.port) as ghost, RawClient(b.host, b.port) as bob:
        ghost.join("alice", client="client-alice")
        bob.join("bob")
        assert ghost.expect("join")["peer"]["nick"] == "bob"
        # Alice's connection to A broke unseen (a network change); she comes back through B.
        with RawClient(b.host, b.port) as alice:
            assert alice.join("alice", client="client-alice")["you"]["nick"] == "alice"
            error = ghost.expect("error")
            assert error["code"] == "replaced"
            assert "another connection" in error["message"]
            assert ghost.closed()
            got = [bob.recv(), bob.recv()]
            assert [presence(f) for f in got] == [
                [("leave", "alice", "replaced")],
                [("join", "alice", None)],
            ]
            # Another client under the same nick is someone else: a suffix, nobody replaced.
            with RawClient(a.host, a.port) as other:
                assert other.join("alice", client="client-other")["you"]["nick"] == "alice_2"
            assert presence(bob.recv()) == [("join", "alice_2", None)]
            assert alice.expect("join")["peer"]["nick"] == "alice_2"
        left = presence(bob.recv()) + presence(bob.recv())
        assert sorted(nick for _, nick, _ in left) == ["alice", "alice_2"]
        assert bob.silent()  # the ghost's leave came once, as "replaced"
