"""``MemoryLog``: the room log kept in memory, for tests and for a server without a database."""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Sequence

from chatsecure.history.log import Appends, Draft, Opened, Record, check_limit, peer_number


class MemoryLog:
    """The newest ``keep`` records in a deque, and their ``(client, ref)`` pairs in a dict.

    Same semantics as ``SqliteLog`` except durability: everything is gone with the process.
    Seqs are consecutive, so a record's place in the deque is ``seq - first seq``; the dict
    holds exactly the pairs of the records in the deque, so a line trimmed away is forgotten
    for deduplication too (as ``RoomLog`` says: only the newest ``keep`` are visible).
    """

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep} (keep 0 means no log at all)")
        self._keep = keep
        self._records: deque[Record] = deque()
        self._by_ref: dict[tuple[str, str], Record] = {}
        self._last_seq = 0
        self._max_peer_id = 0
        self._log_id = secrets.token_hex(8)  # gone with the process, as the lines are

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def keep(self) -> int:
        return self._keep

    async def open(self, tail: int) -> Opened:
        first = self._records[0].seq if self._records else self._last_seq + 1
        return Opened(
            self._last_seq, await self.before(None, tail), self._max_peer_id, first, self._log_id
        )

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        appends = Appends(drafts, self._last_seq + 1)
        for index, draft in enumerate(drafts):
            original = self._append_one(draft)
            if original is not None:
                appends.originals[index] = original
        return appends

    def _append_one(self, draft: Draft) -> Record | None:
        """Store ``draft``; or, if it is a duplicate, return the original and store nothing."""
        key = _ref_key(draft.client, draft.ref)
        if key is not None and (original := self._by_ref.get(key)) is not None:
            return original
        self._last_seq += 1
        record = Record(self._last_seq, draft.sender, draft.text, draft.ts, draft.client, draft.ref)
        self._records.append(record)
        if key is not None:
            self._by_ref[key] = record
        self._max_peer_id = max(self._max_peer_id, peer_number(draft.sender.id))
        if len(self._records) > self._keep:
            old = self._records.popleft()
            old_key = _ref_key(old.client, old.ref)
            if old_key is not None:
                del self._by_ref[old_key]
        return None

    async def before(self, seq: int | None, limit: int) -> list[Record]:
        check_limit("limit", limit)
        end = len(self._records) if seq is None else self._index(seq)
        return self._slice(max(0, end - limit), end)

    async def since(self, seq: int, limit: int) -> tuple[list[Record], int]:
        check_limit("limit", limit)
        start = self._index(seq + 1)
        available = len(self._records) - start
        taken = min(limit, available)
        return self._slice(len(self._records) - taken, len(self._records)), available - taken

    async def close(self) -> None:
        self._records.clear()
        self._by_ref.clear()

    def _index(self, seq: int) -> int:
        """Where ``seq`` is (or would be) in the deque, clamped to its bounds."""
        first = self._records[0].seq if self._records else self._last_seq + 1
        return min(max(seq - first, 0), len(self._records))

    def _slice(self, start: int, end: int) -> list[Record]:
        return list(itertools.islice(self._records, start, end))


def _ref_key(client: str | None, ref: str | None) -> tuple[str, str] | None:
    return None if client is None or ref is None else (client, ref)
