"""The real Tk window under a flood: the transcript stays bounded, and what it dropped comes
back by scrolling up."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatsecure.client import model
from chatsecure.client.transcript import MAX_TRANSCRIPT_LINES
from chatsecure.gui import app
from chatsecure.history import HistoryError, MemoryLog, Record
from chatsecure.testing import FakeServer, Mode, RawClient, ServerThread, server_config

from .conftest import Gui, GuiFactory, settle
from .test_app import bob_and_alice_through_a_proxy, connect_trusting, missed_by, say_stored

pytestmark = pytest.mark.gui

FLOOD = MAX_TRANSCRIPT_LINES + 1500


def small_transcript(
    monkeypatch: pytest.MonkeyPatch, *, following: int, reading: int, page: int
) -> None:
    """A window that keeps ``following`` lines while the user follows the newest, ``reading``
    while they read back, and loads older lines ``page`` at a time."""
    monkeypatch.setattr(app, "MAX_TRANSCRIPT_LINES", following)
    monkeypatch.setattr(app, "MAX_SCROLLBACK_LINES", reading)
    monkeypatch.setattr(app, "OLDER_PAGE", page)


def test_a_flood_keeps_the_newest_lines_and_drops_the_oldest_past_the_cap(
    cert_dir: Path, gui: GuiFactory
) -> None:
    with FakeServer(cert_dir, Mode.FLOOD, count=FLOOD) as server:
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        alice.pump(lambda: "end of the flood" in alice.transcript(), timeout=60)
        lines = alice.transcript_lines()
        assert len(lines) <= MAX_TRANSCRIPT_LINES
        floods = [int(line.rsplit(" ", 1)[1]) for line in lines if ": flood " in line]
        assert floods == list(range(FLOOD - len(floods) + 1, FLOOD + 1)), "newest kept, in order"
        assert len(floods) >= MAX_TRANSCRIPT_LINES - 10
        alice.click("chat.top.leave")


def test_lines_dropped_past_the_cap_come_back_by_scrolling_up_once_each_in_order(
    start_server: Callable[..., ServerThread], gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_transcript(monkeypatch, following=40, reading=120, page=15)
    server = start_server(replay=5, msg_rate=0)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        for n in range(1, 31):
            bob.send({"type": "msg", "text": f"old {n}", "ref": f"o{n}"})
            bob.expect("ack")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        alice.pump(lambda: "old 30" in alice.transcript())
        for n in range(1, 61):
            bob.send({"type": "msg", "text": f"live {n}", "ref": f"l{n}"})
        alice.pump(lambda: "live 60" in alice.transcript())
    assert len(alice.transcript_lines()) <= 40
    assert "live 1\n" not in alice.transcript(), "the oldest lines were dropped"

    def numbered() -> list[str]:
        return [line.split(": ", 1)[1] for line in alice.transcript_lines() if ": " in line]

    def scrolled_back_to(first: str) -> bool:
        alice.w("chat.body.log.transcript").yview_moveto(0.0)  # the user scrolls to the top
        return first in numbered()

    alice.pump(lambda: scrolled_back_to("old 1"), timeout=20)
    expected = [f"old {n}" for n in range(1, 31)] + [f"live {n}" for n in range(1, 61)]
    assert numbered() == expected, "every dropped line is back, once, in order"
    assert len(alice.transcript_lines()) <= 120


@contextlib.contextmanager
def back_in_a_small_window(
    start_server: Callable[..., ServerThread],
    gui: GuiFactory,
    monkeypatch: pytest.MonkeyPatch,
    away: list[str],
) -> Iterator[tuple[RawClient, Gui]]:
    """Bob, and alice in a window of 30 lines (60 reading back, pages of 10), back after
    missing ``away``, the newest 20 of them replayed: the rest are a gap."""
    small_transcript(monkeypatch, following=30, reading=60, page=10)
    server = start_server(replay_max=20, msg_rate=0)
    with bob_and_alice_through_a_proxy(server, gui) as (bob, alice, proxy):
        missed_by(alice, proxy, bob, away)
        yield bob, alice


def test_a_gap_dropped_with_the_oldest_lines_loads_on_top_instead_each_line_once(
    start_server: Callable[..., ServerThread], gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    away = [f"away {n}" for n in range(1, 101)]
    with back_in_a_small_window(start_server, gui, monkeypatch, away) as (bob, alice):
        assert "⋯ 80 earlier missed messages" in alice.transcript()
        live = [f"live {n}" for n in range(1, 21)]  # they drop the oldest lines, the gap's
        for n, text in enumerate(live):
            say_stored(bob, text, f"live-{n}")
        texts = away + live
        alice.pump(lambda: "live 20" in alice.transcript())
        assert "earlier missed" not in alice.transcript()  # its line went with the oldest
        text = alice.w("chat.body.log.transcript")
        for _ in range(10):  # the user scrolls to the top, page after page
            text.yview_moveto(0.0)
            settle([alice], 0.2)
        said = [line.split(": ", 1)[1] for line in alice.transcript_lines() if ": " in line]
        said = [line for line in said if line.startswith(("away", "live"))]
        first = texts.index(said[0])
        assert said == texts[first:], "in order, each once, none missing"
        assert first < 80, "older lines came on top"


def test_a_gap_the_full_window_cannot_take_says_so(
    start_server: Callable[..., ServerThread], gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    away = [f"away {n}" for n in range(1, 201)]
    with back_in_a_small_window(start_server, gui, monkeypatch, away) as (_, alice):
        text = alice.w("chat.body.log.transcript")

        def scrolled_up_to_the_gap() -> bool:
            text.see(text.search("earlier missed", "1.0", "end"))
            return "the window holds all it can" in alice.transcript()

        alice.pump(scrolled_up_to_the_gap, timeout=10)
    said = [line.split(": ", 1)[1] for line in alice.transcript_lines() if ": away " in line]
    first = int(said[0].split()[1])
    assert said == [f"away {n}" for n in range(first, 201)], "in order, each once"
    assert len(alice.transcript_lines()) <= 60
    assert f"⋯ {first - 1} earlier missed messages: not loaded, the window holds all it can ⋯" in (
        alice.transcript_lines()
    )


class UnreadableLog(MemoryLog):
    """The room log of a server whose disk went away for a while: while ``away`` is set,
    older lines cannot be read."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.away = threading.Event()

    async def before(self, seq: int | None, limit: int) -> list[Record]:
        if self.away.is_set():
            raise HistoryError("the disk is away")
        return await super().before(seq, limit)


