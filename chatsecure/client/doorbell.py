"""A self-pipe that wakes the front end's event loop when another thread has news for it.

Tk keeps its ``after`` timers on the wall clock: set the clock back ten minutes (an NTP step,
a user correcting a fast clock) and a poll armed before waits ten minutes. A pipe's read end,
watched with ``createfilehandler``, is driven by the notifier's ``select()`` instead, so the
window takes the network's events whatever the clock does. Unix only (Tk on Windows watches no
files): there the front end polls with ``after`` alone.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Doorbell:
    """One pipe: ``ring`` from any thread, watch ``fileno`` and ``answer`` on the reader's.

    A ring that is not answered yet writes nothing more, so a flood of events costs one byte,
    not one per event. ``close`` from the reader's thread; rings after it do nothing.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # (not inherited by child processes)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()
        """Held to write, and to close: a late ring must never write to a reused fd number."""
        self._rung = False
        """A byte is (or is about to be) in the pipe and ``answer`` has not run since."""
        self._closed = False

    @property
    def fileno(self) -> int:
        """The read end, to watch for READABLE."""
        return self._read

    def ring(self) -> None:
        """Wake the reader (any thread); cheap while a ring is unanswered."""
        if self._rung:
            return
        with self._lock:
            if self._closed or self._rung:
                return
            self._rung = True
            with contextlib.suppress(BlockingIOError):  # full: readable already
                os.write(self._write, b"\0")

    def answer(self) -> None:
        """Empty the pipe (reader's thread); then take whatever the rings were for.

        Emptied, then the flag cleared: a ring from then on writes again. (Cleared first, a
        ring between the two would leave the flag set and the pipe empty: no ring would
        write again, and news would wait for the reader's next tick.)
        """
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass
        self._rung = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._read)
            os.close(self._write)


class RingingQueue(queue.Queue[T]):
    """A ``queue.Queue`` that calls ``ring`` after each ``put`` (on the putting thread)."""

    def __init__(self, ring: Callable[[], None]) -> None:
        super().__init__()
        self._ring = ring

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._ring()
