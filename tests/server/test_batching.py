"""Everything queued in one loop iteration goes out as one write per client, in order.

The server keeps one log of the broadcasts of a loop iteration and writes it to everyone at
its end; frames for one client (welcome, pong, errors) must still interleave correctly with
it. These tests put several events into one iteration by sending them in one TLS write, or by
running them in one callback on the server's loop.
"""

from __future__ import annotations

import json
import socket

import pytest

from chatsecure import server as server_module
from chatsecure.protocol.messages import (
    Chat,
    Error,
    Hello,
    Peer,
    Ping,
    Pong,
    ServerInfo,
    Welcome,
    encode,
    encode_chat,
    encode_peer,
    encode_welcome,
    parse_server,
)
from chatsecure.testing import RawClient, ServerThread, joined
from tests.helpers import all_silent


def frames(*objs: dict[str, str]) -> bytes:
    return b"".join(json.dumps(obj).encode() + b"\n" for obj in objs)


def test_hello_msg_and_ping_in_one_write(server: ServerThread) -> None:
    with (
        joined(server.host, server.port, "alice") as (alice,),
        RawClient(server.host, server.port) as bob,
    ):
        bob.send_raw(
            frames(
                {"type": "hello", "nick": "bob"},
                {"type": "msg", "text": "first"},
                {"type": "ping"},
                {"type": "msg", "text": "second"},
            )
        )
        assert bob.expect("welcome")["peers"][0]["nick"] == "alice"
        bob.expect("pong")  # not its own join, not its own messages
        assert alice.expect("join")["peer"]["nick"] == "bob"
        assert [alice.expect("msg")["text"] for _ in range(2)] == ["first", "second"]
        assert all_silent(alice, bob)


def test_message_then_quit_in_one_write_reach_the_others_in_order(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob", "carol") as (alice, bob, carol):
        alice.send_raw(frames({"type": "msg", "text": "bye all"}, {"type": "quit"}))
        for other in (bob, carol):
            assert other.expect("msg")["text"] == "bye all"
            assert other.expect("leave")["peer"]["nick"] == "alice"
        assert alice.closed()


def test_private_frame_keeps_its_place_among_broadcasts_of_the_same_iteration(
    server: ServerThread,
) -> None:
    with joined(server.host, server.port, "alice", "bob", "carol") as (alice, bob, carol):
        chat = server.server

        def one_iteration() -> None:
            sessions = {s.peer.nick: s for s in chat.sessions.values() if s.peer}
            chat.room.broadcast(b'{"type":"msg","text":"one"}\n', exclude=sessions["alice"])
            sessions["bob"].send(b'{"type":"pong"}\n')
            chat.room.broadcast(b'{"type":"msg","text":"two"}\n', exclude=sessions["alice"])

        server.call(one_iteration)
        assert bob.expect("msg")["text"] == "one"
        bob.expect("pong")
        assert bob.expect("msg")["text"] == "two"
        assert [carol.expect("msg")["text"] for _ in range(2)] == ["one", "two"]
        assert all_silent(alice, bob, carol)


def test_client_joining_mid_iteration_gets_only_what_follows_its_welcome(
    server: ServerThread,
) -> None:
    with (
        joined(server.host, server.port, "alice") as (alice,),
        RawClient(server.host, server.port) as bob,
    ):
        bob.send({"type": "ping"})
        bob.expect("pong")  # bob is connected, not joined
        chat = server.server

        def one_iteration() -> None:
            alice_s = next(iter(chat.sessions.values()))
            bob_s = next(s for s in chat.connections if s.peer is None)
            chat.room.broadcast(b'{"type":"msg","text":"before"}\n', exclude=alice_s)
            chat.room.join(bob_s, "bob", Hello("bob"), bob_s.addr)
            chat.room.broadcast(b'{"type":"msg","text":"after"}\n', exclude=alice_s)

        server.call(one_iteration)
        assert [p["nick"] for p in bob.expect("welcome")["peers"]] == ["alice"]
        assert bob.expect("msg")["text"] == "after"
        assert alice.expect("join")["peer"]["nick"] == "bob"
        assert all_silent(alice, bob)


PEERS = [Peer("7", 'n\u00e9 "q" \u2028', "::1"), Peer("12", "bob", "10.0.0.2"), Peer("3", "c", "?")]


@pytest.mark.parametrize("ts", [1_732_540_000.123456, 0.0, 1e300, float("inf"), float("nan")])
@pytest.mark.parametrize("text", ["hi", 'quote " back \\ nl \n sep \u2028 \U0001f600', ""])
def test_chat_frame_from_a_cached_sender_is_byte_for_byte_the_encoders(
    text: str, ts: float
) -> None:
    assert encode_chat(encode_peer(PEERS[0]), text, ts) == encode(Chat(PEERS[0], text, ts))


@pytest.mark.parametrize("count", [0, 1, 3])
def test_welcome_from_cached_peers_is_byte_for_byte_the_encoders(count: int) -> None:
    info = ServerInfo('chat \u2603 "x"', "1.2", 1)
    others = PEERS[:count]
    built = encode_welcome(encode_peer(PEERS[0]), [encode_peer(p) for p in others], info)
    assert built == encode(Welcome(PEERS[0], tuple(others), info))


def test_frames_encoded_once_at_import_are_what_the_encoder_makes() -> None:
    assert encode(Ping()) == server_module.PING
    assert encode(Pong()) == server_module.PONG
    rate_limited = parse_server(server_module.RATE_LIMITED)
    assert rate_limited == Error("rate_limited", "too fast; frame dropped")


@pytest.mark.skipif(server_module.TCP_CORK is None, reason="TCP_CORK is Linux's")
def test_a_write_of_several_records_arrives_whole_and_leaves_the_socket_uncorked(
    server: ServerThread,
) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        chat = server.server
        texts = [f"{i} " + "x" * 3000 for i in range(20)]  # 60 KB: four 16 KiB records

        def one_iteration() -> None:
            sessions = {s.peer.nick: s for s in chat.sessions.values() if s.peer}
            sessions["alice"].send(b'{"type":"pong"}\n')  # alice's write is her own blob
            for text in texts:
                chat.room.broadcast(b'{"type":"msg","text":"%s"}\n' % text.encode())

        server.call(one_iteration)
        alice.expect("pong")
        for client in (alice, bob):
            assert [client.expect("msg")["text"] for _ in texts] == texts
        assert all_silent(alice, bob)

        def corks() -> list[int]:
            return [
                s._transport.get_extra_info("socket").getsockopt(
                    socket.IPPROTO_TCP, server_module.TCP_CORK
                )
                for s in chat.connections
                if s._transport is not None
            ]

        assert server.call(corks) == [0, 0]
