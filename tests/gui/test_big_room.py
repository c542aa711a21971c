"""The list of who is here in a room of thousands: a line said leaves it be, and a join or a
leave changes its one row (redrawn for every event, it took the window's whole time)."""

from __future__ import annotations

import tkinter as tk
from pathlib import Path

import pytest

from .conftest import GuiFactory
from .scripted import ScriptedServer, chat, peer
from .test_app import connect_trusting

pytestmark = pytest.mark.gui

ROOM = 3000
"""People in the room, you among them."""


def edits_of(listbox: tk.Listbox) -> list[str]:
    """The insert and delete commands ``listbox`` is given from now on, as Tk runs them."""
    edits: list[str] = []

    def ran(command: str, *_: str) -> None:
        if command.split()[1] in {"insert", "delete"}:
            edits.append(command.split()[1])

    listbox.tk.call("trace", "add", "execution", str(listbox), "enter", listbox.register(ran))
    return edits


def test_in_a_room_of_thousands_a_line_said_leaves_the_list_of_who_is_here_alone(
    cert_dir: Path, gui: GuiFactory
) -> None:
    you = peer(1, "alice")
    with ScriptedServer(cert_dir, you=you, peers=[peer(n) for n in range(2, ROOM + 1)]) as server:
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        alice.pump(lambda: len(alice.users()) == ROOM)
        users = alice.w("chat.body.side.users")
        assert alice.users()[:3] == [
            "alice (127.0.0.1)  — you",
            "p000002 (127.0.0.1)",
            "p000003 (127.0.0.1)",
        ]
        users.selection_set(10)  # the user picked someone in the list
        picked = users.get(10)
        edits = edits_of(users)
        for n in range(1, 41):
            server.push(chat(f"line {n}", n))
        alice.pump(lambda: "line 40" in alice.transcript())
        assert edits == [], "the list was not touched"
        assert [users.get(at) for at in users.curselection()] == [picked]

        # Joins, leaves and a new nick: one row in or out each, in its place.
        server.push(
            {"type": "join", "peer": peer(ROOM + 1, "Aaron")},
            {"type": "join", "peer": peer(ROOM + 2, "zed")},
            {"type": "leave", "peer": peer(5), "reason": "quit"},
            {"type": "join", "peer": peer(7, "p002500x")},  # here already: a new nick
            chat("after them", 41),
        )
        alice.pump(lambda: "after them" in alice.transcript())
        assert sorted(edits) == ["delete", "delete", "insert", "insert", "insert"]
        nicks = [f"p{n:06d}" for n in range(2, ROOM + 1) if n not in {5, 7}]
        others = sorted([*nicks, "Aaron", "zed", "p002500x"], key=str.casefold)
        assert alice.users() == [
            "alice (127.0.0.1)  — you",
            *(f"{nick} (127.0.0.1)" for nick in others),
        ]
        assert alice.w("chat.body.side.title").cget("text") == f"In this room ({ROOM + 1})"
        assert [users.get(at) for at in users.curselection()] == [picked], "still the one picked"
