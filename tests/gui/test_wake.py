"""The window takes the network's news when it comes, not on a timer tick: Tk's ``after``
waits on the wall clock, so a clock set back would hold every line back (see ``Doorbell``).
A tick of an hour stands for a tick the clock stepped over."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from chatsecure.client.state import Phase, ServerList
from chatsecure.discovery.records import ServerRemoved
from chatsecure.gui import app
from chatsecure.testing import RawClient, ServerThread

from .conftest import GuiFactory

pytestmark = pytest.mark.gui

HOUR_MS = 3_600_000


def test_lines_and_changes_arrive_with_no_timer_tick(
    server: ServerThread, gui: GuiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "POLL_MS", HOUR_MS)
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice")
        alice.connect("127.0.0.1", server.port)
        alice.pump(lambda: alice.dialog() is not None)  # a trust question rings too
        alice.click("trust.buttons.accept")
        alice.pump(lambda: alice.phase is Phase.CHAT)
        assert alice.view() == "chat"
        bob.send({"type": "msg", "text": "the clock went back", "ref": "b1"})
        alice.pump(lambda: "the clock went back" in alice.transcript(), timeout=3)
        alice.say("yet here we are")
        alice.pump(
            lambda: (
                "yet here we are" in alice.transcript()
                and "own" in alice.tags_of_line_with("yet here we are")  # stored: its ack came
            ),
            timeout=3,
        )
        bob.send({"type": "quit"})
        alice.pump(lambda: "bob (127.0.0.1)" not in " ".join(alice.users()), timeout=3)


def test_a_tick_the_clock_stepped_over_is_armed_again_when_a_line_comes(
    server: ServerThread, gui: GuiFactory
) -> None:
    # The tick also looks at the view (scrolled to the top: load older lines), which no
    # thread rings for: a tick the clock stepped over must not stay an hour away.
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        alice = gui(nick="alice", accept_new=True)
        alice.connect("127.0.0.1", server.port)
        alice.pump(lambda: alice.phase is Phase.CHAT)
        window, root = alice.app, alice.root
        assert window._tick is not None
        root.after_cancel(window._tick)  # what a clock set back an hour leaves:
        window._tick = root.after(HOUR_MS, window._ticked)  # Tk's tick an hour away,
        window._tick_due = stale = time.monotonic() - 2  # though its time has passed
        bob.send({"type": "msg", "text": "ding", "ref": "b1"})
        alice.pump(lambda: "ding" in alice.transcript(), timeout=3)
        alice.pump(lambda: window._tick_due > stale + 2)  # armed again from now
        armed = window._tick_due
        alice.pump(lambda: window._tick_due > armed)  # and it ticked


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
def test_windows_closed_leave_no_file_descriptor_open(
    server: ServerThread, gui: GuiFactory
) -> None:
    def window_that_chatted() -> None:
        window = gui(nick="alice", accept_new=True)
        window.connect("127.0.0.1", server.port)
        window.pump(lambda: window.phase is Phase.CHAT)
        window.app.close()
        server.wait_online(0)

    window_that_chatted()  # (whatever Tk and the first TLS connection keep for the process)
    before = _open_fds()
    for _ in range(4):
        window_that_chatted()
    assert _open_fds() == before


def test_sigterm_closes_the_window_with_no_timer_tick(server: ServerThread, display: str) -> None:
    # A signal's handler runs once Tk's loop hands control back to Python: it must not wait
    # for a tick the clock stepped over. (It did, before the doorbell.)
    program = (
        f"import sys; from chatsecure.gui import app; app.POLL_MS = {HOUR_MS}; "
        "from chatsecure.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["gui", f"127.0.0.1:{server.port}", "--nick", "carol", "--no-discovery"]
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *args, "--fingerprint", server.fingerprint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_online(1, timeout=15)
        time.sleep(0.3)  # (in its event loop by now: the window polled, with no tick, to join)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    server.wait_online(0)


def test_discovery_rings_again_for_what_one_poll_left() -> None:
    rings: list[None] = []
    events: queue.Queue[ServerRemoved] = queue.Queue()
    for n in range(5):
        events.put(ServerRemoved(f"gone {n}"))
    discovery = app.Discovery(SimpleNamespace(events=events), lambda: rings.append(None))  # type: ignore[arg-type]
    assert discovery.poll(ServerList(), limit=3)
    assert len(rings) == 1  # two left: the window polls again at once, not at its next tick
    assert discovery.poll(ServerList(), limit=3)
    assert len(rings) == 1  # all taken
