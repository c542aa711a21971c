"""Server limits: sessions, per address, idle peers, frame and text sizes; 0 turns each off."""

from __future__ import annotations

import json
import logging
import queue
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from chatsecure.client.core import ChatClient, ClientEvent, Connected, Received, Target
from chatsecure.protocol.messages import Join, Leave
from chatsecure.server import IDLE_CHECKS
from chatsecure.testing import RawClient, ServerThread, joined
from chatsecure.tls.context import client_context
from chatsecure.tls.trust import KnownServers, TrustPolicy
from tests.hardening.helpers import TLSClient, pair_chats


def refused_with(client: RawClient) -> str:
    """The code of the error a refused client gets before the server closes it."""
    code = client.expect("error")["code"]
    assert client.closed(3), "the refused connection is closed"
    return str(code)


def admitted_within(connect: Callable[[], RawClient], timeout: float = 3.0) -> RawClient:
    """A connection that gets a welcome, retried while the server is still releasing a slot."""
    deadline = time.monotonic() + timeout
    while True:
        client = connect()
        client.send({"type": "hello", "nick": "late"})
        frame = client.recv()
        if frame["type"] == "welcome":
            return client
        client.close()
        assert time.monotonic() < deadline, f"still refused: {frame}"
        time.sleep(0.05)


# --- sessions and addresses ---------------------------------------------------------------


def test_one_connection_over_max_sessions_gets_server_full(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="chatsecure.server")
    server = start_server(max_sessions=2)
    # Connections count before they say hello: a crowd of silent sockets fills the server too.
    with (
        RawClient(server.host, server.port) as joined_one,
        RawClient(server.host, server.port) as silent,
    ):
        joined_one.join("first")
        with RawClient(server.host, server.port) as third:
            assert refused_with(third) == "server_full"
        assert joined_one.silent(0.1), "a refused connection never joined, so no join/leave"
        silent.close()
        admitted_within(lambda: RawClient(server.host, server.port)).close()
    assert any(
        "server_full" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records
    ), "the admin sees the limit bite, with the address"


