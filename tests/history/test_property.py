"""MemoryLog and SqliteLog agree on any sequence of batches, repeated refs, small keeps and
restarts of the SqliteLog (which must recognise a re-send from what the file holds)."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from chatsecure.history import Draft, MemoryLog, Opened, RoomLog, SqliteLog
from chatsecure.protocol.messages import Peer


def without_id(opened: Opened) -> Opened:
    """``opened`` less its log's id, which is each log's own."""
    return dataclasses.replace(opened, log_id="")


PEERS = [Peer("1", "ann", "a"), Peer("20", "bob", "b"), Peer("guest", "carol", "c")]

drafts = st.builds(
    Draft,
    sender=st.sampled_from(PEERS),
    text=st.text(st.characters(exclude_categories=["Cs"]), max_size=12),  # as validated
    ts=st.floats(0, 4e9, allow_nan=False),
    client=st.sampled_from([None, "client-aaaa", "client-bbbb"]),
    ref=st.sampled_from([None, "r1", "r2", "r3", "r4", "r5"]),
)
batches = st.lists(st.lists(drafts, max_size=6), max_size=10)
restarts_and_batches = st.lists(st.tuples(st.booleans(), st.lists(drafts, max_size=6)), max_size=10)
"""Batches, each after a restart of the SqliteLog or not."""
queries = st.lists(st.tuples(st.integers(-2, 70), st.integers(0, 15)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    keep=st.integers(1, 12), batches=restarts_and_batches, queries=queries, tail=st.integers(0, 15)
)
def test_memory_and_sqlite_logs_agree(
    keep: int, batches: list[tuple[bool, list[Draft]]], queries: list[tuple[int, int]], tail: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(compare(Path(folder) / "h.sqlite3", keep, batches, queries, tail))


async def compare(
    path: Path,
    keep: int,
    batches: list[tuple[bool, list[Draft]]],
    queries: list[tuple[int, int]],
    tail: int,
) -> None:
    memory = MemoryLog(keep)
    sqlite: RoomLog = SqliteLog(path, keep)
    try:
        await sqlite.open(0)
        for restart, batch in batches:
            if restart:
                await sqlite.close()
                sqlite = SqliteLog(path, keep)
                await sqlite.open(0)
            expected = await memory.append(batch)
            assert await sqlite.append(batch) == expected
            new = [a.record.seq for a in expected if not a.duplicate]
            assert new == list(range(memory.last_seq - len(new) + 1, memory.last_seq + 1))
            assert sqlite.last_seq == memory.last_seq
        await sqlite.close()

        sqlite = SqliteLog(path, keep)  # a restart must not change a thing
        assert without_id(await sqlite.open(tail)) == without_id(await memory.open(tail))
        for seq, limit in queries:
            assert await sqlite.before(seq, limit) == await memory.before(seq, limit)
            assert await sqlite.since(seq, limit) == await memory.since(seq, limit)
        assert await sqlite.before(None, tail) == await memory.before(None, tail)
    finally:
        await sqlite.close()
