"""Pacing of ``history`` answers: one at a time per address, within its byte budget.

A ``history`` frame of 40 bytes can ask for a page of 3.2 MB, read on the log's worker thread
(which stores everyone's lines too), encoded and encrypted on the event loop. The frame rate
limit is per connection and starts fresh with each one, so a single address holding 20
connections, or reconnecting in a loop, could keep a core busy and the whole room's acks
waiting. Here every address (IPv6: its /64, as for wrong passwords) has a ``ByteBudget``
shared by all its connections; its requests are answered one at a time, each connection in
turn, and a request beyond the budget is not refused but waits: the protocol is unchanged,
the answer (and its ``history_end``) only comes later.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from chatsecure.protocol import limits
from chatsecure.protocol.messages import HistoryRequest
from chatsecure.protocol.ratelimit import ByteBudget

log = logging.getLogger(__name__)


class Asker(Protocol):
    """What the pacer needs of a connection: whether it is gone (hashable by identity)."""

    @property
    def gone(self) -> bool: ...


A = TypeVar("A", bound=Asker)

Answer = Callable[[A, HistoryRequest], Awaitable[int]]
"""Answers one request (sends it to the connection) and returns its cost in bytes."""


@dataclass(slots=True, eq=False)
class _Address(Generic[A]):
    """One address's budget and the connections whose requests wait, in turn order."""

    budget: ByteBudget
    turns: collections.deque[A] = field(default_factory=collections.deque)
    busy: bool = False
    """Whether a task is answering this address's requests (it ends when none wait)."""
    held: bool = False
    """Whether this episode of waiting was logged (once, until nothing more waits)."""


class HistoryPacer(Generic[A]):
    """Answers ``history`` requests in turns: per address one at a time, within its budget.

    Each connection's requests are answered in the order they came, one at a time; the
    connections of an address take turns, one request each, so that one connection's many
    requests do not keep another's waiting for all of them. A connection gone before its turn
    comes has its requests dropped unanswered, nothing read for them.
    """

    def __init__(
        self,
        answer: Answer[A],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        *,
        rate: float = limits.HISTORY_RATE,
        burst: float = limits.HISTORY_BURST,
        tracked: int = limits.AUTH_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``spawn`` runs a coroutine as a task (the room's, so that its close cancels it)."""
        self._answer = answer
        self._spawn = spawn
        self._rate = rate
        self._burst = burst
        self._tracked = tracked
        self._clock = clock
        self._addresses: collections.OrderedDict[str, _Address[A]] = collections.OrderedDict()
        """Budgets by address, the one asked of last, last."""
        self._asked: dict[A, collections.deque[HistoryRequest]] = {}
        """The requests of each connection not answered yet (the first may be under way)."""

    @property
    def addresses(self) -> int:
        """How many addresses' budgets are remembered."""
        return len(self._addresses)

    def waiting(self, asker: A) -> int:
        """How many of ``asker``'s requests wait (or are being answered)."""
        return len(self._asked.get(asker, ()))

    def ask(self, asker: A, key: str, request: HistoryRequest) -> None:
        """Answer ``request`` of ``asker`` (from address ``key``) when its turn comes."""
        address = self._address(key)
        waiting = self._asked.get(asker)
        if waiting is not None:
            waiting.append(request)  # (as many as the frame rate limit lets in)
            return
        self._asked[asker] = collections.deque((request,))
        address.turns.append(asker)
        if not address.busy:
            address.busy = True
            self._spawn(self._take_turns(key, address))

    def _address(self, key: str) -> _Address[A]:
        """``key``'s budget, made if it has none, now the last asked of; forget idle ones."""
        now = self._clock()
        table = self._addresses
        address = table.pop(key, None)
        if address is None:
            address = _Address(ByteBudget(self._rate, self._burst, now))
        table[key] = address
        # An address with its whole burst saved up and nothing waiting is as good as new:
        # forgotten, it costs no memory. Under a spray of addresses, past ``tracked`` the
        # oldest idle one goes even if it is still paying back (as wrong passwords are).
        for _ in range(len(table) - 1):
            oldest, first = next(iter(table.items()))
            if oldest == key:
                break
            if first.busy:
                table.move_to_end(oldest)  # (in use: it goes last, and is looked at later)
            elif len(table) > self._tracked or first.budget.full(now):
                del table[oldest]
            else:
                break
        return address

    async def _take_turns(self, key: str, address: _Address[A]) -> None:
        """Answer the address's waiting requests until none wait, each connection in turn."""
        asker: A | None = None
        try:
            while address.turns:
                asker = address.turns.popleft()
                requests = self._asked[asker]
                if not asker.gone:
                    wait = address.budget.wait(self._clock())
                    if wait > 0:
                        self._held_back(key, address, wait)
                        await asyncio.sleep(wait)
                if asker.gone:
                    del self._asked[asker]  # dropped, nothing read for them
                    continue
                try:
                    cost = await self._answer(asker, requests.popleft())
                except Exception:  # a bug: said, and the others waiting are still answered
                    log.exception("could not answer a history request from %s", key)
                    cost = 0
                address.budget.charge(cost, self._clock())
                if requests and not asker.gone:
                    address.turns.append(asker)  # its next one after the others' turn
                else:
                    del self._asked[asker]
        finally:
            # (Something waits only when cancelled, the room closing.)
            for left in (asker, *address.turns):
                if left is not None:
                    self._asked.pop(left, None)
            address.turns.clear()
            address.busy = address.held = False

    def _held_back(self, key: str, address: _Address[A], wait: float) -> None:
        """Say so once per episode (until nothing more of the address waits)."""
        if not address.held:
            address.held = True
            log.debug(
                "history answers to %s held back (%.1f s): over %d KiB/s of pages",
                key,
                wait,
                self._rate // 1024,
            )
