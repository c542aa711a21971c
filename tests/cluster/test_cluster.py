"""Several servers on one Redis are one room: real TLS servers, a real redis-server, loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatsecure.history.redis import public_url
from chatsecure.testing import RawClient, ServerThread
from tests.helpers import CHATSECURE
from tests.redis_server import RedisServer, cluster_node, free_port, room_name

Start = Callable[..., ServerThread]
Nodes = Callable[[int], list[ServerThread]]


@pytest.fixture
def nodes(start_server: Start, redis_server: RedisServer) -> Nodes:
    """Start ``count`` servers of one new room on the test Redis (one certificate for all)."""

    def start(count: int) -> list[ServerThread]:
        room = room_name()
        return [start_server(cluster=redis_server.url, name=room, msg_rate=0) for _ in range(count)]

    return start


def client(node: ServerThread, nick: str, **hello: Any) -> RawClient:
    """A client joined on ``node`` (with ``hello`` fields such as ``client`` and ``since``)."""
    raw = RawClient(node.host, node.port)
    raw.join(nick, **hello)
    return raw


def heard(receiver: RawClient, kind: str, *nicks: str) -> None:
    """``receiver`` is told next of these joins or leaves (``kind``), one frame each."""
    assert [receiver.expect(kind)["peer"]["nick"] for _ in nicks] == list(nicks)


def say(sender: RawClient, text: str, ref: str) -> None:
    sender.send({"type": "msg", "text": text, "ref": ref})


def lines(watcher: RawClient, count: int) -> list[tuple[int, str]]:
    """The next ``count`` chat lines ``watcher`` receives, as (seq, text)."""
    return [(m["seq"], m["text"]) for m in (watcher.expect("msg") for _ in range(count))]


def frames(receiver: RawClient, count: int) -> list[dict[str, Any]]:
    return [receiver.recv() for _ in range(count)]


def chat(received: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(f["seq"], f["text"]) for f in received if f["type"] == "msg"]


def test_a_line_said_on_one_node_reaches_a_client_of_the_other_once(nodes: Nodes) -> None:
    a, b = nodes(2)
    with client(a, "alice") as alice, client(b, "bob") as bob:
        heard(alice, "join", "bob")  # presence spans the nodes
        say(alice, "one", "a1")
        ack = alice.expect("ack")
        assert (ack["ref"], ack["seq"]) == ("a1", 1)
        got = bob.expect("msg")
        assert (got["seq"], got["text"], got["ts"], got["from"]["nick"]) == (
            1,
            "one",
            ack["ts"],
            "alice",
        )
        say(bob, "two", "b1")
        assert bob.expect("ack")["seq"] == 2
        assert lines(alice, 1) == [(2, "two")]
        assert alice.silent()  # nobody gets a line twice, nor their own back
        assert bob.silent()


def test_peer_ids_differ_across_nodes(nodes: Nodes) -> None:
    a, b = nodes(2)
    with client(a, "alice") as alice, client(b, "bob") as bob:
        heard(alice, "join", "bob")
        alice.send({"type": "msg", "text": "from a"})  # no ref: no ack to read past
        bob.send({"type": "msg", "text": "from b"})
        from_alice = bob.expect("msg")["from"]
        from_bob = alice.expect("msg")["from"]
        # A client tells its own lines by its id: one node's id must never be another's.
        assert from_alice["id"] != from_bob["id"]


def test_lines_said_at_once_on_both_nodes_are_one_gapless_order_everywhere(
    nodes: Nodes,
) -> None:
    a, b = nodes(2)
    count = 30
    with (
        client(a, "alice") as alice,
        client(b, "bob") as bob,
        client(a, "carol") as carol,
        client(b, "dave") as dave,
    ):
        heard(alice, "join", "bob", "carol", "dave")  # whichever node each is on
        heard(bob, "join", "carol", "dave")
        heard(carol, "join", "dave")
        for n in range(count):  # without waiting: the nodes' batches interleave in Redis
            say(alice, f"alice {n}", f"a{n}")
            say(bob, f"bob {n}", f"b{n}")
        # Each sender: its acks, the other's lines.
        got_alice, got_bob = frames(alice, 2 * count), frames(bob, 2 * count)
        acked = [f["seq"] for f in got_alice + got_bob if f["type"] == "ack"]
        assert sorted(acked) == list(range(1, 2 * count + 1))
        on_a, on_b = lines(carol, 2 * count), lines(dave, 2 * count)
        assert on_a == on_b  # one order for everyone
        assert [seq for seq, _ in on_a] == list(range(1, 2 * count + 1))
        texts = [text for _, text in on_a]
        assert [t for t in texts if t.startswith("alice")] == [f"alice {n}" for n in range(count)]
        assert [t for t in texts if t.startswith("bob")] == [f"bob {n}" for n in range(count)]
        # Each sender got the other's lines only, in the same order as everyone.
        assert chat(got_alice) == [line for line in on_a if line[1].startswith("bob")]
        assert chat(got_bob) == [line for line in on_a if line[1].startswith("alice")]
        assert carol.silent()
        assert dave.silent()


def test_an_ack_never_overtakes_a_line_of_a_lower_seq(nodes: Nodes) -> None:
    a, b = nodes(2)
    count = 60
    # With a client id, as every v2 client sends: the feed can tell a line of its own sender
    # only by (client, ref), and docs/protocol.md promises the ack's place only for those.
    with (
        client(a, "alice", client="client-alice-01") as alice,
        client(b, "bob", client="client-bob-01") as bob,
    ):
        heard(alice, "join", "bob")
        for n in range(count):
            say(alice, f"alice {n}", f"a{n}")
            say(bob, f"bob {n}", f"b{n}")
        for receiver in (alice, bob):  # its acks and the other's lines, in any mix
            seqs = [f["seq"] for f in frames(receiver, 2 * count)]
            # A client takes an ack's seq as seen: a lower line after it would be dropped.
            # Nor may an ack come late, after lines of higher seqs (the feed acks it then).
            assert seqs == list(range(1, 2 * count + 1))


def test_a_client_moving_to_the_other_node_resumes_with_no_gap_and_no_duplicate(
    nodes: Nodes,
) -> None:
    a, b = nodes(2)
    with client(a, "alice") as alice:
        with client(b, "bob", client="client-bob-01") as bob:
            heard(alice, "join", "bob")
            for n in range(3):
                say(alice, f"seen {n}", f"s{n}")
            assert lines(bob, 3) == [(1, "seen 0"), (2, "seen 1"), (3, "seen 2")]
        assert [alice.expect("ack")["seq"] for _ in range(3)] == [1, 2, 3]
        heard(alice, "leave", "bob")  # after the lines bob saw
        for n in range(4):
            say(alice, f"missed {n}", f"m{n}")
        assert [alice.expect("ack")["seq"] for _ in range(4)] == [4, 5, 6, 7]
        with RawClient(a.host, a.port) as bob:  # node B is still up; bob picks node A
            welcome = bob.join("bob", client="client-bob-01", since=3)
            assert (welcome["seq"], welcome["replay"], welcome["skipped"]) == (7, 4, 0)
            assert [(m["seq"], m["text"]) for m in bob.replayed] == [
                (4, "missed 0"),
                (5, "missed 1"),
                (6, "missed 2"),
                (7, "missed 3"),
            ]
            alice.expect("join")
            say(alice, "live", "l0")
            assert lines(bob, 1) == [(8, "live")]
            assert bob.silent()


def test_a_line_resent_through_the_other_node_is_stored_once(nodes: Nodes) -> None:
    a, b = nodes(2)
    with client(b, "carol") as carol:
        with client(a, "ann", client="client-ann-01") as ann:
            heard(carol, "join", "ann")
            say(ann, "hello", "r1")
            first = ann.expect("ack")
        assert lines(carol, 1) == [(1, "hello")]
        heard(carol, "leave", "ann")
        # The ack was lost with the connection, say: ann sends the line again, through B.
        with client(b, "ann", client="client-ann-01", since=1) as ann:
            carol.expect("join")
            say(ann, "hello", "r1")
            again = ann.expect("ack")
            assert (again["seq"], again["ts"]) == (first["seq"], first["ts"])
            say(ann, "next", "r2")
            assert ann.expect("ack")["seq"] == 2
            assert lines(carol, 1) == [(2, "next")]  # "hello" once only
            assert ann.silent()


def test_a_node_started_later_replays_what_the_others_said(
    nodes: Nodes, start_server: Start
) -> None:
    [a] = nodes(1)
    with client(a, "alice") as alice:
        for n in range(3):
            say(alice, f"early {n}", f"e{n}")
        assert [alice.expect("ack")["seq"] for _ in range(3)] == [1, 2, 3]
        b = start_server(cluster=a.config.cluster, name=a.config.name)
        with RawClient(b.host, b.port) as bob:
            welcome = bob.join("bob")
            assert welcome["seq"] == 3
            assert [m["text"] for m in bob.replayed] == ["early 0", "early 1", "early 2"]
            say(alice, "later", "l0")
            assert lines(bob, 1) == [(4, "later")]


def test_a_node_says_its_history_is_in_redis_not_in_a_file(
    redis_server: RedisServer, cert_dir: Path
) -> None:
    room = room_name()
    node = cluster_node(redis_server, room, cert_dir)
    try:
        node.stop()
    finally:
        node.kill()
    printed = [line for text in node.stdout for line in text.splitlines()]
    history = [line for line in printed if line.startswith("history: ")]
    assert history == [f"history: in Redis at {public_url(redis_server.url)}, room {room!r}"]


def test_unreachable_redis_stops_the_server_with_the_url_and_exit_1(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    files = ["--cert", str(tmp_path / "server.crt"), "--key", str(tmp_path / "server.key")]
    loopback = ["--no-discovery", "--host", "127.0.0.1", "--port", "0"]
    result = subprocess.run(
        [*CHATSECURE, "server", *loopback, "--cluster", url, *files],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot use the Redis at {url}" in result.stderr
    assert "Traceback" not in result.stderr
