"""The room's order with small, overlapping commits: whatever the log does (answers at once,
after a few loop iterations, or fails), every member sees lines, acks, joins and leaves in the
order they happened, and nothing is left counted once the room has drained."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsecure import room as room_module
from chatsecure.history import Appends, Draft, Fed, HistoryError, MemoryLog, SharedLog
from chatsecure.protocol.messages import Hello, SendMsg, ServerInfo
from chatsecure.room import Member, Room
from tests.protocol.test_v2_property import Pipe

INFO = ServerInfo("lab", "t", 2)


class PacedLog(MemoryLog):
    """A MemoryLog whose commits follow ``plan``: step % 3 loop iterations of waiting (0: an
    answer without yielding, as MemoryLog's), and a failure for a step of 3 or more."""

    def __init__(self, plan: list[int]) -> None:
        super().__init__(100_000)
        self.plan = iter(plan)
        self.failed: set[str | None] = set()

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        step = next(self.plan, 1)
        for _ in range(step % 3):
            await asyncio.sleep(0)
        if step >= 3:
            self.failed.update(d.ref for d in drafts)
            raise HistoryError("full")
        return await super().append(drafts)


class HeldPipe(Pipe):
    """A member that counts how often the room stopped and started reading it."""

    holds = 0

    def hold(self) -> None:
        self.holds += 1

    def release(self) -> None:
        self.holds -= 1


def frames(pipe: Pipe) -> list[dict[str, Any]]:
    return [json.loads(line) for line in bytes(pipe.down).splitlines() if line]


def seen(pipe: Pipe) -> list[tuple[str, str]]:
    """What ``pipe`` was told, in order: lines, acks, joins and leaves."""
    out = []
    for f in frames(pipe):
        if f["type"] in ("msg", "ack"):
            out.append((f["type"], f["text"] if f["type"] == "msg" else f["ref"]))
        elif f["type"] in ("join", "leave"):
            out.append((f["type"], f["peer"]["id"]))
    return out


async def play(script: list[tuple[Any, ...]], plan: list[int]) -> None:
    log = PacedLog(plan)
    room = Room(INFO, log, replay=0, replay_max=0, presence_pace=0.0)
    await room.open()
    ids, texts = itertools.count(1), itertools.count(1)
    events: list[tuple[str, ...]] = []  # what happened, in order
    pipes: dict[int, HeldPipe] = {}
    everyone: list[HeldPipe] = []
    joined_at: dict[str, int] = {}
    left_at: dict[str, int] = {}
    for kind, n, *more in script:
        if kind == "join" and n not in pipes:
            pipe = pipes[n] = HeldPipe(room, str(next(ids)), "")
            everyone.append(pipe)
            room.join(pipe, f"u{n}", Hello(f"u{n}"), "127.0.0.1")
            joined_at[pipe.id] = len(events)
            events.append(("join", pipe.id))
        elif kind == "leave" and n in pipes:
            pipe = pipes.pop(n)
            pipe.closed = True
            room.remove(pipe, "quit")
            left_at[pipe.id] = len(events)
            events.append(("leave", pipe.id))
        elif kind == "say" and n in pipes:
            for _ in range(more[0]):
                text = f"t{next(texts)}"
                room.say(pipes[n], SendMsg(text, ref=text))
                events.append(("msg", text, pipes[n].id))
        elif kind == "loop":
            for _ in range(n):
                await asyncio.sleep(0)
    await room.drain()
    for _ in range(5):  # the writes of the last iterations
        await asyncio.sleep(0)
    assert (room.unstored, room._presence_queued, len(room._answered)) == (0, 0, 0)
    failed = set(log.failed)
    failed.update(f["ref"] for pipe in everyone for f in frames(pipe) if f["type"] == "error")
    for pipe in everyone:
        if pipe.closed and not frames(pipe):
            continue  # it left before the loop wrote it anything
        welcome = frames(pipe)[0]
        assert welcome["type"] == "welcome"
        start, end = joined_at[pipe.id] + 1, left_at.get(pipe.id, len(events))
        stored_before = [e for e in events[:start] if e[0] == "msg" and e[1] not in failed]
        # Lines said before the join but stored after the welcome come after it.
        want = [("msg", e[1]) for e in stored_before[welcome["seq"] :]]
        for e in events[start:end]:
            if e[0] != "msg":
                want.append(e)
            elif e[1] not in failed:
                want.append(("ack", e[1]) if e[2] == pipe.id else ("msg", e[1]))
        got = seen(pipe)
        assert got == (want[: len(got)] if pipe.closed else want), pipe.id  # closed: cut off
        assert pipe.holds == 0


who = st.integers(0, 3)
scripts = st.lists(
    st.one_of(
        st.tuples(st.just("join"), who),
        st.tuples(st.just("leave"), who),
        st.tuples(st.just("say"), who, st.integers(1, 12)),
        st.tuples(st.just("loop"), st.integers(1, 3)),
    ),
    min_size=5,
    max_size=60,
)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room_module, "BATCH_START", 2)
    monkeypatch.setattr(room_module, "BATCH_MAX", 4)
    monkeypatch.setattr(room_module, "STORE_HIGH", 6)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(script=scripts, plan=st.lists(st.integers(0, 5), max_size=40))
