"""A headless front end for the client core, run as a child: prints its peak RSS in KiB.

    python -m tests.client.rss_probe PORT LAST_TEXT HOLD

It connects to 127.0.0.1:PORT, reads nothing for HOLD seconds (a front end that is behind),
then takes events as fast as it can (as the GUI's poll does) until the chat line LAST_TEXT,
quits, and prints ``lines=N maxrss_kib=M``.
"""

from __future__ import annotations

import sys
import time

from chatsecure.client.core import ChatClient, Received, Target
from chatsecure.protocol.messages import Chat
from chatsecure.tls.trust import KnownServers, TrustPolicy


def main() -> None:
    port, last, hold = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    client = ChatClient(
        Target("127.0.0.1", port),
        "bob",
        TrustPolicy(KnownServers(), accept_new=True),
        reconnect=False,
    )
    client.start()
    time.sleep(hold)
    lines = 0
    while True:
        event = client.events.get(timeout=60)
        if isinstance(event, Received) and isinstance(event.message, Chat):
            lines += 1
            if event.message.text == last:
                break
    client.close()
    print(f"lines={lines} maxrss_kib={peak_rss_kib('self')}")


def peak_rss_kib(pid: str) -> int:
    """VmHWM: the peak RSS of this program's own image. (``getrusage``'s ``ru_maxrss`` also
    counts the parent's pages that a fork copied before the ``exec``: a big test run's.)"""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/PID/status")


if __name__ == "__main__":
    main()
