"""Typing in the connect form and the message box, with real key events from the X server."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from chatsecure.client.state import Phase
from chatsecure.testing import ServerThread

from .conftest import Gui, GuiFactory

pytestmark = pytest.mark.gui

ROOM = "open sesame"
OPTIONAL = "(if the room has one)"


def xdotool(client: Gui, *args: str) -> None:
    """Keys typed for real: xdotool sends them through the X server to the focused window."""
    typing = subprocess.Popen(["xdotool", *args])
    client.pump(lambda: typing.poll() is not None)
    assert typing.returncode == 0
    client.root.update()


def focus(client: Gui, widget: Any) -> None:
    widget.focus_force()
    client.pump(lambda: client.root.focus_get() is widget)


def test_a_wrong_password_is_no_longer_blamed_once_the_password_is_edited(
    start_server: Callable[..., ServerThread], gui: GuiFactory
) -> None:
    server = start_server(password=ROOM)
    alice = gui(nick="alice", accept_new=True, password="guess")
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.phase is not Phase.CONNECTING)
    field = alice.w("connect.form.password")
    error = alice.w("connect.form.password_error")
    assert error.cget("text") == "Wrong password: check it and try again."
    assert "did not accept the password" in alice.notice()
    focus(alice, field)
    xdotool(alice, "type", "--delay", "2", "o")
    assert field.get() == "o"  # the old one was selected, so typing replaced it
    assert error.cget("text") == OPTIONAL
    assert alice.notice() == ""


def test_editing_one_field_clears_only_its_own_error(gui: GuiFactory) -> None:
    alice = gui(nick="alice")
    alice.type("connect.form.host", "bad host!")
    alice.type("connect.form.port", "99999")
    alice.click("connect.form.buttons.connect")
    assert "Not an IP address" in alice.w("connect.form.host_error").cget("text")
    assert "65535" in alice.w("connect.form.port_error").cget("text")
    port = alice.w("connect.form.port")
    focus(alice, port)
    xdotool(alice, "key", "BackSpace")
    assert port.get() == "9999"
    assert alice.w("connect.form.port_error").cget("text") == ""
    assert "Not an IP address" in alice.w("connect.form.host_error").cget("text")
    nick = alice.w("connect.form.nick")
    focus(alice, nick)
    xdotool(alice, "type", "--delay", "2", "x")
    assert "Not an IP address" in alice.w("connect.form.host_error").cget("text")


def test_a_failed_connection_is_forgotten_when_the_address_is_edited(gui: GuiFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens here once it is closed
    alice = gui(nick="alice")
    alice.connect("127.0.0.1", port)
    alice.pump(lambda: alice.phase is Phase.CONNECT and alice.notice() != "")
    assert "connection refused" in alice.notice()
    nick = alice.w("connect.form.nick")
    focus(alice, nick)
    xdotool(alice, "type", "--delay", "2", "2")
    assert "connection refused" in alice.notice()  # the nick had nothing to do with it
    field = alice.w("connect.form.port")
    focus(alice, field)
    xdotool(alice, "key", "BackSpace")
    assert alice.notice() == ""


ENTRIES = ["connect.form.host", "connect.form.port", "connect.form.nick", "connect.form.password"]


@pytest.mark.parametrize("path", ENTRIES)
def test_ctrl_a_selects_all_in_the_connect_form(gui: GuiFactory, path: str) -> None:
    alice = gui(nick="alice")
    alice.type(path, "some text here")
    entry = alice.w(path)
    entry.icursor(4)
    focus(alice, entry)
    xdotool(alice, "key", "ctrl+a")
    assert entry.selection_present()
    assert (entry.index("sel.first"), entry.index("sel.last")) == (0, len("some text here"))
    xdotool(alice, "type", "--delay", "2", "new")
    assert entry.get() == "new"  # what was selected was replaced


def test_ctrl_a_selects_all_in_the_message_box(server: ServerThread, gui: GuiFactory) -> None:
    alice = gui(nick="alice", accept_new=True)
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.phase is Phase.CHAT)
    box = alice.w("chat.bottom.message")
    box.insert(0, "a long line I want to retype")
    box.icursor(3)
    focus(alice, box)
    xdotool(alice, "key", "ctrl+a")
    assert (box.index("sel.first"), box.index("sel.last")) == (0, box.index("end"))
    xdotool(alice, "key", "BackSpace")
    assert box.get() == ""
