"""A hostile neighbour: announce many chatsecure services at once, inside a test's namespace.

Run by ``test_mdns_netns.py`` with ``ip netns exec``. Sends unsolicited mDNS responses from a
plain UDP socket (no mDNS stack answers anything) and exits, printing how many packets it sent.
``bare`` names come with their PTR record only, so a browser that resolves one waits in vain;
``full`` names come with SRV, TXT, A and AAAA records too, so they resolve from the cache.
Usage: python flood_probe.py SOURCE_IPV4 COUNT bare|full
"""

from __future__ import annotations

import socket
import sys
import time

from zeroconf import DNSAddress, DNSPointer, DNSService, DNSText
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.const import (
    _CLASS_IN,
    _FLAGS_AA,
    _FLAGS_QR_RESPONSE,
    _TYPE_A,
    _TYPE_AAAA,
    _TYPE_PTR,
    _TYPE_SRV,
    _TYPE_TXT,
)

from chatsecure.discovery.records import SERVICE_TYPE, encode_txt
from chatsecure.tls.certs import fingerprint

TTL = 120
GROUP = ("224.0.0.251", 5353)
V6 = "fd77::1"  # an address of the lab's own: the servers must resolve, not be reachable


def records(source: str, count: int, full: bool) -> list[object]:
    made: list[object] = []
    for i in range(count):
        name = f"flood {i:04d}.{SERVICE_TYPE}"
        made.append(DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, TTL, name))
        if not full:
            continue
        host = f"flood-{i:04d}.local."
        txt = encode_txt(f"flood {i}", fingerprint(b"flood %d" % i))
        text = b"".join(
            bytes([len(item)]) + item for item in (f"{k}={v}".encode() for k, v in txt.items())
        )
        made += [
            DNSService(name, _TYPE_SRV, _CLASS_IN, TTL, 0, 0, 7467, host),
            DNSText(name, _TYPE_TXT, _CLASS_IN, TTL, text),
            DNSAddress(host, _TYPE_A, _CLASS_IN, TTL, socket.inet_aton(source)),
            DNSAddress(
                host, _TYPE_AAAA, _CLASS_IN, TTL, socket.inet_pton(socket.AF_INET6, "fd77::1")
            ),
        ]
    return made


def main() -> None:
    source, count, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    for record in records(source, count, kind == "full"):
        out.add_answer_at_time(record, 0)  # type: ignore[arg-type]
    packets = out.packets()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.bind((source, 5353))
        for packet in packets:
            sock.sendto(packet, GROUP)
            time.sleep(0.002)  # paced, so that no receive buffer overflows on the way
    print(len(packets), flush=True)


if __name__ == "__main__":
    main()
