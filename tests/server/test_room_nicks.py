"""The nicks a ``Room`` gives: the one asked for, or a free variant with a suffix."""

from __future__ import annotations

import pytest

from chatsecure.history import MemoryLog
from chatsecure.protocol.limits import MAX_NICK
from chatsecure.protocol.messages import Hello, ServerInfo, clean_nick
from chatsecure.room import Room
from tests.protocol.test_v2_property import Pipe


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("asked", "given"),
    [
        ("n" * MAX_NICK, ["n" * MAX_NICK, "n" * 30 + "_2", "n" * 30 + "_3"]),
        ("a" * 29 + "q\u0301x", ["a" * 29 + "q\u0301x", "a" * 29 + "_2", "a" * 29 + "_3"]),
        ("a" * 28 + "q\u0323\u0301x", ["a" * 28 + "q\u0323\u0301x", "a" * 28 + "_2"]),
        ("a" * 29 + "\u0915\u093fx", ["a" * 29 + "\u0915\u093fx", "a" * 29 + "_2"]),
    ],
    ids=["plain", "accent", "two-marks", "vowel-sign"],
)
async def test_a_suffix_never_cuts_a_letter_from_its_marks(asked: str, given: list[str]) -> None:
    nick = clean_nick(asked)
    assert nick == asked  # already clean: what the room gets is what was asked
    room = Room(ServerInfo("lab", "test", 2), MemoryLog(100), presence_pace=0.0)
    await room.open()
    try:
        members = [Pipe(room, str(i), "") for i in range(len(given))]
        nicks = [room.join(m, nick, Hello(nick), "127.0.0.1").nick for m in members]
        assert nicks == given
    finally:
        await room.close()
