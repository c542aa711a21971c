"""Nothing on the connect view is hidden or cut, at the window's smallest and default sizes.

Each check reads the geometry of real widgets in a real window on Xvfb: every widget must lie
inside the window, above the status bar and inside every widget that contains it, and every
field, button and message must have at least the room it asks for (so no text is cut). Only
the list of servers may give up room.
"""

from __future__ import annotations

import tkinter as tk
from typing import Any

import pytest

from chatsecure.client.state import MAX_PASSWORD, Phase
from chatsecure.testing import ServerThread
from chatsecure.tls.trust import KnownServers

from .conftest import Gui, GuiFactory

pytestmark = pytest.mark.gui

SMALLEST = (660, 440)
DEFAULT = (900, 600)
OTHER_FP = "SHA256:" + "A" * 43

Box = tuple[int, int, int, int]


def box(widget: tk.Misc) -> Box:
    """Left, top, right and bottom on the screen."""
    x, y = widget.winfo_rootx(), widget.winfo_rooty()
    return x, y, x + widget.winfo_width(), y + widget.winfo_height()


def inside(inner: Box, outer: Box) -> bool:
    return (
        inner[0] >= outer[0]
        and inner[1] >= outer[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def descendants(widget: tk.Misc) -> list[tk.Misc]:
    found: list[tk.Misc] = []
    for child in widget.winfo_children():
        found += [child, *descendants(child)]
    return found


def resize(client: Gui, size: tuple[int, int]) -> None:
    client.root.geometry(f"{size[0]}x{size[1]}")
    for _ in range(3):  # wrapping to the new width asks for new heights: let that settle
        client.root.update()
    assert (client.root.winfo_width(), client.root.winfo_height()) == size


def problems(client: Gui, required: list[str]) -> list[str]:
    """What is hidden, cut or covered on the connect view (empty when all is well)."""
    root = client.root
    window = box(root)
    status = client.w("status")
    status_top = status.winfo_rooty()
    assert status.winfo_ismapped()
    assert box(status)[3] <= window[3]
    view = client.w("connect")
    servers = client.w("connect.servers")
    found: list[str] = []
    for path in required:
        widget: Any = client.w(path)
        if not widget.winfo_viewable() or widget.winfo_width() <= 1:
            found.append(f"{path} is not shown")
    for widget in descendants(view):
        if not widget.winfo_ismapped():
            continue
        name, where = str(widget), box(widget)
        if not inside(where, window) or where[3] > status_top:
            found.append(f"{name} at {where} is outside {window} or under the status bar")
        parent = widget.winfo_parent()
        while parent and parent != str(root):
            master = root.nametowidget(parent)
            if not inside(where, box(master)):
                found.append(f"{name} at {where} is cut by {parent} at {box(master)}")
            parent = master.winfo_parent()
        # Frames only hold the rest; the list of servers may give up room.
        shrinks = widget.winfo_class() in {"TFrame", "TLabelframe"} or name.startswith(
            f"{servers}."
        )
        if not shrinks and (
            widget.winfo_width() < widget.winfo_reqwidth()
            or widget.winfo_height() < widget.winfo_reqheight()
        ):
            found.append(
                f"{name} has {widget.winfo_width()}x{widget.winfo_height()}, "
                f"needs {widget.winfo_reqwidth()}x{widget.winfo_reqheight()}"
            )
    return found


FIELDS = ["host", "port", "nick", "password"]
ALWAYS = [
    "connect.header",
    "connect.servers",
    *(f"connect.form.{name}" for name in FIELDS),
    *(f"connect.form.{name}_error" for name in ("password",)),
    "connect.form.buttons.connect",
]


def changed_certificate_refused(client: Gui, server: ServerThread) -> None:
    """The longest notice there is: a changed certificate whose old pin the user kept."""
    KnownServers().pin("127.0.0.1", server.port, OTHER_FP)
    client.connect("127.0.0.1", server.port)
    client.pump(lambda: client.dialog() is not None)
    client.click("trust.buttons.cancel")
    client.pump(lambda: client.phase is Phase.CONNECT)
    assert "has changed and you kept the old pin" in client.notice()


@pytest.mark.parametrize("size", [SMALLEST, DEFAULT], ids=["smallest", "default"])
def test_a_long_notice_and_field_errors_are_all_shown(
    server: ServerThread, gui: GuiFactory, size: tuple[int, int]
) -> None:
    alice = gui(nick="alice")
    resize(alice, size)
    changed_certificate_refused(alice, server)
    # Two fields wrong as well (editing them does not take the notice about the address away).
    alice.type("connect.form.nick", "   ")
    alice.type("connect.form.password", "x" * (MAX_PASSWORD + 1))
    alice.click("connect.form.buttons.connect")
    resize(alice, size)
    assert alice.w("connect.form.nick_error").cget("text")
    assert alice.w("connect.form.password_error").cget("text").startswith("At most")
    assert "has changed" in alice.notice()
    required = [*ALWAYS, "connect.notice", "connect.form.nick_error"]
    assert problems(alice, required) == []


@pytest.mark.parametrize("size", [SMALLEST, DEFAULT], ids=["smallest", "default"])
def test_every_field_wrong_at_once_is_all_shown(gui: GuiFactory, size: tuple[int, int]) -> None:
    alice = gui(nick="")
    resize(alice, size)
    alice.type("connect.form.host", "")
    alice.type("connect.form.port", "99999")
    alice.type("connect.form.nick", " ")
    alice.type("connect.form.password", "x" * (MAX_PASSWORD + 1))
    alice.click("connect.form.buttons.connect")
    resize(alice, size)
    errors = [f"connect.form.{name}_error" for name in FIELDS]
    assert all(alice.w(path).cget("text") for path in errors)
    assert problems(alice, [*ALWAYS, *errors]) == []


@pytest.mark.parametrize("size", [SMALLEST, DEFAULT], ids=["smallest", "default"])
def test_the_notice_after_leaving_is_shown(
    server: ServerThread, gui: GuiFactory, size: tuple[int, int]
) -> None:
    alice = gui(nick="alice", accept_new=True)
    alice.connect("127.0.0.1", server.port)
    alice.pump(lambda: alice.phase is Phase.CHAT)
    alice.say("quit")
    resize(alice, size)
    assert "You left" in alice.notice()
    assert problems(alice, [*ALWAYS, "connect.notice"]) == []


def test_the_notice_wraps_to_the_width_it_has(server: ServerThread, gui: GuiFactory) -> None:
    alice = gui(nick="alice")
    changed_certificate_refused(alice, server)
    notice = alice.w("connect.notice")
    heights = {}
    for size in (DEFAULT, SMALLEST, DEFAULT):
        resize(alice, size)
        assert notice.winfo_reqwidth() <= notice.winfo_width()
        heights[size] = notice.winfo_height()
    assert heights[SMALLEST] > heights[DEFAULT]  # more lines when narrower
