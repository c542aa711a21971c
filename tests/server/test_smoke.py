from __future__ import annotations

from chatsecure.testing import RawClient, ServerThread, joined


def test_message_reaches_the_others_with_sender_nick_and_address(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob", "carol") as (alice, bob, carol):
        alice.send({"type": "msg", "text": "hi all"})
        for other in (bob, carol):
            frame = other.expect("msg")
            assert frame["text"] == "hi all"
            assert frame["from"]["nick"] == "alice"
            assert frame["from"]["addr"] == "127.0.0.1"
        assert alice.silent()


def test_unknown_type_is_answered_with_error_and_connection_kept(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as client:
        client.join("alice")
        client.send({"type": "dance"})
        assert client.expect("error")["code"] == "unknown_type"
        client.send({"type": "ping"})
        client.expect("pong")
