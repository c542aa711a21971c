"""Browse inside a test's namespace and report how much the browser took on, as JSON lines.

Run by ``test_mdns_netns.py`` with ``ip netns exec``. Prints each event as a JSON line (as
``chatsecure discover --watch`` does) until stdin closes or SECONDS pass, then stops the browser
and prints one ``{"report": ...}`` line: the most resolve tasks seen at once on the browser's
loop (counted there, every few milliseconds), the most servers listed at once, the servers
listed at the end, how long ``stop()`` took and the threads left.
With ``--fail-checks N`` the browser's watcher raises on its first N looks at a server.
Usage: python browse_probe.py SECONDS [--fail-checks N]
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sys
import threading
import time
from typing import Any

from chatsecure.discovery.mdns import Browser, DiscoveredServer, DiscoveryEvent, apply_event
from chatsecure.discovery.records import event_json

SAMPLE = 0.005


class FailingBrowser(Browser):
    """A browser whose watcher fails on its first ``failures`` looks at a server."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def _check(self, *args: Any) -> float | None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("a look at the cache that fails")
        return super()._check(*args)


async def count_resolves(peak: list[int]) -> None:
    """Keep in ``peak[0]`` the most resolve tasks that ran at once on this loop."""
    while True:
        running = sum(
            1
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "Browser._resolve"
        )
        peak[0] = max(peak[0], running)
        await asyncio.sleep(SAMPLE)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seconds = float(sys.argv[1])
    failures = int(sys.argv[3]) if sys.argv[2:3] == ["--fail-checks"] else 0
    browser = FailingBrowser(failures) if failures else Browser()
    browser.start()
    assert browser.error is None, browser.error
    peak = [0]
    loop = browser._thread.loop
    assert loop is not None
    asyncio.run_coroutine_threadsafe(count_resolves(peak), loop)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()

    servers: dict[str, DiscoveredServer] = {}
    most = 0
    deadline = time.monotonic() + seconds
    while not closed.is_set() and time.monotonic() < deadline:
        try:
            event: DiscoveryEvent = browser.events.get(timeout=0.1)
        except queue.Empty:
            continue
        apply_event(servers, event)
        most = max(most, len(servers))
        print(json.dumps(event_json(event)), flush=True)
    stopping = time.monotonic()
    browser.stop()
    report = {
        "peak_resolving": peak[0],
        "most_listed": most,
        "listed": sorted(servers),
        "stop_seconds": time.monotonic() - stopping,
        "threads_after_stop": [t.name for t in threading.enumerate() if t.name.startswith("chat")],
    }
    print(json.dumps({"report": report}), flush=True)


if __name__ == "__main__":
    main()
