"""Connections that never finish their TLS handshake count against the connection limits."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from chatsecure.testing import ServerThread
from tests.hardening.helpers import TLSClient, pair_chats
from tests.helpers import wait_for

HANDSHAKE_TIMEOUT = 30.0
"""Long enough that a connection cut sooner was cut by the gate, not by the timeout, however
slow the machine (the tests close their connections themselves)."""


@contextlib.contextmanager
def half_open(server: ServerThread, source: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections from ``source`` that never say a byte of TLS."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((server.host, server.port), 5, (source, 0))
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def cut_at_once(sock: socket.socket, within: float = 1.0) -> bool:
    """True if the server closes ``sock`` within ``within`` seconds (far below the handshake
    timeout); False if it is still held open then."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def handshakes(server: ServerThread) -> int:
    gate = server.server._gate
    assert gate is not None
    return server.call(lambda: gate.handshakes)


def wait_handshakes(server: ServerThread, count: int) -> None:
    wait_for(lambda: handshakes(server) == count, what=f"{count} handshakes under way")


def test_one_address_cannot_half_open_more_than_max_per_ip(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(max_per_ip=3, handshake_timeout=HANDSHAKE_TIMEOUT)
    with half_open(server, "127.0.0.2", 3) as held:
        wait_handshakes(server, 3)
        with half_open(server, "127.0.0.2", 1) as (fourth,):
            assert cut_at_once(fourth), "a fourth half-open connection of one address is cut"
        assert not cut_at_once(held[0], 0.3), "the first three wait for their handshake"
        # Other addresses are not held up by it ...
        with TLSClient(server.host, server.port) as other:
            assert other.join("bob")["you"]["addr"] == "127.0.0.1"
        # ... and a slot given back is the address's again.
        held.pop().close()
        wait_handshakes(server, 2)
        with TLSClient(server.host, server.port, source="127.0.0.2") as late:
            assert late.join("carol")["you"]["addr"] == "127.0.0.2"
    assert any(
        "127.0.0.2" in r.getMessage() and "TLS handshake already" in r.getMessage()
        for r in caplog.records
    ), "the admin sees the limit bite, with the address"


def test_handshakes_in_all_are_bounded_by_max_sessions_the_oldest_cut_first(
    start_server: Callable[..., ServerThread],
) -> None:
    # Addresses that fill every slot with stalled handshakes must not shut others out: the
    # oldest goes (an honest handshake takes milliseconds; what is oldest is what stalls).
    server = start_server(max_sessions=4, max_per_ip=0, handshake_timeout=HANDSHAKE_TIMEOUT)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(half_open(server, f"127.0.0.{n}", 1))[0] for n in range(2, 6)]
        wait_handshakes(server, 4)
        with half_open(server, "127.0.0.6", 1) as (fifth,):
            assert cut_at_once(held[0]), "the oldest handshake makes room"
            assert not cut_at_once(fifth, 0.3), "the new one is taken"
            wait_handshakes(server, 4)
            with TLSClient(server.host, server.port) as honest:  # (it cuts the next oldest)
                assert honest.join("bob")["you"]["nick"] == "bob"
            assert cut_at_once(held[1])
    wait_handshakes(server, 0)  # closed by their clients: the slots are free again
    pair_chats(server.host, server.port)


def test_a_flood_of_half_open_connections_costs_the_server_few_descriptors(
    start_server: Callable[..., ServerThread],
) -> None:
    # Before the gate, every one of these held a descriptor (and about 36 KiB) until the
    # handshake timeout: 15,000 of them took a server from 44 to 540 MB.
    server = start_server(handshake_timeout=HANDSHAKE_TIMEOUT)  # --max-per-ip 20
    before = len(os.listdir("/proc/self/fd"))

    def held() -> int:
        return len(os.listdir("/proc/self/fd")) - before - len(flood)

    with half_open(server, "127.0.0.2", 300) as flood:
        wait_handshakes(server, 20)
        # (The rest are accepted and cut: that may take a moment on a busy machine.)
        wait_for(lambda: held() <= 20 + 5, what=f"the server holds {held()} descriptors")
        pair_chats(server.host, server.port)
    wait_handshakes(server, 0)


def test_a_handshake_that_never_ends_still_times_out(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(handshake_timeout=0.5)
    with half_open(server, "127.0.0.2", 1) as (silent,):
        assert cut_at_once(silent, 3.0)
    wait_handshakes(server, 0)