def test_a_gap_in_view_whose_lines_could_not_be_read_loads_once_they_can(
    cert_dir: Path, gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model, "HISTORY_RETRY", 0.5)
    small_transcript(monkeypatch, following=30, reading=60, page=10)
    history = UnreadableLog(1000)
    server = ServerThread(server_config(cert_dir, replay_max=20, msg_rate=0), history).start()
    try:
        with bob_and_alice_through_a_proxy(server, gui) as (bob, alice, proxy):
            history.away.set()
            away = [f"away {n}" for n in range(1, 41)]
            missed_by(alice, proxy, bob, away)  # the newest 20 replayed, 20 in the gap
            banner, text = alice.w("chat.banner"), alice.w("chat.body.log.transcript")

            def gap_in_view_refused() -> bool:
                text.see(text.search("earlier missed", "1.0", "end"))  # the user scrolls to it
                return bool(banner.winfo_ismapped() and banner.cget("text") == model.UNREADABLE)

            alice.pump(gap_in_view_refused, timeout=10)
            assert "away 20\n" not in alice.transcript()
            history.away.clear()
            # The gap stays in view, not scrolled off and back: asked again after the pause.
            alice.pump(lambda: "away 11\n" in alice.transcript(), timeout=10)
            said = [line.split(": ", 1)[1] for line in alice.transcript_lines() if ": away" in line]
            assert said == away[10:], "the newest page of the gap, in its place, each once"
            alice.pump(lambda: not banner.winfo_ismapped())  # (it goes with the page)
    finally:
        server.stop()


