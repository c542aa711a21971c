"""Three advertisers of one name on one host, each started after the others' announcements.

Run by ``test_mdns_netns.py`` with ``ip netns exec``; prints the names advertised as JSON.
Each newcomer must learn from the others' answers that the name is taken. zeroconf's probes
ask for unicast answers, and the kernel gives a unicast datagram to just one of the sockets
that share port 5353 on a host: without more, a newcomer misses them half of the time.
Usage: python twins_probe.py ADDRESS
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from chatsecure.discovery.mdns import Advertiser
from chatsecure.tls.certs import fingerprint

AFTER_THE_ANNOUNCEMENTS = 1.0
"""Seconds between starts: past the three announcements (0.45 s), so a newcomer cannot just
hear them."""


def main() -> None:
    address = sys.argv[1]
    names: list[str | None] = []
    with contextlib.ExitStack() as stack:
        for port in (7467, 7468, 7469):
            advertiser = stack.enter_context(
                Advertiser("twin", port, fingerprint(str(port).encode()), [address])
            )
            advertiser.wait(10)
            names.append(advertiser.advertised_name)
            time.sleep(AFTER_THE_ANNOUNCEMENTS)
    print(json.dumps(names))


if __name__ == "__main__":
    main()
