"""Run by test_sqlite: append batches to a SqliteLog, printing each seq once append returned.

Usage: python crash_writer.py DB. Stops by itself after a minute or 20,000 lines, should the
test fail to kill it. Line n (its expected seq) has text "line n" and ref "ref-n".
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from chatsecure.history import Draft, SqliteLog
from chatsecure.protocol.messages import Peer

WRITER = Peer("1", "writer", "127.0.0.1:50000")


async def main(path: Path) -> None:
    log = SqliteLog(path, keep=1_000_000)
    n = (await log.open(0)).last_seq
    deadline = time.monotonic() + 60
    batch = 0
    while n < 20_000 and time.monotonic() < deadline:
        batch += 1
        size = batch % 7 + 1
        drafts = [
            Draft(WRITER, f"line {k}", time.time(), "crash-writer", f"ref-{k}")
            for k in range(n + 1, n + size + 1)
        ]
        n += size
        for appended in await log.append(drafts):
            sys.stdout.write(f"{appended.record.seq}\n")
        sys.stdout.flush()
    await log.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
