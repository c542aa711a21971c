"""The doorbell (a self-pipe) wakes a reader once for many rings, and never after close."""

from __future__ import annotations

import os
import select
import threading

import pytest

from chatsecure.client.doorbell import Doorbell, RingingQueue

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the doorbell is for Unix")


def readable(bell: Doorbell) -> bool:
    return bool(select.select([bell.fileno], [], [], 0)[0])


def test_many_rings_write_one_byte_until_answered() -> None:
    bell = Doorbell()
    try:
        assert not readable(bell)
        for _ in range(1000):
            bell.ring()
        assert readable(bell)
        assert os.read(bell.fileno, 4096) == b"\0"  # one byte, not one a ring
        bell.answer()
        assert not readable(bell)
        bell.ring()  # a ring after the answer wakes the reader again
        assert readable(bell)
        bell.answer()
        assert not readable(bell)
    finally:
        bell.close()


def test_rings_from_other_threads_are_not_lost() -> None:
    bell = Doorbell()
    try:
        threads = [threading.Thread(target=bell.ring) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert readable(bell)
    finally:
        bell.close()


def test_a_ring_after_close_does_nothing_and_the_fds_are_closed() -> None:
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    bell = Doorbell()
    bell.close()
    bell.close()
    bell.ring()  # (a network thread that ends after the window)
    bell.answer()
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


def test_a_ringing_queue_rings_on_each_put() -> None:
    rings: list[None] = []
    events: RingingQueue[int] = RingingQueue(lambda: rings.append(None))
    events.put(1)
    events.put_nowait(2)
    assert len(rings) == 2
    assert [events.get_nowait(), events.get_nowait()] == [1, 2]


def test_a_ring_while_the_reader_empties_the_pipe_leaves_the_bell_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bell = Doorbell()
    read = os.read

    def read_then_ring(fd: int, n: int) -> bytes:
        monkeypatch.setattr(os, "read", read)
        data = read(fd, n)
        bell.ring()  # another thread rings as the reader empties the pipe
        return data

    try:
        bell.ring()
        monkeypatch.setattr(os, "read", read_then_ring)
        bell.answer()
        # (The reader takes the news of that ring next, in this same turn.) A later ring
        # must wake the reader again: not be taken for one still unanswered.
        bell.ring()
        assert readable(bell)
    finally:
        bell.close()
