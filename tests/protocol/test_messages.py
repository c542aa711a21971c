"""Messages: encode/parse round trips, and every validation error with its code."""

from __future__ import annotations

import json
import re
import time
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsecure.errors import LocalProtocolError, RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.limits import MAX_NICK, MAX_TEXT, TS_MAX
from chatsecure.protocol.messages import (
    Ack,
    Chat,
    ClientMessage,
    Error,
    Hello,
    HistoryEnd,
    HistoryRequest,
    Join,
    Leave,
    Peer,
    Ping,
    Pong,
    Quit,
    SendMsg,
    ServerInfo,
    ServerMessage,
    Shutdown,
    Welcome,
    as_history,
    clean_nick,
    cut_nick,
    dump,
    encode,
    encode_ack,
    encode_chat,
    encode_peer,
    encode_welcome,
    load,
    parse_client,
    parse_server,
    shows,
    to_json,
)

# Text a client may send unchanged: no control characters (the server may strip them), and
# something that shows (a soft hyphen alone is refused as empty).
chat_text = st.text(
    st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=MAX_TEXT
).filter(shows)
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=50)
peers = st.builds(Peer, id=any_text, nick=any_text, addr=any_text)
infos = st.builds(ServerInfo, name=any_text, version=any_text, protocol=st.integers(0, 2**31 - 1))
timestamps = st.floats(min_value=0, max_value=TS_MAX, allow_nan=False) | st.integers(0, 2**37)

client_messages: st.SearchStrategy[ClientMessage] = st.one_of(
    st.builds(Hello, nick=any_text, password=st.none() | any_text),
    st.builds(SendMsg, text=chat_text),
    st.just(Ping()),
    st.just(Pong()),
    st.just(Quit()),
)
server_messages: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(Welcome, you=peers, peers=st.lists(peers, max_size=5).map(tuple), server=infos),
    st.builds(Join, peer=peers),
    st.builds(Leave, peer=peers, reason=any_text),
    st.builds(
        Chat,
        sender=peers,
        text=any_text,
        ts=timestamps.map(float),
        seq=st.integers(0, 2**40),
        history=st.booleans(),
    ),
    st.builds(Ack, ref=any_text, seq=st.integers(0, 2**40), ts=timestamps.map(float)),
    st.builds(Error, code=any_text, message=any_text),
    st.just(Ping()),
    st.just(Pong()),
    st.just(Shutdown()),
)


