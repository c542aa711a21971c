"""Fixtures for the room log: every test of the interface runs on each implementation."""

from __future__ import annotations

import contextlib
import os
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from chatsecure.history import Draft, MemoryLog, RoomLog, SqliteLog
from chatsecure.protocol.messages import Peer
from tests.redis_server import room_name

ANN = Peer("1", "ann", "127.0.0.1:50001")
BOB = Peer("2", "bob", "[::1]:50002")


def draft(
    text: str, *, client: str | None = None, ref: str | None = None, sender: Peer = ANN
) -> Draft:
    """A draft with a distinct timestamp per text, so a wrong record cannot pass for another."""
    return Draft(sender, text, 1_700_000_000.0 + zlib.crc32(text.encode()) / 1000, client, ref)


def lines(*texts: str) -> list[Draft]:
    return [draft(text) for text in texts]


class Logs:
    """Makes logs of one kind and closes them all at the end of the test.

    ``reopen`` is what a server restart does: a new SqliteLog on the same file, a new RedisLog
    on the same room; a MemoryLog has no file, so it is the same log (open() again just
    reports its state).
    """

    def __init__(self, kind: str, folder: Path, redis_url: str = "") -> None:
        self.kind = kind
        self.path = folder / "history.sqlite3"
        self.redis_url = redis_url
        self.room = room_name()
        self._open: list[RoomLog] = []

    @property
    def shared(self) -> bool:
        """Whether the log is shared between servers (then each open reserves its peer ids)."""
        return self.kind == "redis"

    def new(self, keep: int = 1000) -> RoomLog:
        log: RoomLog
        if self.kind == "memory":
            log = MemoryLog(keep)
        elif self.kind == "sqlite":
            log = SqliteLog(self.path, keep)
        else:
            from chatsecure.history.redis import RedisLog

            log = RedisLog(self.redis_url, self.room, keep)
        self._open.append(log)
        return log

    async def reopen(self, log: RoomLog, keep: int = 1000) -> RoomLog:
        if self.kind == "memory":
            return log
        await log.close()
        return self.new(keep)

    async def close_all(self) -> None:
        for log in self._open:
            await log.close()


@pytest_asyncio.fixture(params=["memory", "sqlite", "redis"])
async def logs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Logs]:
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""
    made = Logs(request.param, tmp_path, url)
    yield made
    await made.close_all()


@pytest.fixture
def opened_log(logs: Logs) -> Callable[[int], Awaitable[RoomLog]]:
    """A new, opened log of the parametrized kind keeping ``keep`` lines."""

    async def make(keep: int = 1000) -> RoomLog:
        log = logs.new(keep)
        await log.open(0)
        return log

    return make


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable even for root (who ignores permission bits): chattr +i then."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file read-only for root here: {made.stderr.decode()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
