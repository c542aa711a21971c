"""The client's protocol object, without sockets: bytes in, events and bytes out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.client import (
    Acked,
    ClientSession,
    ClientState,
    Ended,
    HistoryDone,
    Ignored,
    Line,
    Noticed,
    Presence,
    Refused,
    ServerError,
    Welcomed,
)
from chatsecure.protocol.limits import MSG_BURST, MSG_RATE, PING_AFTER, PONG_TIMEOUT
from chatsecure.protocol.messages import Error, HistoryEnd, Notice, encode, valid_client_id

ME = {"id": "7", "nick": "alice", "addr": "127.0.0.1"}
BOB = {"id": "2", "nick": "bob", "addr": "10.0.0.2"}
SERVER = {"name": "lab", "version": "1", "protocol": 2}


def frames(*objs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def welcome(seq: int = 0, replay: int = 0, skipped: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "type": "welcome",
        "you": ME,
        "peers": [BOB],
        "server": SERVER,
        "seq": seq,
        "replay": replay,
        "skipped": skipped,
        **extra,
    }


def msg(seq: int, text: str = "", *, history: bool = False) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "msg", "seq": seq, "from": BOB, "text": text or f"line {seq}"}
    frame["ts"] = 1700000000.0 + seq
    if history:
        frame["history"] = True
    return frame


def sent(session: ClientSession) -> list[dict[str, Any]]:
    return [json.loads(line) for line in session.data_to_send().splitlines()]


def joined(session: ClientSession, **kw: Any) -> list[Any]:
    session.connect()
    sent(session)
    return session.receive_data(frames(welcome(**kw)))


def paced_at_ten_a_second(seq: int = 0) -> ClientSession:
    """A session joined at t=100 s to a server that takes 10 frames a second, 4 at once."""
    session = ClientSession("alice")
    session.connect()
    sent(session)
    rate = {"msg_rate": 10.0, "msg_burst": 4}
    session.receive_data(frames(welcome(seq=seq, server=SERVER | rate)), now=100.0)
    return session


def test_hello_carries_client_id_and_since_only_when_known() -> None:
    fresh = ClientSession("alice")
    fresh.connect()
    [hello] = sent(fresh)
    made = hello.pop("client")
    assert hello == {"type": "hello", "nick": "alice"}
    # Without an id of its own, the session makes one and keeps it across reconnects: a
    # line re-sent after a drop is known to the server, not stored twice.
    assert valid_client_id(made)
    assert made != ClientSession("alice").client_id
    fresh.connection_lost()
    fresh.connect()
    assert sent(fresh)[0]["client"] == made
    back = ClientSession("alice", client_id="abcdefgh12", last_seq=41, password="pw")
    back.connect()
    assert sent(back) == [
        {"type": "hello", "nick": "alice", "password": "pw", "client": "abcdefgh12", "since": 41}
    ]


def test_back_after_a_drop_it_asks_for_the_nick_the_server_gave_it() -> None:
    # alice was taken when it came: as alice_2 again, the room sees the same name, and the
    # server replaces its ghost (a connection that broke unseen still holds alice_2).
    session = ClientSession("alice", client_id="abcdefgh12")
    session.connect()
    sent(session)
    session.receive_data(frames(welcome(you={**ME, "nick": "alice_2"})))
    session.connection_lost()
    session.connect()
    (hello,) = sent(session)
    assert (hello["nick"], hello["client"]) == ("alice_2", "abcdefgh12")


def test_welcome_then_replay_counts_as_missed_and_sets_last_seq() -> None:
    session = ClientSession("alice", last_seq=10)
    session.connect()
    sent(session)
    events = session.receive_data(
        frames(welcome(seq=13, replay=3), msg(11, history=True), msg(12, history=True))
        + frames(msg(13, history=True), msg(14))
    )
    assert isinstance(events[0], Welcomed)
    assert events[0].resumed
    assert events[0].missed == 3
    lines = [e for e in events if isinstance(e, Line)]
    assert [(e.chat.seq, e.replayed) for e in lines] == [
        (11, True),
        (12, True),
        (13, True),
        (14, False),
    ]
    assert session.last_seq == 14


def test_a_newcomer_to_an_empty_room_comes_back_to_what_was_said_since() -> None:
    session = ClientSession("alice")
    events = joined(session, seq=0)
    assert isinstance(events[0], Welcomed)
    assert not events[0].resumed
    assert session.last_seq == 0  # remembered, so the next hello says since 0
    session.connection_lost()
    session.connect()
    assert sent(session)[0]["since"] == 0
    events = session.receive_data(
        frames(welcome(seq=2, replay=2), msg(1, history=True), msg(2, history=True))
    )
    assert isinstance(events[0], Welcomed)
    assert (events[0].resumed, events[0].missed) == (True, 2)
    assert [e.chat.seq for e in events if isinstance(e, Line)] == [1, 2]


def test_a_newcomer_given_a_replay_sees_it_all_and_no_log_is_no_resume() -> None:
    replayed = ClientSession("alice")
    joined(replayed, seq=9, replay=2)
    assert replayed.last_seq is None  # the replay sets it, line by line
    lines = replayed.receive_data(frames(msg(8, history=True), msg(9, history=True)))
    assert [e.chat.seq for e in lines if isinstance(e, Line)] == [8, 9]
    # A server that keeps no log says seq 0 every time: nothing to resume, nothing missed.
    no_log = ClientSession("alice", last_seq=0)
    events = joined(no_log, seq=0)
    assert isinstance(events[0], Welcomed)
    assert (events[0].resumed, events[0].missed) == (False, 0)


def test_replaced_by_a_newer_connection_of_the_same_client_ends_the_session() -> None:
    session = ClientSession("alice", client_id="sharedfolder01")
    joined(session)
    replaced = {"type": "error", "code": "replaced", "message": "it connected again"}
    assert session.receive_data(frames(replaced, msg(1))) == [
        Refused("replaced", "it connected again")
    ]
    assert session.state is ClientState.OFFLINE  # nothing after it counts


def test_a_visit_to_a_server_that_keeps_no_log_forgets_nothing_of_the_log_seen_before() -> None:
    # The same server (certificate) restarted once with --history 0, then with its log again.
    session = ClientSession("alice", last_seq=25)
    events = joined(session, seq=0)
    assert isinstance(events[0], Welcomed)
    assert (events[0].resumed, events[0].missed) == (False, 0)
    assert session.last_seq is None  # nothing to remember: the 25 stays saved
    session.connection_lost()
    session.connect()  # back to the log it saw, still running
    assert sent(session)[0]["since"] == 25
    events = session.receive_data(frames(welcome(seq=26, replay=1), msg(26, history=True)))
    assert isinstance(events[0], Welcomed)
    assert (events[0].resumed, events[0].missed) == (True, 1)
    assert session.last_seq == 26
    # a new log after all (seq 3 < 25): the kept seq is of no use any more, even before its
    # first replayed line
    fresh = ClientSession("alice", last_seq=25)
    joined(fresh, seq=0)
    fresh.connection_lost()
    joined(fresh, seq=3, replay=3)
    fresh.connection_lost()
    fresh.connect()
    assert "since" not in sent(fresh)[0]
    session.connection_lost()
    session = ClientSession("alice", last_seq=25)
    joined(session, seq=0)
    # Had it been a new, empty log after all, its lines show from the first and are kept.
    assert [e.chat.seq for e in session.receive_data(frames(msg(1))) if isinstance(e, Line)] == [1]
    assert session.last_seq == 1


def test_a_line_seen_before_is_never_shown_twice() -> None:
    session = ClientSession("alice", last_seq=5)
    joined(session, seq=5)
    events = session.receive_data(frames(msg(4), msg(5), msg(6), msg(6)))
    assert [e.chat.seq for e in events if isinstance(e, Line)] == [6]


def test_lines_typed_offline_go_out_after_the_welcome_with_their_refs() -> None:
    session = ClientSession("alice", client_id="abcdefgh12")
    ref1 = session.send("one")
    ref2 = session.send("two")
    assert ref1 != ref2
    session.connect()
    assert [f["type"] for f in sent(session)] == ["hello"]
    events = session.receive_data(frames(welcome()))
    assert isinstance(events[0], Welcomed)
    assert events[0].resent == 2
    assert sent(session) == [
        {"type": "msg", "text": "one", "ref": ref1},
        {"type": "msg", "text": "two", "ref": ref2},
    ]


def test_unacknowledged_lines_are_resent_once_after_a_drop_and_leave_on_ack() -> None:
    session = ClientSession("alice")
    joined(session)
    ref = session.send("hello")
    assert sent(session) == [{"type": "msg", "text": "hello", "ref": ref}]
    session.connection_lost()
    assert session.outbox == {ref: "hello"}
    joined(session)
    assert sent(session) == [{"type": "msg", "text": "hello", "ref": ref}]
    events = session.receive_data(frames({"type": "ack", "ref": ref, "seq": 9, "ts": 5.0}))
    assert events == [Acked(ref, "hello", 9, 5.0)]
    assert session.outbox == {}
    assert session.last_seq == 9
    # the original ack of a re-send that crossed ours is nothing new
    assert session.receive_data(frames({"type": "ack", "ref": ref, "seq": 9, "ts": 5.0})) == []


def test_held_back_lines_never_go_out_on_this_connection_or_the_next() -> None:
    """Ctrl-C: the lines the pace held back, those typed after it, one the server refused for
    the pace, and a reconnect during the wait for acks: none of them is sent."""
    session = paced_at_ten_a_second()
    refs = [session.send(f"line {n}", now=100.0) for n in range(8)]
    out = [f["ref"] for f in sent(session)]  # the burst; the rest held back by the pace
    assert 2 <= len(out) < 8
    assert out == refs[: len(out)]
    session.hold_back()
    late = session.send("typed after ctrl-c", now=101.0)
    session.pace(102.0)
    assert sent(session) == []
    refused = {"type": "error", "code": "rate_limited", "message": "too fast", "ref": out[-1]}
    session.receive_data(frames(refused), now=102.0)
    session.pace(103.0)
    assert sent(session) == []
    session.connection_lost()
    joined(session)
    session.pace(104.0)
    assert sent(session) == []
    assert session.unacknowledged == [
        *[(f"line {n}", n < len(out)) for n in range(8)],
        ("typed after ctrl-c", False),
    ]
    assert late in session.outbox
    assert not session.settled  # the lines sent may be stored: their acks are waited for


def test_held_back_is_settled_once_the_lines_sent_are_acknowledged() -> None:
    session = paced_at_ten_a_second()
    refs = [session.send(f"line {n}", now=100.0) for n in range(8)]
    out = [f["ref"] for f in sent(session)]
    session.hold_back()
    assert not session.settled
    for ref in out:
        session.receive_data(frames({"type": "ack", "ref": ref, "seq": 1, "ts": 1.0}))
    assert session.settled
    assert list(session.outbox) == refs[len(out) :]  # held back: never sent, still named


def test_a_v1_server_gets_no_refs_and_lines_count_as_sent() -> None:
    session = ClientSession("alice")
    session.send("early")
    session.connect()
    sent(session)
    v1 = {"type": "welcome", "you": ME, "peers": [], "server": {"protocol": 1}}
    events = session.receive_data(frames(v1))
    assert isinstance(events[0], Welcomed)
    assert not events[0].resumed
    assert isinstance(events[1], Acked)
    assert events[1].text == "early"
    session.send("later")
    assert sent(session) == [{"type": "msg", "text": "early"}, {"type": "msg", "text": "later"}]
    assert session.outbox == {}


def test_a_log_that_restarted_below_our_since_is_taken_afresh() -> None:
    session = ClientSession("alice", last_seq=500)
    events = joined(session, seq=3, replay=1)
    assert isinstance(events[0], Welcomed)
    assert not events[0].resumed
    assert session.last_seq is None
    (line,) = session.receive_data(frames(msg(3, history=True)))
    assert isinstance(line, Line)
    assert session.last_seq == 3


def test_a_new_log_past_our_since_is_all_missed_and_the_hello_says_which_log_since_counts_in() -> (
    None
):
    session = ClientSession("alice", client_id="abcdefgh12")
    joined(session, seq=5, log="log-one-0001")
    assert (session.last_seq, session.log_id) == (5, "log-one-0001")
    session.connection_lost()
    session.connect()
    assert sent(session)[0]["log"] == "log-one-0001"  # with its since: 5 of log-one
    # The server lost that log; its new one is past 5 already, and replays from its start.
    events = session.receive_data(
        frames(welcome(seq=7, replay=7, log="log-two-0002"))
        + frames(*(msg(n, history=True) for n in range(1, 8)))
    )
    assert isinstance(events[0], Welcomed)
    assert (events[0].resumed, events[0].missed) == (True, 7)
    assert [e.chat.seq for e in events if isinstance(e, Line)] == list(range(1, 8))
    assert (session.last_seq, session.log_id) == (7, "log-two-0002")


def test_missed_lines_none_of_them_replayed_are_not_missed_again_on_the_next_return() -> None:
    session = ClientSession("alice", last_seq=10)
    [event] = joined(session, seq=50, replay=0, skipped=40)  # a server with --replay-max 0
    assert isinstance(event, Welcomed)
    assert (event.resumed, event.missed) == (True, 40)
    session.connection_lost()
    session.connect()
    assert sent(session)[0]["since"] == 50  # not 10: 11 to 50 are the gap shown already
    [event] = session.receive_data(frames(welcome(seq=70, replay=0, skipped=20)))
    assert isinstance(event, Welcomed)
    assert event.missed == 20


def test_history_answers_are_older_lines_and_leave_last_seq_alone() -> None:
    session, request = asking_for_history()
    assert request == {"type": "history", "before": 40, "limit": 2, "ref": request["ref"]}
    events = session.receive_data(
        frames(
            msg(38, history=True),
            msg(39, history=True),
            {"type": "history_end", "before": 40, "count": 2, "ref": request["ref"]},
        )
    )
    assert [(type(e), getattr(e, "older", None)) for e in events] == [
        (Line, True),
        (Line, True),
        (HistoryDone, None),
    ]
    assert session.last_seq == 50  # where the welcome left it


def test_unknown_types_and_bad_fields_are_ignored_before_and_after_welcome() -> None:
    session = ClientSession("alice")
    session.connect()
    sent(session)
    events = session.receive_data(frames({"type": "motd", "text": "hi"}, welcome()))
    assert isinstance(events[0], Ignored)
    assert isinstance(events[1], Welcomed)
    events = session.receive_data(
        frames({"type": "msg", "from": 5, "text": "x", "ts": 1}, msg(1, "fine")) + b"not json\n"
    )
    assert [type(e) for e in events] == [Ignored, Line, Ignored]


def test_refusal_before_welcome_ends_the_attempt() -> None:
    session = ClientSession("alice")
    session.connect()
    events = session.receive_data(
        frames({"type": "error", "code": "server_full", "message": "full"}, welcome())
    )
    assert events == [Refused("server_full", "full")]
    assert session.state is ClientState.OFFLINE


def test_a_line_the_server_could_not_store_leaves_the_outbox_with_its_text() -> None:
    session = ClientSession("alice")
    joined(session)
    lost, kept = session.send("lost"), session.send("kept")
    sent(session)
    not_stored = {"type": "error", "code": "not_stored", "message": "disk full", "ref": lost}
    [event] = session.receive_data(frames(not_stored))
    assert event == ServerError(Error("not_stored", "disk full", lost), dropped="lost")
    assert session.outbox == {kept: "kept"}
    # an error naming no line of ours, or none at all, drops nothing
    [event] = session.receive_data(frames(not_stored | {"ref": "r-unknown"}))
    assert isinstance(event, ServerError)
    assert event.dropped is None
    odd = {"type": "error", "code": "bad_message", "message": "odd"}
    assert session.receive_data(frames(odd)) == [ServerError(Error("bad_message", "odd"))]
    assert session.outbox == {kept: "kept"}


@pytest.mark.parametrize(
    ("code", "message"),
    [("text_too_long", "text longer than 10 characters"), ("bad_message", "'text' is empty")],
)
def test_a_line_refused_for_what_it_says_leaves_the_outbox_and_is_not_sent_again(
    code: str, message: str
) -> None:
    # A server's --max-text below ours, or a line that cleans to nothing: waiting for its ack
    # would keep a piped client from ever finishing.
    session = ClientSession("alice")
    joined(session)
    refused, kept = session.send("refused"), session.send("kept")
    sent(session)
    error = {"type": "error", "code": code, "message": message, "ref": refused}
    [event] = session.receive_data(frames(error))
    assert event == ServerError(Error(code, message, refused), dropped="refused")
    assert session.outbox == {kept: "kept"}
    session.connection_lost()
    joined(session)  # after a reconnect, only the line still waiting goes again
    assert sent(session) == [{"type": "msg", "text": "kept", "ref": kept}]


def paced(session: ClientSession, now: float) -> list[str]:
    """The texts of the lines that ``pace(now)`` lets go."""
    session.pace(now)
    return [frame["text"] for frame in sent(session)]


def test_own_lines_go_no_faster_than_the_rate_the_server_states() -> None:
    session = paced_at_ten_a_second()
    refs = [session.send(f"line {n}", now=100.0) for n in range(6)]
    # the burst less the slack (2), then one every 1 / (0.9 * 10) s
    assert [frame["text"] for frame in sent(session)] == ["line 0", "line 1"]
    assert session.send_delay(100.0) == pytest.approx(1 / 9)
    assert paced(session, 100.05) == []
    assert paced(session, 100.0 + 1 / 9 + 1e-9) == ["line 2"]
    assert paced(session, 100.0 + 3 / 9 + 1e-9) == ["line 3", "line 4"]
    # refused all the same: the line goes again, first, once the pace allows
    limited = {"type": "error", "code": "rate_limited", "message": "slow", "ref": refs[3]}
    assert session.receive_data(frames(limited), now=100.4) == []
    assert paced(session, 100.4 + 1 / 9 + 1e-9) == ["line 3"]
    assert paced(session, 100.4 + 2 / 9 + 1e-9) == ["line 5"]
    assert session.send_delay(101.0) is None
    assert list(session.outbox) == refs  # none acknowledged yet, none lost


def test_history_requests_go_at_the_pace_too_the_newest_one_waiting() -> None:
    # Refused for the rate, a request gets an error and no answer: a page that never comes.
    session = paced_at_ten_a_second(seq=900)
    session.request_history(900, 100, now=100.0)
    session.request_history(800, 100, now=100.0)
    assert [frame["before"] for frame in sent(session)] == [900, 800]  # the burst less 2
    session.request_history(700, 100, now=100.0)
    session.request_history(600, 100, now=100.0)  # in place of the one held back
    assert sent(session) == []
    assert session.send_delay(100.0) == pytest.approx(1 / 9)
    session.pace(100.0 + 1 / 9 + 1e-9)
    assert [frame["before"] for frame in sent(session)] == [600]
    assert session.send_delay(101.0) is None


def test_a_history_request_refused_for_the_rate_goes_again_and_one_refused_otherwise_ends() -> None:
    session = paced_at_ten_a_second(seq=900)
    line = session.send("hi", now=100.0)
    session.request_history(900, 100, now=100.0)
    [_, request] = sent(session)
    assert request["ref"] not in (None, line)  # named, and not like any line
    limited = {"type": "error", "code": "rate_limited", "message": "slow", "ref": request["ref"]}
    assert session.receive_data(frames(limited), now=100.1) == []  # nothing to tell anyone
    assert sent(session) == []
    assert session.send_delay(100.1) == pytest.approx(1 / 9)  # at the pace, from now
    session.pace(100.1 + 1 / 9 + 1e-9)
    assert sent(session) == [request]  # the same request again
    unreadable = {"type": "error", "code": "history_unavailable", "message": "later"}
    [event] = session.receive_data(frames(unreadable | {"ref": request["ref"]}), now=100.3)
    assert event == HistoryDone(Error("history_unavailable", "later", request["ref"]))
    assert session.send_delay(100.3) is None  # not asked again: the front end may
    assert list(session.outbox) == [line]
    # An error for a request of ours that no longer waits (a late one) is nobody's business.
    assert session.receive_data(frames(unreadable | {"ref": request["ref"]}), now=100.4) == []


BAD_JSON = {"type": "error", "code": "bad_json", "message": "not JSON"}
"""An error without ``ref``: about something else than a history request."""


def asking_for_history() -> tuple[ClientSession, dict[str, Any]]:
    """A joined session that asked for 2 lines before 40, and the request it sent."""
    session = ClientSession("alice")
    joined(session, seq=50)
    session.request_history(40, 2, now=0.0)
    [request] = sent(session)
    return session, request


def test_an_error_without_ref_ends_the_request_only_on_a_server_that_names_none() -> None:
    session = ClientSession("alice")
    joined(session, seq=50)
    session.request_history(40, 2, now=0.0)
    [request] = sent(session)
    # No history_end has named a request yet: taken for the refusal (an older server).
    assert session.receive_data(frames(BAD_JSON)) == [HistoryDone(Error("bad_json", "not JSON"))]
    session.request_history(40, 2, now=0.0)
    [request] = sent(session)
    end = {"type": "history_end", "before": 40, "count": 0, "ref": request["ref"]}
    assert session.receive_data(frames(end)) == [HistoryDone(HistoryEnd(40, 0, request["ref"]))]
    # This server names requests: an error without ref is about something else.
    session.request_history(40, 2, now=0.0)
    [request] = sent(session)
    assert session.receive_data(frames(BAD_JSON)) == [ServerError(Error("bad_json", "not JSON"))]
    end["ref"] = request["ref"]
    assert session.receive_data(frames(end)) == [HistoryDone(HistoryEnd(40, 0, request["ref"]))]


def test_the_end_of_an_answer_given_up_for_refused_does_not_end_the_next_request() -> None:
    session, first = asking_for_history()
    # An error about something else, before this server named any request: taken for the
    # refusal, as from a server older than refs on history.
    assert session.receive_data(frames(BAD_JSON)) == [HistoryDone(Error("bad_json", "not JSON"))]
    session.request_history(40, 2, now=0.0)
    [second] = sent(session)
    late = {"type": "history_end", "before": 40, "count": 2, "ref": first["ref"]}
    assert session.receive_data(frames(late)) == []  # not the end of the second, still out
    end = late | {"ref": second["ref"]}
    assert session.receive_data(frames(end)) == [HistoryDone(HistoryEnd(40, 2, second["ref"]))]


def test_an_older_server_limiting_a_history_request_without_naming_it_gets_it_again() -> None:
    session = paced_at_ten_a_second(seq=900)
    session.request_history(900, 100, now=100.0)
    [request] = sent(session)
    limited = {"type": "error", "code": "rate_limited", "message": "slow"}
    assert session.receive_data(frames(limited), now=100.1) == []
    session.pace(100.1 + 1 / 9 + 1e-9)
    assert sent(session) == [request]


def test_an_error_naming_a_request_shows_the_server_names_them() -> None:
    session, request = asking_for_history()
    unreadable = {"type": "error", "code": "history_unavailable", "message": "later"}
    session.receive_data(frames(unreadable | {"ref": request["ref"]}))
    session.request_history(40, 2, now=0.0)
    sent(session)
    assert session.receive_data(frames(BAD_JSON)) == [ServerError(Error("bad_json", "not JSON"))]


def test_lines_refused_together_go_again_in_their_order_once_each() -> None:
    session = ClientSession("alice")
    session.connect()
    sent(session)
    session.receive_data(frames(welcome(server=SERVER | {"msg_rate": 10.0, "msg_burst": 6})))
    refs = [session.send(f"line {n}") for n in range(5)]
    assert [frame["text"] for frame in sent(session)] == ["line 0", "line 1", "line 2", "line 3"]
    # the server, paused, refused three of them at once (and one of them twice)
    limited = [
        {"type": "error", "code": "rate_limited", "message": "slow", "ref": refs[n]}
        for n in (1, 3, 2, 3)
    ]
    assert session.receive_data(frames(*limited), now=1.0) == []
    order = []
    for step in range(1, 10):
        order += paced(session, 1.0 + step / 9 + 1e-9)
    assert order == ["line 1", "line 2", "line 3", "line 4"]


def test_after_quit_no_line_goes_out() -> None:
    session = ClientSession("alice")
    joined(session, server=SERVER | {"msg_rate": 1.0, "msg_burst": 3})
    session.send("first")
    session.send("held back")
    session.quit()
    assert [frame["type"] for frame in sent(session)] == ["msg", "quit"]
    assert paced(session, 100.0) == []
    assert session.send_delay(100.0) is None
    assert session.unacknowledged == [("first", True), ("held back", False)]  # sent, or not


def test_a_line_sent_may_be_stored_until_the_server_answers_for_it() -> None:
    session = ClientSession("alice")
    session.send("typed offline")
    joined(session)
    limited, stored = session.send("limited"), session.send("stored")
    sent(session)
    session.connection_lost()  # their acks may have been lost with the connection
    assert session.unacknowledged == [("typed offline", True), ("limited", True), ("stored", True)]
    joined(session)
    sent(session)
    rate_limited = {"type": "error", "code": "rate_limited", "message": "slow", "ref": limited}
    session.receive_data(frames(rate_limited, {"type": "ack", "ref": stored, "seq": 3, "ts": 1.0}))
    # refused for the pace, this copy; the first may be stored all the same. Acknowledged: gone
    assert session.unacknowledged == [("typed offline", True), ("limited", True)]


def test_without_a_stated_rate_lines_are_paced_to_the_default_and_a_rate_0_not_at_all() -> None:
    default = ClientSession("alice")
    joined(default)
    for n in range(30):
        default.send(f"line {n}")
    assert len(sent(default)) == MSG_BURST - 2
    free = ClientSession("alice")
    joined(free, server=SERVER | {"msg_rate": 0})
    for n in range(30):
        free.send(f"line {n}")
    assert len(sent(free)) == 30
    assert free.send_delay(0.0) is None
    # a server that said so and refuses all the same gets the line again at the default pace
    [ref, *_] = free.outbox
    limited = {"type": "error", "code": "rate_limited", "message": "slow", "ref": ref}
    assert free.receive_data(frames(limited), now=5.0) == []
    assert sent(free) == []
    assert free.send_delay(5.0) == pytest.approx(1 / (MSG_RATE * 0.9))


def test_an_outbox_sent_again_after_a_reconnect_is_paced_too() -> None:
    session = ClientSession("alice")
    refs = [session.send(f"typed offline {n}") for n in range(5)]
    session.connect()
    sent(session)
    session.receive_data(frames(welcome(server=SERVER | {"msg_rate": 1, "msg_burst": 3})))
    assert [frame["ref"] for frame in sent(session)] == refs[:1]
    assert session.sending_time(0.0) == pytest.approx(4 / 0.9)


def test_errors_presence_and_shutdown_after_welcome() -> None:
    session = ClientSession("alice")
    joined(session)
    events = session.receive_data(
        frames(
            {"type": "join", "peer": BOB},
            {"type": "error", "code": "rate_limited", "message": "slow down"},
            {"type": "shutdown"},
            msg(1),
        )
    )
    assert [type(e) for e in events] == [Presence, ServerError, Ended]
    assert session.state is ClientState.OFFLINE


def test_ping_is_answered() -> None:
    session = ClientSession("alice")
    joined(session)
    session.receive_data(frames({"type": "ping"}))
    assert sent(session) == [{"type": "pong"}]


def test_a_silent_server_is_pinged_then_given_up() -> None:
    session = ClientSession("alice")
    session.connect(now=100.0)
    session.receive_data(frames(welcome()), now=100.0)
    sent(session)
    assert session.tick(100.0 + PING_AFTER - 1)
    assert sent(session) == []
    assert session.tick(100.0 + PING_AFTER)
    assert sent(session) == [{"type": "ping"}]
    assert session.tick(100.0 + PING_AFTER + PONG_TIMEOUT - 1)
    assert not session.tick(100.0 + PING_AFTER + PONG_TIMEOUT)


def test_any_answer_keeps_a_pinged_server_alive() -> None:
    session = ClientSession("alice")
    session.connect(now=0.0)
    session.receive_data(frames(welcome()), now=0.0)
    session.tick(PING_AFTER)
    session.receive_data(frames({"type": "pong"}), now=PING_AFTER + 1)
    assert session.tick(PING_AFTER + PONG_TIMEOUT + 1)


def test_an_endless_line_from_the_server_ends_the_connection() -> None:
    session = ClientSession("alice", max_frame=400)
    joined(session)
    with pytest.raises(RemoteProtocolError):
        session.receive_data(b"x" * 500)


@pytest.mark.parametrize("cut", [1, 7, 50])
def test_events_do_not_depend_on_how_the_bytes_were_split(cut: int) -> None:
    stream = frames(welcome(seq=2, replay=2), msg(1, history=True), msg(2, history=True), msg(3))
    whole = ClientSession("alice", last_seq=0)
    whole.connect()
    expected = whole.receive_data(stream)
    split = ClientSession("alice", last_seq=0)
    split.connect()
    got: list[Any] = []
    for i in range(0, len(stream), cut):
        got += split.receive_data(stream[i : i + cut])
    assert got == expected
    assert split.last_seq == whole.last_seq == 3


def test_a_notice_is_shown_and_changes_nothing_else() -> None:
    session = ClientSession("alice", client_id="client-alice-1")
    joined(session, seq=3)
    ref = session.send("hi")
    sent(session)
    notice = {"type": "notice", "code": "cluster_unavailable", "message": "out of reach"}
    [event] = session.receive_data(frames(notice))
    assert event == Noticed(Notice("cluster_unavailable", "out of reach"))
    assert encode(event.notice) == frames(notice).replace(b", ", b",").replace(b": ", b":")
    assert session.outbox == {ref: "hi"}  # a notice takes no line out of the outbox
    assert session.state is ClientState.JOINED
    # A code this client does not know, or no code at all, is shown all the same.
    [odd] = session.receive_data(frames({"type": "notice", "message": "m", "extra": 1}))
    assert odd == Noticed(Notice("notice", "m"))


def test_a_notice_before_welcome_is_not_shown() -> None:
    session = ClientSession("alice")
    session.connect()
    sent(session)
    assert session.receive_data(frames({"type": "notice", "code": "x", "message": "m"})) == []
