"""Texts no honest server sends, or only one run without limits (``--max-text 0``): a line of
a million characters, a server name of half a million, a nick as long as a page. The window
shows the start of each and says how much more there is, and stays responsive throughout
(Tk took half a minute to lay out a million characters without a space)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chatsecure.client.transcript import NAME_SHOWN, TEXT_SHOWN

from .conftest import Gui, GuiFactory
from .scripted import ScriptedServer, chat, peer
from .test_app import connect_trusting

pytestmark = pytest.mark.gui

LATE = 0.5
"""Seconds late a Tk timer may fire while the window shows what came (a freeze is seconds)."""


@contextmanager
def timer_lateness(gui: Gui, every: int = 50) -> Iterator[list[float]]:
    """How late, in seconds, each firing of a Tk timer armed every ``every`` ms was, while
    the block runs (the window's event loop runs the timer, as it runs everything else)."""
    late: list[float] = []
    armed: dict[str, Any] = {}

    def fired() -> None:
        late.append(time.monotonic() - armed["due"])
        arm()

    def arm() -> None:
        armed["due"] = time.monotonic() + every / 1000
        armed["id"] = gui.root.after(every, fired)

    arm()
    try:
        yield late
    finally:
        gui.root.after_cancel(armed["id"])


def shown_at_once(gui: Gui, push: Callable[[], None], until: Callable[[], bool]) -> list[float]:
    """Run ``push``; wait until ``until()`` while a timer runs; return its lateness."""
    with timer_lateness(gui) as late:
        push()
        gui.pump(until, timeout=20)
        settle_until = time.monotonic() + 0.5  # (what Tk lays out once idle, too)
        gui.pump(lambda: time.monotonic() >= settle_until)
    assert late, "the timer never fired"
    return late


def test_a_line_of_a_million_characters_is_shown_cut_and_the_window_stays_responsive(
    cert_dir: Path, gui: GuiFactory
) -> None:
    with ScriptedServer(cert_dir, peers=[peer(2, "eve")]) as server:
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        text = "x" * 1_000_000  # no space: the worst for Tk's line layout

        def push() -> None:
            server.push(chat(text, 1), chat("after it", 2))

        late = shown_at_once(alice, push, lambda: "after it" in alice.transcript())
        assert max(late) < LATE, f"the window froze {max(late):.1f} s"
        shown = next(line for line in alice.transcript_lines() if "xxx" in line)
        said = shown.split(": ", 1)[1]
        assert said == "x" * TEXT_SHOWN + f"… ({1_000_000 - TEXT_SHOWN:,} more characters)"


def test_long_names_and_messages_from_the_server_are_cut_everywhere_the_window_shows_them(
    cert_dir: Path, gui: GuiFactory
) -> None:
    name, nick, addr = "n" * 500_000, "k" * 100_000, "a" * 100_000
    long = peer(3, nick, addr)
    with ScriptedServer(cert_dir, peers=[peer(2, "eve"), long], name=name) as server:
        alice = gui(nick="alice", accept_new=True)  # (a new server's key is taken unasked)
        late = shown_at_once(
            alice,
            lambda: alice.connect("127.0.0.1", server.port),
            lambda: "Here:" in alice.transcript(),
        )
        assert max(late) < LATE, f"the window froze {max(late):.1f} s"
        cut_name = "n" * NAME_SHOWN + f"… ({500_000 - NAME_SHOWN:,} more characters)"
        cut_nick = "k" * NAME_SHOWN + f"… ({100_000 - NAME_SHOWN:,} more characters)"
        cut_addr = "a" * NAME_SHOWN + f"… ({100_000 - NAME_SHOWN:,} more characters)"
        assert alice.w("chat.top.room").cget("text") == cut_name
        assert alice.root.title() == f"alice @ {cut_name} — chatsecure"
        assert alice.status().startswith(f"{cut_name} at 127.0.0.1:")
        assert f"{cut_nick} ({cut_addr})" in alice.users()
        assert f"Connected to '{cut_name}' at" in alice.transcript()
        assert f"Here: eve (127.0.0.1), {cut_nick} ({cut_addr})." in alice.transcript()

        def push() -> None:
            server.push(
                chat("from the long one", 1, long),
                {"type": "join", "peer": peer(4, nick + "2", addr)},
                {"type": "leave", "peer": peer(2, "eve"), "reason": "r" * 500_000},
                {"type": "notice", "code": "x", "message": "m" * 500_000},
                {"type": "error", "code": "c" * 100_000, "message": "e" * 500_000},
                chat("after them", 2),
            )

        late = shown_at_once(alice, push, lambda: "after them" in alice.transcript())
        assert max(late) < LATE, f"the window froze {max(late):.1f} s"
        lines = alice.transcript_lines()
        assert lines[-6].endswith(f"] {cut_nick} ({cut_addr}): from the long one")
        cut_nick2 = "k" * NAME_SHOWN + f"… ({100_001 - NAME_SHOWN:,} more characters)"
        assert lines[-5].endswith(f"→ {cut_nick2} ({cut_addr}) joined")
        reason = "r" * NAME_SHOWN + f"… ({500_000 - NAME_SHOWN:,} more characters)"
        assert lines[-4].endswith(f"← eve (127.0.0.1) left ({reason})")
        assert lines[-3].endswith(
            "] " + "m" * TEXT_SHOWN + f"… ({500_000 - TEXT_SHOWN:,} more characters)"
        )
        refused = "e" * TEXT_SHOWN + f"… ({500_000 - TEXT_SHOWN:,} more characters)"
        code = "c" * NAME_SHOWN + f"… ({100_000 - NAME_SHOWN:,} more characters)"
        assert lines[-2].endswith(f"] The server refused: {refused} ({code}).")
        assert all(len(line) < TEXT_SHOWN + 500 for line in lines)
        assert all(len(row) < 3 * NAME_SHOWN for row in alice.users())
