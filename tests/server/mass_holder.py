"""A child process holding many joined TLS connections, for the test to kill at once.

    python -m tests.server.mass_holder PORT COUNT

Opens COUNT connections to 127.0.0.1:PORT, says hello on each and reads its welcome, prints
``ready COUNT``, then holds them (reading and dropping the joins of the others, as an idle
client does) until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from chatsecure.tls.context import client_context

FOREVER = 600.0
"""How long the connections are held; the test kills the process long before."""


async def hold(port: int, count: int) -> None:
    ctx = client_context()
    semaphore = asyncio.Semaphore(200)  # handshakes at once: the server's backlog is finite

    writers: list[asyncio.StreamWriter] = []  # a writer collected closes its connection

    async def one(n: int) -> asyncio.StreamReader:
        async with semaphore:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, limit=1 << 24
            )
            writers.append(writer)
            writer.write(b'{"type":"hello","nick":"mass%d"}\n' % n)
            await reader.readline()  # the welcome, which lists everyone before us
            return reader

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    readers = await asyncio.gather(*(one(n) for n in range(count)))
    tasks = [asyncio.create_task(drain(reader)) for reader in readers]
    print(f"ready {len(readers)}", flush=True)
    await asyncio.sleep(FOREVER)
    del tasks


if __name__ == "__main__":
    asyncio.run(hold(int(sys.argv[1]), int(sys.argv[2])))
