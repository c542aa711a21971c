"""Several servers, one room: the feed of lines that every server of a cluster stored.

In a cluster (``--cluster``) the room's log is a ``SharedLog`` that every server appends to.
A server does not broadcast its own lines when they are stored, as it does alone: each server
broadcasts, to its own clients, every line the log's stream brings it, its own included, in
seq order, once. ``StreamFeed`` is that reading loop; ``Room`` does the broadcasting.

When the log is out of reach, the feed logs it and tries again, from the newest seq the room
broadcast, with a growing pause: nothing is skipped and nothing comes twice once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from chatsecure.history import HistoryError, Record, SharedLog

log = logging.getLogger(__name__)

RETRY_FIRST = 0.1
"""Seconds before the feed reads the stream again after losing it; doubled each time."""

RETRY_MAX = 5.0
"""Longest pause between two tries to read the stream again."""


class StreamFeed:
    """Hands ``deliver`` every batch of lines stored after ``position()``, until stopped."""

    def __init__(
        self,
        shared: SharedLog,
        deliver: Callable[[list[Record]], None],
        position: Callable[[], int],
    ) -> None:
        self._log = shared
        self._deliver = deliver
        self._position = position
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-feed")
        self._task.add_done_callback(_report_death)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        pause = RETRY_FIRST
        while True:
            try:
                async for records in self._log.follow(self._position()):
                    self._deliver(records)
                    pause = RETRY_FIRST
            except HistoryError as exc:
                log.warning("cluster: %s; reading on in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)


def _report_death(task: asyncio.Task[None]) -> None:
    """A feed that stops by itself is a bug: say so loudly rather than go quiet."""
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster: the feed of the room's lines stopped", exc_info=task.exception())
