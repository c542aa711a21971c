"""Property tests across the decoder, the messages and the session state machine.

tests/protocol checks each piece with its own examples; here Hypothesis throws whole hostile
streams at them: any mix of valid and broken frames, cut anywhere.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsecure.client.core import JOINERS, safe_text
from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import (
    Chat,
    Hello,
    Peer,
    Quit,
    SendMsg,
    ServerMessage,
    clean_text,
    encode,
    parse_client,
    parse_server,
)
from chatsecure.protocol.session import Event, ServerSession, State

MAX_FRAME = 64
"""A small frame limit, so that over-long lines come up often."""

hostile = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Big inputs on a loaded machine: no per-example deadline (pytest-timeout still applies)."""


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


FRAMES = [
    line({"type": "hello", "nick": "alice"}),
    line({"type": "hello", "nick": "bob", "password": "x"}),
    line({"type": "msg", "text": "hi"}),
    line({"type": "msg", "text": "x\ud800"}),  # a lone surrogate, escaped
    line({"type": "msg", "text": 5}),
    line({"type": "msg"}),
    line({"type": "ping"}),
    line({"type": "pong"}),
    line({"type": "quit"}),
    line({"type": "dance"}),
    line({"type": None}),
    line(["msg"]),
    b"{not json",
    b'{"type":"msg","text":"\xff"}',
    b"",
    b"y" * (MAX_FRAME + 1),
]

TRICKY = "\ud800\udfff\u202e\u2066\u200b\u200d\ufeff\u2028\u2029\x85\x00\x1b\r\n\t"
"""Lone surrogates, bidi overrides, zero-width and line-breaking characters, controls."""

hostile_chars = st.one_of(st.sampled_from(TRICKY), st.characters(codec=None))
"""Any character, the tricky ones half of the time."""

hostile_text = st.lists(hostile_chars, max_size=8).map("".join)
"""Short strings of those (not ``st.text``, which leaves lone surrogates out)."""


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` three times in four, else ``rare`` (``|`` would weigh each alternative of a
    nested one_of equally, and the interesting case would hardly ever come up)."""
    return st.integers(0, 3).flatmap(lambda i: common if i else rare)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
"""Any JSON value; strings may hold lone surrogates (JSON can escape them)."""

frame_lines = st.one_of(
    st.sampled_from(FRAMES),
    st.binary(max_size=MAX_FRAME + 8).map(lambda b: b.replace(b"\n", b"")),
    st.builds(
        lambda kind, fields: line({"type": kind, **fields}),
        st.sampled_from(["hello", "msg", "ping", "pong", "quit", "x"]),
        st.dictionaries(
            st.sampled_from(["nick", "text", "password"]),
            mostly(hostile_text, json_values),
            max_size=3,
        ),
    ),
)
streams = st.lists(st.tuples(frame_lines, st.sampled_from([b"\n", b"\r\n"])), max_size=12).map(
    lambda parts: b"".join(body + end for body, end in parts)
)


def feed(stream: bytes, cuts: list[int]) -> tuple[list[Event], ServerSession]:
    session = ServerSession(max_frame=MAX_FRAME)
    events: list[Event] = []
    edges = [0, *sorted({c for c in cuts if c <= len(stream)}), len(stream)]
    for start, end in itertools.pairwise(edges):
        events.extend(session.receive_data(stream[start:end]))
        while session.state is State.JOINING:  # the server lets everyone in at once
            events.extend(session.accept())
    return events, session


def summary(events: list[Event]) -> list[object]:
    return [e.code if isinstance(e, RemoteProtocolError) else e for e in events]


def ends_the_stream(event: Event) -> bool:
    return isinstance(event, Quit) or (isinstance(event, RemoteProtocolError) and event.fatal)


@settings(hostile, max_examples=300)
@given(streams, st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_stream_cut_anywhere_obeys_the_session_rules(stream: bytes, cuts: list[int]) -> None:
    events, session = feed(stream, cuts)  # never raises
    whole, _ = feed(stream, [])
    assert summary(events) == summary(whole), "how the stream was cut changes nothing"
    hellos = [i for i, e in enumerate(events) if isinstance(e, Hello)]
    msgs = [i for i, e in enumerate(events) if isinstance(e, SendMsg)]
    assert len(hellos) <= 1, "a second hello is an error, never a second join"
    assert all(hellos and hellos[0] < i for i in msgs), "msg only after hello"
    enders = [i for i, e in enumerate(events) if ends_the_stream(e)]
    if enders:
        assert enders == [len(events) - 1], "nothing after quit or a fatal error"
        assert session.state is State.CLOSED
    else:
        assert session.state is not State.CLOSED
    if session.state is State.CLOSED:
        assert session.receive_data(b'{"type":"hello","nick":"late"}\n' + b"z" * 999) == []


@hostile
@given(streams)
def test_only_not_joined_and_frame_too_long_are_fatal(stream: bytes) -> None:
    events, _ = feed(stream, [])
    fatal = {e.code for e in events if isinstance(e, RemoteProtocolError) and e.fatal}
    assert fatal <= {ErrorCode.NOT_JOINED, ErrorCode.FRAME_TOO_LONG}


@hostile
@given(
    mostly(st.sampled_from(["hello", "msg", "ping", "pong", "quit", "x"]), json_values),
    st.dictionaries(
        st.sampled_from(["nick", "text", "password", "x"]), mostly(hostile_text, json_values)
    ),
)
def test_whatever_a_client_sends_is_a_valid_message_or_a_remote_error(
    kind: object, obj: dict[str, Any]
) -> None:
    frame = json.dumps({"type": kind, **obj}).encode()
    try:
        message = parse_client(frame)
    except RemoteProtocolError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert not error.fatal
        return
    encode(message)  # what the server accepted, it can send on
    if isinstance(message, SendMsg):
        peer = Peer("1", "alice", "127.0.0.1")
        assert parse_server(encode(Chat(peer, message.text, 1.0))) == Chat(peer, message.text, 1.0)
    if isinstance(message, Hello) and message.password is not None:
        message.password.encode()  # the server compares it as bytes


@hostile
@given(
    mostly(
        st.sampled_from(["msg", "join", "leave", "welcome", "error", "ping", "pong", "shutdown"]),
        json_values,
    ),
    st.dictionaries(
        st.sampled_from(["from", "text", "ts", "peer", "peers", "you", "server", "code"]),
        json_values,
    ),
)
def test_whatever_a_server_sends_the_client_survives(kind: object, obj: dict[str, Any]) -> None:
    """A hostile server gets the client nothing worse than a frame it ignores."""
    frame = json.dumps({"type": kind, **obj}).encode()
    try:
        message: ServerMessage = parse_server(frame)
    except RemoteProtocolError:
        return
    assert message.type in {"msg", "join", "leave", "welcome", "error", "ping", "pong", "shutdown"}


@hostile
@given(st.lists(hostile_chars, max_size=40).map("".join))
def test_displayed_text_cannot_break_a_line_or_reorder_it(text: str) -> None:
    shown = safe_text(text)
    assert all(c.isprintable() or c == " " or c in JOINERS for c in shown), repr(shown)
    assert safe_text(shown) == shown


@hostile
@given(st.lists(hostile_chars, max_size=40).map("".join))
def test_relayed_text_keeps_no_control_character_but_newline_and_tab(text: str) -> None:
    cleaned = clean_text(text)
    assert all(c in "\n\t" or not (c < " " or "\x7f" <= c <= "\x9f") for c in cleaned)
    assert clean_text(cleaned) == cleaned
