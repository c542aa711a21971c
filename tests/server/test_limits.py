"""Every limit answers with its error code, and a healthy pair keeps chatting meanwhile."""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chatsecure.protocol import limits
from chatsecure.protocol.limits import MAX_FRAME, MAX_TEXT
from chatsecure.testing import RawClient, ServerThread, joined
from chatsecure.tls.context import client_context
from tests.helpers import all_silent, chat_works

Pair = tuple[RawClient, RawClient]


@pytest.fixture
def pair(server: ServerThread) -> Iterator[Pair]:
    """Two joined clients that should not notice what a third one does."""
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        yield alice, bob


def still_fine(pair: Pair) -> None:
    alice, bob = pair
    chat_works(alice, bob, "alice is fine")
    chat_works(bob, alice, "bob is fine")
    assert all_silent(alice, bob, wait=0.05)


def msg(text: str) -> dict[str, Any]:
    return {"type": "msg", "text": text}


# --- limits that cost only the frame ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(
            json.dumps(msg("x" * (MAX_TEXT + 1))).encode() + b"\n", "text_too_long", id="text"
        ),
        pytest.param(b'{"type":"msg","text":"\xff\xfe"}\n', "bad_json", id="invalid-utf8"),
        pytest.param(b'{"type":"msg","text":\n', "bad_json", id="invalid-json"),
        pytest.param(b'["msg","hi"]\n', "bad_json", id="json-array"),
        pytest.param(b'{"type":"msg","text":42}\n', "bad_message", id="text-number"),
        pytest.param(b'{"type":"msg"}\n', "bad_message", id="text-missing"),
        pytest.param(b'{"type":7,"text":"x"}\n', "bad_message", id="type-number"),
        pytest.param(b'{"text":"x"}\n', "bad_message", id="type-missing"),
        pytest.param(b'{"type":"wave"}\n', "unknown_type", id="unknown-type"),
    ],
)
def test_refused_frame_keeps_the_connection(
    server: ServerThread, pair: Pair, data: bytes, code: str
) -> None:
    with RawClient(server.host, server.port) as carol:
        carol.join("carol")
        for peer in pair:
            peer.expect("join")
        carol.send_raw(data)
        error = carol.expect("error")
        assert error["code"] == code
        assert error["message"], "the error explains itself"
        assert "ref" not in error  # the frame had none
        # Frames keep their order: had the refused frame gone anywhere, it would come first.
        chat_works(carol, pair[0], "carol is still here")
        assert pair[1].expect("msg")["text"] == "carol is still here"
    for peer in pair:
        assert peer.expect("leave")["reason"] == "closed"
    still_fine(pair)


def test_a_refused_msg_names_its_ref_also_when_it_came_over_the_rate(
    start_server: Callable[..., ServerThread],
) -> None:
    # Else its client could neither drop it nor send it again: it would wait for it for ever.
    server = start_server(max_text=5, msg_rate=1, msg_burst=2)
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        for n in range(4):
            alice.send({"type": "msg", "text": "too long", "ref": f"r{n}"})
        answers = [alice.expect("error") for _ in range(4)]
    assert [(e["code"], e["ref"]) for e in answers] == [
        ("text_too_long", "r0"),
        ("text_too_long", "r1"),
        ("rate_limited", "r2"),
        ("rate_limited", "r3"),
    ]


def test_text_of_exactly_the_limit_is_delivered(pair: Pair) -> None:
    chat_works(pair[0], pair[1], "y" * MAX_TEXT)


# --- limits that cost the connection -----------------------------------------------------


def test_frame_over_16_kib_is_refused_and_closed(server: ServerThread, pair: Pair) -> None:
    with RawClient(server.host, server.port) as carol:
        carol.join("carol")
        for peer in pair:
            peer.expect("join")
        carol.send_raw(json.dumps(msg("z" * MAX_FRAME)).encode() + b"\n")
        assert carol.expect("error")["code"] == "frame_too_long"
        assert carol.closed()
        for peer in pair:
            leave = peer.expect("leave")
            assert leave["peer"]["nick"] == "carol"
        assert all_silent(*pair), "the over-long message reached nobody"
    still_fine(pair)


def test_endless_line_without_newline_is_cut_off(server: ServerThread, pair: Pair) -> None:
    with RawClient(server.host, server.port) as carol:
        carol.join("carol")
        for peer in pair:
            peer.expect("join")
        carol.send_raw(b"x" * (MAX_FRAME + 1000))  # and never a newline
        assert carol.expect("error")["code"] == "frame_too_long"
        assert carol.closed()
        for peer in pair:
            assert peer.expect("leave")["peer"]["nick"] == "carol"
    still_fine(pair)


def test_frame_of_exactly_16_kib_passes(server: ServerThread, pair: Pair) -> None:
    alice, _ = pair
    head = b'{"type":"ping","pad":"'
    tail = b'"}'
    alice.send_raw(head + b"p" * (MAX_FRAME - len(head) - len(tail)) + tail + b"\r\n")
    alice.expect("pong")
    still_fine(pair)


def test_msg_before_hello_is_refused_with_not_joined(server: ServerThread, pair: Pair) -> None:
    with RawClient(server.host, server.port) as carol:
        carol.send(msg("sneaky"))
        assert carol.expect("error")["code"] == "not_joined"
        assert carol.closed()
    assert all_silent(*pair), "the message went nowhere"
    still_fine(pair)


