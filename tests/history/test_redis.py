"""RedisLog: what only a log shared by several servers does, on a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatsecure.history import (
    Draft,
    Fed,
    HistoryError,
    LogReset,
    MemoryLog,
    SharedLog,
    SqliteLog,
)
from chatsecure.history.redis import ID_BLOCK, RedisLog, public_url, room_prefix
from chatsecure.protocol.messages import Chat, encode
from tests.history.conftest import BOB, draft, lines
from tests.history.test_property import batches, queries
from tests.redis_server import RedisServer, free_port, room_name


@contextlib.asynccontextmanager
async def opened(url: str, room: str, keep: int = 1000) -> AsyncIterator[RedisLog]:
    log = RedisLog(url, room, keep)
    try:
        await log.open(0)
        yield log
    finally:
        await log.close()


@settings(max_examples=60, deadline=None)
@given(keep=st.integers(1, 12), batches=batches, queries=queries, tail=st.integers(0, 15))
def test_redis_and_memory_logs_agree(
    redis_server: RedisServer,
    keep: int,
    batches: list[list[Draft]],
    queries: list[tuple[int, int]],
    tail: int,
) -> None:
    asyncio.run(compare(redis_server.url, keep, batches, queries, tail))


async def compare(
    url: str, keep: int, batches: list[list[Draft]], queries: list[tuple[int, int]], tail: int
) -> None:
    memory = MemoryLog(keep)
    room = room_name()
    async with opened(url, room, keep) as shared:
        for batch in batches:
            assert await shared.append(batch) == await memory.append(batch)
            assert shared.last_seq == memory.last_seq
    async with opened(url, room, keep) as shared:  # another node, or a restart
        got = await shared.open(tail)
        want = await memory.open(tail)
        assert (got.last_seq, got.tail) == (want.last_seq, want.tail)
        for seq, limit in queries:
            assert await shared.before(seq, limit) == await memory.before(seq, limit)
            assert await shared.since(seq, limit) == await memory.since(seq, limit)


@pytest.mark.asyncio
async def test_two_nodes_appending_at_once_share_one_gapless_sequence(
    redis_server: RedisServer,
) -> None:
    room = room_name()
    async with opened(redis_server.url, room) as a, opened(redis_server.url, room) as b:

        async def talk(log: RedisLog, name: str) -> list[int]:
            seqs = []
            for n in range(20):
                results = await log.append(lines(f"{name} {n}a", f"{name} {n}b"))
                seqs += [r.record.seq for r in results]
            return seqs

        from_a, from_b = await asyncio.gather(talk(a, "a"), talk(b, "b"))
        assert sorted(from_a + from_b) == list(range(1, 81))
        for seqs in (from_a, from_b):  # each batch got consecutive seqs
            assert all(seqs[i + 1] == seqs[i] + 1 for i in range(0, len(seqs), 2))
        stored = await a.before(None, 100)
        assert [r.seq for r in stored] == list(range(1, 81))
        assert stored == await b.before(None, 100)


@pytest.mark.asyncio
async def test_a_line_resent_to_another_node_is_a_duplicate(redis_server: RedisServer) -> None:
    room = room_name()
    async with opened(redis_server.url, room) as a, opened(redis_server.url, room) as b:
        [first] = await a.append([draft("hello", client="client-0001", ref="r1", sender=BOB)])
        [again] = await b.append([draft("hello", client="client-0001", ref="r1")])
        assert (again.duplicate, again.record) == (True, first.record)
        assert [r.seq for r in await b.before(None, 10)] == [1]


@pytest.mark.asyncio
async def test_follow_brings_every_nodes_lines_in_seq_order(redis_server: RedisServer) -> None:
    room = room_name()
    async with opened(redis_server.url, room) as a, opened(redis_server.url, room) as b:
        await a.append(lines("before"))
        got: list[Fed] = []

        async def follow() -> None:
            async for fed in b.follow(1):
                got.extend(fed)
                if len(got) >= 4:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.1)  # the follower is blocked in XREAD now
        await a.append(lines("one", "two"))
        await b.append(lines("three"))
        await a.append(lines("four"))
        await asyncio.wait_for(follower, 10)
        assert [(f.seq, json.loads(f.frame())["text"]) for f in got] == [
            (2, "one"),
            (3, "two"),
            (4, "three"),
            (5, "four"),
        ]
        stored = await b.before(None, 4)  # the frames are the lines, exactly as encode gives them
        assert [f.frame() for f in got] == [
            encode(Chat(r.sender, r.text, r.ts, r.seq)) for r in stored
        ]
        assert b.last_seq == 5


@pytest.mark.asyncio
async def test_each_open_reserves_its_own_peer_ids(redis_server: RedisServer) -> None:
    room = room_name()
    starts = []
    for _ in range(3):
        log = RedisLog(redis_server.url, room, 10)
        starts.append((await log.open(0)).max_peer_id)
        await log.close()
    assert starts == [0, ID_BLOCK, 2 * ID_BLOCK]


@pytest.mark.asyncio
async def test_rooms_do_not_share_lines(redis_server: RedisServer) -> None:
    async with (
        opened(redis_server.url, "one {room}") as one,
        opened(redis_server.url, "one {room}x") as other,
    ):
        await one.append(lines("a", "b"))
        [appended] = await other.append(lines("c"))
        assert appended.record.seq == 1
        assert [r.text for r in await other.before(None, 10)] == ["c"]
    assert room_prefix("one {room}") == "chatsecure:{one%20%7Broom%7D}:"


@pytest.mark.asyncio
async def test_a_log_redis_lost_refuses_lines_until_opened_again(
    redis_server: RedisServer,
) -> None:
    room = room_name()
    async with opened(redis_server.url, room) as log:
        await log.append(lines("a", "b"))
        await log.redis.delete(*await log.redis.keys(room_prefix(room) + "*"))  # Redis emptied
        with pytest.raises(LogReset, match=r"Redis lost what it held"):
            await log.append(lines("c"))
        assert await log.redis.hget(room_prefix(room) + "meta", "seq") is None  # nothing stored
        async with opened(redis_server.url, room) as again:  # a new start: the new log's seqs
            [appended] = await again.append(lines("c"))
            assert appended.record.seq == 1
            with pytest.raises(LogReset):  # and the old node is still out (another epoch)
                await log.append(lines("d"))


@pytest.mark.asyncio
async def test_a_log_whose_counter_went_back_refuses_lines(redis_server: RedisServer) -> None:
    """A Redis that failed over to a replica that lagged: the same log, an older counter."""
    room = room_name()
    async with opened(redis_server.url, room) as log:
        await log.append(lines("a", "b", "c"))
        await log.redis.hset(room_prefix(room) + "meta", "seq", 1)
        with pytest.raises(LogReset):
            await log.append(lines("d"))
        assert [r.text for r in await log.before(None, 10)] == ["a", "b", "c"]


@pytest.mark.asyncio
async def test_unreachable_redis_is_a_clear_error_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    log = RedisLog(url, "room", 10)
    with pytest.raises(HistoryError, match=rf"cannot use the Redis at {url} .*--cluster"):
        await log.open(0)
    await log.close()


def test_a_bad_url_is_a_clear_error() -> None:
    with pytest.raises(HistoryError, match="not a Redis URL"):
        RedisLog("http://127.0.0.1:1/", "room", 10)
    with pytest.raises(HistoryError, match=r"the database is a number .*, not 'abc'"):
        RedisLog("redis://127.0.0.1:1/abc", "room", 10)
    for fine in (  # (nothing connects before open())
        "redis://127.0.0.1:1/2",
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:1/x?db=2",  # the query's db is the one
        "unix:///run/redis.sock?db=2",  # the path is the socket's
    ):
        RedisLog(fine, "room", 10)


def test_public_url_hides_the_password() -> None:
    assert public_url("redis://:s3cret@db.example:6380/2") == "redis://:***@db.example:6380/2"
    assert public_url("redis://ann:pw@[::1]/0") == "redis://ann:***@[::1]/0"
    assert public_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_redis_log_is_a_shared_log_and_the_others_are_not(tmp_path: Path) -> None:
    assert isinstance(RedisLog("redis://127.0.0.1:1/0", "room", 10), SharedLog)
    assert not isinstance(MemoryLog(10), SharedLog)
    assert not isinstance(SqliteLog(tmp_path / "h.sqlite3", 10), SharedLog)
