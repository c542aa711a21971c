"""A window without the focus still says that something happened: the unread count in its
title, the highlighted line that names the user, and the urgency hint in ``WM_HINTS``."""

from __future__ import annotations

import re
import subprocess

import pytest

from chatsecure.client.state import Phase
from chatsecure.testing import RawClient, ServerThread

from .conftest import Gui, GuiFactory
from .test_app import bob_and_alice_through_a_proxy, missed_by

pytestmark = pytest.mark.gui


def wrapper_of(client: Gui) -> str:
    """The X window the window manager sees: Tk's wrapper, the parent of the toplevel."""
    tree = run("xwininfo", "-tree", "-id", hex(client.root.winfo_id()))
    found = re.search(r"Parent window id: (0x[0-9a-f]+)", tree)
    assert found, tree
    return found.group(1)


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout


def urgent(client: Gui) -> bool:
    """Whether the window's WM_HINTS has the urgency bit, as xprop reads it."""
    hints = run("xprop", "-id", wrapper_of(client), "WM_HINTS")
    assert "WM_HINTS(WM_HINTS)" in hints  # Tk sets them when the window is first shown
    return "The urgency hint bit is set" in hints


def title(client: Gui) -> str:
    return str(client.root.title())


def focus_elsewhere(gui: GuiFactory) -> Gui:
    """Another window takes the keyboard focus, as when the user works in another program."""
    other = gui(nick="other")
    other.root.focus_force()
    other.pump(lambda: other.root.focus_get() is not None)
    return other


def test_unread_count_and_urgency_while_the_window_has_no_focus(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice = gui(nick="alice", accept_new=True)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice.connect("127.0.0.1", server.port)
        alice.pump(lambda: alice.phase is Phase.CHAT)
        bob.expect("join")
        alice.w("chat.bottom.message").focus_force()
        alice.pump(lambda: alice.root.focus_get() is not None)
        base = "alice @ test — chatsecure"
        assert title(alice) == base

        bob.send({"type": "msg", "text": "while you look"})
        alice.pump(lambda: "while you look" in alice.transcript())
        assert title(alice) == base  # seen: the window has the focus
        assert not urgent(alice)

        other = focus_elsewhere(gui)
        alice.pump(lambda: alice.root.focus_get() is None)
        bob.send({"type": "msg", "text": "one"})
        bob.send({"type": "msg", "text": "two"})
        alice.pump(lambda: title(alice).startswith("(2) "))
        assert title(alice) == f"(2) {base}"
        assert not urgent(alice)  # only a mention asks for attention

        bob.send({"type": "msg", "text": "Alice: look at this"})
        alice.pump(lambda: title(alice).startswith("(3) "))
        assert urgent(alice)
        assert "mention" in alice.tags_of_line_with("Alice: look at this")
        assert "mention" not in alice.tags_of_line_with("one")

        alice.root.focus_force()  # what a window manager does when the user comes back
        alice.pump(lambda: title(alice) == base)
        assert not urgent(alice)
        assert other.root.focus_get() is None


def test_a_mention_is_highlighted_in_a_focused_window_without_urgency(
    server: ServerThread, gui: GuiFactory
) -> None:
    alice = gui(nick="alice", accept_new=True)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice.connect("127.0.0.1", server.port)
        alice.pump(lambda: alice.phase is Phase.CHAT)
        bob.expect("join")
        alice.w("chat.bottom.message").focus_force()
        alice.pump(lambda: alice.root.focus_get() is not None)
        bob.send({"type": "msg", "text": "hey ALICE"})
        bob.send({"type": "msg", "text": "malice aforethought"})
        alice.pump(lambda: "aforethought" in alice.transcript())
        assert "mention" in alice.tags_of_line_with("hey ALICE")
        assert "mention" not in alice.tags_of_line_with("aforethought")
        assert not urgent(alice)
        assert not title(alice).startswith("(")


def test_a_line_that_named_the_user_while_away_is_highlighted_on_return(
    server: ServerThread, gui: GuiFactory
) -> None:
    with bob_and_alice_through_a_proxy(server, gui) as (bob, alice, proxy):
        missed_by(alice, proxy, bob, ["alice, are you there?", "never mind"])
        assert "mention" in alice.tags_of_line_with("alice, are you there?")
        assert "mention" not in alice.tags_of_line_with("never mind")