def test_lines_sent_behind_a_malformed_hello_are_dropped_and_a_corrected_one_gets_in(
    server: ServerThread, pair: Pair
) -> None:
    with RawClient(server.host, server.port) as carol:
        bad = {"type": "hello", "nick": "carol", "client": "short"}
        frames = (bad, msg("pipelined"), {"type": "ping"})
        carol.send_raw(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
        assert carol.expect("error")["code"] == "bad_message"
        assert carol.expect("error")["code"] == "not_joined"
        carol.expect("pong")  # still open
        carol.send({"type": "hello", "nick": "carol"})
        assert carol.expect("welcome")["you"]["nick"] == "carol"
        for client in pair:  # carol's join, and not her line
            assert client.expect("join")["peer"]["nick"] == "carol"
        assert all_silent(*pair), "the line went nowhere"
    for client in pair:
        assert client.expect("leave")["peer"]["nick"] == "carol"
    still_fine(pair)


def test_no_hello_in_time_is_refused_with_hello_timeout(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(hello_timeout=0.5)
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        with RawClient(server.host, server.port) as carol:
            started = time.monotonic()
            error = carol.expect("error", timeout=5)
            waited = time.monotonic() - started
            assert error["code"] == "hello_timeout"
            assert 0.3 <= waited < 3
            assert carol.closed()
        assert all_silent(alice, bob), "a client that never joined has no leave"
        still_fine((alice, bob))


def test_hello_timer_stops_once_joined(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(hello_timeout=0.3)
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        time.sleep(0.6)
        still_fine((alice, bob))


# --- strangers that do not speak the protocol -------------------------------------------


def test_plain_tcp_client_does_not_disturb_others(server: ServerThread, pair: Pair) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as plain:
        plain.sendall(b'{"type":"hello","nick":"plain"}\n')
        data = plain.recv(4096)  # a TLS alert at most, then the close
        assert b"welcome" not in data
    still_fine(pair)
    assert sorted(server.online()) == ["alice", "bob"]


def test_random_bytes_instead_of_tls_do_not_disturb_others(
    server: ServerThread, pair: Pair
) -> None:
    rng = random.Random(1)  # reproducible
    for _ in range(5):
        with socket.create_connection((server.host, server.port), timeout=5) as noise:
            noise.sendall(rng.randbytes(rng.randint(1, 8192)))
    still_fine(pair)


def test_random_bytes_inside_tls_do_not_disturb_others(server: ServerThread, pair: Pair) -> None:
    with RawClient(server.host, server.port) as carol:
        carol.join("carol")
        for peer in pair:
            peer.expect("join")
        carol.send_raw(os.urandom(3000).replace(b"\n", b"") + b"\n" + os.urandom(500) + b"\n")
        assert carol.expect("error")["code"] in {"bad_json", "bad_message"}
        chat_works(carol, pair[0], "carol survived")
        pair[1].expect("msg")
    for peer in pair:
        peer.expect("leave")
    still_fine(pair)


def test_silent_tcp_connection_is_closed_after_the_handshake_timeout(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(handshake_timeout=0.5)
    with socket.create_connection((server.host, server.port), timeout=5) as idle:
        started = time.monotonic()
        assert idle.recv(4096) == b""
        assert time.monotonic() - started < 4


def test_handshake_timeout_zero_is_the_documented_ceiling_not_never(
    start_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 cannot mean "never" for a handshake; it means ``HANDSHAKE_TIMEOUT_OFF`` (60 s).

    The ceiling is lowered here so that the test need not wait a minute.
    """
    monkeypatch.setattr(limits, "HANDSHAKE_TIMEOUT_OFF", 0.5)
    server = start_server(handshake_timeout=0)
    with socket.create_connection((server.host, server.port), timeout=5) as idle:
        started = time.monotonic()
        assert idle.recv(4096) == b""
        assert 0.4 < time.monotonic() - started < 4


# --- slow consumers ---------------------------------------------------------------------


def stalled_client(server: ServerThread, nick: str) -> ssl.SSLSocket:
    """A TLS client with a tiny receive buffer that joins and then never reads again."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(5)
    raw.connect((server.host, server.port))
    sock = client_context().wrap_socket(raw)
    sock.sendall(json.dumps({"type": "hello", "nick": nick}).encode() + b"\n")
    return sock


def big_msg(text: str) -> bytes:
    """A message near the frame limit: 4000 four-byte characters, sent as raw UTF-8."""
    return json.dumps(msg(text), ensure_ascii=False).encode() + b"\n"


def test_stalled_reader_is_dropped_as_slow_consumer_while_others_keep_receiving(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(send_buffer_limit=64 * 1024, msg_rate=0)
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        stalled = stalled_client(server, "stalled")
        try:
            for peer in (alice, bob):
                assert peer.expect("join")["peer"]["nick"] == "stalled"
            leave = None
            sent = 0
            deadline = time.monotonic() + 15
            while leave is None:
                assert time.monotonic() < deadline, f"not dropped after {sent} messages"
                sender, receiver = (alice, bob) if sent % 2 else (bob, alice)
                text = f"{sent:06d}" + "\U0001f600" * (MAX_TEXT - 6)
                sender.send_raw(big_msg(text))
                sent += 1
                frame = receiver.recv()
                if frame["type"] == "leave":
                    leave = frame
                    assert receiver.expect("msg")["text"] == text
                else:
                    assert frame["text"] == text, "every message arrives, in order"
            assert leave["peer"]["nick"] == "stalled"
            other = bob if receiver is alice else alice
            assert other.expect("leave")["peer"]["nick"] == "stalled"
            # Once dropped, whatever the stalled client still sends goes nowhere.
            stalled.sendall(json.dumps(msg("ghost")).encode() + b"\n")
            assert all_silent(alice, bob)
            still_fine((alice, bob))
            assert sorted(server.online()) == ["alice", "bob"]
        finally:
            stalled.close()
