"""ServerSession: the state machine table in chatsecure/protocol/session.py, row by row."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsecure.errors import LocalProtocolError, RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import Hello, Ping, Pong, Quit, SendMsg
from chatsecure.protocol.session import Event, ServerSession, State


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


HELLO = line({"type": "hello", "nick": "alice"})
MSG = line({"type": "msg", "text": "hi"})
PING = line({"type": "ping"})
PONG = line({"type": "pong"})
QUIT = line({"type": "quit"})


def session_in(state: State) -> ServerSession:
    session = ServerSession()
    if state in (State.JOINING, State.JOINED):
        session.receive_data(HELLO)
        if state is State.JOINED:
            assert session.accept() == []
    elif state is State.CLOSED:
        session.receive_data(QUIT)
    assert session.state is state
    return session


def codes(events: list[Event]) -> list[ErrorCode | None]:
    return [e.code if isinstance(e, RemoteProtocolError) else None for e in events]


def accepting(session: ServerSession, events: list[Event]) -> list[Event]:
    """``events``, and what follows them once the server accepts a hello among them at once."""
    if session.state is State.JOINING:
        return events + accepting(session, session.accept())
    return events


# state, input, expected events (messages or error codes), state after
TABLE = [
    (State.AWAITING_HELLO, HELLO, [Hello("alice")], State.JOINING),
    (State.JOINING, MSG + PING + QUIT, [], State.JOINING),
    (State.AWAITING_HELLO, PING, [Ping()], State.AWAITING_HELLO),
    (State.AWAITING_HELLO, PONG, [Pong()], State.AWAITING_HELLO),
    (State.AWAITING_HELLO, MSG, [ErrorCode.NOT_JOINED], State.CLOSED),
    (  # a client's lines right behind a hello refused for its form: dropped, not fatal
        State.AWAITING_HELLO,
        line({"type": "hello", "nick": "alice", "client": "short"}) + MSG + HELLO,
        [ErrorCode.BAD_MESSAGE, ErrorCode.NOT_JOINED, Hello("alice")],
        State.JOINING,
    ),
    (State.JOINED, MSG, [SendMsg("hi")], State.JOINED),
    (State.JOINED, PING, [Ping()], State.JOINED),
    (State.JOINED, PONG, [Pong()], State.JOINED),
    (State.JOINED, HELLO, [ErrorCode.ALREADY_JOINED], State.JOINED),
    (State.AWAITING_HELLO, QUIT, [Quit()], State.CLOSED),
    (State.JOINED, QUIT, [Quit()], State.CLOSED),
    (State.AWAITING_HELLO, b"{not json\n", [ErrorCode.BAD_JSON], State.AWAITING_HELLO),
    (State.JOINED, b"{not json\n", [ErrorCode.BAD_JSON], State.JOINED),
    (State.JOINED, b'{"type":"ping","x":NaN}\n', [ErrorCode.BAD_JSON], State.JOINED),
    (State.JOINED, b'{"type":"ping","x":-Infinity}\n', [ErrorCode.BAD_JSON], State.JOINED),
    (State.JOINED, line({"type": "msg", "text": 1}), [ErrorCode.BAD_MESSAGE], State.JOINED),
    (State.JOINED, line({"type": "x"}), [ErrorCode.UNKNOWN_TYPE], State.JOINED),
    (State.AWAITING_HELLO, line({"type": "x"}), [ErrorCode.UNKNOWN_TYPE], State.AWAITING_HELLO),
    (
        State.JOINED,
        line({"type": "msg", "text": "x" * 4001}),
        [ErrorCode.TEXT_TOO_LONG],
        State.JOINED,
    ),
    (State.AWAITING_HELLO, b"x" * 20_000 + b"\n", [ErrorCode.FRAME_TOO_LONG], State.CLOSED),
    (State.JOINED, b"x" * 20_000, [ErrorCode.FRAME_TOO_LONG], State.CLOSED),
    (State.CLOSED, HELLO + MSG + b"x" * 20_000, [], State.CLOSED),
]


@pytest.mark.parametrize(("state", "data", "expected", "after"), TABLE)
def test_state_table(state: State, data: bytes, expected: list[Any], after: State) -> None:
    session = session_in(state)
    events = session.receive_data(data)
    assert codes(events) == [e if isinstance(e, ErrorCode) else None for e in expected]
    assert [e for e in events if not isinstance(e, RemoteProtocolError)] == [
        e for e in expected if not isinstance(e, ErrorCode)
    ]
    assert session.state is after
    assert session.closed is (after is State.CLOSED)


def test_fatal_errors_are_marked_fatal() -> None:
    (not_joined,) = session_in(State.AWAITING_HELLO).receive_data(MSG)
    (too_long,) = session_in(State.JOINED).receive_data(b"y" * 20_000)
    (bad_json,) = session_in(State.JOINED).receive_data(b"nope\n")
    assert isinstance(not_joined, RemoteProtocolError)
    assert not_joined.fatal
    assert isinstance(too_long, RemoteProtocolError)
    assert too_long.fatal
    assert isinstance(bad_json, RemoteProtocolError)
    assert not bad_json.fatal


def test_nothing_after_quit_in_the_same_chunk_counts() -> None:
    session = session_in(State.JOINED)
    events = session.receive_data(MSG + QUIT + MSG + b"z" * 20_000)
    assert events == [SendMsg("hi"), Quit()]
    assert session.closed


def test_frames_before_an_over_long_line_are_handled_first() -> None:
    session = session_in(State.JOINED)
    events = session.receive_data(PING + MSG + b"z" * 20_000)
    assert events[:2] == [Ping(), SendMsg("hi")]
    assert codes(events[2:]) == [ErrorCode.FRAME_TOO_LONG]
    assert session.closed


def test_frames_after_hello_wait_for_the_servers_verdict() -> None:
    session = ServerSession()
    assert session.receive_data(HELLO + MSG + PING) == [Hello("alice")]
    assert session.state is State.JOINING
    assert session.receive_data(b"\r\n" + MSG[:5]) == []
    assert session.receive_data(MSG[5:] + QUIT + MSG) == []
    assert session.accept() == [SendMsg("hi"), Ping(), SendMsg("hi"), Quit()]
    assert session.closed


def test_an_over_long_line_while_joining_ends_the_stream_after_what_came_before() -> None:
    session = ServerSession()
    assert session.receive_data(HELLO + MSG) == [Hello("alice")]
    assert session.receive_data(b"z" * 20_000) == []
    assert session.receive_data(PING) == [], "the stream is over, the verdict or not"
    events = session.accept()
    assert events[0] == SendMsg("hi")
    assert codes(events[1:]) == [ErrorCode.FRAME_TOO_LONG]
    assert session.closed


def test_a_refused_hello_closes_and_drops_what_was_held() -> None:
    session = ServerSession()
    session.receive_data(HELLO + MSG)
    session.close()
    assert session.closed
    assert session.receive_data(MSG) == []


@pytest.mark.parametrize("state", [State.AWAITING_HELLO, State.JOINED, State.CLOSED])
def test_accept_without_a_pending_hello_is_our_bug(state: State) -> None:
    with pytest.raises(LocalProtocolError):
        session_in(state).accept()


def test_configured_limits_apply() -> None:
    session = ServerSession(max_frame=64, max_text=5)
    assert session.receive_data(HELLO) == [Hello("alice")]
    assert session.accept() == []
    assert codes(session.receive_data(line({"type": "msg", "text": "123456"}))) == [
        ErrorCode.TEXT_TOO_LONG
    ]
    assert codes(session.receive_data(b"q" * 65)) == [ErrorCode.FRAME_TOO_LONG]


@given(
    st.lists(st.sampled_from([HELLO, MSG, PING, PONG, QUIT, b"{bad\n", b"\r\n"]), max_size=10),
    st.integers(min_value=1, max_value=50),
)
def test_chunking_does_not_change_the_events(parts: list[bytes], size: int) -> None:
    stream = b"".join(parts)
    whole = ServerSession()
    expected = accepting(whole, whole.receive_data(stream))
    chunked = ServerSession()
    events: list[Event] = []
    for start in range(0, len(stream), size):
        events.extend(accepting(chunked, chunked.receive_data(stream[start : start + size])))
    assert [type(e) for e in events] == [type(e) for e in expected]
    assert codes(events) == codes(expected)
    assert chunked.state is whole.state
    if not whole.closed:  # after the end, what is left of a chunk is never looked at
        assert chunked.blank_lines == whole.blank_lines == parts.count(b"\r\n")


def test_blank_lines_make_no_event_but_are_counted() -> None:
    session = session_in(State.JOINED)
    assert session.receive_data(PING + b"\n\r\n" + MSG + b"\n") == [Ping(), SendMsg("hi")]
    assert session.blank_lines == 3
