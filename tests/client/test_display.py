"""What the client shows: targets people type, transcript lines, error sentences."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from chatsecure.client.core import (
    CONTINUED,
    Target,
    clock,
    describe_error,
    format_message,
    parse_target,
    port_hint,
    safe_text,
)
from chatsecure.client.transcript import chat_line
from chatsecure.errors import TrustError
from chatsecure.protocol.limits import DEFAULT_PORT
from chatsecure.protocol.messages import Chat, Error, Join, Leave, Peer, Pong, Shutdown

ALICE = Peer("1", "alice", "192.168.1.20")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.168.1.20", ("192.168.1.20", DEFAULT_PORT)),
        ("192.168.1.20:9000", ("192.168.1.20", 9000)),
        (" chat.local:1 ", ("chat.local", 1)),
        ("::1", ("::1", DEFAULT_PORT)),
        ("fe80::1%eth0", ("fe80::1%eth0", DEFAULT_PORT)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1%eth0]:7000", ("fe80::1%eth0", 7000)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        *("", "  ", ":7467", "host:0", "host:65536", "host:http", "[]:1", "[::1", "[::1]x"),
        *("host:", "[::1]:", "http://127.0.0.1:7467", "127.0.0.1:7467:3", "fe80::1::2"),
        *("fe80::1%eth0:7000", "[::1]7467", "[127.0.0.1:7000]", "[localhost]"),
        *("host:\u0663", "[::1]:\u0663"),  # an Arabic-Indic 3: a digit to isdigit(), not a port
    ],
)
def test_parse_target_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_target(text)


@pytest.mark.parametrize(
    "text",
    [
        *("127.000.000.010", "192.168.001.010:7000", "017.0.0.1", "0x7f.0.0.1", "0X7F000001"),
        *("1.2.3", "1.2", "2130706433", "2130706433:7467", "300.1.1.1", "127.0.0.1."),
    ],
)
def test_a_number_that_is_no_plain_dotted_quad_is_refused(text: str) -> None:
    """The C library would dial these as another address (1.2.3 as 1.2.0.3, 010 as 8)."""
    host = text.partition(":")[0]
    with pytest.raises(ValueError, match=r"^") as caught:
        parse_target(text)
    assert str(caught.value) == (
        f"{host!r} is not an IPv4 address: give four numbers from 0 to 255, like 192.168.1.10"
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "255.255.255.255", "10.0.0.1", "1e.2.3.4", "a1.2"])
def test_a_dotted_quad_or_a_name_with_numbers_is_taken(host: str) -> None:
    assert parse_target(host) == (host, DEFAULT_PORT)


def test_a_target_refuses_a_number_that_is_no_dotted_quad() -> None:
    with pytest.raises(ValueError, match="not an IPv4 address"):
        Target("127.0.0.1", others=(("1.2.3", 7467),))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[fe80::1]:17470", "the link-local address fe80::1 needs its network interface, "
         "like fe80::1%eth0"),
        ("fe80::1", "the link-local address fe80::1 needs its"),
        ("[fe80::1%nosuch]:17470", "there is no network interface 'nosuch' on this machine "
         "(fe80::1%nosuch)"),
        ("fd77::1%nosuch", "there is no network interface 'nosuch'"),
        ("fe80::1%4000000000", "there is no network interface '4000000000'"),
    ],
)  # fmt: skip
def test_an_ipv6_address_that_cannot_be_dialled_as_written_is_refused(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"^") as caught:
        parse_target(text)
    assert str(caught.value).startswith(says)


@pytest.mark.parametrize("text", ["fe80::1%lo", "[fe80::1%1]:7000", "fd77::1%lo"])
def test_an_interface_that_exists_is_taken_by_name_or_number(text: str) -> None:
    assert parse_target(text)[0] == text.strip("[").partition("]")[0]


HINT = "to give a port with an IPv6 address"


@pytest.mark.parametrize(
    ("host", "port", "hint"),
    [
        ("fd77::1:7468", DEFAULT_PORT, f"{HINT}, write [fd77::1]:7468"),
        ("2001:db8::5:80", DEFAULT_PORT, f"{HINT}, write [2001:db8::5]:80"),
        ("fd77::1:7468", 9000, ""),  # a port was given as well: the address is meant
        ("fd77::1:abcd", DEFAULT_PORT, ""),  # not a port
        ("fd77::1:0", DEFAULT_PORT, ""),
        ("::7468", DEFAULT_PORT, ""),  # nothing left for an address
        ("127.0.0.1", DEFAULT_PORT, ""),
        ("chat.local", DEFAULT_PORT, ""),
    ],
)
def test_an_ipv6_address_ending_in_a_port_gets_a_hint(host: str, port: int, hint: str) -> None:
    assert port_hint(host, port) == hint


def test_chat_line_has_time_nick_address_and_text() -> None:
    ts = time.mktime((2026, 1, 2, 13, 4, 5, 0, 0, -1))
    now = time.mktime((2026, 1, 2, 23, 59, 0, 0, 0, -1))
    line = format_message(Chat(ALICE, "hello there", ts), now)
    assert line == "[13:04:05] alice (192.168.1.20): hello there"


def test_a_line_said_on_another_day_shows_its_date() -> None:
    ts = time.mktime((2026, 1, 2, 13, 4, 5, 0, 0, -1))
    next_day = time.mktime((2026, 1, 3, 0, 0, 1, 0, 0, -1))
    line = format_message(Chat(ALICE, "said yesterday", ts), next_day)
    assert line == "[2026-01-02 13:04:05] alice (192.168.1.20): said yesterday"


def test_join_leave_error_and_shutdown_lines() -> None:
    ts = time.mktime((2026, 1, 2, 8, 0, 0, 0, 0, -1))
    assert format_message(Join(ALICE), ts) == "[08:00:00] * alice (192.168.1.20) joined"
    assert (
        format_message(Leave(ALICE, "quit"), ts) == "[08:00:00] * alice (192.168.1.20) left (quit)"
    )
    assert format_message(Error("text_too_long", "too long"), ts) == (
        "[08:00:00] ! server refused: too long (text_too_long)"
    )
    assert format_message(Shutdown(), ts) == "[08:00:00] ! the server is shutting down"
    assert format_message(Pong(), ts) is None


@pytest.mark.parametrize(
    "text",
    [
        "two\nlines",
        "fake\r[12:00:00] admin: hi",
        "\x1b[2Jclear screen",
        "\u202eevil",
        "zero\u200bwidth",
        "\u2028separator",
    ],
)
def test_nothing_in_a_message_can_fake_a_line_or_reorder_it(text: str) -> None:
    shown = format_message(Chat(ALICE, text, 0.0))
    assert shown is not None
    first, *more = shown.split("\n")
    assert first.startswith("[")
    assert first.isprintable(), repr(first)
    # a message of several lines: each further one indented, so never taken for a line
    assert all(line.startswith(CONTINUED) and line.isprintable() for line in more), repr(more)


def test_a_pasted_paragraph_is_indented_in_a_terminal_and_one_line_in_the_window() -> None:
    text = "first\nsecond\n[12:00:00] admin: hi"
    assert format_message(Chat(ALICE, text, 0.0), 0.0) == (
        f"[{clock(0.0)}] alice (192.168.1.20): first\n    second\n    [12:00:00] admin: hi"
    )
    line = chat_line(ALICE, text, 0.0)
    assert str(line).endswith(": first ↵ second ↵ [12:00:00] admin: hi")
    crlf = format_message(Chat(ALICE, "from\r\nwindows\rcr", 0.0), 0.0)
    assert crlf == f"[{clock(0.0)}] alice (192.168.1.20): from\n    windows\\rcr"


def test_plain_text_is_shown_as_it_is() -> None:
    assert safe_text("héllo, wörld ✓ 李") == "héllo, wörld ✓ 李"


@pytest.mark.parametrize(
    "text",
    [
        "family \U0001f469\u200d\U0001f469\u200d\U0001f467",  # joined by ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
        "\u0915\u094d\u200d\u0937",  # Devanagari, with a ZWJ
    ],
)
def test_joiners_that_shape_a_script_or_an_emoji_are_kept(text: str) -> None:
    assert safe_text(text) == text


def test_tag_characters_that_could_hide_a_text_are_shown() -> None:
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "hi")
    # (\U and eight digits: "\ue0068" would read as U+E006 and an 8)
    assert safe_text(f"nothing here{hidden}") == "nothing here\\U000e0068\\U000e0069"


def test_nick_is_made_safe_too() -> None:
    line = format_message(Join(Peer("2", "mal\nlory", "::1")), 0.0)
    assert line is not None
    assert line.isprintable()


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (TrustError("certificate changed"), "certificate changed"),
        (socket.gaierror(-2, "Name or service not known"), "unknown host"),
        (ConnectionRefusedError(111, "refused"), "no chatsecure server"),
        (TimeoutError(), "timed out"),
        (ConnectionResetError(104, "reset"), "reset"),
        (BrokenPipeError(32, "pipe"), "reset"),
        (ssl.SSLError(1, "wrong version"), "TLS failure"),
        (OSError(113, "No route to host"), "no route to host"),
        (ValueError("odd"), "odd"),
    ],
)
def test_describe_error_gives_a_sentence(exc: BaseException, words: str) -> None:
    assert words in describe_error(exc)


def test_describe_error_of_a_real_tls_failure() -> None:
    """A TLS client that meets something that is not TLS (here: the other end of a pipe)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises(ssl.SSLError) as info:
            ctx.wrap_socket(ours, server_hostname=None)
    sentence = describe_error(info.value)
    assert sentence == "that address answers, but not with TLS — is it a chatsecure server?"