def frame(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def error_of(parse: Any, data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        parse(data)
    return info.value


# --- round trips ------------------------------------------------------------------------


@given(client_messages)
def test_client_message_round_trips(message: ClientMessage) -> None:
    data = encode(message)
    assert data.endswith(b"\n")
    assert b"\n" not in data[:-1], "one frame is one line"
    assert parse_client(data[:-1]) == message


@given(server_messages)
def test_server_message_round_trips(message: ServerMessage) -> None:
    data = encode(message)
    assert data.count(b"\n") == 1
    assert parse_server(data[:-1]) == message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_remote_protocol_errors(data: bytes) -> None:
    for parse in (parse_client, parse_server):
        try:
            parse(data)
        except RemoteProtocolError as exc:
            error: RemoteProtocolError | None = exc
        else:
            error = None
        assert error is None or (error.code in set(ErrorCode) and not error.fatal)


def test_encoding_is_compact_utf8_not_ascii_escapes() -> None:
    assert encode(SendMsg("héllo ✓")) == '{"type":"msg","text":"héllo ✓"}\n'.encode()


def test_chat_is_encoded_with_from_and_ts() -> None:
    peer = Peer("7", "alice", "127.0.0.1")
    assert to_json(Chat(peer, "hi", 1.5)) == {
        "type": "msg",
        "from": {"id": "7", "nick": "alice", "addr": "127.0.0.1"},
        "text": "hi",
        "ts": 1.5,
    }


def test_hello_without_password_has_no_password_field() -> None:
    assert to_json(Hello("alice")) == {"type": "hello", "nick": "alice"}


def test_password_is_not_shown_in_repr() -> None:
    assert "s3cret" not in repr(Hello("alice", "s3cret"))


def test_encoding_something_that_is_not_a_message_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(object())  # type: ignore[arg-type]


def test_dump_writes_one_line() -> None:
    assert dump({"type": "x", "text": "a\nb"}) == b'{"type":"x","text":"a\\nb"}\n'


def test_unknown_fields_are_ignored() -> None:
    assert parse_client(frame({"type": "msg", "text": "hi", "from": "me", "v": 2})) == SendMsg("hi")
    assert parse_server(frame({"type": "shutdown", "extra": [1]})) == Shutdown()


def test_timestamp_may_be_an_integer() -> None:
    peer = {"id": "1", "nick": "a", "addr": "::1"}
    chat = parse_server(frame({"type": "msg", "from": peer, "text": "t", "ts": 5}))
    assert isinstance(chat, Chat)
    assert chat.ts == 5.0
    assert isinstance(chat.ts, float)


def test_leave_reason_and_error_fields_have_defaults() -> None:
    peer = {"id": "1", "nick": "a", "addr": "::1"}
    assert parse_server(frame({"type": "leave", "peer": peer})) == Leave(
        Peer("1", "a", "::1"), "closed"
    )
    assert parse_server(frame({"type": "error", "code": 3})) == Error("error", "")


def test_welcome_server_info_is_lenient() -> None:
    you = {"id": "1", "nick": "a", "addr": "::1"}
    welcome = parse_server(
        frame({"type": "welcome", "you": you, "peers": [], "server": {"protocol": "1"}})
    )
    assert isinstance(welcome, Welcome)
    assert welcome.server == ServerInfo("", "", 1)
    bare = parse_server(frame({"type": "welcome", "you": you, "peers": []}))
    assert isinstance(bare, Welcome)
    assert bare.server == ServerInfo("", "", 1)


def test_text_of_exactly_the_limit_passes() -> None:
    assert parse_client(frame({"type": "msg", "text": "x" * MAX_TEXT})) == SendMsg("x" * MAX_TEXT)


def test_text_limit_counts_characters_not_bytes() -> None:
    text = "é" * MAX_TEXT  # 2 bytes each in UTF-8
    assert parse_client(frame({"type": "msg", "text": text})) == SendMsg(text)


def test_text_limit_can_be_lifted_or_lowered() -> None:
    long = frame({"type": "msg", "text": "x" * (MAX_TEXT + 1)})
    assert parse_client(long, max_text=0) == SendMsg("x" * (MAX_TEXT + 1))
    assert error_of(lambda d: parse_client(d, max_text=3), frame({"type": "msg", "text": "abcd"}))


# --- every validation error -------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type":"msg","text":"\xff"}', id="invalid-utf8"),
        pytest.param(b"\xc3", id="truncated-utf8"),
        pytest.param(b'{"type":"msg",', id="truncated-json"),
        pytest.param(b"hello", id="not-json"),
        pytest.param(b"NaNa", id="bad-literal"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        pytest.param(b'["type","msg"]', id="array"),
        pytest.param(b'"msg"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
    ],
)
def test_bad_json(data: bytes) -> None:
    for parse in (parse_client, parse_server):
        error = error_of(parse, data)
        assert error.code is ErrorCode.BAD_JSON
        assert not error.fatal


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({}, id="no-type"),
        pytest.param({"type": 1}, id="type-number"),
        pytest.param({"type": None}, id="type-null"),
        pytest.param({"type": ["msg"]}, id="type-list"),
        pytest.param({"type": "msg"}, id="msg-no-text"),
        pytest.param({"type": "msg", "text": 5}, id="msg-text-number"),
        pytest.param({"type": "msg", "text": None}, id="msg-text-null"),
        pytest.param({"type": "msg", "text": ["a"]}, id="msg-text-list"),
        pytest.param({"type": "msg", "text": ""}, id="msg-text-empty"),
        pytest.param({"type": "hello"}, id="hello-no-nick"),
        pytest.param({"type": "hello", "nick": 7}, id="hello-nick-number"),
        pytest.param({"type": "hello", "nick": {"a": 1}}, id="hello-nick-object"),
        pytest.param({"type": "hello", "nick": "a", "password": 1}, id="hello-password-number"),
    ],
)
def test_bad_message_from_a_client(obj: dict[str, Any]) -> None:
    error = error_of(parse_client, frame(obj))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert not error.fatal


def test_text_too_long_is_refused_but_not_fatal() -> None:
    error = error_of(parse_client, frame({"type": "msg", "text": "x" * (MAX_TEXT + 1)}))
    assert error.code is ErrorCode.TEXT_TOO_LONG
    assert not error.fatal
    assert error.ref is None


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("x" * (MAX_TEXT + 1), ErrorCode.TEXT_TOO_LONG),
        ("\x07", ErrorCode.BAD_MESSAGE),
        (5, ErrorCode.BAD_MESSAGE),
    ],
)
def test_a_refused_msg_names_its_valid_ref(text: object, code: ErrorCode) -> None:
    error = error_of(parse_client, frame({"type": "msg", "text": text, "ref": "r-7"}))
    assert (error.code, error.ref) == (code, "r-7")
    bad_ref = error_of(parse_client, frame({"type": "msg", "text": text, "ref": "x" * 65}))
    assert (bad_ref.code, bad_ref.ref) == (ErrorCode.BAD_MESSAGE, None)


