"""Exercise the Advertiser and Browser API in one process, inside a test's namespace.

Run by ``test_mdns_netns.py`` with ``ip netns exec``; prints one JSON object with what it saw.
Usage: python api_probe.py PORT FINGERPRINT ADDRESS
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time

from chatsecure.discovery.mdns import (
    Advertiser,
    Browser,
    DiscoveryEvent,
    ServerAdded,
    ServerRemoved,
)


def next_event(events: queue.Queue[DiscoveryEvent], kind: type, timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            break
        if isinstance(event, kind):
            return event
    raise SystemExit(f"no {kind.__name__} in {timeout} s")


def main() -> None:
    port, fingerprint, address = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    report: dict[str, object] = {}
    events: queue.Queue[DiscoveryEvent] = queue.Queue()
    browser = Browser(events)
    browser.start()
    report["browser_error"] = browser.error
    with Advertiser("api probe", port, fingerprint, [address]) as advertiser:
        report["instance"] = advertiser.wait(10)
        added = next_event(events, ServerAdded)
        assert isinstance(added, ServerAdded)
        report["added"] = added.server.to_json()
        report["consumer_thread"] = threading.current_thread().name
        withdrawn = time.monotonic()
    report["advertiser_threads_after_stop"] = [t.name for t in threading.enumerate()][1:]
    removed = next_event(events, ServerRemoved)
    assert isinstance(removed, ServerRemoved)
    report["removed"] = removed.key
    report["removed_after"] = time.monotonic() - withdrawn
    browser.stop()
    browser.stop()  # a second stop is harmless
    report["threads_after_stop"] = [t.name for t in threading.enumerate()][1:]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
