"""The client core against servers that lie, go silent, flood or restart (FakeServer, real TLS).

The front end here is the test itself, reading ``events`` as the GUI's poll does.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from chatsecure.client import core
from chatsecure.client.core import (
    EVENT_QUEUE_BYTES,
    EVENT_QUEUE_HIGH,
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
    format_message,
)
from chatsecure.protocol import limits
from chatsecure.protocol.messages import Chat, Shutdown
from chatsecure.testing import BIG_LINE, FakeServer, Mode, RawClient, ServerThread
from chatsecure.tls.trust import KnownServers, TrustPolicy
from tests.helpers import wait_for

E = TypeVar("E")
Fake = Callable[..., FakeServer]
MakeClient = Callable[..., ChatClient]


@pytest.fixture
def make_client() -> Iterator[MakeClient]:
    clients: list[ChatClient] = []

    def make(server: FakeServer, **options: Any) -> ChatClient:
        options.setdefault("reconnect", False)
        client = ChatClient(
            Target("127.0.0.1", server.port),
            "bob",
            TrustPolicy(KnownServers(), accept_new=True),
            **options,
        )
        clients.append(client)
        client.start()
        return client

    yield make
    for client in clients:
        client.close()
        assert not client.alive


def next_event(client: ChatClient, kind: type[E], timeout: float = 10.0) -> E:
    try:
        event: ClientEvent = client.events.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {kind.__name__} event in {timeout} s") from None
    assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
    return event


def flood_stopped(server: FakeServer, steady: float, timeout: float) -> None:
    """Wait until the client took no more of ``server``'s flood for ``steady`` seconds."""
    deadline = time.monotonic() + timeout
    taken, steady_since = -1, time.monotonic()
    while time.monotonic() - steady_since < steady:
        assert time.monotonic() < deadline, f"still taking the flood: {server.flooded} bytes"
        if server.flooded != taken:
            taken, steady_since = server.flooded, time.monotonic()
        time.sleep(0.1)


