"""ChatClient, the client core, against a real server: the events a front end sees."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatsecure.client.core import (
    REPLACED_TEXT,
    ChatClient,
    ClientEvent,
    Connected,
    Disconnected,
    NotSent,
    Queued,
    Received,
    Reconnecting,
    Sent,
    Target,
)
from chatsecure.client.resume import LastSeen
from chatsecure.errors import LocalProtocolError
from chatsecure.history import Appends, Draft, MemoryLog
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.limits import MAX_FRAME, MAX_NICK, MAX_SERVER_FRAME, MAX_SESSIONS
from chatsecure.protocol.messages import Chat, Error, Join, Leave, Shutdown
from chatsecure.testing import RawClient, ServerThread, server_config
from chatsecure.tls import certs
from chatsecure.tls.context import server_context
from chatsecure.tls.trust import KnownServers, TrustPolicy, TrustQuestion

E = TypeVar("E")
MakeClient = Callable[..., ChatClient]


@pytest.fixture
def make_client(server: ServerThread) -> Iterator[MakeClient]:
    """Start ChatClients for ``server`` (or another target); all are closed at the end."""
    clients: list[ChatClient] = []

    def make(
        nick: str = "bob",
        *,
        policy: TrustPolicy | None = None,
        target: Target | None = None,
        **options: Any,
    ) -> ChatClient:
        options.setdefault("reconnect", False)  # the tests that reconnect say so
        client = ChatClient(
            target or Target(server.host, server.port),
            nick,
            policy or TrustPolicy(KnownServers(), accept_new=True),
            **options,
        )
        clients.append(client)
        client.start()
        return client

    yield make
    for client in clients:
        client.close()
        assert not client.alive, "the network thread ended"


def next_event(client: ChatClient, kind: type[E], timeout: float = 5.0) -> E:
    """The next event of ``client``, which must be a ``kind``."""
    try:
        event: ClientEvent = client.events.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {kind.__name__} event in {timeout} s") from None
    assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
    return event


def received(client: ChatClient, kind: type[E]) -> E:
    message = next_event(client, Received).message
    assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
    return message


def no_more_events(client: ChatClient, wait: float = 0.2) -> bool:
    try:
        event = client.events.get(timeout=wait)
    except queue.Empty:
        return True
    raise AssertionError(f"unexpected event {event!r}")


def test_connects_pins_and_reports_the_welcome(
    server: ServerThread, make_client: MakeClient
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("bob")
        connected = next_event(client, Connected)
        assert connected.welcome.you.nick == "bob"
        assert [p.nick for p in connected.welcome.peers] == ["alice"]
        assert connected.fingerprint == server.fingerprint
        assert connected.tls_version in {"TLSv1.2", "TLSv1.3"}
        assert (connected.host, connected.port) == (server.host, server.port)
        assert KnownServers().get(server.host, server.port) == server.fingerprint
        assert alice.expect("join")["peer"]["nick"] == "bob"


def test_chats_both_ways_with_a_raw_client(server: ServerThread, make_client: MakeClient) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("bob")
        next_event(client, Connected)
        alice.expect("join")
        client.send("hello alice")
        queued = next_event(client, Queued)
        frame = alice.expect("msg")
        assert frame["text"] == "hello alice"
        assert frame["from"]["nick"] == "bob"
        sent = next_event(client, Sent)
        assert (sent.ref, sent.text, sent.seq) == (queued.ref, "hello alice", frame["seq"])
        alice.send({"type": "msg", "text": "hi bob"})
        chat = received(client, Chat)
        assert chat.text == "hi bob"
        assert chat.sender.nick == "alice"
        assert chat.sender.addr == "127.0.0.1"
        assert no_more_events(client), "our own message does not come back"


def test_join_and_leave_of_others_are_events(server: ServerThread, make_client: MakeClient) -> None:
    client = make_client("bob")
    next_event(client, Connected)
    with RawClient(server.host, server.port) as carol:
        carol.join("carol")
        assert received(client, Join).peer.nick == "carol"
        carol.send({"type": "quit"})
        leave = received(client, Leave)
        assert leave.peer.nick == "carol"
        assert leave.reason == "quit"


def test_quit_tells_the_server_and_ends_without_error(
    server: ServerThread, make_client: MakeClient
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("bob")
        next_event(client, Connected)
        alice.expect("join")
        client.send("quit")
        assert next_event(client, Disconnected).error is False
        leave = alice.expect("leave")
        assert leave["peer"]["nick"] == "bob"
        assert leave["reason"] == "quit"


def kick(server: ServerThread, nick: str) -> None:
    """Make the server drop ``nick`` the way it drops a client that broke a rule."""

    def drop() -> None:
        for session in list(server.server.sessions.values()):
            if session.peer is not None and session.peer.nick == nick:
                session.drop(ErrorCode.FLOODING, "dropped by the test")

    server.call(drop)


def test_text_too_long_for_a_frame_is_refused_locally_and_the_connection_kept(
    server: ServerThread, make_client: MakeClient
) -> None:
    client = make_client("bob")
    next_event(client, Connected)
    with pytest.raises(LocalProtocolError, match="too long"):
        client.send("x" * MAX_FRAME)
    client.send("still here")
    next_event(client, Queued)
    assert next_event(client, Sent).text == "still here"  # stored: alice's replay has it
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        assert [f["text"] for f in alice.replayed] == ["still here"]
        client.send("hello alice")
        assert alice.expect("msg")["text"] == "hello alice"


def test_dropped_connection_without_reconnect_is_an_error(
    server: ServerThread, make_client: MakeClient
) -> None:
    client = make_client("bob")
    next_event(client, Connected)
    kick(server, "bob")
    assert received(client, Error).code == "flooding"
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert "closed" in disconnected.reason
    assert no_more_events(client)


def test_text_sent_after_the_connection_ended_comes_back_as_not_sent(
    server: ServerThread, make_client: MakeClient
) -> None:
    client = make_client("bob")
    next_event(client, Connected)
    kick(server, "bob")
    received(client, Error)
    next_event(client, Disconnected)
    client.send("too late")
    assert next_event(client, NotSent) == NotSent("too late")


def test_text_sent_while_reconnecting_is_sent_after_the_reconnect(
    server: ServerThread, make_client: MakeClient
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("bob", reconnect=True)
        next_event(client, Connected)
        kick(server, "bob")
        received(client, Error)
        next_event(client, Reconnecting)
        client.send("anyone there?")
        assert next_event(client, Queued).text == "anyone there?"
        assert next_event(client, Connected).resent == 1
        assert next_event(client, Sent).text == "anyone there?"
        frames = [alice.recv() for _ in range(4)]  # join, leave, join, and the line
        assert [f["type"] for f in frames] == ["join", "leave", "join", "msg"]
        assert frames[-1]["text"] == "anyone there?"
        assert alice.silent(), "sent once"


def test_dropped_connection_with_reconnect_comes_back(
    server: ServerThread, make_client: MakeClient
) -> None:
    client = make_client("bob", reconnect=True)
    next_event(client, Connected)
    kick(server, "bob")
    received(client, Error)
    retry = next_event(client, Reconnecting)
    assert retry.attempt == 1
    again = next_event(client, Connected, timeout=retry.delay + 5)
    assert again.welcome.you.nick == "bob"
    server.wait_online(1)


def test_server_shutdown_ends_without_error(
    start_server: Callable[..., ServerThread], make_client: MakeClient
) -> None:
    other = start_server()
    client = make_client("bob", target=Target(other.host, other.port))
    next_event(client, Connected)
    other.stop()
    assert isinstance(received(client, Shutdown), Shutdown)
    assert next_event(client, Disconnected).error is False


def test_refused_nick_is_reported(make_client: MakeClient) -> None:
    client = make_client("   ")
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert "bad_nick" in disconnected.reason


def test_nobody_listening_is_reported(make_client: MakeClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client("bob", target=Target("127.0.0.1", port))
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert "refused" in disconnected.reason


# --- trust ------------------------------------------------------------------------------


def test_unknown_server_is_refused_without_a_way_to_ask_and_nothing_is_sent(
    server: ServerThread, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatsecure.server")
    client = make_client("bob", policy=TrustPolicy(KnownServers()))
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert server.fingerprint in disconnected.reason
    assert KnownServers().get(server.host, server.port) is None
    assert server.online() == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("TLS connection from" in m for m in messages), "the client did connect"
    assert not any("joined" in m or "refused frame" in m for m in messages), messages


def test_user_is_asked_once_and_the_answer_pins(
    server: ServerThread, make_client: MakeClient
) -> None:
    questions: list[TrustQuestion] = []

    def ask(question: TrustQuestion) -> bool:
        questions.append(question)
        return True

    client = make_client("bob", policy=TrustPolicy(KnownServers(), ask=ask))
    next_event(client, Connected)
    assert [(q.host, q.port, q.fingerprint) for q in questions] == [
        (server.host, server.port, server.fingerprint)
    ]
    assert KnownServers().get(server.host, server.port) == server.fingerprint


def test_pinned_server_connects_without_asking(
    server: ServerThread, make_client: MakeClient
) -> None:
    KnownServers().pin(server.host, server.port, server.fingerprint)

    def ask(question: TrustQuestion) -> bool:
        raise AssertionError(f"asked about a pinned server: {question}")

    client = make_client("bob", policy=TrustPolicy(KnownServers(), ask=ask))
    next_event(client, Connected)


def test_changed_certificate_is_refused(server: ServerThread, make_client: MakeClient) -> None:
    wrong = certs.fingerprint(b"the certificate we saw last time")
    KnownServers().pin(server.host, server.port, wrong)
    client = make_client("bob", policy=TrustPolicy(KnownServers(), accept_new=True))
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert wrong in disconnected.reason
    assert server.fingerprint in disconnected.reason
    assert "chatsecure forget" in disconnected.reason
    assert KnownServers().get(server.host, server.port) == wrong
    assert server.online() == []


def test_cafile_verifies_without_pinning(
    server: ServerThread, make_client: MakeClient, cert_dir: Path
) -> None:
    target = Target("localhost", server.port, cafile=cert_dir / "server.crt")
    client = make_client("bob", target=target, policy=TrustPolicy(KnownServers()))
    next_event(client, Connected)
    assert not KnownServers().path.exists()


def test_cafile_still_refuses_a_server_that_is_not_the_one_advertised(
    server: ServerThread, make_client: MakeClient, cert_dir: Path
) -> None:
    other = certs.fingerprint(b"the certificate the server found on the network announced")
    target = Target("localhost", server.port, cafile=cert_dir / "server.crt", advertised=other)
    client = make_client("bob", target=target, policy=TrustPolicy(KnownServers()))
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert other in disconnected.reason
    assert server.fingerprint in disconnected.reason
    assert server.online() == []


def test_cafile_and_the_advertised_fingerprint_agreeing_connects(
    server: ServerThread, make_client: MakeClient, cert_dir: Path
) -> None:
    target = Target(
        "localhost", server.port, cafile=cert_dir / "server.crt", advertised=server.fingerprint
    )
    client = make_client("bob", target=target, policy=TrustPolicy(KnownServers()))
    next_event(client, Connected)


def test_cafile_that_does_not_vouch_for_the_server_is_refused(
    server: ServerThread, make_client: MakeClient, tmp_path: Path
) -> None:
    stranger = certs.generate(tmp_path)
    target = Target("127.0.0.1", server.port, cafile=stranger.cert)
    client = make_client("bob", target=target, policy=TrustPolicy(KnownServers()))
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert "certificate verification failed" in disconnected.reason
    assert server.online() == []


def test_quit_during_the_reconnect_wait_ends_at_once(
    start_server: Callable[..., ServerThread], make_client: MakeClient
) -> None:
    other = start_server()
    client = make_client("bob", target=Target(other.host, other.port), reconnect=True)
    next_event(client, Connected)
    kick(other, "bob")
    received(client, Error)
    retry = next_event(client, Reconnecting)
    other.stop()  # nothing to come back to
    started = time.monotonic()
    client.quit()
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is False
    assert time.monotonic() - started < retry.delay


def test_quit_while_connecting_never_joins_the_room(
    server: ServerThread, make_client: MakeClient
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("ghost", password="not for a room we left")
        client.quit()  # the user cancels at once
        disconnected = next_event(client, Disconnected)
        assert disconnected.error is False
        assert no_more_events(client)
        assert alice.silent(0.5), "no join and leave of a client that never chatted"
    assert server.online() == []


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port where TCP connects but TLS never answers (the kernel accepts, nobody reads)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_quit_during_a_slow_handshake_ends_at_once(
    make_client: MakeClient, silent_listener: int
) -> None:
    client = make_client("bob", target=Target("127.0.0.1", silent_listener))
    time.sleep(0.2)  # connected by TCP, waiting for the server's TLS answer
    started = time.monotonic()
    client.quit()
    assert next_event(client, Disconnected, timeout=3).error is False
    client._thread.join(3)
    assert not client.alive
    assert time.monotonic() - started < 2


def test_quit_at_any_moment_of_connecting_ends_promptly_and_cleanly(
    server: ServerThread,
) -> None:
    """Wherever quit lands (TCP, TLS, hello, welcome), the thread ends, no socket is left
    open, and the room sees either nothing or a join and a leave by quit."""
    policy = TrustPolicy(KnownServers(), accept_new=True)
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        for n in range(30):
            client = ChatClient(Target(server.host, server.port), "ghost", policy)
            client.start()
            time.sleep(n * 0.001)  # 0 to 29 ms: every stage of connecting on loopback
            client.quit()
            client.close(3)
            assert not client.alive, f"the network thread hung after quit at {n} ms"
            events = list(client.events.queue)
            assert isinstance(events[-1], Disconnected)
            assert events[-1].error is False
        gc.collect()  # an unclosed transport or socket would warn here (an error in tests)
        frames = []
        while not alice.silent(0.3):
            frames.append(alice.recv(1))
        assert server.online() == ["alice"]
    assert [f["type"] for f in frames].count("join") * 2 == len(frames), frames
    assert all(f["reason"] == "quit" for f in frames if f["type"] == "leave"), frames


def test_quit_while_the_user_decides_about_trust_sends_nothing(
    server: ServerThread, make_client: MakeClient
) -> None:
    asked, answer = threading.Event(), threading.Event()

    def ask(question: TrustQuestion) -> bool:
        asked.set()
        answer.wait(5)
        return True  # the user says yes, but too late: they had cancelled

    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("bob", policy=TrustPolicy(KnownServers(), ask=ask))
        try:
            assert asked.wait(5)
            client.quit()
            assert next_event(client, Disconnected, timeout=3).error is False
        finally:
            answer.set()
        client.close()
        assert alice.silent(0.5)
    assert server.online() == []


def test_server_pings_are_answered_so_an_idle_client_stays(
    start_server: Callable[..., ServerThread], make_client: MakeClient
) -> None:
    other = start_server(idle_timeout=0.8)
    client = make_client("bob", target=Target(other.host, other.port))
    next_event(client, Connected)
    time.sleep(1.8)  # over two idle timeouts
    assert other.online() == ["bob"]
    assert no_more_events(client, wait=0.05)


# --- a server that misbehaves -----------------------------------------------------------


class ScriptedServer:
    """A TLS listener on loopback that answers one client's hello with fixed lines.

    ``tail`` is sent after them as it is: the start of a line that never ends, say.
    """

    def __init__(self, cert_dir: Path, lines: list[bytes], tail: bytes = b"") -> None:
        self._ctx = server_context(cert_dir / "server.crt", cert_dir / "server.key")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(5)
        self.port: int = self._listener.getsockname()[1]
        self._lines = lines
        self._tail = tail
        self.hello = b""
        self._thread = threading.Thread(target=self._serve, name="scripted-server")
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError), self._listener:
            raw, _ = self._listener.accept()
            with self._ctx.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(5)
                while not self.hello.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    self.hello += chunk
                conn.sendall(b"".join(line + b"\n" for line in self._lines) + self._tail)
                while True:  # until the client goes; like the real server, close on quit
                    chunk = conn.recv(4096)
                    if not chunk or b'"quit"' in chunk:
                        return

    def join(self) -> None:
        self._thread.join(10)
        assert not self._thread.is_alive()


PEER = b'{"id":"1","nick":"%s","addr":"127.0.0.1"}'
WELCOME = b'{"type":"welcome","you":' + PEER % b"bob" + b',"peers":[],"server":{"name":"x"}}'


def test_malformed_frames_from_the_server_are_skipped(
    cert_dir: Path, make_client: MakeClient
) -> None:
    chat = b'{"type":"msg","from":' + PEER % b"eve" + b',"text":"after the junk","ts":1}'
    script = [WELCOME, b"{junk", b'{"type":"msg","text":"no sender"}', b'{"type":"x"}', chat]
    fake = ScriptedServer(cert_dir, script)
    client = make_client("bob", target=Target("127.0.0.1", fake.port))
    next_event(client, Connected)
    assert received(client, Chat).text == "after the junk"
    hello = {"type": "hello", "nick": "bob", "client": client.session.client_id}
    assert json.loads(fake.hello) == hello
    client.close()
    fake.join()


def test_line_from_the_server_over_the_client_limit_ends_the_connection(
    cert_dir: Path, make_client: MakeClient
) -> None:
    text = b"x" * MAX_SERVER_FRAME  # a valid frame, only too long
    huge = b'{"type":"msg","from":' + PEER % b"eve" + b',"text":"' + text + b'","ts":1}'
    fake = ScriptedServer(cert_dir, [WELCOME, huge])
    client = make_client("bob", target=Target("127.0.0.1", fake.port))
    next_event(client, Connected)
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert f"longer than {MAX_SERVER_FRAME} bytes" in disconnected.reason
    fake.join()


def test_endless_line_from_the_server_ends_the_connection_before_its_end(
    cert_dir: Path, make_client: MakeClient
) -> None:
    fake = ScriptedServer(cert_dir, [WELCOME], tail=b"x" * (4 * MAX_SERVER_FRAME))
    client = make_client("bob", target=Target("127.0.0.1", fake.port))
    next_event(client, Connected)
    disconnected = next_event(client, Disconnected)
    assert f"longer than {MAX_SERVER_FRAME} bytes" in disconnected.reason
    fake.join()


def test_welcome_of_a_full_room_of_long_nicks_fits_the_client_limit(
    cert_dir: Path, make_client: MakeClient
) -> None:
    def peer(n: int) -> bytes:
        nick = f"{n:04d}" + "\U0001f600" * (MAX_NICK - 4)  # 4 bytes a character
        addr = f"fd00:1234:5678:9abc:def0:1234:{n:x}:1"
        return json.dumps({"id": str(n), "nick": nick, "addr": addr}, ensure_ascii=False).encode()

    peers = b",".join(peer(n) for n in range(MAX_SESSIONS))
    welcome = WELCOME.replace(b'"peers":[]', b'"peers":[' + peers + b"]")
    assert len(welcome) > MAX_FRAME * 10
    fake = ScriptedServer(cert_dir, [welcome])
    client = make_client("bob", target=Target("127.0.0.1", fake.port))
    assert len(next_event(client, Connected).welcome.peers) == MAX_SESSIONS
    client.close()
    fake.join()


@pytest.mark.parametrize(
    ("first", "words"),
    [
        (b'{"type":"shutdown"}', "shutting down"),
        (b'{"type":"error","code":"server_full","message":"full"}', "server_full"),
    ],
)
def test_refusal_instead_of_welcome_is_reported(
    cert_dir: Path, make_client: MakeClient, first: bytes, words: str
) -> None:
    fake = ScriptedServer(cert_dir, [first])
    client = make_client("bob", target=Target("127.0.0.1", fake.port))
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert words in disconnected.reason
    fake.join()


def test_refusal_from_the_server_cannot_fake_a_line(
    cert_dir: Path, make_client: MakeClient
) -> None:
    evil = b'{"type":"error","code":"x\\n","message":"no\\n[12:00:00] admin: fake\\u202e"}'
    fake = ScriptedServer(cert_dir, [evil])
    client = make_client("bob", target=Target("127.0.0.1", fake.port))
    reason = next_event(client, Disconnected).reason
    assert "\n" not in reason
    assert "\u202e" not in reason
    assert "no\\n[12:00:00] admin: fake\\u202e" in reason
    fake.join()


def test_wrong_password_ends_with_the_server_code_and_no_retry(
    start_server: Callable[..., ServerThread], make_client: MakeClient
) -> None:
    locked = start_server(password="open sesame")
    client = make_client(
        "bob", target=Target(locked.host, locked.port), password="guess", reconnect=True
    )
    disconnected = next_event(client, Disconnected)
    assert disconnected.error is True
    assert disconnected.code == "auth_failed"
    assert "password" in disconnected.reason
    assert no_more_events(client)


def test_a_second_program_on_the_same_config_folder_ends_the_first_without_a_retry(
    server: ServerThread, make_client: MakeClient
) -> None:
    # One client id (the config folder's): the newer connection is the client now. Were the
    # first to reconnect, the two would take turns in the room for ever.
    first = make_client("alice", client_id="sharedfolder01", reconnect=True)
    next_event(first, Connected)
    second = make_client("alice", client_id="sharedfolder01", reconnect=True)
    assert next_event(second, Connected).welcome.you.nick == "alice"
    disconnected = next_event(first, Disconnected)
    assert (disconnected.error, disconnected.code) == (True, "replaced")
    assert disconnected.reason == f"{REPLACED_TEXT} (it connected again from 127.0.0.1)"
    assert no_more_events(first)
    assert server.online() == ["alice"]
    assert second.alive


# --- failures on our side ---------------------------------------------------------------

UNDECODABLE = os.fsdecode(b"\xff")
"""What a byte that is not UTF-8 becomes in ``sys.argv`` or a surrogateescape stream."""


@pytest.mark.parametrize(("nick", "password"), [(UNDECODABLE, None), ("bob", "pw" + UNDECODABLE)])
def test_nick_or_password_that_utf8_cannot_carry_is_refused_before_connecting(
    server: ServerThread, nick: str, password: str | None
) -> None:
    policy = TrustPolicy(KnownServers(), accept_new=True)
    with pytest.raises(LocalProtocolError, match="not valid text"):
        ChatClient(Target(server.host, server.port), nick, policy, password=password)
    assert server.online() == []


def test_message_that_utf8_cannot_carry_is_refused_locally_and_the_connection_kept(
    server: ServerThread, make_client: MakeClient
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        client = make_client("bob")
        next_event(client, Connected)
        alice.expect("join")
        with pytest.raises(LocalProtocolError, match="not valid text"):
            client.send("caf" + UNDECODABLE)
        client.send("still here")
        assert alice.expect("msg")["text"] == "still here"


def test_failure_on_the_network_thread_ends_with_a_disconnected_event(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    client = ChatClient(
        Target(server.host, server.port), "bob", TrustPolicy(KnownServers(), accept_new=True)
    )
    client.session.nick = UNDECODABLE  # past the check in __init__: hello cannot be encoded
    client.start()
    try:
        disconnected = next_event(client, Disconnected)
        assert disconnected.error is True
        assert "UnicodeEncodeError" in disconnected.reason
        client._thread.join(5)
        assert not client.alive
        assert any(r.levelno == logging.ERROR and r.exc_info is not None for r in caplog.records), (
            "the traceback is logged"
        )
    finally:
        client.close()
    assert server.online() == []


class FullDiskLog(MemoryLog):
    """A room log on a disk that is full: every commit fails."""

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_line_the_server_cannot_store_is_not_sent_and_the_end_of_input_still_leaves(
    cert_dir: Path, make_client: MakeClient
) -> None:
    full = ServerThread(server_config(cert_dir), FullDiskLog(100)).start()
    try:
        client = make_client("bob", target=Target(full.host, full.port), reconnect=True)
        next_event(client, Connected)
        client.send("lost to a full disk")
        ref = next_event(client, Queued).ref
        assert next_event(client, NotSent) == NotSent(
            "lost to a full disk",
            ref,
            "not stored: the server refused it (the server could not store your line; not_stored)",
        )
        client.finish()  # nothing is left to wait for: it leaves at once
        assert next_event(client, Disconnected).error is False
        client.close()
    finally:
        full.stop()


def test_back_on_a_server_that_lost_its_log_a_client_is_shown_all_of_the_new_one(
    start_server: Callable[..., ServerThread], make_client: MakeClient, tmp_path: Path
) -> None:
    """The new log's seqs start again: the seq the client remembers is no position in it,
    even once the new log has gone past it."""
    db = tmp_path / "history.sqlite3"

    def say(server: ServerThread, texts: list[str]) -> None:
        with RawClient(server.host, server.port) as bob:
            bob.join("bob", client="bob-client-id")
            for n, text in enumerate(texts):
                bob.send({"type": "msg", "text": text, "ref": f"{text}-{n}"})
                bob.expect("ack")

    first = start_server(db=db, msg_rate=0)
    say(first, [f"old {n}" for n in range(5)])
    alice = make_client("alice", target=Target(first.host, first.port), last_seen=LastSeen())
    next_event(alice, Connected)
    assert [received(alice, Chat).text for _ in range(5)] == [f"old {n}" for n in range(5)]
    alice.quit()
    while not isinstance(alice.events.get(timeout=5), Disconnected):
        pass
    first.stop()
    for path in tmp_path.glob("history.sqlite3*"):
        path.unlink()  # the database lost: the next start makes a new log

    second = start_server(db=db, msg_rate=0)
    say(second, [f"new {n}" for n in range(12)])  # past the 5 alice remembers
    back = make_client("alice", target=Target(second.host, second.port), last_seen=LastSeen())
    connected = next_event(back, Connected)
    assert (connected.resumed, connected.missed) == (True, 12)
    shown = [received(back, Chat) for _ in range(12)]
    assert [(c.seq, c.text) for c in shown] == [(n + 1, f"new {n}") for n in range(12)]


def test_a_restart_resumes_after_the_last_line_the_front_end_showed(
    server: ServerThread, make_client: MakeClient
) -> None:
    """Lines that arrived but were not shown yet (the client killed with them in its queue)
    are what a restart shows; one the front end shows after the client ended counts too."""
    alice = make_client("alice", last_seen=LastSeen(), shows=True)
    connected = next_event(alice, Connected)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        for n in range(3):
            bob.send({"type": "msg", "text": f"line {n}", "ref": f"r{n}"})
            bob.expect("ack")
    received(alice, Join)
    first, second, third = (received(alice, Chat) for _ in range(3))
    alice.shown()  # the front end showed the first line only
    alice.quit()
    while not isinstance(alice.events.get(timeout=5), Disconnected):
        pass
    assert LastSeen().get(connected.fingerprint)[0] == first.seq
    alice.shown(2)  # and the others, once the client had ended
    assert LastSeen().get(connected.fingerprint)[0] == third.seq == second.seq + 1


def test_a_server_with_a_new_certificate_and_the_same_log_is_resumed_not_replayed(
    start_server: Callable[..., ServerThread], make_client: MakeClient, tmp_path: Path
) -> None:
    """A renewed certificate is a new fingerprint; the room's log says it is the same room:
    the client picks up where it left off (what was missed, nothing twice)."""
    db, renewed = tmp_path / "history.sqlite3", tmp_path / "renewed"
    certs.generate(renewed)

    def say(server: ServerThread, texts: list[str]) -> None:
        with RawClient(server.host, server.port) as bob:
            bob.join("bob", client="bob-client-id")
            for text in texts:
                bob.send({"type": "msg", "text": text, "ref": text})
                bob.expect("ack")

    first = start_server(db=db, msg_rate=0)
    say(first, ["before 1", "before 2"])
    alice = make_client("alice", target=Target(first.host, first.port), last_seen=LastSeen())
    next_event(alice, Connected)
    assert [received(alice, Chat).text for _ in range(2)] == ["before 1", "before 2"]
    alice.quit()
    while not isinstance(alice.events.get(timeout=5), Disconnected):
        pass
    port = first.port
    first.stop()

    second = start_server(
        db=db, msg_rate=0, port=port, cert=renewed / "server.crt", key=renewed / "server.key"
    )
    say(second, ["while away"])
    assert KnownServers().remove("127.0.0.1", port)  # `chatsecure forget`: the change is genuine
    back = make_client("alice", target=Target(second.host, port), last_seen=LastSeen())
    connected = next_event(back, Connected)
    assert connected.fingerprint != first.fingerprint
    assert (connected.resumed, connected.missed) == (True, 1)
    assert received(back, Chat).text == "while away"
    assert back.events.empty() or not isinstance(back.events.get(timeout=0.3), Received)


def test_lines_of_a_new_log_not_shown_yet_are_not_saved_as_seen(
    start_server: Callable[..., ServerThread], make_client: MakeClient, tmp_path: Path
) -> None:
    """The seqs of a new log start again, below those shown of the old one: what was shown
    is counted in lines, not compared by seq."""
    db = tmp_path / "history.sqlite3"
    first = start_server(db=db, msg_rate=0)
    port = first.port
    alice = make_client(
        "alice",
        target=Target(first.host, port),
        last_seen=LastSeen(),
        shows=True,
        reconnect=True,
    )
    connected = next_event(alice, Connected)
    with RawClient(first.host, port) as bob:
        bob.join("bob")
        for n in range(5):
            bob.send({"type": "msg", "text": f"old {n}", "ref": f"o{n}"})
            bob.expect("ack")
    received(alice, Join)
    for _ in range(5):
        received(alice, Chat)
    alice.shown(5)
    first.stop()
    while not isinstance(alice.events.get(timeout=5), Reconnecting):
        pass  # (bob's leave, the shutdown)
    for path in tmp_path.glob("history.sqlite3*"):
        path.unlink()  # the database lost: a new log, from seq 1 again
    second = start_server(db=db, msg_rate=0, port=port)
    with RawClient(second.host, port) as bob:
        bob.join("bob")
        for n in range(3):
            bob.send({"type": "msg", "text": f"new {n}", "ref": f"n{n}"})
            bob.expect("ack")
    while not isinstance(event := alice.events.get(timeout=10), Connected):
        pass  # (the attempts before the server was back)
    assert event.missed == 3
    assert [received(alice, Chat).text for _ in range(3)] == ["new 0", "new 1", "new 2"]
    alice.quit()  # killed, as it were, before the front end showed any of them
    while not isinstance(alice.events.get(timeout=5), Disconnected):
        pass
    seq, log_id = LastSeen().get(connected.fingerprint)
    assert seq == 0, "none of the new log's lines was shown"
    assert log_id is not None
