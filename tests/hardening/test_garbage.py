"""The garbage battery: whatever a broken or hostile client sends, the others keep chatting.

Cases the limit tests in tests/server already cover (random bytes, plain TCP, an over-long
line) are run again, at volume, in test_memory.py.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from chatsecure.testing import RawClient, ServerThread
from tests.hardening.helpers import client_hello, closed_by_peer, pair_chats

ROOM = "pw"
"""The room password of the servers that ask for one."""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def connections(server: ServerThread) -> int:
    return server.call(lambda: len(server.server.connections))


def wait_no_connections(server: ServerThread, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while connections(server):
        assert time.monotonic() < deadline, f"{connections(server)} connections left open"
        time.sleep(0.02)


def still_kept(client: RawClient) -> None:
    """The connection survived: a ping is still answered."""
    client.send({"type": "ping"})
    client.expect("pong")


# --- before TLS -------------------------------------------------------------------------


def test_plain_http_request_gets_no_answer_and_is_closed(server: ServerThread) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as http:
        http.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8\r\n\r\n")
        http.settimeout(3)
        try:
            answer = http.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/")
        assert closed_by_peer(http, 3)
    assert connections(server) == 0, "a connection that never finished TLS holds no slot"
    pair_chats(server.host, server.port)


def test_client_hello_cut_off_halfway_is_closed_at_the_handshake_timeout(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(handshake_timeout=0.5)
    hello = client_hello()
    with socket.create_connection((server.host, server.port), timeout=5) as cut:
        cut.sendall(hello[: len(hello) // 2])
        started = time.monotonic()
        assert closed_by_peer(cut, 5)
        waited = time.monotonic() - started
    assert 0.3 < waited < 3, f"closed after {waited:.2f} s, not at the 0.5 s handshake timeout"
    pair_chats(server.host, server.port)


def test_thousand_connect_and_vanish_cycles_leave_nothing_behind(server: ServerThread) -> None:
    """TCP opened and closed, reset, cut mid-ClientHello, and TLS done then dropped."""
    hello = client_hello()
    pair_chats(server.host, server.port)  # warm up: the first TLS setup allocates for good
    fds_before = open_fds()
    started = time.monotonic()
    for cycle in range(1000):
        assert time.monotonic() - started < 25, f"only {cycle} cycles in 25 s"
        if cycle % 10 == 9:  # a real TLS client that vanishes right after the handshake
            client = RawClient(server.host, server.port)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            client.close()
            continue
        sock = socket.create_connection((server.host, server.port), timeout=5)
        if cycle % 3 == 1:
            sock.sendall(hello[: cycle % len(hello) + 1])
        if cycle % 3 == 2:  # reset instead of a polite FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        sock.close()
    elapsed = time.monotonic() - started
    wait_no_connections(server)
    pair_chats(server.host, server.port)
    assert server.online() == []
    deadline = time.monotonic() + 5
    while open_fds() > fds_before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= fds_before + 3, "sockets of vanished clients are still open"
    print(f"1000 connect-and-vanish cycles in {elapsed:.2f} s")


# --- slowloris ----------------------------------------------------------------------------


def test_slowloris_handshake_is_closed_at_the_handshake_timeout(
    start_server: Callable[..., ServerThread],
) -> None:
    """A ClientHello one byte at a time: trickling does not extend the deadline."""
    server = start_server(handshake_timeout=1.0)
    hello = client_hello()
    with socket.create_connection((server.host, server.port), timeout=5) as slow:
        started = time.monotonic()
        for byte in hello:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            if closed_by_peer(slow, 0.25):
                break
        waited = time.monotonic() - started
    assert waited < 2.5, f"still open after {waited:.2f} s of one byte every 0.25 s"
    pair_chats(server.host, server.port)


def test_slowloris_hello_is_closed_at_the_hello_timeout(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(hello_timeout=1.0)
    frame = b'{"type":"hello","nick":"slowloris"}\n'
    with RawClient(server.host, server.port) as slow:
        started = time.monotonic()
        code = None
        for byte in frame:
            slow.send_raw(bytes([byte]))
            try:
                code = slow.expect("error", timeout=0.25)["code"]
                break
            except TimeoutError:
                continue
        waited = time.monotonic() - started
        assert code == "hello_timeout", f"no hello_timeout after {waited:.2f} s"
        assert 0.8 < waited < 2.5
        assert slow.closed(3)
    pair_chats(server.host, server.port)


# --- inside TLS ---------------------------------------------------------------------------

NESTED = 10_000


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"[" * NESTED + b"]" * NESTED, id="arrays"),
        pytest.param(b'{"a":' * NESTED + b"1" + b"}" * NESTED, id="objects"),
        pytest.param(
            b'{"type":"msg","text":"hi","extra":' + b"[" * NESTED + b"]" * NESTED + b"}",
            id="in-a-message",
        ),
        pytest.param(b"[" * NESTED, id="unclosed"),
    ],
)
def test_deeply_nested_json_is_bad_json_and_costs_nothing_else(
    start_server: Callable[..., ServerThread], frame: bytes
) -> None:
    server = start_server(max_frame=128 * 1024)
    with RawClient(server.host, server.port) as deep:
        deep.join("deep")
        deep.send_raw(frame + b"\n")
        assert deep.expect("error")["code"] == "bad_json"
        still_kept(deep)
    pair_chats(server.host, server.port)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"type":"msg","text":"\xc0\xaf"}', id="overlong-slash"),
        pytest.param(b'{"type":"msg","text":"\xed\xa0\x80"}', id="encoded-surrogate"),
        pytest.param(b'{"type":"msg","text":"ends in half a char \xe2\x82"}', id="truncated"),
        pytest.param(b'{"type":"msg","text":"\xf8\x88\x80\x80\x80"}', id="five-byte-form"),
        pytest.param(b'{"type":"hello","nick":"\xfe\xff"}', id="in-the-nick"),
        pytest.param(b"\x00\x00\x00{", id="nul-bytes"),
    ],
)
def test_invalid_utf8_is_bad_json_and_the_connection_kept(
    server: ServerThread, data: bytes
) -> None:
    with RawClient(server.host, server.port) as client:
        client.send_raw(data + b"\n")
        assert client.expect("error")["code"] == "bad_json"
        client.join("after-garbage")  # the hello still works after refused bytes
        client.send_raw(data + b"\n")
        assert client.expect("error")["code"] == "bad_json"
        still_kept(client)
    pair_chats(server.host, server.port)


@pytest.mark.parametrize(
    ("field", "escaped"),
    [("text", "x\\ud800y"), ("text", "\\udfff"), ("nick", "a\\udc80"), ("password", "\\ud83d")],
)
def test_lone_surrogate_escape_is_refused_not_a_crash(
    start_server: Callable[..., ServerThread], field: str, escaped: str
) -> None:
    """``\\ud800`` is valid JSON but no UTF-8: it must not reach the encoder of the others."""
    server = start_server(password=ROOM)
    with (
        RawClient(server.host, server.port) as sender,
        RawClient(server.host, server.port) as other,
    ):
        other.send({"type": "hello", "nick": "other", "password": "pw"})
        other.expect("welcome")
        fields = {"nick": "sender", "password": "pw", field: "PLACEHOLDER"}
        if field != "text":
            hello = json.dumps({"type": "hello", **fields}).replace("PLACEHOLDER", escaped)
            sender.send_raw(hello.encode() + b"\n")
            assert sender.expect("error")["code"] == "bad_message"
            sender.send({"type": "hello", "nick": "sender", "password": "pw"})
        else:
            sender.send({"type": "hello", "nick": "sender", "password": "pw"})
            sender.expect("welcome")
            sender.send_raw(b'{"type":"msg","text":"' + escaped.encode() + b'"}\n')
            assert sender.expect("error")["code"] == "bad_message"
        if field != "text":
            sender.expect("welcome")
        assert other.expect("join")["peer"]["nick"] == "sender"
        sender.send({"type": "msg", "text": "still here"})
        assert other.expect("msg")["text"] == "still here"


DIGITS = b"9" * 5000
"""A number with 5,000 digits: past Python's 4,300-digit limit for int parsing."""


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b'{"type":"msg","text":"hi","n":' + DIGITS + b"}", "bad_json"),
        (b'{"type":' + DIGITS + b"}", "bad_json"),
        (b'{"type":"msg","text":' + DIGITS + b".5e99}", "bad_message"),
        (b'{"type":"msg","text":1e999999}', "bad_message"),
        (b'{"type":"hello","nick":"n","password":-1e999999}', "bad_message"),
        (b'{"type":"msg","text":NaN}', "bad_json"),  # (not JSON, though Python reads it)
        (b'{"type":"msg","text":"hi","x":-Infinity}', "bad_json"),
        (b'{"type":"msg","text":"hi","ts":1e999999,"from":-1e999999}', None),
    ],
    ids=[
        "big-int",
        "big-int-type",
        "big-float",
        "inf",
        "minus-inf",
        "nan",
        "infinity",
        "ignored-fields",
    ],
)
def test_huge_numbers_are_refused_quickly_and_the_connection_kept(
    server: ServerThread, frame: bytes, code: str | None
) -> None:
    with (
        RawClient(server.host, server.port) as numbers,
        RawClient(server.host, server.port) as other,
    ):
        other.join("other")
        numbers.join("numbers")
        other.expect("join")
        started = time.monotonic()
        numbers.send_raw(frame + b"\n")
        if code is None:  # unknown fields are ignored, whatever they hold
            assert other.expect("msg")["text"] == "hi"
        else:
            assert numbers.expect("error")["code"] == code
        assert time.monotonic() - started < 1
        still_kept(numbers)
        assert other.silent(0.1)