def chat_texts_until(client: ChatClient, last: str, timeout: float = 60.0) -> list[str]:
    """Texts of the chat lines received up to and including ``last``."""
    texts: list[str] = []
    deadline = time.monotonic() + timeout
    while not texts or texts[-1] != last:
        event = client.events.get(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(event, Received) and isinstance(event.message, Chat):
            texts.append(event.message.text)
    return texts


def test_bad_fields_are_shown_with_the_time_of_arrival_or_skipped_with_one_warning(
    fake: Fake, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "chatsecure.client.core")
    client = make_client(fake(Mode.BAD_FIELDS))
    next_event(client, Connected)
    before = time.time()
    shown: list[Chat] = []
    while not shown or shown[-1].text != "after the bad fields":
        message = next_event(client, Received).message
        assert isinstance(message, Chat)
        shown.append(message)
        assert format_message(message) is not None  # the front end can show every one
    assert [m.text for m in shown] == [
        "ts far in the future",
        "ts far in the past",
        "ts a string",
        "ts null",
        "ts overflows",
        "after the bad fields",
    ]
    assert all(abs(m.ts - before) < 60 for m in shown[:5]), "a bad ts is taken as now"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # one per kind a minute, not one per frame
    client.quit()
    assert next_event(client, Disconnected).error is False


def test_a_silent_server_is_pinged_given_up_and_the_pending_line_resent(
    fake: Fake, make_client: MakeClient
) -> None:
    server = fake(Mode.SILENT)
    client = make_client(server, reconnect=True, ping_after=0.4, pong_timeout=0.4)
    next_event(client, Connected)
    started = time.monotonic()
    client.send("are you there")
    assert next_event(client, Queued).text == "are you there"
    dropped = next_event(client, Reconnecting, timeout=5)
    assert dropped.reason == "the server stopped answering"
    assert 0.8 <= time.monotonic() - started < 3.0
    assert any(frame["type"] == "ping" for frame in server.received)
    next_event(client, Connected, timeout=5)
    server.wait_for(lambda s: s.texts == ["are you there", "are you there"])  # same ref
    refs = {f["ref"] for f in server.received if f["type"] == "msg"}
    assert len(refs) == 1


@pytest.mark.parametrize("leave", ["quit", "finish"])
def test_quit_and_end_of_input_leave_promptly_when_the_server_never_closes(
    fake: Fake, make_client: MakeClient, leave: str
) -> None:
    client = make_client(fake(Mode.SILENT))
    next_event(client, Connected)
    started = time.monotonic()
    getattr(client, leave)()
    final = next_event(client, Disconnected, timeout=5)
    assert final.error is False
    assert time.monotonic() - started < 3.0


def sent_and_read(server: FakeServer, make_client: MakeClient, text: str) -> ChatClient:
    """A client of ``server`` that has said ``text``, which the server has read (and, as it
    is a fake, neither acknowledged nor refused)."""
    client = make_client(server)
    next_event(client, Connected)
    client.send(text)
    assert next_event(client, Queued).text == text
    server.wait_for(lambda s: s.texts == [text])
    return client


def test_quit_waits_a_bounded_time_for_the_ack_of_a_line_the_server_never_acknowledges(
    fake: Fake, make_client: MakeClient
) -> None:
    client = sent_and_read(fake(Mode.SILENT), make_client, "last words")
    started = time.monotonic()
    client.quit()
    assert next_event(client, NotSent, timeout=10).text == "last words"  # never in silence
    assert next_event(client, Disconnected).error is False
    waited = time.monotonic() - started
    # A server that did not answer in ACK_WAIT is not waited for again to close its side.
    assert core.ACK_WAIT - 0.2 <= waited < core.ACK_WAIT + core.QUIT_FLUSH + 1.0


def test_a_flood_is_held_back_by_a_bounded_queue_and_nothing_is_lost(
    fake: Fake, make_client: MakeClient
) -> None:
    count = 30_000
    client = make_client(fake(Mode.FLOOD, count=count))
    next_event(client, Connected)
    time.sleep(1.5)  # a front end that does not read for a while
    # One read (64 KiB, some 650 lines) may land on top of the mark, never more.
    assert EVENT_QUEUE_HIGH <= client.events.qsize() <= EVENT_QUEUE_HIGH + 1000
    texts = chat_texts_until(client, "end of the flood")
    assert texts == [f"flood {n}" for n in range(1, count + 1)] + ["end of the flood"]


def test_a_flood_of_huge_lines_is_held_back_by_their_bytes_and_nothing_is_lost(
    fake: Fake, make_client: MakeClient
) -> None:
    count = 200  # 200 MB, had the client taken it all (it did: 200 lines are few events)
    server = fake(Mode.BIG_LINES, count=count)
    client = make_client(server)
    next_event(client, Connected)
    # A front end that does not take events: the client stops reading once they hold
    # EVENT_QUEUE_BYTES, and the flood stops once the buffers on the way are full.
    wait_for(lambda: client.queued_bytes >= EVENT_QUEUE_BYTES, 20, "the queue at its mark")
    flood_stopped(server, steady=1.0, timeout=20)
    # One read may land on top of the mark: at most a frame (and its characters fit a byte).
    assert EVENT_QUEUE_BYTES <= client.queued_bytes <= EVENT_QUEUE_BYTES + 2 * BIG_LINE
    assert server.flooded < count * BIG_LINE / 4, "the flood went on into buffers somewhere"
    texts = chat_texts_until(client, "end of the flood")
    assert [text[: text.index(" ", 4)] for text in texts[:-1]] == [
        f"big {n}" for n in range(1, count + 1)
    ]
    assert all(len(text) == BIG_LINE for text in texts[:-1])
    assert texts[-1] == "end of the flood"
    assert client.queued_bytes == 0


def test_a_front_end_behind_is_no_silence_of_the_server(
    fake: Fake, make_client: MakeClient
) -> None:
    count = 30_000
    client = make_client(
        fake(Mode.FLOOD, count=count), reconnect=True, ping_after=0.3, pong_timeout=0.3
    )
    next_event(client, Connected)
    time.sleep(1.5)  # not reading for longer than a silent server is given
    events: list[ClientEvent] = []
    deadline = time.monotonic() + 60
    while not events or not is_chat(events[-1], "end of the flood"):
        events.append(client.events.get(timeout=max(deadline - time.monotonic(), 0.001)))
    assert not [e for e in events if isinstance(e, Reconnecting | Disconnected)]
    texts = [e.message.text for e in events if isinstance(e, Received) and is_chat(e)]
    assert texts == [f"flood {n}" for n in range(1, count + 1)] + ["end of the flood"]


def is_chat(event: ClientEvent, text: str | None = None) -> bool:
    if not (isinstance(event, Received) and isinstance(event.message, Chat)):
        return False
    return text is None or event.message.text == text


def test_a_flood_of_unknown_frames_is_skipped_with_one_warning_a_minute(
    fake: Fake, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "chatsecure.client.core")
    client = make_client(fake(Mode.UNKNOWN_FLOOD, count=100_000))
    next_event(client, Connected)
    assert chat_texts_until(client, "end of the flood") == ["end of the flood"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "unknown type 'zzz'" in warnings[0]


def test_an_unknown_frame_before_welcome_is_ignored(fake: Fake, make_client: MakeClient) -> None:
    client = make_client(fake(Mode.MOTD))
    next_event(client, Connected)
    assert chat_texts_until(client, "after the motd", timeout=5) == ["after the motd"]


def test_a_graceful_restart_is_a_drop_and_lines_typed_meanwhile_are_sent_after_it(
    fake: Fake, make_client: MakeClient
) -> None:
    server = fake(Mode.SHUTDOWN)
    client = make_client(server, reconnect=True)
    next_event(client, Connected)
    assert isinstance(next_event(client, Received).message, Shutdown)
    assert next_event(client, Reconnecting).reason == "the server shut down"
    client.send("typed while it restarted")
    next_event(client, Queued)
    next_event(client, Connected)
    assert next_event(client, Sent).text == "typed while it restarted"
    assert server.texts == ["typed while it restarted"]
    assert server.sessions == 2


def test_a_server_that_fails_every_session_after_welcome_uses_up_the_retries(
    fake: Fake, make_client: MakeClient
) -> None:
    client = make_client(fake(Mode.FAIL_AFTER_WELCOME), reconnect=True)
    attempts = []
    for _ in range(3):
        next_event(client, Connected)
        attempts.append(next_event(client, Reconnecting).attempt)
    assert attempts == [1, 2, 3], "a welcome alone does not start the count afresh"
    started = time.monotonic()
    client.quit()
    while not isinstance(client.events.get(timeout=5), Disconnected):
        pass
    assert time.monotonic() - started < 2.0


def test_a_server_that_fails_every_session_is_given_up_saying_so(
    fake: Fake, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "RETRY_DELAYS", (0.01,))
    client = make_client(fake(Mode.FAIL_AFTER_WELCOME), reconnect=True)
    while not isinstance(event := client.events.get(timeout=10), Disconnected):
        pass
    assert event.reason.endswith(f"(gave up after {core.MAX_RETRIES} tries)")


def test_short_sessions_that_store_lines_do_not_use_up_the_retries(
    fake: Fake, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link that drops every few seconds while the user chats: each session worked."""
    monkeypatch.setattr(core, "RETRY_DELAYS", (0.01,))
    client = make_client(fake(Mode.ACK_THEN_CLOSE), reconnect=True)
    attempts = []
    for n in range(core.MAX_RETRIES + 5):
        next_event(client, Connected)
        client.send(f"line {n}")
        next_event(client, Queued)
        assert next_event(client, Sent).text == f"line {n}"
        attempts.append(next_event(client, Reconnecting).attempt)
    assert set(attempts) == {1}, "each drop starts the count afresh"


def test_a_server_that_welcomes_then_says_nothing_uses_up_the_retries(
    fake: Fake, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each silent session lasts longer than STABLE_SESSION before the client gives it up; it
    # still counts as failed, since nothing was heard from the server after its welcome.
    monkeypatch.setattr(core, "STABLE_SESSION", 0.5)
    monkeypatch.setattr(core, "RETRY_DELAYS", (0.05,))
    client = make_client(fake(Mode.SILENT), reconnect=True, ping_after=0.3, pong_timeout=0.3)
    attempts = []
    for _ in range(3):
        next_event(client, Connected)
        attempts.append(next_event(client, Reconnecting, timeout=5).attempt)
    assert attempts == [1, 2, 3]


def test_a_server_that_pings_and_never_reads_cannot_grow_the_clients_buffers(
    fake: Fake, make_client: MakeClient
) -> None:
    server = fake(Mode.PING_FLOOD, count=4000)  # 4,000 x 64 KiB of pings, if taken
    client = make_client(server)
    next_event(client, Connected)
    # The client stops reading while its pongs wait to be read: the flood stops with it,
    # once the buffers on the way are full. (Taken as it came, it grew the client by a
    # pong for each ping, 2.7 MB a second, for as long as it went on.)
    flood_stopped(server, steady=2.0, timeout=15)


def test_a_welcome_that_announces_a_room_too_large_to_gather_is_refused(
    fake: Fake, make_client: MakeClient
) -> None:
    client = make_client(fake(Mode.PEERS_FLOOD, count=1000))
    final = next_event(client, Disconnected, timeout=10)
    assert final.error
    assert "more than this client takes" in final.reason


def test_end_of_input_gives_up_on_a_server_that_answers_but_never_confirms(
    fake: Fake, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "FINISH_STALL", 2.0)
    client = sent_and_read(fake(Mode.NO_ACKS), make_client, "into the void")
    started = time.monotonic()
    client.finish()
    not_sent = next_event(client, NotSent, timeout=10)
    assert (not_sent.text, not_sent.why) == ("into the void", core.UNCONFIRMED)
    assert next_event(client, Disconnected).error is False
    assert 2.0 - core.TICK <= time.monotonic() - started < 2.0 + core.TICK + core.QUIT_WAIT + 1.0


def test_a_welcome_that_cannot_be_read_is_named_not_called_no_answer(
    fake: Fake, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "WELCOME_TIMEOUT", 1.0)
    client = make_client(fake(Mode.BAD_WELCOME))
    final = next_event(client, Disconnected, timeout=10)
    assert final.error
    assert "the server's answer was not understood" in final.reason
    assert "did not answer" not in final.reason


@pytest.mark.parametrize("mode", [Mode.HANG_UP, Mode.MUTE])
def test_a_server_that_never_welcomes_is_not_pinned(
    fake: Fake, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, mode: Mode
) -> None:
    # Anything that speaks TLS (another program, a port mistyped) must not stay pinned: the
    # chatsecure server started on that port later would be refused as a changed certificate.
    monkeypatch.setattr(limits, "WELCOME_TIMEOUT", 0.5)
    server = fake(mode)
    client = make_client(server)
    ended = next_event(client, Disconnected)
    assert ended.error
    if mode is Mode.MUTE:
        assert ended.reason.endswith("sent no welcome in 0.5 s: is it a chatsecure server?")
    assert KnownServers().get("127.0.0.1", server.port) is None


def first_with_password(server: ServerThread, password: str, kind: type[E]) -> E:
    """The first event of a client (trusting on first use) that joins with ``password``."""
    client = ChatClient(
        Target("127.0.0.1", server.port),
        "bob",
        TrustPolicy(KnownServers(), accept_new=True),
        password=password,
        reconnect=False,
    )
    client.start()
    try:
        return next_event(client, kind)
    finally:
        client.close()


def test_a_server_that_refuses_us_in_its_own_words_stays_pinned(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(password="room key")
    assert first_with_password(server, "wrong", Disconnected).code == "auth_failed"
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint


def test_a_welcome_held_back_after_wrong_passwords_is_waited_for(
    start_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    # After wrong guesses from an address the server holds even the right password's welcome
    # (AUTH_DELAY doubling): a client that gave up first would take it for no server at all.
    monkeypatch.setattr(limits, "WELCOME_TIMEOUT", 0.5)
    server = start_server(password="room key")
    for _ in range(2):
        with RawClient(server.host, server.port) as guesser:
            guesser.send({"type": "hello", "nick": "guess", "password": "wrong"})
            assert guesser.expect("error")["code"] == "auth_failed"
    first_with_password(server, "room key", Connected)  # after 2 s
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint
