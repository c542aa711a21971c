"""The desktop client in real Tk windows on Xvfb, against a real server on loopback.

Discovery is off in every test here (it may only run inside a test's network namespace).
Widgets are driven through Tk (insert, invoke, event_generate) or through the X server with
xdotool (and, to close a window, an X client message: ``x11.py``); nothing calls the app's
private methods.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from tkinter import ttk

import pytest

from chatsecure.client.core import Reconnecting
from chatsecure.client.state import Line, Phase, short_fingerprint
from chatsecure.gui.app import PALETTE
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls import certs
from chatsecure.tls.trust import KnownServers

from .conftest import Gui, GuiFactory, settle
from .proxy import Proxy
from .x11 import close_window

pytestmark = pytest.mark.gui

OTHER_FP = "SHA256:" + "A" * 43
ROOM = "open sesame"
"""The room password of the servers that ask for one."""


def connect_trusting(client: Gui, host: str, port: int) -> None:
    """Connect by typed address and accept the first-contact dialog if it comes."""
    client.connect(host, port)
    client.pump(lambda: client.dialog() is not None or client.phase is Phase.CHAT)
    if client.dialog() is not None:
        client.click("trust.buttons.accept")
    client.pump(lambda: client.phase is Phase.CHAT)


def typed_in_a_paced_room(
    start_server: Callable[..., ServerThread], gui: GuiFactory, texts: list[str], rate: float
) -> tuple[ServerThread, Gui]:
    """Alice in a room that paces lines to ``rate`` a second, having just typed ``texts``
    (most of them still waiting to go out)."""
    server = start_server(msg_rate=rate, msg_burst=1)  # the client paces its lines to this
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    for text in texts:
        alice.say(text)
    alice.pump(lambda: texts[-1] in alice.transcript())
    return server, alice


@contextlib.contextmanager
def bob_and_alice_through_a_proxy(
    server: ServerThread, gui: GuiFactory
) -> Iterator[tuple[RawClient, Gui, Proxy]]:
    """bob in the room, and alice's window in it through a proxy the test can cut."""
    with RawClient(server.host, server.port) as bob, Proxy((server.host, server.port)) as proxy:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", proxy.port)
        yield bob, alice, proxy


