"""Joins, messages and leaves between real TLS clients: who gets what, and exactly once."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

import pytest

from chatsecure import __version__
from chatsecure.protocol.limits import MAX_NICK
from chatsecure.protocol.messages import SendMsg
from chatsecure.server import SHUTDOWN_GRACE
from chatsecure.testing import RawClient, ServerThread, joined
from tests.helpers import all_silent


def test_join_reaches_exactly_the_earlier_clients(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as alice:
        welcome = alice.join("alice")
        assert welcome["peers"] == []
        assert welcome["you"]["nick"] == "alice"
        assert welcome["you"]["addr"] == "127.0.0.1"
        assert welcome["server"] == {
            "name": "test",
            "version": __version__,
            "protocol": 2,
            "msg_rate": 5.0,  # what a client paces its lines to
            "msg_burst": 20,
        }
        with RawClient(server.host, server.port) as bob:
            bob_welcome = bob.join("bob")
            assert bob_welcome["peers"] == [welcome["you"]]
            assert alice.expect("join")["peer"] == bob_welcome["you"]
            with RawClient(server.host, server.port) as carol:
                carol_welcome = carol.join("carol")
                assert carol_welcome["peers"] == [welcome["you"], bob_welcome["you"]]
                for earlier in (alice, bob):
                    assert earlier.expect("join")["peer"] == carol_welcome["you"]
                assert all_silent(alice, bob, carol)
    ids = {welcome["you"]["id"], bob_welcome["you"]["id"], carol_welcome["you"]["id"]}
    assert len(ids) == 3, "every session has its own id"


def test_welcome_states_the_burst_a_client_really_has(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(msg_rate=2.0, msg_burst=0)  # 0: one at a time
    with RawClient(server.host, server.port) as alice:
        assert alice.join("alice")["server"]["msg_burst"] == 1


def test_message_reaches_the_two_others_with_nick_and_address_not_the_sender(
    server: ServerThread,
) -> None:
    with joined(server.host, server.port, "alice", "bob", "carol") as (alice, bob, carol):
        before = time.time()
        alice.send({"type": "msg", "text": "hi all ✓"})
        for other in (bob, carol):
            frame = other.expect("msg")
            assert frame["text"] == "hi all ✓"
            assert frame["from"]["nick"] == "alice"
            assert frame["from"]["addr"] == "127.0.0.1"
            assert before - 1 <= frame["ts"] <= time.time() + 1
        carol.send({"type": "msg", "text": "back"})
        # Had alice got her own message back, it would come before carol's.
        assert alice.expect("msg")["from"]["nick"] == "carol"
        assert bob.expect("msg")["from"]["nick"] == "carol"
        assert all_silent(carol)


def test_messages_from_one_sender_arrive_in_order(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        for n in range(15):
            alice.send({"type": "msg", "text": f"line {n}"})
        assert [bob.expect("msg")["text"] for _ in range(15)] == [f"line {n}" for n in range(15)]


def test_sender_fields_cannot_be_forged(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        alice.send(
            {
                "type": "msg",
                "text": "I am root",
                "from": {"id": "0", "nick": "root", "addr": "10.0.0.1"},
                "ts": 0,
                "nick": "root",
                "addr": "10.0.0.1",
            }
        )
        frame = bob.expect("msg")
        assert frame["from"]["nick"] == "alice"
        assert frame["from"]["addr"] == "127.0.0.1"
        assert frame["from"]["id"] != "0"
        assert abs(frame["ts"] - time.time()) < 5
        assert set(frame) == {"type", "seq", "from", "text", "ts"}


def test_quit_produces_exactly_one_leave_and_closes(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob", "carol") as (alice, bob, carol):
        carol.send({"type": "quit"})
        assert carol.closed()
        for other in (alice, bob):
            leave = other.expect("leave")
            assert leave["peer"]["nick"] == "carol"
            assert leave["reason"] == "quit"
        assert all_silent(alice, bob)
        server.wait_online(2)


def close_plainly(client: RawClient) -> None:
    """Close the socket without a TLS close_notify, as a crashing program does."""
    client.sock.close()


def close_with_reset(client: RawClient) -> None:
    """Close the socket with a TCP RST (SO_LINGER 0), as a pulled cable or a kill -9 may."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


