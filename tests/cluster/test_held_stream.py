"""The room in cluster mode, with a stream the test releases line by line (no Redis needed).

``HeldLog`` is a ``MemoryLog`` that is also a ``SharedLog``: what it stores reaches ``follow``
only when the test says so, as if the stream were slow. The server and clients are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from chatsecure.history import Appends, Draft, Fed, HistoryError, MemoryLog, Record, SharedLog
from chatsecure.protocol.messages import Peer
from chatsecure.server import ChatServer
from chatsecure.testing import RawClient, ServerThread, server_config


class HeldLog(MemoryLog):
    """Stored lines reach ``follow`` only through ``release``."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.stored: list[Record] = []
        self._released = 0
        self._stream: asyncio.Queue[list[Record]] = asyncio.Queue()
        self.answering = asyncio.Event()
        """Cleared: stores are made, but their answers wait (a slow reply from the log)."""
        self.answering.set()
        self.failing = False
        """True: a store's answer is lost (as when Redis stored it and the reply timed out)."""
        self.stores = 0
        """How many batches were stored (re-sends included)."""
        self._elsewhere: set[asyncio.Task[Appends]] = set()

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        results = await self._store(drafts)
        await self.answering.wait()
        if self.failing:
            raise HistoryError("the answer to a store was lost")
        return results

    async def _store(self, drafts: Sequence[Draft]) -> Appends:
        results = await super().append(drafts)
        self.stored += [a.record for a in results if not a.duplicate]
        self.stores += 1
        return results

    def store_elsewhere(self, draft: Draft) -> None:
        """Store ``draft`` as another server of the cluster would (on the server's loop)."""
        task = asyncio.get_running_loop().create_task(self._store([draft]))
        self._elsewhere.add(task)
        task.add_done_callback(self._elsewhere.discard)

    def release(self, count: int) -> None:
        """Let the next ``count`` stored lines reach the followers (on the server's loop)."""
        records = self.stored[self._released : self._released + count]
        assert len(records) == count
        self._released += count
        self._stream.put_nowait(records)

    async def follow(self, after: int) -> AsyncIterator[list[Fed]]:
        while True:
            yield [Fed.of(record) for record in await self._stream.get()]


@pytest.fixture
def held(cert_dir: Path) -> Iterator[tuple[ServerThread, HeldLog]]:
    log = HeldLog(100)
    assert isinstance(log, SharedLog)
    thread = ServerThread(server_config(cert_dir, msg_rate=0))
    thread.server = ChatServer(thread.config, log)
    with thread:
        try:
            yield thread, log
        finally:  # a store still waiting would hold up the server's shutdown
            thread.call(log.answering.set)


def until(
    server: ServerThread, log: HeldLog, waiter: RawClient, *, lines: int = 0, stores: int = 0
) -> None:
    """Wait (a while) until ``log`` holds ``lines`` lines and has stored ``stores`` batches."""

    def counts() -> tuple[int, int]:
        return len(log.stored), log.stores

    for _ in range(100):
        if server.call(counts) >= (lines, stores):
            return
        waiter.silent(0.05)
    have = server.call(counts)
    raise AssertionError(f"{have[0]} lines in {have[1]} batches, not {lines} in {stores}")


def test_an_ack_waits_until_the_lines_before_it_are_broadcast(
    held: tuple[ServerThread, HeldLog],
) -> None:
    server, log = held
    with RawClient(server.host, server.port) as bob, RawClient(server.host, server.port) as ann:
        bob.join("bob")
        ann.join("ann")
        bob.expect("join")
        bob.send({"type": "msg", "text": "first", "ref": "b1"})
        assert ann.silent()  # not broadcast: the stream has not brought it yet
        ann.send({"type": "msg", "text": "second", "ref": "a1"})
        until(server, log, ann, lines=2)
        assert [r.text for r in log.stored] == ["first", "second"]  # both stored...
        assert ann.silent()  # ...but ann's ack (seq 2) must not come before line 1
        assert bob.silent()
        server.call(log.release, 1)
        assert (bob.expect("ack")["seq"], ann.expect("msg")["seq"]) == (1, 1)
        assert ann.silent()
        server.call(log.release, 1)
        assert (ann.expect("ack")["seq"], bob.expect("msg")["seq"]) == (2, 2)
        assert ann.silent()
        assert bob.silent()


