"""Failures in words: the sentences describe_error gives for real socket and TLS failures."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterator

import pytest

from chatsecure.client import core
from chatsecure.client.core import ChatClient, Disconnected, Target
from chatsecure.client.errors import describe_error
from chatsecure.errors import TrustError
from chatsecure.tls.trust import KnownServers, TrustPolicy, host_port, server_key

NOT_TLS = "that address answers, but not with TLS — is it a chatsecure server?"
REFUSED = "connection refused: no chatsecure server is listening on that port"


@contextlib.contextmanager
def plain_tcp_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers as a web server would: not with TLS."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def answer() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, name="plain-tcp")
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(15)


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on: bound, noted and closed again."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def first_failure(host: str, port: int) -> str:
    """What a real client says when it cannot get in to ``host:port``."""
    client = ChatClient(Target(host, port), "bob", TrustPolicy(KnownServers(), accept_new=True))
    client.start()
    try:
        event = client.events.get(timeout=30)
    finally:
        client.close()
    assert isinstance(event, Disconnected), event
    assert event.error
    return event.reason


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_server_that_is_not_tls_is_said_to_answer_without_it() -> None:
    with plain_tcp_server() as port:
        assert first_failure("127.0.0.1", port) == NOT_TLS


def test_a_closed_port_is_refused_in_words_without_the_raw_socket_text() -> None:
    reason = first_failure("127.0.0.1", closed_port())
    assert reason == REFUSED
    assert "Connect call failed" not in reason


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_a_closed_ipv6_port_is_refused_in_the_same_words() -> None:
    assert first_failure("::1", closed_port("::1")) == REFUSED


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EHOSTUNREACH, "the address is unreachable (no route to host)"),
        (errno.ENETUNREACH, "the address is unreachable (network is unreachable)"),
    ],
)
def test_an_unreachable_address_is_said_so(code: int, words: str) -> None:
    # As asyncio raises it (sending anything off this machine to get one is not allowed here;
    # tests/cli/test_connect_errors.py gets the real one inside a network namespace).
    exc = OSError(code, "Connect call failed ('192.0.2.77', 21002)")
    sentence = describe_error(exc)
    assert sentence.startswith(words)
    assert "Connect call failed" not in sentence


def test_a_host_whose_addresses_all_refuse_is_refused_once() -> None:
    exc = OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('::1', 7467, 0, 0), "
        "[Errno 111] Connect call failed ('127.0.0.1', 7467)"
    )
    assert describe_error(exc) == REFUSED


def test_a_host_name_that_does_not_resolve_is_an_unknown_host() -> None:
    with pytest.raises(socket.gaierror) as info:  # numeric only: no lookup leaves this machine
        socket.getaddrinfo("chat.invalid", 7467, flags=socket.AI_NUMERICHOST)
    assert describe_error(info.value).startswith("unknown host (")


def test_a_server_that_never_answers_times_out_in_words() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client:
        client.settimeout(0.2)
        client.connect(listener.getsockname())  # never accepted, never answered
        with pytest.raises(TimeoutError) as info:
            client.recv(1)
    assert describe_error(info.value).startswith("timed out: the server did not answer")


def test_our_own_errors_keep_their_words() -> None:
    assert describe_error(TrustError("certificate changed")) == "certificate changed"


def test_an_unexpected_exception_is_an_internal_error_with_a_hint() -> None:
    sentence = describe_error(KeyError("peers"))
    assert sentence.startswith("internal error (KeyError: 'peers')")
    assert "-v" in sentence


def test_the_client_core_uses_the_one_describe_error() -> None:
    assert core.describe_error is describe_error


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1:21002"),
        ("chat.example", "chat.example:21002"),
        ("::1", "[::1]:21002"),
        ("[::1]", "[::1]:21002"),
        ("fe80::1%eth0", "[fe80::1%eth0]:21002"),
    ],
)
def test_every_address_is_shown_one_way(host: str, expected: str) -> None:
    assert host_port(host, 21002) == expected
    assert host_port(host.strip("[]"), 21002) == expected
    assert server_key(host.upper(), 21002) == expected.lower()