def test_every_member_sees_what_happened_in_order(
    script: list[tuple[Any, ...]], plan: list[int]
) -> None:
    asyncio.run(play(script, plan))


class FedLog(MemoryLog):
    """A MemoryLog that is also a SharedLog: its feed brings back every stored line."""

    def __init__(self) -> None:
        super().__init__(1000)
        self.fed: asyncio.Queue[list[Fed]] = asyncio.Queue()

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        await asyncio.sleep(0)
        appends = await super().append(drafts)
        self.fed.put_nowait([Fed.of(a.record) for a in appends if not a.duplicate])
        return appends

    async def follow(self, after: int) -> AsyncIterator[list[Fed]]:
        while True:
            yield await self.fed.get()


@pytest.mark.asyncio
async def test_presence_queued_behind_lines_of_a_shared_log_is_counted_out() -> None:
    log = FedLog()
    assert isinstance(log, SharedLog)
    room = Room(INFO, log, presence_pace=0.0)
    await room.open()
    alice = Pipe(room, "1", "")
    room.join(alice, "alice", Hello("alice"), "127.0.0.1")
    for i in range(3):
        room.say(alice, SendMsg(f"hi {i}", ref=f"r{i}"))
        newcomer = Pipe(room, str(10 + i), "")
        room.join(newcomer, f"b{i}", Hello(f"b{i}"), "127.0.0.1")  # while the line is stored
        for _ in range(10):
            await asyncio.sleep(0)
    await room.drain()
    assert room._presence_queued == 0
    assert [kind for kind, _ in seen(alice)] == ["ack", "join"] * 3  # each join after its line
    await room.close()


async def small_room() -> Room:
    """An open room with an in-memory log, no replay and no presence pacing."""
    room = Room(INFO, MemoryLog(100), replay=0, replay_max=0, presence_pace=0.0)
    await room.open()
    return room


async def settled(room: Room) -> None:
    """Everything said is stored, acknowledged, broadcast and written."""
    await room.drain()
    for _ in range(3):  # the writes of the last iterations
        await asyncio.sleep(0)


class BuggyPipe(HeldPipe):
    """A member whose first ack raises, as a bug past the commit would."""

    raised = False

    def send(self, data: bytes) -> None:
        if not self.raised and b'"type":"ack"' in data:
            self.raised = True
            raise RuntimeError("a bug")
        super().send(data)


@pytest.mark.asyncio
async def test_a_failure_past_the_commit_is_logged_and_the_room_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = await small_room()
    alice, bob = BuggyPipe(room, "1", "a" * 8), HeldPipe(room, "2", "b" * 8)
    room.join(alice, "alice", Hello("alice"), "127.0.0.1")
    room.join(bob, "bob", Hello("bob"), "127.0.0.1")
    room.say(alice, SendMsg("first", ref="r1"))
    await room.drain()
    room.say(alice, SendMsg("second", ref="r2"))
    await settled(room)
    assert seen(alice)[-1] == ("ack", "r2")
    assert seen(bob)[-1] == ("msg", "second")
    assert (room.unstored, len(room._answered)) == (0, 0)
    assert "could not acknowledge or broadcast 1 line" in caplog.text


class BrokenPipe(HeldPipe):
    """A member whose write raises, as a bug in writing to one connection would."""

    aborted = False

    def end_iteration(self, shared: list[bytes] | list[memoryview], senders: set[Member]) -> None:
        raise ValueError("negative file descriptor")

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.asyncio
async def test_a_failed_write_to_one_member_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    room = await small_room()
    alice, broken, bob = Pipe(room, "1", ""), BrokenPipe(room, "2", ""), Pipe(room, "3", "")
    for pipe, nick in ((alice, "alice"), (broken, "broken"), (bob, "bob")):
        room.join(pipe, nick, Hello(nick), "127.0.0.1")  # (the broken one before bob)
    room.say(alice, SendMsg("hello", ref="r1"))
    await settled(room)
    assert seen(bob)[-1] == ("msg", "hello")
    assert seen(alice)[-1] == ("ack", "r1")
    assert broken.aborted
    assert "could not write to member 2; its connection is cut" in caplog.text
    await room.close()