def test_an_ack_comes_in_its_place_when_the_stream_brings_the_line_before_the_store_answers(
    held: tuple[ServerThread, HeldLog],
) -> None:
    server, log = held
    with RawClient(server.host, server.port) as ann, RawClient(server.host, server.port) as bob:
        ann.join("ann", client="client-ann-01")
        bob.join("bob")
        ann.expect("join")
        server.call(log.answering.clear)
        ann.send({"type": "msg", "text": "mine", "ref": "a1"})
        until(server, log, ann, lines=1)
        other = Draft(Peer("4000000001", "zoe", "127.0.0.2"), "from elsewhere", 1.0e9, None, None)
        server.call(log.store_elsewhere, other)
        until(server, log, ann, lines=2)
        server.call(log.release, 2)  # the stream is quicker than ann's store's answer
        ack, line = ann.recv(), ann.recv()
        assert (ack["type"], ack["ref"], ack["seq"]) == ("ack", "a1", 1)
        assert (line["type"], line["seq"], line["text"]) == ("msg", 2, "from elsewhere")
        assert [(m["seq"], m["text"]) for m in (bob.expect("msg") for _ in range(2))] == [
            (1, "mine"),
            (2, "from elsewhere"),
        ]
        server.call(log.answering.set)
        assert ann.silent()  # the store's answer does not ack it again


def test_a_resend_while_the_stream_lags_gets_one_ack_per_send(
    held: tuple[ServerThread, HeldLog],
) -> None:
    server, log = held
    with RawClient(server.host, server.port) as ann:
        ann.join("ann", client="client-ann-01")
        ann.send({"type": "msg", "text": "mine", "ref": "a1"})
        until(server, log, ann, stores=1)  # answered: its ack waits for the stream
        server.call(log.answering.clear)
        ann.send({"type": "msg", "text": "mine", "ref": "a1"})  # sent again, same connection
        until(server, log, ann, stores=2)  # a duplicate, its answer held
        server.call(log.release, 1)
        assert (ann.expect("ack")["seq"], ann.silent()) == (1, True)
        server.call(log.answering.set)
        assert (ann.expect("ack")["seq"], ann.silent()) == (1, True)


def test_a_line_the_stream_acked_is_not_refused_when_the_store_answer_is_lost(
    held: tuple[ServerThread, HeldLog],
) -> None:
    server, log = held
    with RawClient(server.host, server.port) as ann:
        ann.join("ann", client="client-ann-01")
        server.call(log.answering.clear)
        ann.send({"type": "msg", "text": "mine", "ref": "a1"})
        until(server, log, ann, stores=1)
        server.call(log.release, 1)  # stored: the stream brings it before the answer
        assert ann.expect("ack")["seq"] == 1
        server.call(setattr, log, "failing", True)
        server.call(log.answering.set)  # the answer is lost after all
        told = ann.expect("notice")  # the room's log seems out of reach: said once
        assert told["code"] == "cluster_unavailable"
        assert ann.silent()  # but no not_stored for a line everyone has


def test_a_line_the_stream_brings_twice_is_broadcast_once(
    held: tuple[ServerThread, HeldLog],
) -> None:
    server, log = held
    with RawClient(server.host, server.port) as bob, RawClient(server.host, server.port) as ann:
        bob.join("bob")
        ann.join("ann")
        bob.expect("join")
        bob.send({"type": "msg", "text": "once"})
        until(server, log, ann, lines=1)
        server.call(log.release, 1)
        assert ann.expect("msg")["text"] == "once"
        # A feed that reads on from an older seq (after losing Redis) brings it again.
        server.call(log._stream.put_nowait, list(log.stored))
        assert ann.silent()