@pytest.mark.parametrize(
    "text",
    [
        "   ",
        "\u200b",
        " \u200d\u2060 ",
        "\u3164",
        "\u2800\n\u2028",
        "\u3164 \u3164",
        "\u3164 \u2800",
    ],
)
def test_a_text_that_shows_nothing_is_empty(text: str) -> None:
    # A line that looks blank in every client: a zero-width space, a Hangul filler...
    error = error_of(parse_client, frame({"type": "msg", "text": text, "ref": "r-8"}))
    assert (error.code, error.message, error.ref) == (
        ErrorCode.BAD_MESSAGE,
        "'text' is empty",
        "r-8",
    )


@pytest.mark.parametrize("text", ["\u200bhi", "·", "\u3164 é", "🙂", "-", " \u202e!"])
def test_a_text_with_anything_visible_is_kept_as_it_is(text: str) -> None:
    assert parse_client(frame({"type": "msg", "text": text})) == SendMsg(text)


@pytest.mark.parametrize("kind", ["dance", "welcome", "MSG", "", "x" * 1000])
def test_unknown_type_from_a_client(kind: str) -> None:
    error = error_of(parse_client, frame({"type": kind}))
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert not error.fatal
    assert len(error.message) < 100, "an attacker's type is not echoed at length"


def test_unknown_type_from_a_server() -> None:
    error = error_of(parse_server, frame({"type": "hello", "nick": "x"}))
    assert error.code is ErrorCode.UNKNOWN_TYPE


PEER = {"id": "1", "nick": "a", "addr": "127.0.0.1"}


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"type": "msg", "from": PEER, "ts": 1}, id="msg-no-text"),
        pytest.param({"type": "msg", "text": "t", "ts": 1}, id="msg-no-from"),
        pytest.param({"type": "msg", "from": "a", "text": "t", "ts": 1}, id="msg-from-str"),
        pytest.param(
            {"type": "msg", "from": {**PEER, "addr": 1}, "text": "t", "ts": 1}, id="peer-addr"
        ),
        pytest.param({"type": "join"}, id="join-no-peer"),
        pytest.param({"type": "join", "peer": {"id": "1", "nick": "a"}}, id="join-peer-no-addr"),
        pytest.param({"type": "leave", "peer": []}, id="leave-peer-list"),
        pytest.param({"type": "welcome", "you": PEER}, id="welcome-no-peers"),
        pytest.param({"type": "welcome", "you": PEER, "peers": {}}, id="welcome-peers-obj"),
        pytest.param({"type": "welcome", "you": PEER, "peers": [1]}, id="welcome-bad-peer"),
        pytest.param({"type": "welcome", "peers": []}, id="welcome-no-you"),
        pytest.param(
            {"type": "welcome", "you": PEER, "peers": [], "server": "x"}, id="welcome-server-str"
        ),
    ],
)
def test_bad_message_from_a_server(obj: dict[str, Any]) -> None:
    assert error_of(parse_server, frame(obj)).code is ErrorCode.BAD_MESSAGE


def test_load_returns_the_object() -> None:
    assert load(b'{"type":"ping","n":[1]}') == {"type": "ping", "n": [1]}


