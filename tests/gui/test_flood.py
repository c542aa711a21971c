"""The real Tk window under a flood from a FakeServer: the transcript stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsecure.client.transcript import MAX_TRANSCRIPT_LINES
from chatsecure.testing import FakeServer, Mode

from .conftest import GuiFactory
from .test_app import connect_trusting

pytestmark = pytest.mark.gui

FLOOD = MAX_TRANSCRIPT_LINES + 1500


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