def test_one_connection_over_max_per_ip_gets_too_many_connections_from_that_address_only(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(max_per_ip=2)
    with joined(server.host, server.port, "a1", "a2"):
        with RawClient(server.host, server.port) as third:
            assert refused_with(third) == "too_many_connections"
        with TLSClient(server.host, server.port, source="127.0.0.2") as other_address:
            welcome = other_address.join("from-elsewhere")
            assert welcome["you"]["addr"] == "127.0.0.2"
    # Leaving gives the slots back.
    pair_chats(server.host, server.port)


# --- idle peers ---------------------------------------------------------------------------


@pytest.fixture
def chat_client(start_server: Callable[..., ServerThread]) -> Iterator[Callable[..., ChatClient]]:
    """Real client cores (the terminal's and the GUI's), closed at the end of the test."""
    clients: list[ChatClient] = []

    def start(server: ServerThread, nick: str) -> ChatClient:
        policy = TrustPolicy(KnownServers(), accept_new=True)
        client = ChatClient(Target(server.host, server.port), nick, policy)
        clients.append(client)
        client.start()
        event = client.events.get(timeout=5)
        assert isinstance(event, Connected), event
        return client

    yield start
    for client in clients:
        client.close()


def events_for(client: ChatClient, seconds: float) -> list[tuple[float, ClientEvent]]:
    """Every event within ``seconds``, each with the time it arrived."""
    deadline = time.monotonic() + seconds
    events: list[tuple[float, ClientEvent]] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = client.events.get(timeout=left)
        except queue.Empty:
            break
        events.append((time.monotonic(), event))
    return events


def test_dead_peer_is_dropped_within_the_idle_timeout_and_left_once_while_a_live_one_stays(
    start_server: Callable[..., ServerThread], chat_client: Callable[..., ChatClient]
) -> None:
    idle = 1.0
    server = start_server(idle_timeout=idle)
    alive = chat_client(server, "alive")
    with RawClient(server.host, server.port) as dead:
        dead.join("dead")  # and then it never reads nor writes again
        joined_at = time.monotonic()
        event = alive.events.get(timeout=2)
        assert isinstance(event, Received)
        assert isinstance(event.message, Join)
        leaves = []
        for at, event in events_for(alive, 1.8 * idle):
            assert isinstance(event, Received), f"the live client was dropped: {event}"
            if isinstance(event.message, Leave):
                leaves.append((at, event.message))
        assert [(leave.peer.nick, leave.reason) for _, leave in leaves] == [("dead", "timeout")]
        took = leaves[0][0] - joined_at
        assert 0.8 * idle <= took <= idle + 0.1, f"dropped {took:.2f} s after its last word"
        # What the dead client would have read: pings first, then the reason, then the end.
        frames = []
        while True:
            try:
                frames.append(dead.recv(1))
            except EOFError:
                break
        assert {f["type"] for f in frames[:-1]} == {"ping"}
        assert frames[-1] == {
            "type": "error",
            "code": "idle_timeout",
            "message": frames[-1]["message"],
        }
    assert alive.alive
    assert server.online() == ["alive"], "the live client, silent but answering pings, stays"


def test_dead_peers_are_dropped_by_the_idle_timeout_whenever_they_fell_silent(
    start_server: Callable[..., ServerThread],
) -> None:
    """Never later than the timeout, wherever their last word fell between two checks.

    A sweep comes every ``idle / IDLE_CHECKS`` seconds (0.25 s here): a server that dropped a
    session only once its silence had passed the timeout would be up to that late, and the
    spread makes one of the five nearly so. Half of it is allowed for the timer and the
    observer to be late on a loaded machine (a full run once saw 96 ms past a timeout of 1 s).
    """
    idle = 2.0
    every = idle / IDLE_CHECKS
    server = start_server(idle_timeout=idle)
    spread = 5  # last words spread over a quarter of the timeout: one falls just after a check
    with RawClient(server.host, server.port) as observer:
        observer.join("observer")
        last_word: dict[str, float] = {}
        dead = []
        try:
            for i in range(spread):
                client = RawClient(server.host, server.port)
                dead.append(client)
                last_word[f"dead{i}"] = time.monotonic()
                client.join(f"dead{i}")  # and then it never reads nor writes again
                time.sleep(idle / 4 / spread)
            took: dict[str, float] = {}
            deadline = time.monotonic() + 2 * idle + 1
            while len(took) < spread and time.monotonic() < deadline:
                frame = observer.recv(2 * idle)
                if frame["type"] == "ping":
                    observer.send({"type": "pong"})
                elif frame["type"] == "leave":
                    assert frame["reason"] == "timeout"
                    took[frame["peer"]["nick"]] = (
                        time.monotonic() - last_word[frame["peer"]["nick"]]
                    )
        finally:
            for client in dead:
                client.close()
        assert server.online() == ["observer"], "the observer, answering pings, stays"
    assert sorted(took) == sorted(last_word), took
    late = {nick: round(t, 3) for nick, t in took.items() if t > idle + every / 2}
    assert not late, f"dropped after more than {idle} s of silence: {late}"
    assert min(took.values()) >= 0.8 * idle, took


def test_pings_come_at_half_the_idle_timeout(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(idle_timeout=1.0)
    with RawClient(server.host, server.port) as quiet:
        quiet.join("quiet")
        started = time.monotonic()
        quiet.expect("ping", timeout=2)
        assert 0.5 <= time.monotonic() - started < 1.0
        quiet.send({"type": "pong"})  # any frame counts as a sign of life
        started = time.monotonic()
        quiet.expect("ping", timeout=2)
        assert 0.5 <= time.monotonic() - started < 1.0
        assert server.online() == ["quiet"]


# --- sizes --------------------------------------------------------------------------------


def test_max_frame_and_max_text_overrides_apply(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(max_frame=256, max_text=10)
    with joined(server.host, server.port, "reader", "writer") as (reader, writer):
        writer.send({"type": "msg", "text": "\u00e9" * 10})  # characters, not bytes
        assert reader.expect("msg")["text"] == "\u00e9" * 10
        writer.send({"type": "msg", "text": "x" * 11})
        assert writer.expect("error")["code"] == "text_too_long"
        frame = json.dumps({"type": "msg", "text": "fits", "pad": ""}).encode()
        exact = frame.replace(b'""', b'"' + b"p" * (256 - len(frame)) + b'"')
        assert len(exact) == 256
        writer.send_raw(exact + b"\n")
        assert reader.expect("msg")["text"] == "fits"
        writer.send_raw(exact.replace(b'"p', b'"pp') + b"\n")
        assert writer.expect("error")["code"] == "frame_too_long"
        assert writer.closed(3)
        leave = reader.expect("leave")
        assert (leave["peer"]["nick"], leave["reason"]) == ("writer", "frame_too_long")


# --- 0 turns a limit off --------------------------------------------------------------------


@pytest.fixture
def unlimited(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(
        max_sessions=0,
        max_per_ip=0,
        msg_rate=0,
        idle_timeout=0,
        hello_timeout=0,
        handshake_timeout=0,
        max_frame=0,
        max_text=0,
    )


def test_zero_sessions_and_per_ip_admit_more_than_the_defaults(unlimited: ServerThread) -> None:
    with joined(unlimited.host, unlimited.port, *(f"n{i}" for i in range(25))) as clients:
        assert len(unlimited.online()) == len(clients) == 25  # the per-IP default is 20


def test_zero_rate_lets_a_burst_of_two_hundred_through(unlimited: ServerThread) -> None:
    with joined(unlimited.host, unlimited.port, "reader", "writer") as (reader, writer):
        writer.send_raw(
            b"".join(
                json.dumps({"type": "msg", "text": f"{i}"}).encode() + b"\n" for i in range(200)
            )
        )
        assert [reader.expect("msg")["text"] for _ in range(200)] == [f"{i}" for i in range(200)]
        assert writer.silent(0.1), "no rate_limited"


def test_zero_frame_and_text_limits_carry_a_100_kb_message(unlimited: ServerThread) -> None:
    with joined(unlimited.host, unlimited.port, "reader", "writer") as (reader, writer):
        writer.send({"type": "msg", "text": "w" * 100_000})
        assert reader.expect("msg")["text"] == "w" * 100_000


def test_zero_timeouts_mean_no_timeout_not_an_instant_one(unlimited: ServerThread) -> None:
    with socket.create_connection((unlimited.host, unlimited.port), timeout=5) as raw:
        time.sleep(0.3)  # slow to start TLS
        with client_context().wrap_socket(raw) as tls:
            time.sleep(0.3)  # slow to say hello
            tls.sendall(b'{"type":"hello","nick":"patient"}\n')
            assert b"welcome" in tls.recv(4096)
            time.sleep(0.5)  # silent: no ping, no drop
            tls.sendall(b'{"type":"ping"}\n')
            assert tls.recv(4096) == b'{"type":"pong"}\n'
