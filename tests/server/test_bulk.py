"""Long answers (a replay, a history page) never cost a reading client its connection.

A replay of a thousand 16 KB lines is 16 MB, sixteen times the default send-buffer limit: it
goes out as the client takes it, and what is said meanwhile waits behind it, in order. A
client that stops reading is still dropped as ``slow_consumer``, with or without a long answer
outstanding. The limit here is 256 KiB, and the replay about 19 times that.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsecure.protocol.limits import MAX_TEXT
from chatsecure.testing import RawClient, ServerThread, joined
from tests.helpers import all_silent, uvloop_server

Start = Callable[..., ServerThread]
Room = tuple[RawClient, RawClient, list[str]]

LIMIT = 256 * 1024
"""The servers' ``send_buffer_limit``: small, so that a replay far over it is quick to make."""

LINES = 300
"""Stored lines of about 16 KB each: a replay of about 4.8 MB."""

LIVE = 10
"""Lines said while a long answer is on its way (160 KB: under the limit)."""

SLOW_RCVBUF = 16 * 1024
"""The receive buffer of a client that reads steadily, as over a slow link."""

STALLED_RCVBUF = 4096
"""The receive buffer of a client that never reads."""

SETTINGS: dict[str, Any] = {"send_buffer_limit": LIMIT, "msg_rate": 0, "replay": 0}
"""Newcomers get no replay: only the clients of the test get long answers."""


def line(tag: str, n: int) -> str:
    """A line of ``MAX_TEXT`` characters, most of them 4 bytes of UTF-8: about 16 KB."""
    prefix = f"{tag} {n:05d} "
    return prefix + "\U0001f600" * (MAX_TEXT - len(prefix))


def say(client: RawClient, text: str, ref: str | None = None) -> None:
    """Send ``text`` as raw UTF-8 (escaped, it would be three times over the frame limit)."""
    frame: dict[str, str] = {"type": "msg", "text": text}
    if ref is not None:
        frame["ref"] = ref
    client.send_raw(json.dumps(frame, ensure_ascii=False).encode() + b"\n")


def fill(client: RawClient, count: int, tag: str = "stored") -> list[str]:
    """Say ``count`` big lines and wait for every ack: they are stored, seq 1 to ``count``."""
    texts = [line(tag, n) for n in range(count)]
    for n, text in enumerate(texts):
        say(client, text, f"{tag}{n}")
    acks = [client.expect("ack", timeout=20)["seq"] for _ in texts]
    assert acks == list(range(acks[0], acks[0] + count))
    return texts


@contextlib.contextmanager
def filled_room(host: str, port: int, count: int) -> Iterator[Room]:
    """alice, who said ``count`` big lines (seq 1 to ``count``), and carol, who came after
    them (no replay): both are still here, and read what they are sent."""
    with joined(host, port, "alice") as (alice,):
        stored = fill(alice, count)
        with joined(host, port, "carol") as (carol,):
            alice.expect("join")
            yield alice, carol, stored


def hello(to: RawClient, nick: str, **fields: object) -> None:
    to.send({"type": "hello", "nick": nick, **fields})