@contextlib.contextmanager
def bob_and_alice_unpaced(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> Iterator[tuple[RawClient, Gui]]:
    """bob, and alice's window, in a room of a server that paces no one."""
    server = start_server(msg_rate=0)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        bob.expect("join")
        yield bob, alice


def say_stored(bob: RawClient, text: str, ref: str) -> None:
    """``bob`` says ``text`` and waits until it is stored (joins and leaves on the way)."""
    bob.send({"type": "msg", "text": text, "ref": ref})
    while bob.recv(5)["type"] != "ack":
        pass


def missed_by(alice: Gui, proxy: Proxy, bob: RawClient, texts: Sequence[str]) -> None:
    """Alice's connection through ``proxy`` breaks, and her return waits while ``bob`` says
    ``texts``, each stored; then she is back, with the newest of them."""
    proxy.hold()
    proxy.drop()
    alice.pump(lambda: alice.phase is Phase.RECONNECTING)
    for n, text in enumerate(texts):
        say_stored(bob, text, f"away-{n}")
    proxy.release()
    alice.pump(lambda: texts[-1] in alice.transcript(), timeout=10)


def cut_off(gui: GuiFactory, proxy: Proxy) -> Gui:
    """Alice in the room through ``proxy``, whose connection was just cut: reconnecting."""
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", proxy.port)
    proxy.drop()
    alice.pump(lambda: alice.phase is Phase.RECONNECTING)
    return alice


def line_re(nick: str, text: str) -> re.Pattern[str]:
    return re.compile(
        rf"^\[\d\d:\d\d:\d\d\] {re.escape(nick)} \(127\.0\.0\.1\): {re.escape(text)}$"
    )


def has_line(client: Gui, pattern: re.Pattern[str]) -> Callable[[], bool]:
    return lambda: any(pattern.match(line) for line in client.transcript_lines())


def test_form_errors_are_shown_next_to_each_field(gui: GuiFactory) -> None:
    alice = gui(nick="")
    alice.type("connect.form.host", "")
    alice.type("connect.form.port", "99999")
    alice.type("connect.form.nick", "   ")
    alice.click("connect.form.buttons.connect")
    assert "address" in alice.w("connect.form.host_error").cget("text")
    assert "65535" in alice.w("connect.form.port_error").cget("text")
    assert "visible characters" in alice.w("connect.form.nick_error").cget("text")
    assert alice.phase is Phase.CONNECT
    assert alice.app.controller.client is None  # nothing was started
    alice.type("connect.form.host", "bad host!")
    alice.type("connect.form.port", "7467")
    alice.type("connect.form.nick", "alice")
    alice.press_enter(alice.w("connect.form.host"))
    assert "Not an IP address" in alice.w("connect.form.host_error").cget("text")
    assert alice.w("connect.form.port_error").cget("text") == ""
    assert alice.w("connect.form.nick_error").cget("text") == ""


def test_two_clients_trust_chat_see_each_other_and_quit(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice, bob = gui(nick="alice"), gui(nick="bob")
    assert alice.view() == "connect"
    assert alice.w("connect.form.port").get() == "7467"  # the default port is prefilled

    # First contact: the trust dialog shows the server's fingerprint; accept it in the GUI.
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.dialog() is not None)
    assert alice.w("trust.body.fingerprint").get() == server.fingerprint
    assert "First connection" in alice.w("trust.body.heading").cget("text")
    assert server.online() == []  # nothing was sent before the user trusted the server
    alice.click("trust.buttons.accept")
    alice.pump(lambda: alice.phase is Phase.CHAT)
    assert alice.dialog() is None
    assert alice.view() == "chat"
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint
    message_box = alice.w("chat.bottom.message")
    assert alice.root.focus_lastfor() is message_box
    status = alice.status()
    assert "you are alice" in status
    assert "TLSv1.3" in status
    assert short_fingerprint(server.fingerprint) in status
    assert alice.users() == ["alice (127.0.0.1)  — you"]

    # Bob uses the same trust store, so the server is known: no dialog this time.
    bob.connect("127.0.0.1", server.port)
    bob.pump(lambda: bob.phase is Phase.CHAT)
    assert bob.dialog() is None
    alice.pump(lambda: "bob (127.0.0.1)" in alice.users())
    assert alice.users() == ["alice (127.0.0.1)  — you", "bob (127.0.0.1)"]
    assert bob.users() == ["bob (127.0.0.1)  — you", "alice (127.0.0.1)"]
    assert any(line.endswith("→ bob (127.0.0.1) joined") for line in alice.transcript_lines())
    assert "join" in alice.tags_of_line_with("→ bob")

    alice.say("hello bob")
    assert message_box.get() == ""  # sent, so the box is empty again
    bob.pump(has_line(bob, line_re("alice", "hello bob")))
    # her own line, marked as hers once the server has stored it
    alice.pump(
        lambda: "hello bob" in alice.transcript() and "own" in alice.tags_of_line_with("hello bob")
    )
    assert has_line(alice, line_re("alice", "hello bob"))()
    assert "chat" in bob.tags_of_line_with("hello bob")
    bob.say("hi alice")
    alice.pump(has_line(alice, line_re("bob", "hi alice")))

    # `quit` alone: bob leaves (once "hi alice" is stored) and is back at the connect view;
    # alice sees him go.
    bob.say("quit")
    bob.pump(lambda: bob.phase is Phase.CONNECT)
    assert bob.view() == "connect"
    assert "You left" in bob.notice()
    alice.pump(lambda: alice.users() == ["alice (127.0.0.1)  — you"])
    assert any(line.endswith("← bob (127.0.0.1) left") for line in alice.transcript_lines())
    assert "leave" in alice.tags_of_line_with("← bob")
    server.wait_online(1)
    bob.pump(lambda: not bob.app.controller.busy)  # bob's network thread ended


def test_changed_certificate_is_refused_unless_the_pin_is_replaced(
    server: ServerThread, gui: GuiFactory
) -> None:
    store = KnownServers()
    store.pin("127.0.0.1", server.port, OTHER_FP)
    alice = gui(nick="alice")
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.dialog() is not None)
    assert "has changed" in alice.w("trust.body.heading").cget("text")
    assert alice.w("trust.body.fingerprint").get() == server.fingerprint
    assert alice.w("trust.body.pinned").get() == OTHER_FP
    accept = alice.w("trust.buttons.accept")
    assert accept.instate(["disabled"])  # replacing needs the explicit tick first
    alice.press_enter(alice.w("trust"))  # Enter does not replace a pin
    settle([alice], 0.1)
    assert alice.dialog() is not None
    alice.click("trust.buttons.cancel")
    alice.pump(lambda: alice.phase is Phase.CONNECT)
    assert "has changed" in alice.notice()
    assert store.get("127.0.0.1", server.port) == OTHER_FP
    assert server.online() == []

    # Again, and this time the user ticks the box and replaces the pin.
    alice.click("connect.form.buttons.connect")
    alice.pump(lambda: alice.dialog() is not None)
    alice.click("trust.confirm")
    assert alice.w("trust.buttons.accept").instate(["!disabled"])
    alice.click("trust.buttons.accept")
    alice.pump(lambda: alice.phase is Phase.CHAT)
    assert store.get("127.0.0.1", server.port) == server.fingerprint
    server.wait_online(1)


def test_cancelling_first_contact_connects_nothing(server: ServerThread, gui: GuiFactory) -> None:
    alice = gui(nick="alice")
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.dialog() is not None)
    dialog = alice.w("trust")
    dialog.focus_force()
    dialog.update()
    dialog.event_generate("<Escape>")
    alice.pump(lambda: alice.phase is Phase.CONNECT)
    assert "you did not trust 127.0.0.1" in alice.notice()
    assert KnownServers().get("127.0.0.1", server.port) is None
    assert server.online() == []


