"""The client's protocol object against a server that lies or repeats itself, without sockets:
what such a server sends must cost the client little, and never cost it the lines of an honest
one."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from chatsecure.protocol.client import Acked, ClientSession, HistoryDone, Ignored, Line
from tests.protocol.test_client_session import SERVER, frames, joined, msg, sent, welcome


def limited(ref: str) -> dict[str, Any]:
    return {"type": "error", "code": "rate_limited", "message": "slow", "ref": ref}


def waiting_lines(count: int, *, burst: int = 6) -> tuple[ClientSession, list[str]]:
    """A session joined at t=0 to a server that takes 10 lines a second, ``count`` lines
    given to it: the burst less 2 sent, the rest waiting for the pace."""
    session = ClientSession("alice")
    session.connect()
    sent(session)
    session.receive_data(frames(welcome(server=SERVER | {"msg_rate": 10.0, "msg_burst": burst})))
    refs = [session.send(f"line {n}") for n in range(count)]
    assert len(sent(session)) == burst - 2
    return session, refs


def time_refusals(outbox: int, refusals: int) -> float:
    """Seconds the session takes over ``refusals`` rate_limited errors, each naming one of
    its first lines, sent or waiting, with ``outbox`` lines in its outbox (the best of 3)."""
    best = float("inf")
    for _ in range(3):
        session, refs = waiting_lines(outbox)
        data = frames(*(limited(refs[n % 8]) for n in range(refusals)))
        started = time.perf_counter()
        assert session.receive_data(data, now=1.0) == []
        best = min(best, time.perf_counter() - started)
    return best


def test_a_ref_refused_again_and_again_costs_no_more_with_a_long_outbox() -> None:
    # Each refusal rebuilt the queue from the whole outbox: with 20,000 lines waiting, 500
    # refusals took about 200 times as long as with 50.
    small, large = time_refusals(50, 500), time_refusals(20_000, 500)
    assert large < 5 * small + 0.01, f"{large:.4f} s with a long outbox, {small:.4f} s without"


def test_lines_refused_in_any_order_and_again_go_out_once_each_in_the_outbox_order() -> None:
    session, refs = waiting_lines(40, burst=12)  # 10 sent, 30 waiting
    named = [*refs[:10], *refs[:10], *refs[20:25]] * 3  # sent ones, waiting ones, again
    random.Random(7).shuffle(named)
    assert session.receive_data(frames(*map(limited, named)), now=1.0) == []
    order: list[str] = []
    for step in range(1, 200):
        session.pace(1.0 + step / 9 + 1e-9)
        order += [frame["text"] for frame in sent(session)]
    assert order == [f"line {n}" for n in range(40)]
    assert list(session.outbox) == refs


def test_a_line_with_a_seq_far_beyond_the_room_is_ignored_and_hides_nothing_after_it() -> None:
    session = ClientSession("alice")
    joined(session, seq=3)
    events = session.receive_data(frames(msg(4), msg(2**62), msg(5), msg(6)))
    assert [e.chat.seq for e in events if isinstance(e, Line)] == [4, 5, 6]
    [ignored] = [e for e in events if isinstance(e, Ignored)]
    assert ignored.kind == "seq"
    assert session.last_seq == 6  # (what the next hello says: from 2**62, nothing would come)


def test_an_ack_with_a_seq_far_beyond_the_room_confirms_the_line_but_not_the_seq() -> None:
    session = ClientSession("alice")
    joined(session, seq=3)
    ref = session.send("mine")
    sent(session)
    ack = {"type": "ack", "ref": ref, "seq": 2**62, "ts": 1.0}
    events = session.receive_data(frames(ack, msg(4)))
    assert [type(e) for e in events] == [Ignored, Acked, Line]
    assert events[1] == Acked(ref, "mine", 0, 1.0)  # stored, says the server; its seq unknown
    assert session.last_seq == 4


def test_an_honest_server_far_ahead_of_a_returning_client_loses_it_no_line() -> None:
    # Away while 5,000,000 lines were said: the replay's lines, and those after, are far
    # beyond the client's last seq, but not beyond what the welcome said.
    session = ClientSession("alice", last_seq=10)
    events = joined(session, seq=5_000_000, replay=2, skipped=999)
    events += session.receive_data(
        frames(msg(4_999_999, history=True), msg(5_000_000, history=True), msg(5_000_001))
    )
    lines = [e.chat.seq for e in events if isinstance(e, Line)]
    assert lines == [4_999_999, 5_000_000, 5_000_001]
    assert not [e for e in events if isinstance(e, Ignored)]
    assert session.last_seq == 5_000_001


def history_answer(request: dict[str, Any], *seqs: int) -> bytes:
    """The lines ``seqs`` as the answer to ``request``, with its end."""
    end = {"type": "history_end", "before": request["before"], "count": len(seqs)}
    end["ref"] = request["ref"]
    return frames(*(msg(seq, history=True) for seq in seqs), end)


def test_a_replay_announced_and_never_sent_swallows_no_history_answer() -> None:
    session = ClientSession("alice")
    joined(session, seq=100, replay=50)  # and not one line of it
    session.request_history(100, 3, now=0.0)
    # Held while the replay is awaited: the pong of this ping comes after all of it.
    assert sent(session) == [{"type": "ping"}]
    assert session.receive_data(frames({"type": "pong"})) == []
    [request] = sent(session)
    assert request["type"] == "history"
    for before in (100, 97):  # the first answer, and the next: each a page of older lines
        events = session.receive_data(history_answer(request, *range(before - 3, before)))
        assert [(type(e), getattr(e, "older", None)) for e in events] == [(Line, True)] * 3 + [
            (HistoryDone, None)
        ]
        session.request_history(before - 3, 3, now=0.0)
        [request] = sent(session)


@pytest.mark.parametrize(
    "other",
    [
        msg(101),
        {"type": "join", "peer": {"id": "9", "nick": "zed", "addr": "10.0.0.9"}},
        {"type": "notice", "code": "x", "message": "m"},
    ],
)
def test_any_frame_but_a_replayed_line_ends_the_wait_for_the_replay(other: dict[str, Any]) -> None:
    session = ClientSession("alice")
    joined(session, seq=100, replay=50)
    session.request_history(100, 3, now=0.0)
    out = sent(session)  # (a ping: the request waits for the replay)
    session.receive_data(frames(other))
    [request] = [frame for frame in out + sent(session) if frame["type"] == "history"]
    events = session.receive_data(history_answer(request, 97, 98, 99))
    assert [type(e) for e in events] == [Line, Line, Line, HistoryDone]
    assert all(e.older for e in events[:3])


def test_a_history_request_made_during_an_honest_replay_goes_out_after_it() -> None:
    session = ClientSession("alice", last_seq=97)
    joined(session, seq=100, replay=3)
    session.request_history(98, 2, now=0.0)
    assert [frame["type"] for frame in sent(session)] == ["ping"]
    events = session.receive_data(frames(*(msg(seq, history=True) for seq in (98, 99, 100))))
    assert [(e.chat.seq, e.replayed) for e in events] == [(98, True), (99, True), (100, True)]
    [request] = sent(session)  # the replay is whole: asked now
    assert request["before"] == 98
    events = session.receive_data(frames({"type": "pong"}) + history_answer(request, 96, 97))
    assert [(type(e), getattr(e, "older", None)) for e in events] == [
        (Line, True),
        (Line, True),
        (HistoryDone, None),
    ]
