"""The RoomLog interface, the same tests on MemoryLog, SqliteLog and RedisLog."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from chatsecure.history import Record, RoomLog
from chatsecure.protocol.messages import Peer
from tests.history.conftest import ANN, BOB, Logs, draft, lines

OpenLog = Callable[..., Awaitable[RoomLog]]


def seqs(records: list[Record]) -> list[int]:
    return [record.seq for record in records]


def assert_peer_floor(logs: Logs, max_peer_id: int, highest_stored: int) -> None:
    """A restarted server numbers its peers above every id stored.

    A shared log gives each open a block of ids of its own, above every id any server used,
    so that two servers never give the same id: above, not equal.
    """
    if logs.shared:
        assert max_peer_id > highest_stored
    else:
        assert max_peer_id == highest_stored


async def filled(opened_log: OpenLog, count: int, keep: int = 1000) -> RoomLog:
    log = await opened_log(keep)
    await log.append(lines(*(f"line {n}" for n in range(1, count + 1))))
    return log


@pytest.mark.asyncio
async def test_seqs_are_consecutive_from_one_across_batches(opened_log: OpenLog) -> None:
    log = await opened_log()
    assert log.last_seq == 0
    got = []
    for batch in (lines("a"), lines("b", "c", "d"), [], lines("e", "f")):
        got += [(a.record.seq, a.record.text, a.duplicate) for a in await log.append(batch)]
    assert got == [(n, text, False) for n, text in enumerate("abcdef", start=1)]
    assert log.last_seq == 6


@pytest.mark.asyncio
async def test_the_answer_gives_the_first_seq_and_each_duplicate_by_its_place(
    opened_log: OpenLog,
) -> None:
    log = await opened_log()
    await log.append([draft("one", client="client-0001", ref="r1")])
    appends = await log.append(
        [
            draft("one again", client="client-0001", ref="r1"),  # of an earlier batch
            draft("two", client="client-0001", ref="r2"),
            draft("two again", client="client-0001", ref="r2"),  # of this batch
            draft("three"),
        ]
    )
    assert (appends.first, appends.last) == (2, 3)
    assert {index: record.seq for index, record in appends.originals.items()} == {0: 1, 2: 2}
    assert [(a.record.seq, a.record.text, a.duplicate) for a in appends] == [
        (1, "one", True),
        (2, "two", False),
        (2, "two", True),
        (3, "three", False),
    ]
    assert log.last_seq == 3
    only_duplicates = await log.append([draft("two?", client="client-0001", ref="r2")])
    assert (only_duplicates.last, list(only_duplicates.originals)) == (None, [0])
    assert (await log.append([])).last is None
    assert log.last_seq == 3


@pytest.mark.asyncio
async def test_a_big_batch_keeps_every_line_in_its_place(opened_log: OpenLog) -> None:
    """101 lines, more than one statement stores (SqliteLog: 64 + 32 + 4 + 1 rows), then 101
    with a re-send last: each line once, in order, with what it said."""
    log = await opened_log()
    first = [draft(f"line {n}", client="client-0001", ref=f"r{n}") for n in range(1, 102)]
    appends = await log.append(first)
    assert (appends.first, appends.last, appends.originals) == (1, 101, {})
    more = [draft(f"more {n}", client="client-0001", ref=f"m{n}") for n in range(1, 101)]
    resent = draft("line 4 again", client="client-0001", ref="r4")
    appends = await log.append([*more, resent])
    assert (appends.first, appends.last) == (102, 201)
    assert {index: record.seq for index, record in appends.originals.items()} == {100: 4}
    stored = await log.before(None, 200) + await log.before(2, 1)
    assert sorted((r.seq, r.text, r.ts, r.ref) for r in stored) == [
        (seq, line.text, line.ts, line.ref) for seq, line in enumerate(first + more, start=1)
    ]


@pytest.mark.asyncio
async def test_records_keep_what_the_draft_said(opened_log: OpenLog) -> None:
    log = await opened_log()
    sent = draft("hello", client="client-0001", ref="r1", sender=BOB)
    [appended] = await log.append([sent])
    assert (await log.before(None, 1)) == [appended.record]
    record = appended.record
    assert (record.sender, record.text, record.ts, record.client, record.ref) == (
        BOB,
        "hello",
        sent.ts,
        "client-0001",
        "r1",
    )


@pytest.mark.asyncio
async def test_before_pages_back_in_ascending_order(opened_log: OpenLog) -> None:
    log = await filled(opened_log, 10)
    assert seqs(await log.before(None, 3)) == [8, 9, 10]
    assert seqs(await log.before(8, 3)) == [5, 6, 7]
    assert seqs(await log.before(3, 5)) == [1, 2]
    assert await log.before(1, 5) == []
    assert seqs(await log.before(99, 2)) == [9, 10]
    assert await log.before(None, 0) == []
    assert [r.text for r in await log.before(3, 1)] == ["line 2"]


@pytest.mark.asyncio
async def test_since_gives_the_newest_and_counts_what_limit_left_out(opened_log: OpenLog) -> None:
    log = await filled(opened_log, 10)
    records, skipped = await log.since(0, 3)
    assert (seqs(records), skipped) == ([8, 9, 10], 7)
    records, skipped = await log.since(7, 5)
    assert (seqs(records), skipped) == ([8, 9, 10], 0)
    records, skipped = await log.since(4, 0)
    assert (records, skipped) == ([], 6)
    assert await log.since(10, 5) == ([], 0)
    assert await log.since(50, 5) == ([], 0)  # a seq from the future: nothing, no error


@pytest.mark.asyncio
async def test_duplicate_across_calls_returns_the_original(opened_log: OpenLog) -> None:
    log = await opened_log()
    [first] = await log.append([draft("hello", client="client-0001", ref="r1")])
    await log.append(lines("in between"))
    [again] = await log.append([draft("hello, resent", client="client-0001", ref="r1")])
    assert again.duplicate
    assert again.record == first.record  # original seq, ts and text
    assert log.last_seq == 2
    assert seqs(await log.before(None, 10)) == [1, 2]


@pytest.mark.asyncio
async def test_duplicate_inside_a_batch_is_a_duplicate_of_the_first(opened_log: OpenLog) -> None:
    log = await opened_log()
    results = await log.append(
        [
            draft("one", client="client-0001", ref="r1"),
            draft("two", client="client-0001", ref="r2"),
            draft("one again", client="client-0001", ref="r1"),
            draft("three"),
        ]
    )
    assert [(a.record.seq, a.record.text, a.duplicate) for a in results] == [
        (1, "one", False),
        (2, "two", False),
        (1, "one", True),
        (3, "three", False),
    ]


@pytest.mark.asyncio
async def test_no_dedup_without_both_client_and_ref(opened_log: OpenLog) -> None:
    log = await opened_log()
    results = await log.append(
        [
            draft("a", client=None, ref="r1"),
            draft("b", client=None, ref="r1"),
            draft("c", client="client-0001", ref=None),
            draft("d", client="client-0001", ref=None),
            draft("e", client="client-0002", ref="r1"),
            draft("f", client="client-0003", ref="r1"),  # same ref, another client
        ]
    )
    assert [(a.record.seq, a.duplicate) for a in results] == [(n, False) for n in range(1, 7)]


@pytest.mark.asyncio
async def test_keep_trims_the_oldest(opened_log: OpenLog) -> None:
    log = await filled(opened_log, 12, keep=5)
    assert seqs(await log.before(None, 100)) == [8, 9, 10, 11, 12]
    assert seqs(await log.before(9, 100)) == [8]
    records, skipped = await log.since(0, 100)
    assert (seqs(records), skipped) == ([8, 9, 10, 11, 12], 0)
    records, skipped = await log.since(2, 3)
    assert (seqs(records), skipped) == ([10, 11, 12], 2)  # 3..7 are gone, not skipped
    assert log.last_seq == 12


@pytest.mark.asyncio
async def test_dedup_forgets_trimmed_lines(opened_log: OpenLog) -> None:
    log = await opened_log(3)
    await log.append([draft("old", client="client-0001", ref="r1")])
    await log.append(lines("b", "c"))
    [kept] = await log.append([draft("old again", client="client-0001", ref="r1")])
    assert kept.duplicate  # line 1 is still among the newest 3
    await log.append(lines("d"))
    [resent] = await log.append([draft("old again", client="client-0001", ref="r1")])
    assert not resent.duplicate
    assert (resent.record.seq, resent.record.text) == (5, "old again")
    [again] = await log.append([draft("and again", client="client-0001", ref="r1")])
    assert (again.duplicate, again.record.seq) == (True, 5)


@pytest.mark.asyncio
async def test_open_returns_the_tail_and_the_highest_peer_id(logs: Logs) -> None:
    log = logs.new(keep=4)
    await log.open(0)
    peers = [Peer("3", "a", "x"), Peer("12", "b", "x"), Peer("abc", "c", "x"), Peer("7", "d", "x")]
    await log.append([draft(f"line {n}", sender=peer) for n, peer in enumerate(peers * 2)])
    log = await logs.reopen(log, keep=4)
    opened = await log.open(2)
    assert opened.last_seq == 8
    assert [(r.seq, r.text) for r in opened.tail] == [(7, "line 6"), (8, "line 7")]
    assert_peer_floor(logs, opened.max_peer_id, 12)  # "12" was trimmed away: still remembered
    log = await logs.reopen(log, keep=4)
    assert seqs((await log.open(100)).tail) == [5, 6, 7, 8]


@pytest.mark.asyncio
async def test_a_new_log_opens_empty(logs: Logs) -> None:
    opened = await logs.new().open(50)
    assert (opened.last_seq, opened.tail, opened.max_peer_id) == (0, [], 0)


@pytest.mark.asyncio
async def test_non_numeric_peer_ids_count_as_zero(logs: Logs) -> None:
    log = logs.new()
    await log.open(0)
    await log.append([draft("x", sender=Peer("abc", "a", "x")), draft("y", sender=ANN)])
    log = await logs.reopen(log)
    assert_peer_floor(logs, (await log.open(0)).max_peer_id, 1)


@pytest.mark.asyncio
async def test_negative_limits_are_a_caller_bug(opened_log: OpenLog) -> None:
    log = await opened_log()
    with pytest.raises(ValueError, match="limit"):
        await log.before(None, -1)
    with pytest.raises(ValueError, match="limit"):
        await log.since(0, -1)


@pytest.mark.asyncio
async def test_keep_must_be_positive(logs: Logs) -> None:
    with pytest.raises(ValueError, match="keep"):
        logs.new(keep=0)