def test_refused_connection_is_a_clear_message(gui: GuiFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens here once it is closed
    alice = gui(nick="alice")
    alice.connect("127.0.0.1", port)
    assert alice.w("connect.form.buttons.connect").instate(["disabled"])
    alice.pump(lambda: alice.phase is Phase.CONNECT)
    assert f"Could not connect to 127.0.0.1:{port}: connection refused" in alice.notice()
    assert alice.w("connect.form.buttons.connect").instate(["!disabled"])


def test_not_a_tls_server_is_a_clear_message(gui: GuiFactory) -> None:
    with socket.create_server(("127.0.0.1", 0)) as plain:
        port = plain.getsockname()[1]

        def answer_in_plain_text() -> None:
            conn, _ = plain.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        worker = threading.Thread(target=answer_in_plain_text)
        worker.start()
        alice = gui(nick="alice")
        alice.connect("127.0.0.1", port)
        alice.pump(lambda: alice.phase is Phase.CONNECT)
        worker.join(5)
    assert "TLS" in alice.notice()
    assert alice.notice().startswith(f"Could not connect to 127.0.0.1:{port}")


def test_full_server_is_a_clear_message(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(max_sessions=1)
    alice, bob = gui(nick="alice", accept_new=True), gui(nick="bob", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    bob.connect("127.0.0.1", server.port)
    bob.pump(lambda: bob.phase is Phase.CONNECT)
    assert "the server is full (1 connection)" in bob.notice()
    assert "server_full" in bob.notice()
    assert alice.phase is Phase.CHAT


def test_room_password_wrong_is_said_next_to_the_field_then_right_gets_in(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(password=ROOM)
    # As `chatsecure gui --password-file FILE` does: the field starts filled in (wrongly here).
    alice = gui(nick="alice", accept_new=True, password=ROOM.upper())
    field = alice.w("connect.form.password")
    assert field.get() == ROOM.upper()
    assert field.cget("show") == "•"  # masked on screen
    assert alice.w("connect.form.password_error").cget("text") == "(if the room has one)"
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.phase is not Phase.CONNECTING)
    assert alice.view() == "connect"
    error = alice.w("connect.form.password_error").cget("text")
    assert error == "Wrong password: check it and try again."
    assert "did not accept the password" in alice.notice()
    assert alice.root.focus_get() is field  # ready to be typed again
    assert server.online() == []

    alice.type("connect.form.password", ROOM)
    alice.press_enter(field)  # Enter in the field connects, as in the others
    alice.pump(lambda: alice.phase is Phase.CHAT)  # after the server's wait for a guesser
    assert alice.view() == "chat"
    assert server.online() == ["alice"]
    alice.say("quit")
    assert alice.w("connect.form.password_error").cget("text") == "(if the room has one)"


def test_server_restart_is_a_drop_the_window_comes_back_from(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server()
    port = server.port
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", port)
    server.stop()
    alice.pump(lambda: alice.phase is Phase.RECONNECTING)
    assert alice.view() == "chat"  # the transcript stays readable
    assert "The server is shutting down." in alice.transcript()
    banner = alice.w("chat.banner")
    assert "the server shut down" in banner.cget("text")
    # Nobody listens until the server is back: the next attempt fails, and the banner, not
    # the transcript, says so.
    alice.pump(lambda: "attempt 2 of" in banner.cget("text"), timeout=10)
    assert banner.winfo_ismapped()
    assert banner.cget("text").startswith("Connection lost (the server shut down); last try:")
    assert "Reconnecting in 2 s, attempt 2 of 20…" in banner.cget("text")
    assert alice.transcript().count("Connection lost") == 1
    assert "Reconnecting" not in alice.transcript()
    start_server(port=port)
    alice.pump(lambda: alice.phase is Phase.CHAT, timeout=10)
    assert "Reconnected to 'test'" in alice.transcript()
    alice.click("chat.top.leave")
    assert alice.view() == "connect"


def test_a_chat_that_ended_greys_its_message_box(server: ServerThread, gui: GuiFactory) -> None:
    with Proxy((server.host, server.port)) as proxy:
        alice = gui(nick="alice", accept_new=True, reconnect=False)
        connect_trusting(alice, "127.0.0.1", proxy.port)
        message, style = alice.w("chat.bottom.message"), ttk.Style(alice.root)

        def drawn(option: str) -> str:
            return str(style.lookup(message.winfo_class(), option, message.state()))

        assert drawn("fieldbackground") != PALETTE["window"]
        proxy.drop()
        alice.pump(lambda: alice.phase is Phase.ENDED)
        assert alice.w("chat.top.leave").cget("text") == "Back"
        assert message.instate(["disabled"])
        assert drawn("fieldbackground") == PALETTE["window"]  # greyed, as the window
        assert drawn("foreground") == PALETTE["muted"]
        alice.click("chat.top.leave")
        assert alice.view() == "connect"


def test_stored_lines_are_greyed_on_join_and_older_ones_load_when_scrolling_up(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    # More replayed lines than the window shows: none older loads until the user scrolls up.
    # (A replay that does not fill the view loads older lines at once.)
    server = start_server(replay=60, msg_rate=0)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        for n in range(1, 201):
            bob.send({"type": "msg", "text": f"old {n}", "ref": f"r{n}"})
            bob.expect("ack")
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    alice.pump(lambda: "old 200" in alice.transcript())
    assert "Earlier in this room:" in alice.transcript()
    assert "history" in alice.tags_of_line_with("old 141")
    settle([alice], 0.3)
    assert "old 140" not in alice.transcript()
    text = alice.w("chat.body.log.transcript")

    def olds() -> list[int]:
        return [
            int(line.rsplit(" ", 1)[1]) for line in alice.transcript_lines() if ": old " in line
        ]

    def scrolled_up_to_the_first() -> bool:
        text.yview_moveto(0.0)  # the user scrolls to the top (a page of 100 loads each time)
        return olds()[:1] == [1]

    alice.pump(scrolled_up_to_the_first, timeout=10)
    assert olds() == list(range(1, 201)), "older lines go on top, in order, each once"


def test_missed_lines_the_replay_left_out_load_into_their_place_when_scrolled_to(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(replay_max=40, msg_rate=0)
    with bob_and_alice_through_a_proxy(server, gui) as (bob, alice, proxy):
        for n in range(1, 4):
            say_stored(bob, f"before {n}", f"b{n}")
        alice.pump(lambda: "before 3" in alice.transcript())
        missed_by(alice, proxy, bob, [f"away {n}" for n in range(1, 151)])

        def aways() -> list[int]:
            lines = alice.transcript_lines()
            return [int(line.rsplit(" ", 1)[1]) for line in lines if ": away " in line]

        assert "150 missed messages restored. The oldest 110 load as you scroll up to them." in (
            alice.transcript()
        )
        marker = "⋯ 110 earlier missed messages: they load as you scroll here ⋯"
        assert marker in alice.transcript_lines()
        assert aways() == list(range(111, 151))  # the replay; the marker is off screen
        text = alice.w("chat.body.log.transcript")
        text.see(text.search(marker, "1.0", "end"))  # the user scrolls up to it
        settle([alice], 0.1)
        reading = text.search("away 111", "1.0", "end")
        row = text.dlineinfo(reading)[1]
        alice.pump(lambda: 11 in aways(), timeout=10)  # the first page: 11 to 110
        settle([alice], 0.1)
        # What the user was reading stayed in its place; the page went above it, off screen.
        assert text.dlineinfo(text.search("away 111", "1.0", "end"))[1] == row
        assert 10 not in aways(), "the next page waits until the user scrolls up to it"

        def scrolled_up_to_the_gap() -> bool:
            at = text.search("earlier missed", "1.0", "end")
            if at:
                text.see(at)
            return not at

        alice.pump(scrolled_up_to_the_gap, timeout=10)
        assert aways() == list(range(1, 151)), "each missed line once, in its place"
        lines = alice.transcript_lines()
        first = next(i for i, line in enumerate(lines) if ": away 1" in line)
        between = [line.split("] ", 1)[1] for line in lines[first - 5 : first]]
        expected = [
            "bob (127.0.0.1): before 3",
            "Connection lost",
            "Reconnected to 'test'",
            "Here: bob",
            "150 missed messages restored. The oldest 110 load as you scroll up to them.",
        ]
        assert all(map(str.startswith, between, expected)), between
        assert "history" in alice.tags_of_line_with("away 1")


def test_a_return_with_more_missed_lines_than_fit_opens_where_the_user_left(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(msg_rate=0)
    with bob_and_alice_through_a_proxy(server, gui) as (bob, alice, proxy):
        text, below = alice.w("chat.body.log.transcript"), alice.w("chat.body.log.below")
        missed_by(alice, proxy, bob, ["short 1", "short 2"])
        settle([alice], 0.1)
        assert text.yview()[1] >= 0.999, "a few missed lines: the view follows the newest"
        assert not below.winfo_ismapped()

        missed_by(alice, proxy, bob, [f"away {n}" for n in range(1, 101)])
        settle([alice], 0.2)
        divider = text.search("100 missed messages restored.", "1.0", "end")
        assert "new since you left" in text.get(divider, f"{divider} lineend")

        def top_line() -> str:
            return text.index("@0,0").split(".")[0]

        assert top_line() == divider.split(".")[0], "the divider at the top of the view"
        assert text.dlineinfo(text.search(": away 1\n", "1.0", "end", regexp=True))
        assert text.dlineinfo(text.search("away 100", "1.0", "end")) is None

        def below_the_view(prefix: str, count: int) -> int:
            """Lines ``prefix 1`` ... that start below the bottom line in view."""
            bottom = int(text.index(f"@0,{text.winfo_height()}").split(".")[0])
            starts = [
                text.search(f": {prefix} {n}\n", "1.0", "end", regexp=True)
                for n in range(1, count + 1)
            ]
            return sum(int(at.split(".")[0]) > bottom for at in starts)

        assert below.winfo_ismapped()
        told = int(below.cget("text").split()[1])
        # (Counted once the "Reconnecting" banner went, and the chat grew by its height.)
        assert told == below_the_view("away", 100) > 0
        say_stored(bob, "said now", "now-1")  # a live line: below, and counted
        alice.pump(lambda: f"{told + 1} new messages" in below.cget("text"))
        assert top_line() == divider.split(".")[0], "the view stays where the user reads"
        below.invoke()
        alice.pump(lambda: not below.winfo_ismapped())
        assert text.yview()[1] >= 0.999
        say_stored(bob, "and now", "now-2")  # following the newest again
        alice.pump(lambda: "and now" in alice.transcript())
        settle([alice], 0.1)
        assert text.yview()[1] >= 0.999
        assert not below.winfo_ismapped()

        # Back a day later (as the window shows a connection from the form, resized while
        # the form was shown): the same.
        alice.click("chat.top.leave")
        alice.pump(lambda: alice.view() == "connect")
        alice.root.geometry("700x460")
        settle([alice], 0.2)
        for n in range(1, 61):
            say_stored(bob, f"later {n}", f"later-{n}")
        connect_trusting(alice, "127.0.0.1", proxy.port)
        alice.pump(lambda: "later 60" in alice.transcript())
        settle([alice], 0.2)
        divider = text.search("60 messages while you were away.", "1.0", "end")
        assert top_line() == divider.split(".")[0]
        assert below.winfo_ismapped()
        assert int(below.cget("text").split()[1]) == below_the_view("later", 60) > 0


def test_dropped_connection_reconnects_with_backoff_and_says_so(
    server: ServerThread, gui: GuiFactory
) -> None:
    with Proxy((server.host, server.port)) as proxy:
        alice = cut_off(gui, proxy)
        banner = alice.w("chat.banner").cget("text")
        assert "Reconnecting in 1 s, attempt 1 of" in banner
        assert "Reconnecting" in alice.status()
        # Who was there, not who is: greyed until the room says again.
        title, users = alice.w("chat.body.side.title"), alice.w("chat.body.side.users")
        assert title.cget("text") == "Last seen here (1)"
        assert users.itemcget(0, "foreground") == PALETTE["muted"]
        alice.say("while away")  # pending, and sent after the reconnect
        assert alice.w("chat.bottom.message").get() == ""
        alice.pump(lambda: "while away" in alice.transcript())
        assert "pending" in alice.tags_of_line_with("while away")
        alice.pump(lambda: alice.phase is Phase.CHAT, timeout=5)
        assert "Reconnected to 'test'" in alice.transcript()
        assert title.cget("text") == "In this room (1)"
        assert users.itemcget(0, "foreground") == PALETTE["accent_dark"]
        alice.pump(lambda: "own" in alice.tags_of_line_with("while away"))
        assert alice.transcript().count("while away") == 1
        assert not alice.w("chat.banner").winfo_ismapped()
        assert proxy.accepted == 2
        server.wait_online(1)

        # A second drop soon after: that session worked (it stored "while away"), so the
        # count starts afresh; leaving meanwhile ends it at once.
        proxy.drop()
        alice.pump(lambda: alice.phase is Phase.RECONNECTING)
        assert "Reconnecting in 1 s, attempt 1 of" in alice.w("chat.banner").cget("text")
        started = time.monotonic()
        alice.click("chat.top.leave")
        assert alice.view() == "connect"
        alice.pump(lambda: not alice.app.controller.busy)
        assert time.monotonic() - started < 0.5
        assert proxy.accepted == 2


def test_line_sent_as_the_connection_dropped_is_sent_after_the_reconnect(
    server: ServerThread, gui: GuiFactory
) -> None:
    with Proxy((server.host, server.port)) as proxy:
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", proxy.port)
        client = alice.app.controller.client
        assert client is not None
        proxy.drop()
        deadline = time.monotonic() + 5
        while not any(isinstance(e, Reconnecting) for e in list(client.events.queue)):
            assert time.monotonic() < deadline, "the client did not notice the drop"
            time.sleep(0.005)
        alice.type("chat.bottom.message", "into the void")
        alice.click("chat.bottom.send")
        alice.pump(lambda: "into the void" in alice.transcript())
        assert "pending" in alice.tags_of_line_with("into the void")
        alice.pump(lambda: "own" in alice.tags_of_line_with("into the void"), timeout=10)
        assert "Not sent" not in alice.transcript()
        with RawClient(server.host, server.port) as bob:
            bob.join("bob")
            assert [m["text"] for m in bob.replayed] == ["into the void"]


def test_text_that_cannot_be_sent_is_explained_and_kept_in_the_box(
    server: ServerThread, gui: GuiFactory
) -> None:
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        bob.expect("join")
        alice.say("caf\udcff")  # a lone surrogate: Tk holds it, UTF-8 cannot carry it
        assert alice.w("chat.bottom.message").get() == "caf\udcff"
        assert "error" in alice.tags_of_line_with("Message not sent")
        assert bob.silent(0.2)
        alice.say("fine")
        assert bob.expect("msg")["text"] == "fine"


def test_typed_keys_go_to_the_message_box_after_connecting(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice = gui(nick="alice", accept_new=True)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        connect_trusting(alice, "127.0.0.1", server.port)
        bob.expect("join")
        # What a window manager does when the window is activated: Tk gives the keyboard to
        # the widget that last had the focus in that window, which must be the message box.
        alice.root.focus_lastfor().focus_force()
        for keys in (["type", "--delay", "2", "typed for real"], ["key", "Return"]):
            typing = subprocess.Popen(["xdotool", *keys])
            alice.pump(lambda: typing.poll() is not None)  # noqa: B023 - used at once
            assert typing.returncode == 0
        alice.pump(lambda: not bob.silent(0.01))
        frame = bob.expect("msg")
        assert frame["text"] == "typed for real"
        assert frame["from"]["nick"] == "alice"


def test_closing_the_window_quits_cleanly(server: ServerThread, gui: GuiFactory) -> None:
    alice, bob = gui(nick="alice", accept_new=True), gui(nick="bob", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    connect_trusting(bob, "127.0.0.1", server.port)
    bob.close_window()
    assert not bob.root.children  # the window is gone
    assert not bob.app.controller.busy  # and so is its network thread
    alice.pump(lambda: any("← bob" in line for line in alice.transcript_lines()))
    leave = next(line for line in alice.transcript_lines() if "← bob" in line)
    assert leave.endswith("left")  # a quit, not a dropped connection
    server.wait_online(1)


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancel_or_close_while_connecting_never_enters_the_room(
    server: ServerThread, gui: GuiFactory, how: str
) -> None:
    # The proxy holds the connection: alice is still connecting when she cancels.
    with (
        RawClient(server.host, server.port) as bob,
        Proxy((server.host, server.port), hold=True) as proxy,
    ):
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        alice.connect("127.0.0.1", proxy.port)
        alice.pump(lambda: proxy.accepted or proxy.waiting)
        assert alice.phase is Phase.CONNECTING
        started = time.monotonic()
        if how == "cancel":
            alice.click("connect.form.buttons.cancel")
            assert alice.view() == "connect"
            assert "Connection cancelled." in alice.notice()
            alice.pump(lambda: not alice.app.controller.busy)
        else:
            alice.close_window()
            assert not alice.app.controller.busy
        assert time.monotonic() - started < 1
        proxy.release()  # what alice had sent so far reaches the server now
        assert bob.silent(0.5), "bob saw alice come and go"
    assert server.online() == []


def test_nickname_is_remembered_between_runs(server: ServerThread, gui: GuiFactory) -> None:
    first = gui(accept_new=True)
    first.type("connect.form.nick", "zoe")
    connect_trusting(first, "127.0.0.1", server.port)
    first.say("quit")
    second = gui()
    assert second.w("connect.form.nick").get() == "zoe"


def test_taken_nick_is_explained(server: ServerThread, gui: GuiFactory) -> None:
    with RawClient(server.host, server.port) as other:
        other.join("alice")
        say_stored(other, "said before", "b1")  # replayed: the notice's line scrolls up
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        taken = "The nick 'alice' was taken; you are 'alice_2'."
        assert taken in alice.transcript()
        assert "you are alice_2" in alice.status()
        banner = alice.w("chat.banner")
        alice.pump(lambda: banner.winfo_ismapped() and banner.cget("text") == taken)
        alice.say("hello")  # seen: the banner goes
        alice.pump(lambda: not banner.winfo_ismapped())


def test_server_name_cannot_fake_a_line_in_the_window(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(name="lab\n[12:00:00] admin: fake\u202e")
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    shown = [
        alice.root.title(),
        alice.status(),
        alice.w("chat.top.room").cget("text"),
        *alice.transcript_lines(),
    ]
    for text in shown:
        assert "\n" not in text, text
        assert "\u202e" not in text, text
    assert "lab\\n[12:00:00] admin: fake\\u202e" in alice.status()
    assert alice.w("chat.top.room").cget("text") == "lab\\n[12:00:00] admin: fake\\u202e"


def test_command_line_host_fills_the_form_and_connects_at_once(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice = gui(target=f"127.0.0.1:{server.port}", nick="alice", accept_new=True)
    alice.pump(lambda: alice.phase is Phase.CHAT)
    assert alice.w("connect.form.host").get() == "127.0.0.1"
    assert alice.w("connect.form.port").get() == str(server.port)
    server.wait_online(1)


@pytest.mark.parametrize("how", ["window closed", "SIGTERM", "SIGHUP"])
def test_chatsecure_gui_runs_as_a_program(server: ServerThread, display: str, how: str) -> None:
    """`chatsecure gui HOST:PORT` in its own process joins at once and leaves cleanly."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatsecure",
            "gui",
            f"127.0.0.1:{server.port}",
            "--nick",
            "carol",
            "--no-discovery",
            "--fingerprint",
            server.fingerprint,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_online(1, timeout=15)
        assert server.online() == ["carol"]
        if how.startswith("SIG"):
            proc.send_signal(getattr(signal, how))
        else:
            found = subprocess.run(
                ["xdotool", "search", "--sync", "--name", "^carol @ test"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            close_window(display, int(found.stdout.split()[0]))  # as a close button does
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    server.wait_online(0)


def test_chatsecure_gui_takes_a_password_file_and_a_client_certificate(
    start_server: Callable[..., ServerThread], display: str, tmp_path: Path
) -> None:
    """`--password-file` fills the Password field; `--cert/--key` are presented to the server."""
    ca = tmp_path / "client-ca"
    mine = certs.generate_client("dora", ca)
    password_file = tmp_path / "room-password"
    password_file.write_text(ROOM + "\n", encoding="utf-8")
    server = start_server(password=ROOM, client_ca=ca / "ca.crt")
    where = f"127.0.0.1:{server.port}"
    trust = ["--no-discovery", "--fingerprint", server.fingerprint]
    access = ["--password-file", str(password_file), "--cert", str(mine.cert)]
    access += ["--key", str(mine.key)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsecure", "gui", where, "--nick", "carol", *trust, *access],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_online(1, timeout=15)
        assert server.online() == ["dora"]  # the certificate's name: mutual TLS worked
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    server.wait_online(0)


@pytest.mark.parametrize("args", [["gui", "--no-discovery"], []], ids=["gui", "no command"])
def test_no_display_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    """Without a display (DISPLAY unset) the window cannot open: a sentence, not a traceback.

    Plain `chatsecure` is the GUI: it fails the same way (before discovery could start).
    """
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHATSECURE_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "chatsecure", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot open a window" in result.stderr
    assert "Traceback" not in result.stderr


def own_and_pending_in_order(client: Gui) -> list[str]:
    """The kinds of alice's own lines, top to bottom, as the transcript shows them."""
    text = client.w("chat.body.log.transcript")
    kinds = []
    for row in range(1, int(text.index("end-1c").split(".")[0]) + 1):
        tags = set(text.tag_names(f"{row}.0"))
        kinds += [kind for kind in ("own", "pending") if kind in tags]
    return kinds


def test_own_lines_stored_stay_above_those_still_pending(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(msg_rate=5, msg_burst=2)  # the client paces its lines to this
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    for n in range(8):
        alice.say(f"wave {n}")
    orders = []

    def stored() -> bool:
        kinds = own_and_pending_in_order(alice)
        orders.append(kinds)
        return kinds == ["own"] * 8

    alice.pump(stored, timeout=10)
    mixed = [k for k in orders if "own" in k and "pending" in k]
    assert mixed, "never caught with some stored and some pending"
    for kinds in orders:  # at every moment: stored lines first, then those still pending
        assert kinds == sorted(kinds, key=lambda kind: kind == "pending"), kinds
    assert [line.split(": ", 1)[1] for line in alice.transcript_lines() if "wave" in line] == [
        f"wave {n}" for n in range(8)
    ]


def test_a_line_the_server_refuses_is_not_left_pending_and_comes_back_to_edit(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(max_text=300)
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    long = "z" * 1000
    alice.say(long)
    alice.pump(lambda: "text_too_long" in alice.transcript())
    assert "error" in alice.tags_of_line_with("text_too_long")
    assert long not in alice.transcript()  # no pending copy left behind, and in the notice
    [notice] = [line for line in alice.transcript_lines() if "text_too_long" in line]
    assert notice.endswith("z" * 200 + "… (all 1000 characters are back in the message box)")
    assert alice.w("chat.bottom.message").get() == long  # back in the box, to shorten
    alice.type("chat.bottom.message", "short")
    alice.click("chat.bottom.send")
    alice.pump(lambda: "short" in alice.transcript())
    alice.pump(lambda: "own" in alice.tags_of_line_with("short"))


def test_enter_on_the_focused_connect_button_connects(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice = gui(nick="alice", accept_new=True)
    alice.type("connect.form.host", "127.0.0.1")
    alice.type("connect.form.port", str(server.port))
    alice.press_enter(alice.w("connect.form.buttons.connect"))
    alice.pump(lambda: alice.dialog() is not None or alice.phase is Phase.CHAT)


def test_a_first_start_puts_the_focus_in_the_empty_host_field(gui: GuiFactory) -> None:
    alice = gui()
    host = alice.w("connect.form.host")
    alice.pump(lambda: alice.root.focus_get() is host)  # typing goes where it is wanted
    alice.type("connect.form.host", "127.0.0.1")
    alice.type("connect.form.nick", "alice")
    alice.app._switch("connect")  # (as when the user leaves: all filled in, Connect)
    alice.pump(lambda: alice.root.focus_get() is alice.w("connect.form.buttons.connect"))


def test_page_keys_in_the_message_box_scroll_the_chat(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(msg_rate=0)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        for n in range(80):
            bob.send({"type": "msg", "text": f"filler {n} " + "word " * 30})
        alice.pump(lambda: "filler 79" in alice.transcript())
    text, box = alice.w("chat.body.log.transcript"), alice.w("chat.bottom.message")
    alice.pump(lambda: text.yview()[1] >= 0.999)
    box.focus_force()
    alice.pump(lambda: alice.root.focus_get() is box)
    for key, moved in [
        ("Prior", lambda: text.yview()[1] < 0.999),
        ("Next", lambda: text.yview()[1] >= 0.999),
        ("Control-Home", lambda: text.yview()[0] <= 0.0),
        ("Control-End", lambda: text.yview()[1] >= 0.999),
    ]:
        box.event_generate(f"<{key}>")
        alice.pump(moved)
    assert alice.root.focus_get() is box, "typing goes on where it was"


def test_a_long_room_name_is_cut_and_leave_stays_whole(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(name="chat on " + "build-server-07.physics.example.org" * 2)
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)
    alice.root.geometry("660x440")
    for _ in range(3):
        alice.root.update()
    leave, window = alice.w("chat.top.leave"), alice.root
    assert leave.winfo_width() >= leave.winfo_reqwidth()
    right = leave.winfo_rootx() + leave.winfo_width()
    assert right <= window.winfo_rootx() + window.winfo_width()


def test_the_transcript_follows_new_lines_when_the_banner_or_a_resize_shrinks_it(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(msg_rate=0)
    with Proxy((server.host, server.port)) as proxy, RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", proxy.port)
        text = alice.w("chat.body.log.transcript")

        def shown(needle: str) -> bool:
            """Whether the line with ``needle`` is in view (Tk's fractions are estimates)."""
            index = text.search(needle, "1.0")
            return bool(index) and text.dlineinfo(index) is not None

        for n in range(60):  # more than a screen, in long lines that wrap
            bob.send({"type": "msg", "text": f"filler {n} " + "word " * 60})
        alice.pump(lambda: shown("filler 59"))

        alice.root.geometry("660x440")  # smaller: lines are cut at the bottom, and rewrapped
        bob.send({"type": "msg", "text": "after the resize"})
        alice.pump(lambda: "after the resize" in alice.transcript())
        settle([alice], 0.3)
        assert shown("after the resize"), text.yview()

        proxy.drop()  # the banner takes room from the transcript
        alice.pump(lambda: alice.w("chat.banner").winfo_ismapped())
        settle([alice], 0.3)
        alice.pump(lambda: alice.phase is Phase.CHAT, timeout=5)  # back: the banner goes
        bob.send({"type": "msg", "text": "after the banner"})
        alice.pump(lambda: "after the banner" in alice.transcript())
        settle([alice], 0.3)
        assert shown("after the banner"), text.yview()


def test_closing_the_window_with_lines_not_stored_waits_for_them_unless_asked_again(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    words = [f"last words {n}" for n in range(6)]
    server, alice = typed_in_a_paced_room(start_server, gui, words, rate=4)
    alice.close_window()
    assert alice.root.winfo_exists()  # still open: lines are on their way
    assert "not stored yet" in alice.w("chat.banner").cget("text")
    alice.pump(lambda: not alice.root.children, timeout=10)  # closed once they are stored
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        assert [m["text"] for m in bob.replayed] == words

    carol = gui(nick="carol", accept_new=True)
    connect_trusting(carol, "127.0.0.1", server.port)
    for n in range(6):
        carol.say(f"in a hurry {n}")
    carol.close_window()
    carol.close_window()  # asked again: at once, without them
    assert not carol.root.children


def test_leaving_with_lines_waiting_for_the_connection_says_so_before_dropping_them(
    server: ServerThread, gui: GuiFactory
) -> None:
    with Proxy((server.host, server.port)) as proxy:
        alice = cut_off(gui, proxy)
        alice.say("stuck one")
        alice.say("stuck two")
        alice.click("chat.top.leave")
        assert alice.view() == "chat"
        banner = alice.w("chat.banner").cget("text")
        assert "2 lines not stored yet" in banner
        assert "Leave again to do it now: the room may then never get them." in banner
        alice.click("chat.top.leave")  # again: leave without them
        assert alice.view() == "connect"
        notice = alice.w("connect.notice").cget("text")
        assert "before your last 2 lines were stored" in notice
        assert notice.endswith(" (“stuck one”, “stuck two”)."), "said again, if need be"
        # They are not waited for in the next connection: one Leave leaves.
        connect_trusting(alice, "127.0.0.1", server.port)
        alice.click("chat.top.leave")
        assert alice.view() == "connect"


def test_lines_left_behind_by_leave_again_are_not_waited_for_in_the_next_connection(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server, alice = typed_in_a_paced_room(start_server, gui, [f"hurried {n}" for n in range(6)], 1)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice.click("chat.top.leave")
        alice.click("chat.top.leave")  # again: at once, without them
        assert alice.view() == "connect"
        assert "before your last" in alice.w("connect.notice").cget("text")
        heard = []
        end = time.monotonic() + 2.5  # the pace would have let two more out meanwhile
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                if (frame := bob.recv(0.2))["type"] == "msg":
                    heard.append(frame["text"])
        assert len(heard) <= 1, f"lines went out after leaving: {heard}"
    connect_trusting(alice, "127.0.0.1", server.port)
    alice.click("chat.top.leave")  # nothing of this connection waits
    assert alice.view() == "connect"
    assert alice.w("connect.notice").cget("text") == "You left 'test'."


def test_closing_while_leave_waits_waits_too_and_the_banner_counts_down(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    _, alice = typed_in_a_paced_room(start_server, gui, [f"slowly {n}" for n in range(4)], rate=2)
    alice.click("chat.top.leave")
    banner = alice.w("chat.banner")
    assert "window leaves once" in banner.cget("text")
    alice.close_window()  # not the same request: this one waits too, in place of Leave
    assert alice.root.winfo_exists()
    assert "window closes once" in banner.cget("text")
    counts = {banner.cget("text").split(" ")[0]}
    alice.pump(lambda: counts.add(banner.cget("text").split(" ")[0]) or len(counts) > 1)
    alice.close_window()  # asked again: at once
    assert not alice.root.children


def test_quit_typed_with_lines_not_stored_waits_for_them_as_leave_does(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    words = [f"before quit {n}" for n in range(4)]
    server, alice = typed_in_a_paced_room(start_server, gui, words, rate=4)
    alice.say("quit")
    assert alice.view() == "chat"
    assert "not stored yet" in alice.w("chat.banner").cget("text")
    alice.pump(lambda: alice.view() == "connect", timeout=10)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        assert [m["text"] for m in bob.replayed] == words


def test_the_last_server_is_remembered_between_runs(server: ServerThread, gui: GuiFactory) -> None:
    first = gui(nick="zoe", accept_new=True)
    connect_trusting(first, "127.0.0.1", server.port)
    first.say("quit")
    second = gui()
    assert second.w("connect.form.host").get() == "127.0.0.1"
    assert second.w("connect.form.port").get() == str(server.port)


def test_up_and_down_bring_back_lines_typed_and_blank_edges_of_a_paste_are_dropped(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    with bob_and_alice_unpaced(start_server, gui) as (bob, alice):
        alice.say("first")
        alice.say("\nsecond\n  \n")  # a paste with blank lines around it
        assert [bob.expect("msg")["text"] for _ in range(2)] == ["first", "second"]
        box = alice.w("chat.bottom.message")
        box.focus_force()
        box.update()
        box.event_generate("<Up>")
        assert box.get() == "\nsecond\n  \n"  # as typed, to edit
        box.event_generate("<Up>")
        assert box.get() == "first"
        box.event_generate("<Up>")
        assert box.get() == "first"  # the oldest stays
        box.event_generate("<Down>")
        box.event_generate("<Down>")
        assert box.get() == ""  # back below the newest
        box.insert(0, "a draft")
        box.event_generate("<Up>")
        assert box.get() == "\nsecond\n  \n"
        box.event_generate("<Down>")
        assert box.get() == "a draft"  # what was being typed is not lost
        box.delete(0, "end")

        # A key typed after a click in the transcript goes to the message box.
        text = alice.w("chat.body.log.transcript")
        text.focus_force()
        text.update()
        text.event_generate("<KeyPress>", keysym="h")
        text.event_generate("<KeyPress>", keysym="i")
        alice.root.update()
        assert box.get() == "hi"
        assert alice.root.focus_get() is box


def test_a_missed_line_shown_already_is_not_loaded_into_its_gap_again(gui: GuiFactory) -> None:
    # An own line stored as the connection broke, its ack lost: sent again after the return
    # and acknowledged as stored (seq 11), it is shown at once; the gap's page has it too.
    alice = gui(nick="alice")
    gap = Line("gap", "", "⋯ 3 earlier missed messages: they load as you scroll here ⋯", gap=7)
    own = Line("own", "12:00:00", "mine", "alice", "127.0.0.1", ref="r1", seq=11)
    alice.app._append([gap, own], [False, False])
    page = [
        Line("history", "12:00:00", f"m{n}", "bob", "127.0.0.1", gap=7, seq=n) for n in (10, 11)
    ]
    alice.app._append(page, [False, False])
    said = [line.split(": ", 1)[1] for line in alice.transcript_lines() if "(127.0.0.1): " in line]
    assert said == ["m10", "mine"]


def test_lines_that_come_while_the_user_reads_back_are_said_to_be_below(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    with bob_and_alice_unpaced(start_server, gui) as (bob, alice):
        for n in range(60):
            say_stored(bob, f"line {n}", f"l{n}")
        alice.pump(lambda: "line 59" in alice.transcript())
        text, below = alice.w("chat.body.log.transcript"), alice.w("chat.body.log.below")
        assert not below.winfo_ismapped()
        text.yview_moveto(0.3)  # the user reads back
        alice.root.update()
        say_stored(bob, "while you read", "w1")
        say_stored(bob, "and again", "w2")
        alice.pump(lambda: below.winfo_ismapped() and "2 new messages" in below.cget("text"))
        assert text.yview()[1] < 0.999  # the view stays where the user reads
        below.invoke()
        alice.pump(lambda: not below.winfo_ismapped())
        assert text.yview()[1] >= 0.999


def test_a_line_said_as_a_page_of_older_lines_comes_keeps_the_reader_in_place(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice = gui(nick="alice", accept_new=True)
    connect_trusting(alice, "127.0.0.1", server.port)

    def history(n: int, *, older: bool = False) -> Line:
        return Line("history", "12:00:00", f"line {n}", "bob", "127.0.0.1", seq=n, older=older)

    alice.app._append([history(n) for n in range(100, 200)], [False] * 100)
    text = alice.w("chat.body.log.transcript")
    text.yview_moveto(0.0)  # the user scrolled to the top: a page was asked for
    alice.root.update()
    top = text.get("@0,0 linestart", "@0,0 lineend")
    # One poll brings the page asked for, and a line someone said meanwhile.
    said = Line("chat", "12:00:01", "just said", "bob", "127.0.0.1", seq=200)
    alice.app._append([*(history(n, older=True) for n in range(50, 100)), said], [False] * 51)
    alice.root.update()
    assert text.get("@0,0 linestart", "@0,0 lineend") == top  # the page went above it
    assert "1 new message" in alice.w("chat.body.log.below").cget("text")
