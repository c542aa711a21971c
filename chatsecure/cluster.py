"""Several servers, one room: the feed of lines that every server of a cluster stored.

In a cluster (``--cluster``) the room's log is a ``SharedLog`` that every server appends to.
A server does not broadcast its own lines when they are stored, as it does alone: each server
broadcasts, to its own clients, every line the log's stream brings it, its own included, in
seq order, once. ``StreamFeed`` is that reading loop; ``Room`` does the broadcasting.

When the log is out of reach (Redis stopped, restarted, unreachable), the node keeps its
clients: it logs the outage once, tells its clients once (a ``notice`` ``cluster_unavailable``),
and the room refuses new lines (``not_stored``, with their ``ref``) instead of losing them. The
feed tries again, from the newest seq the room broadcast, with a growing pause; once the log
answers again (a read or a store), the node logs it and tells its clients
(``cluster_available``), and the feed brings what was stored meanwhile: nothing is skipped and
nothing comes twice.

When the log comes back *empty* (a Redis restarted without persistence, or flushed: a
``LogReset``), its seqs and ids start again, and a node that read on would wait for lines of
its old numbers while new lines went by. The node restarts instead, as a single server does
after losing its database: it tells its clients ``shutdown`` (they come back by themselves) and
opens the room again on what Redis holds now (``chatsecure.server.serve``). A node that finds
the others took it for lost (``Evicted``: paused longer than a heartbeat lasts) restarts too:
its users were told they left, and come back in by reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from chatsecure.history import Fed, HistoryError, LogReset, SharedLog
from chatsecure.protocol.codes import NoticeCode
from chatsecure.protocol.messages import Notice, Peer, encode

log = logging.getLogger(__name__)


class Evicted(HistoryError):
    """The other servers of the cluster took this one for lost (it was paused, or cut off
    from Redis, for longer than a heartbeat lasts): its users were told they left, and their
    nicks are free. It must start again, so that they come back into the room."""

    def __init__(self) -> None:
        super().__init__(
            "cluster: this node was taken for lost (no heartbeat for longer than a heartbeat "
            "lasts) and the others were told its users left"
        )


NODE_LOST = "node_lost"
"""The ``reason`` of the leaves of the users of a node that died (or stopped)."""

RETRY_FIRST = 0.1
"""Seconds before the feed reads the stream again after losing it; doubled each time."""

RETRY_MAX = 5.0
"""Longest pause between two tries to read the stream again."""

STOP_AGAIN = 0.5
"""Seconds after which a feed that was told to stop and still runs is told again."""


LOST = encode(
    Notice(
        NoticeCode.CLUSTER_UNAVAILABLE,
        "the room's shared log is out of reach: new lines are refused until it is back",
    )
)
"""Told to every client of a node when it loses the shared log (once per outage)."""

BACK = encode(
    Notice(NoticeCode.CLUSTER_AVAILABLE, "the room's shared log is back: lines are taken again")
)
"""Told to every client of a node when the shared log answers again."""

REFUSED = (
    "the room's shared log is out of reach; once it is back, say it again if it does not show"
    " (a log that was only slow may store it after all)"
)
"""The ``not_stored`` error's message for a line said while the shared log is out of reach."""


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A join (``reason`` None) or a leave on any server of the cluster (``chatsecure.presence``).

    ``after`` is its place among the lines: every server announces it after line ``after`` and
    before line ``after + 1``.
    """

    peer: Peer
    after: int
    reason: str | None = None


class StreamFeed:
    """Hands ``deliver`` every batch of lines stored after ``position()``, until stopped.

    It also keeps whether the shared log is reachable (``up``): ``lost`` and ``reached`` (from
    the feed itself or from the room's stores) log a change once and ``tell`` the clients.
    """

    def __init__(
        self,
        shared: SharedLog,
        deliver: Callable[[list[Fed]], None],
        position: Callable[[], int],
        tell: Callable[[bytes], None],
        restart: Callable[[HistoryError], None],
    ) -> None:
        self._log = shared
        self._deliver = deliver
        self._position = position
        self._tell = tell
        self._restart = restart
        self._task: asyncio.Task[None] | None = None
        self.up = True
        """Whether the shared log answered the last time it was used."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-feed")
        self._task.add_done_callback(_report_death)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel(self._task)
            self._task = None

    def lost(self, exc: Exception) -> None:
        """The shared log failed: log it and tell the clients, once per outage (or, if it
        lost what it held, have the server restart)."""
        if isinstance(exc, LogReset):
            self._restart(exc)
        elif self.up:
            self.up = False
            log.warning("cluster: %s; new lines are refused until it is back", exc)
            self._tell(LOST)
        else:
            log.debug("cluster: still out of reach: %s", exc)

    def reached(self) -> None:
        """The shared log answered: if it was lost, log and tell that it is back."""
        if not self.up:
            self.up = True
            log.warning("cluster: the room's log is back; reading on from seq %d", self._position())
            self._tell(BACK)

    async def _run(self) -> None:
        pause = RETRY_FIRST
        while True:
            try:
                async for records in self._log.follow(self._position()):
                    self.reached()
                    if records:
                        self._deliver(records)
                    pause = RETRY_FIRST
            except HistoryError as exc:
                self.lost(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` (one that talks to Redis) and wait until it has ended.

    A cancellation that lands as a reply arrives can be lost inside redis-py (seen with redis
    8.1 on Python 3.11: the feed read on, "cancelling" for ever): it is given again until the
    task ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=STOP_AGAIN)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _report_death(task: asyncio.Task[None]) -> None:
    """A feed that stops by itself is a bug: say so loudly rather than go quiet."""
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster: the feed of the room's lines stopped", exc_info=task.exception())