def close_with_close_notify(client: RawClient) -> None:
    """Close TLS properly (close_notify), then TCP."""
    client.sock.unwrap().close()


@pytest.mark.parametrize(
    ("close", "reason"),
    [
        pytest.param(close_plainly, "closed", id="socket-close"),
        pytest.param(close_with_reset, "error", id="tcp-reset"),
        pytest.param(close_with_close_notify, "closed", id="tls-close-notify"),
    ],
)
def test_abrupt_close_produces_exactly_one_leave(
    server: ServerThread, close: Callable[[RawClient], None], reason: str
) -> None:
    with joined(server.host, server.port, "alice", "bob", "carol") as (alice, bob, carol):
        close(carol)
        for other in (alice, bob):
            leave = other.expect("leave")
            assert leave["peer"]["nick"] == "carol"
            assert leave["reason"] == reason
        alice.send({"type": "msg", "text": "still here"})
        assert bob.expect("msg")["text"] == "still here"
        assert all_silent(alice, bob)
        server.wait_online(2)


def test_duplicate_nick_is_renamed_case_insensitively(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        with RawClient(server.host, server.port) as second:
            assert second.join("alice")["you"]["nick"] == "alice_2"
            assert bob.expect("join")["peer"]["nick"] == "alice_2"
            with RawClient(server.host, server.port) as third:
                assert third.join("ALICE")["you"]["nick"] == "ALICE_3"
                second.send({"type": "msg", "text": "who am I"})
                assert bob.expect("join")["peer"]["nick"] == "ALICE_3"
                assert bob.expect("msg")["from"]["nick"] == "alice_2"
        alice.expect("join")


def test_a_nick_spelled_otherwise_to_look_the_same_is_renamed(server: ServerThread) -> None:
    with (
        joined(server.host, server.port, "zoë") as (zoe,),
        RawClient(server.host, server.port) as lookalike,
    ):
        assert lookalike.join("zoe\u0308")["you"]["nick"] == "zoë_2"  # decomposed
        assert zoe.expect("join")["peer"]["nick"] == "zoë_2"


def test_renamed_long_nick_stays_within_the_limit(server: ServerThread) -> None:
    long = "n" * MAX_NICK
    with (
        joined(server.host, server.port, long) as _first,
        RawClient(server.host, server.port) as second,
    ):
        nick = second.join(long)["you"]["nick"]
        assert nick == "n" * (MAX_NICK - 2) + "_2"


@pytest.mark.parametrize(
    ("ending", "kept"),
    [("q\u0301x", 29), ("q\u0323\u0301x", 28)],
    ids=["accent", "two-marks"],
)
def test_renamed_long_nick_is_not_cut_between_a_letter_and_its_marks(
    server: ServerThread, ending: str, kept: int
) -> None:
    # Cut at 30 characters, "aaa...q" would be a plain q: a nick someone else may have.
    long = "a" * kept + ending
    assert len(long) == MAX_NICK
    with (
        joined(server.host, server.port, long) as (first,),
        RawClient(server.host, server.port) as second,
    ):
        nick = second.join(long)["you"]["nick"]
        assert nick == "a" * kept + "_2"
        assert first.expect("join")["peer"]["nick"] == nick


def test_nick_is_free_again_after_its_owner_left(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as first:
        first.join("alice")
        first.send({"type": "quit"})
        assert first.closed()
    server.wait_online(0)
    with RawClient(server.host, server.port) as again:
        assert again.join("alice")["you"]["nick"] == "alice"


def test_nick_is_cleaned_before_others_see_it(server: ServerThread) -> None:
    with (
        joined(server.host, server.port, "alice") as (alice,),
        RawClient(server.host, server.port) as mallory,
    ):
        assert mallory.join("  bob\u202e\n ")["you"]["nick"] == "bob"
        assert alice.expect("join")["peer"]["nick"] == "bob"


@pytest.mark.parametrize("nick", ["", "   ", "\u200b", "x" * (MAX_NICK + 1)])
def test_bad_nick_is_refused_and_closed_and_nobody_hears_of_it(
    server: ServerThread, nick: str
) -> None:
    with (
        joined(server.host, server.port, "alice") as (alice,),
        RawClient(server.host, server.port) as client,
    ):
        client.send({"type": "hello", "nick": nick})
        assert client.expect("error")["code"] == "bad_nick"
        assert client.closed()
        assert all_silent(alice)
        assert server.online() == ["alice"]


def test_ping_is_answered_before_and_after_hello(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as client:
        client.send({"type": "ping"})
        client.expect("pong")
        client.join("alice")
        client.send({"type": "ping"})
        client.expect("pong")


def test_unknown_type_is_answered_with_error_and_connection_kept(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        alice.send({"type": "dance", "text": "x"})
        assert alice.expect("error")["code"] == "unknown_type"
        alice.send({"type": "msg", "text": "ok"})
        assert bob.expect("msg")["text"] == "ok"


def test_second_hello_is_refused_and_the_nick_kept(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        alice.send({"type": "hello", "nick": "mallory"})
        assert alice.expect("error")["code"] == "already_joined"
        alice.send({"type": "msg", "text": "same me"})
        assert bob.expect("msg")["from"]["nick"] == "alice"


def test_crlf_frames_typed_by_hand_are_understood(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        alice.send_raw(b'\r\n{"type":"msg",\r\n')  # a bad line, then a good one split apart
        assert alice.expect("error")["code"] == "bad_json"
        alice.send_raw(b'{"type":"msg","text":"typed"}\r\n')
        assert bob.expect("msg")["text"] == "typed"


def test_server_on_ipv6_loopback_reports_the_v6_address(
    start_server: Callable[..., ServerThread],
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = start_server(host="::1")
    with joined("::1", server.port, "alice", "bob") as (alice, bob):
        alice.send({"type": "msg", "text": "v6"})
        assert bob.expect("msg")["from"]["addr"] == "::1"


def test_tls_is_at_least_1_2(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as client:
        assert client.sock.version() in {"TLSv1.2", "TLSv1.3"}
        assert isinstance(client.sock, ssl.SSLSocket)


def test_shutdown_is_the_only_frame_every_client_gets(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server()
    with joined(server.host, server.port, "alice", "bob", "carol") as clients:
        stopping = threading.Thread(target=server.stop, name="stopper")
        stopping.start()
        started = time.monotonic()
        for client in clients:
            assert client.expect("shutdown") == {"type": "shutdown"}
            assert client.closed()
            client.close()
        stopping.join(10)
        assert not stopping.is_alive()
        assert time.monotonic() - started < SHUTDOWN_GRACE, "no need to wait for the grace time"


def test_shutdown_cuts_off_a_client_that_does_not_take_it(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server()
    with joined(server.host, server.port, "alice") as (alice,):
        started = time.monotonic()
        server.stop()  # alice reads nothing meanwhile
        waited = time.monotonic() - started
        assert SHUTDOWN_GRACE - 0.5 < waited < SHUTDOWN_GRACE + 2
        assert alice.expect("shutdown") == {"type": "shutdown"}
        assert alice.closed()


def test_chat_queued_in_the_same_iteration_as_shutdown_is_delivered_first(
    server: ServerThread,
) -> None:
    """A line the server took before it began to stop still reaches everyone, then shutdown."""
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):

        def stop_and_chat() -> asyncio.Task[None]:
            sender = next(s for s in server.server.sessions.values() if s.id == "1")
            # shutdown() starts before the end of this iteration, where the line would go out
            stopping = asyncio.get_running_loop().create_task(server.server.shutdown())
            server.server.room.say(sender, SendMsg("last words"))
            return stopping

        stopping = server.call(stop_and_chat)
        assert bob.expect("msg")["text"] == "last words"
        assert bob.expect("shutdown") == {"type": "shutdown"}
        assert alice.expect("shutdown") == {"type": "shutdown"}, "the sender gets no echo"

        async def finished() -> None:
            await stopping

        asyncio.run_coroutine_threadsafe(finished(), server._loop).result(10)