def test_a_full_window_says_at_its_top_that_older_lines_are_not_loaded(
    start_server: Callable[..., ServerThread], gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_transcript(monkeypatch, following=30, reading=60, page=15)
    server = start_server(replay=5, msg_rate=0)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        for n in range(1, 101):
            bob.send({"type": "msg", "text": f"old {n}", "ref": f"o{n}"})
            bob.expect("ack")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        alice.pump(lambda: "old 100" in alice.transcript())
        text = alice.w("chat.body.log.transcript")

        def scrolled_to_the_top() -> bool:
            text.yview_moveto(0.0)
            return "older messages not loaded" in alice.transcript()

        alice.pump(scrolled_to_the_top, timeout=20)
        lines = alice.transcript_lines()
        assert lines[0] == model.full_text(60), "the first line, with the window's own cap"
        said = [line.split(": ", 1)[1] for line in lines if ": old " in line]
        first = int(said[0].split()[1])
        assert first > 1, "the server has older ones"
        assert said == [f"old {n}" for n in range(first, 101)], "in order, each once"
        settle([alice], 0.3)  # at the top, polled again and again: said once
        assert alice.transcript().count("older messages not loaded") == 1
        text.yview_moveto(1.0)  # back to the newest: lines that come in trim to 30
        settle([alice], 0.2)
        for n in range(1, 11):
            bob.send({"type": "msg", "text": f"live {n}", "ref": f"l{n}"})
        alice.pump(lambda: "live 10" in alice.transcript())
        settle([alice], 0.2)
        assert len(alice.transcript_lines()) <= 30
        assert "older messages not loaded" not in alice.transcript(), "it went with the oldest"
        alice.pump(scrolled_to_the_top, timeout=20)  # and loading goes on up to the cap again
        assert len(alice.transcript_lines()) > 45


def line_names(gui: Gui) -> dict[str, str]:
    """The transcript's tags and marks that name one line (``seq-N``, ``ref-R``), and where."""
    text = gui.w("chat.body.log.transcript")
    names = {name: "tag" for name in text.tag_names() if name.startswith(("seq-", "ref-"))}
    for name in text.mark_names():
        if name.startswith(("seq-", "ref-")):
            names[name] = str(text.index(name))
    return names


def test_lines_dropped_past_the_cap_leave_nothing_of_theirs_behind(
    start_server: Callable[..., ServerThread], gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_transcript(monkeypatch, following=40, reading=400, page=50)
    server = start_server(msg_rate=0)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        connect_trusting(alice, "127.0.0.1", server.port)
        text = alice.w("chat.body.log.transcript")
        styles = set(text.tag_names())
        for n in range(1, 301):
            if n % 50 == 0:
                alice.say(f"mine {n}")  # (own lines are named twice: by ref, then seq)
            bob.send({"type": "msg", "text": f"flood {n}", "ref": f"f{n}"})
        alice.pump(lambda: "flood 300" in alice.transcript() and "mine 300" in alice.transcript())
        alice.pump(lambda: "own" in alice.tags_of_line_with("mine 300"))
        lines = alice.transcript_lines()
        assert len(lines) <= 40
        # A tag a line (even one deleted with its line) slows Tk down for good: none is made.
        assert set(text.tag_names()) == styles
        names = line_names(alice)
        assert "tag" not in names.values()
        named = sorted({int(at.split(".")[0]) for at in names.values()})
        assert len(names) <= len(named) + 6, "only the lines shown are named (own ones twice)"
        said = [text.get(f"{row}.0", f"{row}.0 lineend").split(": ", 1)[1] for row in named]
        assert said == [line.split(": ", 1)[1] for line in lines if ": " in line][-len(said) :]
        assert "mine 300" in said
        assert len(said) >= 35
        seqs = sorted((int(at.split(".")[0]), int(n[4:])) for n, at in names.items() if "seq" in n)
        assert [seq for _, seq in seqs] == sorted(seq for _, seq in seqs), "in the order stored"
        # What the names are for still works: the oldest lines come back by scrolling up.
        assert "flood 1\n" not in alice.transcript()

        def scrolled_back_to_the_first() -> bool:
            text.yview_moveto(0.0)
            return "flood 1\n" in alice.transcript()

        alice.pump(scrolled_back_to_the_first, timeout=30)
        flood = [line.split(": ", 1)[1] for line in alice.transcript_lines() if ": flood" in line]
        assert flood == [f"flood {n}" for n in range(1, len(flood) + 1)], "each once, in order"