# --- nicks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "nick"),
    [
        ("alice", "alice"),
        ("  alice \t", "alice"),
        ("Zoë", "Zoë"),
        ("Zoe\u0308", "Zoë"),  # the same, decomposed: one spelling, so that it is one nick
        ("\uff5a\uff4f\uff45", "zoe"),  # full-width
        ("\u2126mega", "Ωmega"),  # the ohm sign is an omega
        ("李雷", "李雷"),
        ("a b", "a b"),
        ("ali\nce", "alice"),
        ("ali\x1b[31mce", "ali[31mce"),
        ("\u202eecila", "ecila"),  # right-to-left override
        ("al\u200dice", "alice"),  # zero-width joiner
        ("al\u2028ice\u2029", "alice"),  # line and paragraph separators
        ("alice\u3164", "alice"),  # a Hangul filler: alice again, not a second one
        ("alice\u2800", "alice"),  # the braille blank
        (" alice\u034f", "alice"),  # the combining grapheme joiner
        ("al\ufe0fice", "alice"),  # a variation selector
        ("zoe\u200d\u0308", "zoë"),  # what is taken out leaves the rest to compose
        ("zoe\u034f\u0308", "zoë"),
        ("x" * MAX_NICK, "x" * MAX_NICK),
        (" " + "y" * MAX_NICK + " ", "y" * MAX_NICK),
    ],
)
def test_clean_nick_keeps_visible_characters(raw: str, nick: str) -> None:
    assert clean_nick(raw) == nick


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "\n\t",
        "\u200b\u200d",
        "\x00",
        "\u3164",
        "\u2800",
        "\u034f\u034f",
        "x" * (MAX_NICK + 1),
        "\u202e" + "z" * 33,
    ],
)
def test_clean_nick_refuses_empty_or_too_long(raw: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        clean_nick(raw)
    assert info.value.code is ErrorCode.BAD_NICK
    assert info.value.fatal


@given(st.text(max_size=40))
def test_clean_nick_result_is_short_visible_and_stable(raw: str) -> None:
    try:
        nick = clean_nick(raw)
    except RemoteProtocolError:
        return
    assert 1 <= len(nick) <= MAX_NICK
    assert nick == nick.strip()
    assert "\n" not in nick
    assert "\r" not in nick
    assert clean_nick(nick) == nick


@pytest.mark.parametrize(
    ("nick", "length", "cut"),
    [
        ("alice", 3, "ali"),
        ("alice", 5, "alice"),
        ("alice", 9, "alice"),
        ("alq\u0301", 3, "al"),  # no plain "alq": the accent goes with its letter
        ("alq\u0301", 4, "alq\u0301"),
        ("alq\u0323\u0301x", 4, "al"),  # nor half of its marks
        ("alq\u0323\u0301x", 5, "alq\u0323\u0301"),
        ("al\u0915\u093f", 3, "al"),  # a vowel sign without a combining class is a mark too
        ("al\U0001f44d\U0001f3fd", 3, "al"),  # a skin tone stays with its emoji
        ("al\U0001f469\u200d\U0001f4bb", 3, "al"),  # a joined sequence is kept whole
        ("al\U0001f469\u200d\U0001f4bb", 4, "al"),
        ("q" + "\u0301" * 31, 30, ""),  # one character, marks and all, too long to keep
        ("\u0301ab", 2, "\u0301a"),  # a mark with nothing before it is cut like a character
        ("a\U0001f1eb\U0001f1f7", 2, "a"),  # a flag (FR) is not cut in two
        ("a\U0001f1eb\U0001f1f7", 3, "a\U0001f1eb\U0001f1f7"),
        ("\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea", 3, "\U0001f1eb\U0001f1f7"),  # FR DE
    ],
)
def test_cut_nick_keeps_a_character_with_its_marks(nick: str, length: int, cut: str) -> None:
    assert cut_nick(nick, length) == cut


def joins_previous(c: str) -> bool:
    return unicodedata.category(c)[0] == "M" or 0x1F3FB <= ord(c) <= 0x1F3FF or c == "\u200d"


def half_a_flag(nick: str, end: int) -> bool:
    """Whether ``nick[:end]`` ends with the first letter of a flag (they pair from the left)."""
    letters = re.match(r"[\U0001f1e6-\U0001f1ff]*", nick[end - 1 :: -1])
    return re.match(r"[\U0001f1e6-\U0001f1ff]", nick[end]) is not None and (
        letters is not None and len(letters.group()) % 2 == 1
    )


def whole(nick: str, end: int) -> bool:
    """Whether ``nick[:end]`` ends between two characters, not inside one."""
    if end in (0, len(nick)):
        return True
    return not (joins_previous(nick[end]) or nick[end - 1] == "\u200d" or half_a_flag(nick, end))


@given(st.text(max_size=40), st.integers(0, MAX_NICK))
def test_cut_nick_is_the_longest_whole_prefix_that_fits(raw: str, length: int) -> None:
    try:
        nick = clean_nick(raw)
    except RemoteProtocolError:
        return
    cut = cut_nick(nick, length)
    assert nick.startswith(cut)
    assert len(cut) <= length
    assert whole(nick, len(cut))
    assert not any(whole(nick, end) for end in range(len(cut) + 1, min(length, len(nick)) + 1))


# --- frames built from cached parts -----------------------------------------------------


@given(peers, any_text, st.floats() | timestamps.map(float))
def test_encode_chat_from_a_cached_peer_is_exactly_encode(peer: Peer, text: str, ts: float) -> None:
    assert encode_chat(encode_peer(peer), text, ts) == encode(Chat(peer, text, ts))


@given(any_text, st.integers(min_value=0, max_value=2**53), st.floats() | timestamps.map(float))
def test_encode_ack_is_exactly_encode(ref: str, seq: int, ts: float) -> None:
    assert encode_ack(ref, seq, ts) == encode(Ack(ref, seq, ts))


@given(peers, st.lists(peers, max_size=5), infos)
def test_encode_welcome_from_cached_peers_is_exactly_encode(
    you: Peer, others: list[Peer], info: ServerInfo
) -> None:
    cached = encode_welcome(encode_peer(you), [encode_peer(p) for p in others], info)
    assert cached == encode(Welcome(you, tuple(others), info))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type":"msg","text":"a\\ud800b"}', id="msg-text"),
        pytest.param(b'{"type":"hello","nick":"\\udfff"}', id="hello-nick"),
        pytest.param(b'{"type":"hello","nick":"a","password":"\\ud83d"}', id="password"),
    ],
)
def test_lone_surrogate_is_a_bad_message_not_a_crash_later(data: bytes) -> None:
    error = error_of(parse_client, data)
    assert error.code is ErrorCode.BAD_MESSAGE


