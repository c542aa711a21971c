"""Real-window fixtures: a private Xvfb display, and GUI clients driven through Tk itself."""

from __future__ import annotations

import contextlib
import gc
import os
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from chatsecure.client.state import GuiOptions, Phase
from chatsecure.gui.app import App
from chatsecure.gui.display import virtual_display


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """An Xvfb display of our own for the whole run; ``DISPLAY`` points at it meanwhile."""
    before = os.environ.get("DISPLAY")
    with virtual_display() as name:
        os.environ["DISPLAY"] = name
        try:
            yield name
        finally:
            if before is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = before


class Gui:
    """One desktop client in this process, found and driven by widget names."""

    def __init__(self, root: tk.Tk, app: App, everyone: list[Gui]) -> None:
        self.root = root
        self.app = app
        self._everyone = everyone

    def w(self, path: str) -> Any:
        return self.root.nametowidget(path)

    def type(self, path: str, text: str) -> None:
        entry = self.w(path)
        entry.delete(0, "end")
        entry.insert(0, text)

    def click(self, path: str) -> None:
        self.w(path).invoke()

    def connect(self, host: str, port: int) -> None:
        self.type("connect.form.host", host)
        self.type("connect.form.port", str(port))
        self.click("connect.form.buttons.connect")

    def say(self, text: str) -> None:
        """Type ``text`` in the message box and press Enter."""
        box = self.w("chat.bottom.message")
        box.delete(0, "end")
        box.insert(0, text)
        self.press_enter(box)

    def press_enter(self, widget: Any) -> None:
        """Enter in ``widget``: key events go where the keyboard focus is, as for a user."""
        widget.focus_force()
        widget.update()
        widget.event_generate("<Return>")

    @property
    def phase(self) -> Phase:
        return self.app.controller.model.phase

    def view(self) -> str:
        """Which view is on screen, as Tk sees it (once pending redraws are done)."""
        self.root.update()
        mapped = [name for name in ("connect", "chat") if self.w(name).winfo_ismapped()]
        assert len(mapped) == 1, mapped
        return mapped[0]

    def transcript(self) -> str:
        return str(self.w("chat.body.log.transcript").get("1.0", "end"))

    def transcript_lines(self) -> list[str]:
        return [line for line in self.transcript().splitlines() if line]

    def tags_of_line_with(self, needle: str) -> set[str]:
        text = self.w("chat.body.log.transcript")
        index = text.search(needle, "1.0", "end")
        assert index, f"{needle!r} not in the transcript"
        return set(text.tag_names(index))

    def users(self) -> list[str]:
        return list(self.w("chat.body.side.users").get(0, "end"))

    def status(self) -> str:
        return str(self.w("status").cget("text"))

    def notice(self) -> str:
        return str(self.w("connect.notice").cget("text"))

    def dialog(self) -> tk.Toplevel | None:
        child = self.root.children.get("trust")
        return child if isinstance(child, tk.Toplevel) and child.winfo_exists() else None

    def pump(self, until: Callable[[], object], timeout: float = 5.0) -> None:
        pump([g.root for g in self._everyone], until, timeout)

    def close_window(self) -> None:
        """What the window manager's close button does: run the WM_DELETE_WINDOW handler."""
        self.root.tk.call(self.root.protocol("WM_DELETE_WINDOW"))


def pump(roots: list[tk.Tk], until: Callable[[], object], timeout: float = 5.0) -> None:
    """Run the Tk event loops until ``until()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {until}")
        for root in roots:
            with contextlib.suppress(tk.TclError):  # that window was closed
                root.update()
        time.sleep(0.005)


def settle(guis: list[Gui], seconds: float) -> None:
    """Let ``seconds`` pass with every event loop running (to show that nothing happens)."""
    end = time.monotonic() + seconds
    pump([g.root for g in guis], lambda: time.monotonic() >= end, seconds + 1)


GuiFactory = Callable[..., Gui]


@pytest.fixture
def gui(display: str) -> Iterator[GuiFactory]:
    """Open GUI clients (discovery off unless asked); every one is closed at the end."""
    everyone: list[Gui] = []

    def open_gui(**options: Any) -> Gui:
        options.setdefault("discovery", False)
        root = tk.Tk(className="chatsecure")
        app = App(root, replace(GuiOptions(), **options))
        client = Gui(root, app, everyone)
        everyone.append(client)
        root.update()
        return client

    yield open_gui
    for client in everyone:
        client.app.close()
    everyone.clear()
    # Tk objects must die on this thread: collect them here, never on a network thread.
    gc.collect()