WRONG_TYPES: list[Any] = [None, 7, 1.5, True, [], ["alice"], {}, {"nick": "alice"}]


@pytest.mark.parametrize(
    ("field", "value"),
    # A null password is no password: auth_failed, in test_access.py.
    [
        (f, v)
        for f in ("type", "nick", "password")
        for v in WRONG_TYPES
        if (f, v) != ("password", None)
    ],
)
def test_wrong_field_types_in_hello_are_bad_message(
    start_server: Callable[..., ServerThread], field: str, value: Any
) -> None:
    server = start_server(password=ROOM)
    with RawClient(server.host, server.port) as client:
        hello = {"type": "hello", "nick": "typed", "password": "pw", field: value}
        client.send(hello)
        assert client.expect("error")["code"] == "bad_message"
        client.send({"type": "hello", "nick": "typed", "password": "pw"})
        assert client.expect("welcome")["you"]["nick"] == "typed"


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_wrong_text_types_are_bad_message_and_nothing_is_relayed(
    server: ServerThread, value: Any
) -> None:
    with (
        RawClient(server.host, server.port) as sender,
        RawClient(server.host, server.port) as other,
    ):
        other.join("other")
        sender.join("sender")
        other.expect("join")
        sender.send({"type": "msg", "text": value})
        assert sender.expect("error")["code"] == "bad_message"
        assert other.silent(0.05)
        sender.send({"type": "msg", "text": "typed right"})
        assert other.expect("msg")["text"] == "typed right"


@pytest.mark.parametrize(
    "frame", [b"null", b"7", b'"hello"', b"true", b'[{"type":"msg","text":"x"}]']
)
def test_frames_that_are_not_objects_are_bad_json(server: ServerThread, frame: bytes) -> None:
    with RawClient(server.host, server.port) as client:
        client.join("scalar")
        client.send_raw(frame + b"\n")
        assert client.expect("error")["code"] == "bad_json"
        still_kept(client)