def test_escaped_surrogate_pair_is_a_real_character() -> None:
    assert parse_client(b'{"type":"msg","text":"\\ud83d\\ude00"}') == SendMsg("\U0001f600")


@pytest.mark.parametrize("ts", ["null", '"1"', "true", "1e20", "-1e300", "-1", "1e400", "-1e400"])
def test_a_server_ts_that_is_not_a_sane_time_becomes_now(ts: str) -> None:
    obj: dict[str, Any] = {"type": "msg", "from": PEER, "text": "t"}
    data = json.dumps(obj).encode()[:-1] + b',"ts":' + ts.encode() + b"}"
    message = parse_server(data)
    assert isinstance(message, Chat)
    assert abs(message.ts - time.time()) < 5  # (1e400 is JSON, and Python's float("inf"))


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json_from_either_side(constant: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as server_got:
        parse_client(b'{"type":"msg","text":"t","x":' + constant + b"}")
    with pytest.raises(RemoteProtocolError) as client_got:
        parse_server(b'{"type":"msg","from":{},"text":"t","ts":' + constant + b"}")
    assert server_got.value.code is client_got.value.code is ErrorCode.BAD_JSON


def test_v2_fields_round_trip() -> None:
    peer = Peer("1", "a", "127.0.0.1")
    for message in (
        Chat(peer, "hi", 1.5, seq=7, history=True),
        Ack("r1", 7, 1.5),
        HistoryEnd(9, 3),
        HistoryEnd(None, 0),
        HistoryEnd(9, 3, "ab-h4"),
        Welcome(peer, (), ServerInfo("s", "1", 2), seq=9, replay=2, skipped=1),
        Welcome(peer, (), ServerInfo("s", "1", 2), seq=9, log="9f2c51d07a3be8e4"),
    ):
        assert parse_server(encode(message)[:-1]) == message
    for request in (
        Hello("a", client="abcdefgh", since=3),
        Hello("a", client="abcdefgh", since=3, log="9f2c51d07a3be8e4"),
        SendMsg("x", ref="r"),
        HistoryRequest(5, 10),
        HistoryRequest(None, 200),
        HistoryRequest(5, 10, "ab-h4"),
    ):
        assert parse_client(encode(request)[:-1]) == request


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "hello", "nick": "a", "client": "short"},
        {"type": "hello", "nick": "a", "client": "has space!"},
        {"type": "hello", "nick": "a", "since": -1},
        {"type": "hello", "nick": "a", "since": "3"},
        {"type": "hello", "nick": "a", "since": True},
        {"type": "hello", "nick": "a", "since": 3, "log": "short"},
        {"type": "hello", "nick": "a", "since": 3, "log": 42},
        {"type": "msg", "text": "x", "ref": ""},
        {"type": "msg", "text": "x", "ref": "r" * 65},
        {"type": "msg", "text": "x", "ref": 5},
        {"type": "history", "before": -2},
        {"type": "history", "limit": 0},
    ],
    ids=repr,
)
def test_bad_v2_fields_from_a_client_are_bad_message(obj: dict[str, Any]) -> None:
    assert error_of(parse_client, frame(obj)).code is ErrorCode.BAD_MESSAGE


def test_history_limit_over_the_page_is_capped() -> None:
    message = parse_client(frame({"type": "history", "limit": 10_000}))
    assert message == HistoryRequest(None, 200)


def test_as_history_marks_an_encoded_chat_frame() -> None:
    peer = Peer("1", "a", "127.0.0.1")
    frame_ = encode_chat(encode_peer(peer), "hi", 2.5, 4)
    assert parse_server(as_history(frame_)) == Chat(peer, "hi", 2.5, 4, history=True)