def read_frames(client: RawClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames (each within the client's timeout)."""
    return [client.recv() for _ in range(count)]


def slow_consumer_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "slow_consumer" in r.getMessage()]


def resume_through_a_long_replay(host: str, port: int) -> None:
    """A client back with ``since`` 0 takes a replay far over the limit, then the lines
    said meanwhile, in order and each once; the others see it join and never leave."""
    with (
        filled_room(host, port, LINES) as (alice, carol, stored),
        RawClient(host, port, rcvbuf=SLOW_RCVBUF, timeout=20) as bob,
    ):
        hello(bob, "bob", client="bob-returns", since=0)
        for watcher in (alice, carol):
            assert watcher.expect("join")["peer"]["nick"] == "bob"
        # bob's welcome and replay are queued: these go behind them.
        live = [line("live", n) for n in range(LIVE)]
        for n, text in enumerate(live):
            say(alice, text, f"live{n}")
        assert [alice.expect("ack")["seq"] for _ in live] == list(
            range(LINES + 1, LINES + LIVE + 1)
        )
        welcome = bob.expect("welcome")
        assert (welcome["replay"], welcome["skipped"]) == (LINES, 0)
        replay = read_frames(bob, LINES)
        assert [(f["type"], f.get("history")) for f in replay] == [("msg", True)] * LINES
        assert [f["seq"] for f in replay] == list(range(1, LINES + 1))
        assert [f["text"] for f in replay] == stored
        after = read_frames(bob, LIVE)
        assert [(f["type"], f.get("history")) for f in after] == [("msg", None)] * LIVE
        assert [f["seq"] for f in after] == list(range(LINES + 1, LINES + LIVE + 1))
        assert [f["text"] for f in after] == live
        assert [carol.expect("msg")["text"] for _ in live] == live
        assert all_silent(bob, alice, carol)  # nothing twice, and nobody left
        say(bob, "still here")
        assert carol.expect("msg")["text"] == "still here"


def test_a_reading_client_takes_a_replay_far_over_the_send_limit_whole_and_stays(
    start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsecure")
    server = start_server(**SETTINGS)
    resume_through_a_long_replay(server.host, server.port)
    assert slow_consumer_logged(caplog) == []


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="needs uvloop")
def test_a_reading_client_takes_a_long_replay_whole_on_uvloop_too(tmp_path: Path) -> None:
    server = uvloop_server(tmp_path, "--replay", "0", "--send-buffer-limit", str(LIMIT))
    try:
        resume_through_a_long_replay("127.0.0.1", server.port)
    finally:
        code, log = server.stop()
    assert code == 0, log
    assert "slow_consumer" not in log


def test_a_reading_client_takes_a_history_answer_far_over_the_send_limit_and_stays(
    start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsecure")
    server = start_server(**SETTINGS)
    # A whole page: about 3.2 MB.
    with (
        filled_room(server.host, server.port, 200) as (alice, carol, stored),
        RawClient(server.host, server.port, rcvbuf=SLOW_RCVBUF, timeout=20) as bob,
    ):
        bob.join("bob", client="bob-pages")
        for watcher in (alice, carol):
            watcher.expect("join")
        bob.send({"type": "history", "limit": 200, "ref": "page1"})
        time.sleep(0.3)  # the answer is queued before the lines below
        live = [line("live", n) for n in range(LIVE)]
        for n, text in enumerate(live):
            say(alice, text, f"live{n}")
        assert len([alice.expect("ack") for _ in live]) == LIVE
        got = read_frames(bob, 200 + 1 + LIVE)
        kinds = [("history" if f.get("history") else f["type"]) for f in got]
        start = kinds.index("history")
        assert kinds[start : start + 201] == ["history"] * 200 + ["history_end"]
        page, end = got[start : start + 200], got[start + 200]
        assert [f["seq"] for f in page] == list(range(1, 201))
        assert [f["text"] for f in page] == stored
        assert (end["count"], end["ref"]) == (200, "page1")
        rest = got[:start] + got[start + 201 :]
        assert [f["text"] for f in rest] == live  # in order, each once
        assert [carol.expect("msg")["text"] for _ in live] == live
        assert all_silent(bob, alice, carol)
    assert slow_consumer_logged(caplog) == []


def wait_for_leave(
    watcher: RawClient, nick: str, within: float, *, talker: RawClient | None
) -> tuple[dict[str, Any], float]:
    """Read ``watcher`` until ``nick`` leaves (``talker`` saying a big line before each read;
    the watcher answers pings); the leave frame and the seconds it took."""
    start = time.monotonic()
    deadline = start + within
    for n in range(1000):
        assert time.monotonic() < deadline, f"{nick} not dropped in {within} s ({n} lines)"
        if talker is not None:
            say(talker, line("live", n))
        try:
            frame = watcher.recv(max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            continue
        if frame["type"] == "ping":
            watcher.send({"type": "pong"})
        elif frame["type"] == "leave" and frame["peer"]["nick"] == nick:
            return frame, time.monotonic() - start
    raise AssertionError(f"{nick} not dropped after 1000 lines")


def test_a_client_that_stops_reading_during_a_replay_is_dropped_when_the_room_talks(
    start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(**SETTINGS)
    with (
        filled_room(server.host, server.port, LINES) as (alice, carol, _),
        RawClient(server.host, server.port, rcvbuf=STALLED_RCVBUF) as stalled,
    ):
        hello(stalled, "stalled", client="stalled-one", since=0)  # and never reads
        for watcher in (alice, carol):
            assert watcher.expect("join")["peer"]["nick"] == "stalled"
        leave, _ = wait_for_leave(carol, "stalled", 20, talker=alice)
    assert leave["reason"] == "slow_consumer"
    assert slow_consumer_logged(caplog)


def test_a_client_that_stops_reading_during_a_replay_in_a_quiet_room_is_dropped_in_time(
    start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing said behind the replay: half the idle timeout with nothing taken drops it,
    # before the idle timeout itself would (it is silent too).
    server = start_server(**SETTINGS, idle_timeout=4.0)
    with joined(server.host, server.port, "alice") as (alice,):
        fill(alice, LINES)
        with RawClient(server.host, server.port, rcvbuf=STALLED_RCVBUF) as stalled:
            hello(stalled, "stalled", client="stalled-two", since=0)  # and never reads
            assert alice.expect("join")["peer"]["nick"] == "stalled"
            leave, took = wait_for_leave(alice, "stalled", 10, talker=None)
    assert leave["reason"] == "slow_consumer"
    assert took < 3.5  # half the idle timeout and a little: not the idle timeout's sweep
    assert slow_consumer_logged(caplog)


def test_a_client_that_took_its_replay_and_stops_reading_is_dropped_as_before(
    start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(**SETTINGS)
    with (
        filled_room(server.host, server.port, LINES) as (alice, carol, _),
        RawClient(server.host, server.port, rcvbuf=STALLED_RCVBUF, timeout=20) as bob,
    ):
        welcome = bob.join("bob", client="bob-stops", since=0)  # reads the whole replay
        assert welcome["replay"] == LINES == len(bob.replayed)
        for watcher in (alice, carol):
            watcher.expect("join")
        assert bob.silent()
        # From here on bob reads nothing, and the room talks.
        leave, _ = wait_for_leave(carol, "bob", 20, talker=alice)
        assert leave["reason"] == "slow_consumer"
    assert slow_consumer_logged(caplog)


def test_a_client_that_asks_for_more_long_answers_than_it_takes_is_dropped_at_once(
    start_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    # Its replay and a page may wait for it; a third answer (3.2 MB) counts as behind.
    server = start_server(**SETTINGS)
    with (
        filled_room(server.host, server.port, 200) as (alice, _, _),
        RawClient(server.host, server.port, rcvbuf=STALLED_RCVBUF) as greedy,
    ):
        hello(greedy, "greedy", client="greedy-one", since=0)  # and never reads
        for n in range(3):
            greedy.send({"type": "history", "limit": 200, "ref": f"page{n}"})
        assert alice.expect("join")["peer"]["nick"] == "greedy"
        leave, _ = wait_for_leave(alice, "greedy", 5, talker=None)
    assert leave["reason"] == "slow_consumer"
    assert slow_consumer_logged(caplog)


def test_a_long_answer_queued_with_broadcasts_of_its_iteration_goes_out_at_once(
    start_server: Start,
) -> None:
    # A broadcast and a long answer for the same member in one loop iteration (a commit and
    # a history read ending together): the answer took the broadcast with it into its
    # outbox, and nothing wrote it until the member's next frame, maybe a ping 30 s later.
    server = start_server(**SETTINGS)
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        member = next(m for m in server.server.room.members.values() if m.peer.nick == "bob")
        answer = [b'{"type":"notice","message":"%s"}\n' % (b"x" * 1000) for _ in range(400)]

        def together() -> None:
            server.server.room.broadcast(b'{"type":"notice","message":"first"}\n')
            member.send_bulk(answer)

        server.call(together)
        frames = [bob.recv(timeout=3) for _ in range(401)]
        assert [f["message"] for f in frames[:2]] == ["first", "x" * 1000]
        assert alice.expect("notice", timeout=3)["message"] == "first"


def test_history_requests_past_those_waiting_are_refused_with_their_refs(
    start_server: Start,
) -> None:
    server = start_server(**SETTINGS)
    with joined(server.host, server.port, "alice") as (alice,):
        fill(alice, 20)
        asks = b"".join(
            b'{"type":"history","limit":5,"ref":"h%d"}\n' % n for n in range(10)
        )  # in one read: all are asked before any is answered
        alice.send_raw(asks)
        frames = [alice.recv(timeout=10) for _ in range(6 + 4 * 6)]
    refused = [f["ref"] for f in frames if f["type"] == "error"]
    ended = [f["ref"] for f in frames if f["type"] == "history_end"]
    assert refused == [f"h{n}" for n in range(4, 10)]
    assert {f["code"] for f in frames if f["type"] == "error"} == {"rate_limited"}
    assert ended == ["h0", "h1", "h2", "h3"]
