"""What a chatsecure server advertises over DNS-SD, as plain values. Pure: no sockets, no zeroconf.

A server is one DNS-SD service instance of type ``_chatsecure._tcp.local.``:

- the instance label is the server's friendly name, made a valid DNS-SD label;
- SRV points at a host name unique to that server, whose A/AAAA records are its addresses;
- TXT carries ``v`` (protocol version), ``fp`` (certificate fingerprint) and ``name`` (the
  friendly name in full, since a label is limited to 63 bytes); a server of a cluster adds
  ``cluster`` (``cluster_id``): every node of one room advertises the same, so a browser shows
  them as one room with several addresses.

TXT is not authentication: anyone on the link can advertise anything. Decoding is therefore
defensive (it never raises) and the fingerprint only serves to refuse a mismatch later.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

from chatsecure.errors import ConfigError
from chatsecure.protocol.limits import PROTOCOL_VERSION
from chatsecure.protocol.messages import INVISIBLE_CATEGORIES
from chatsecure.tls.certs import normalize_fingerprint

SERVICE_TYPE: Final = "_chatsecure._tcp.local."
"""The DNS-SD service type every chatsecure server registers."""

TXT_VERSION: Final = "v"
"""TXT key: the wire protocol version, a decimal integer."""
TXT_FINGERPRINT: Final = "fp"
"""TXT key: the certificate fingerprint, ``SHA256:`` + unpadded base64, as the server prints."""
TXT_NAME: Final = "name"
"""TXT key: the friendly name in full (the instance label may be shortened)."""
TXT_CLUSTER: Final = "cluster"
"""TXT key: the room's id in a cluster (``cluster_id``); absent for a server on its own."""
CLUSTER_ID_LENGTH: Final = 16
"""Hex digits of a cluster id (64 bits of a hash)."""

MAX_LABEL: Final = 63
"""Longest DNS label in bytes (RFC 1035); the instance label is one label."""
RENAME_ROOM: Final = 4
"""Bytes kept free in an instance label for the ``-N`` suffix zeroconf adds on a name clash."""
MAX_TXT_STRING: Final = 255
"""Longest ``key=value`` string in a TXT record, in bytes (RFC 6763 section 6.1)."""
MAX_NAME: Final = 100
"""Longest friendly name a browser keeps from a TXT record, in characters."""

DISCOVER_TIMEOUT: Final = 3.0
"""Seconds ``chatsecure discover`` listens before it lists what it found."""
RESOLVE_TIMEOUT: Final = 3.0
"""Seconds a browser waits for a service's SRV, TXT and addresses once it saw its name."""
SETTLE_QUIET: Final = 0.2
"""Seconds without a change after which a browser takes an address set that is not whole
(see ``addresses_settled``) as all there is."""
SETTLE_MAX: Final = 1.0
"""Longest a browser waits, once a service is resolved, for its address set to be whole."""
MAX_RESOLVING: Final = 8
"""Most services a browser resolves at once; the names that come meanwhile wait their turn.

Each resolve asks the network on its own (several queries over up to ``RESOLVE_TIMEOUT``), so
without a bound a neighbour announcing thousands of names would have the browser run as many
tasks and multicast as many queries itself. A real network's servers answer in well under a
second, so eight at a time delay nobody."""
MAX_PENDING: Final = 256
"""Most names a browser keeps waiting for a resolve; newer ones are dropped, with a warning."""
MAX_SERVERS: Final = 256
"""Most servers a browser lists: more than any network has, few enough for a window's list.
A server beyond it is not listed (a warning says so); once some of those listed have gone, it
is when its records reach the browser anew (it is not looked for again)."""
RECORD_TTL: Final = 120
"""Seconds every record a server advertises (PTR, SRV, TXT, A/AAAA) stays valid in a cache.

A server that stops cleanly says goodbye, but one killed, or on a machine that lost power,
stays in every list until its records expire: two minutes, not the 75 that DNS-SD's default
for PTR and TXT would mean. A live server stays, as browsers ask again before that (RFC 6762
section 5.2)."""


@dataclass(frozen=True, slots=True)
class DiscoveredServer:
    """A chatsecure server found on the network, resolved."""

    key: str
    """The full service instance name, unique on the link."""
    name: str
    """Friendly name: TXT ``name``, else the instance label."""
    addresses: tuple[str, ...]
    """Resolved addresses, IPv4 first, then IPv6; IPv6 link-local ones with their interface."""
    port: int
    fingerprint: str | None
    """TXT ``fp`` if it is a well-formed fingerprint, in the format the server prints."""
    version: int | None
    """TXT ``v``: the protocol version."""
    cluster: str | None = None
    """TXT ``cluster``: the room's id when this server is a node of a cluster."""

    @property
    def instance(self) -> str:
        """The instance label (the part of ``key`` before the service type)."""
        return instance_label_of(self.key)

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "name": self.name,
            "instance": self.instance,
            "addresses": list(self.addresses),
            "port": self.port,
            "fingerprint": self.fingerprint,
            "version": self.version,
        } | ({} if self.cluster is None else {"cluster": self.cluster})


@dataclass(frozen=True, slots=True)
class ServerAdded:
    """A server appeared and was resolved."""

    server: DiscoveredServer


@dataclass(frozen=True, slots=True)
class ServerUpdated:
    """A known server changed its addresses, port or TXT record."""

    server: DiscoveredServer


@dataclass(frozen=True, slots=True)
class ServerRemoved:
    """A server withdrew its service (or its records expired)."""

    key: str


DiscoveryEvent = ServerAdded | ServerUpdated | ServerRemoved


@dataclass(frozen=True, slots=True)
class TxtInfo:
    """The chatsecure keys of a TXT record, each ``None`` when missing or malformed."""

    name: str | None
    fingerprint: str | None
    version: int | None
    cluster: str | None = None


# --- names ------------------------------------------------------------------------------


def friendly_name(hostname: str) -> str:
    """The default server name for a host: ``chat on <host>`` (first label of the host name)."""
    return f"chat on {hostname.split('.')[0] or 'localhost'}"


def _one_line(text: str) -> str:
    """``text`` with whitespace runs as single spaces and invisible characters gone."""
    visible = "".join(
        " " if c.isspace() else c
        for c in text
        if c.isspace() or unicodedata.category(c) not in INVISIBLE_CATEGORIES
    )
    return " ".join(visible.split())


def _truncate_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    return text.encode()[:limit].decode(errors="ignore")


def instance_label(name: str) -> str:
    """The DNS-SD instance label for a friendly name.

    Invisible characters go, dots become ``-`` (zeroconf would split the label at them), and
    the result is cut to leave room for the ``-N`` zeroconf appends on a clash.
    """
    label = _one_line(name).replace(".", "-")
    label = _truncate_utf8(label, MAX_LABEL - RENAME_ROOM).strip()
    return label or "chatsecure"


def instance_name(label: str) -> str:
    """The full service instance name for an instance label."""
    return f"{label}.{SERVICE_TYPE}"


def instance_label_of(key: str) -> str:
    """The instance label of a full service instance name (the name itself if not ours)."""
    suffix = "." + SERVICE_TYPE
    if key.lower().endswith(suffix.lower()):
        return key[: -len(suffix)]
    return key


def renamed(friendly: str, wanted_label: str, got_label: str) -> str:
    """The friendly name to advertise after zeroconf renamed ``wanted_label`` to ``got_label``.

    zeroconf resolves a clash by appending ``-2``, ``-3`` ...; the same suffix goes on the
    friendly name so that people see two different names, not two identical ones.
    """
    if got_label == wanted_label:
        return friendly
    if got_label.startswith(wanted_label):
        return friendly + got_label[len(wanted_label) :]
    return got_label


def host_name(hostname: str, token: str) -> str:
    """The SRV target for one server: a ``.local.`` name no other responder uses.

    The machine's own ``<host>.local.`` belongs to its mDNS responder (avahi, Bonjour), and
    two servers (or network namespaces) may share a host name; ``token`` keeps it unique.
    """
    base = "".join(c if c.isascii() and c.isalnum() else "-" for c in hostname.split(".")[0])
    base = "-".join(part for part in base.split("-") if part)[:40] or "host"
    return f"chatsecure-{base}-{token}.local."


# --- TXT --------------------------------------------------------------------------------


def cluster_id(url: str, room: str) -> str:
    """The id every node of one cluster room advertises: Redis host, port, db and room name.

    Stable (the same on every node and across restarts) and without the URL's password or
    user: only a hash of ``host:port/db`` and the room name. Nodes that name the same Redis
    differently (a host name on one, an IP address on another) get different ids.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "localhost").lower()
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    db = unquote(parts.path.strip("/")) or "0"
    digest = hashlib.sha256(f"{host}\n{port}\n{db}\n{room}".encode()).hexdigest()
    return digest[:CLUSTER_ID_LENGTH]


def encode_txt(
    name: str, fingerprint: str, version: int = PROTOCOL_VERSION, cluster: str | None = None
) -> dict[str, str]:
    """TXT properties for zeroconf; ``name`` is cut so that ``name=...`` fits in 255 bytes."""
    room = MAX_TXT_STRING - len(TXT_NAME) - 1
    txt = {
        TXT_VERSION: str(version),
        TXT_FINGERPRINT: fingerprint,
        TXT_NAME: _truncate_utf8(name, room),
    }
    if cluster is not None:
        txt[TXT_CLUSTER] = cluster
    return txt


def decode_txt(properties: Mapping[bytes, bytes | None]) -> TxtInfo:
    """The chatsecure keys of a TXT record from anyone on the link; never raises.

    Keys are case-insensitive and the first occurrence wins (RFC 6763 section 6.4).
    """
    values: dict[str, bytes] = {}
    for raw_key, raw_value in properties.items():
        key = raw_key.decode("ascii", errors="replace").lower()
        if raw_value is not None and key not in values:
            values[key] = raw_value
    return TxtInfo(
        name=_decode_name(values.get(TXT_NAME)),
        fingerprint=_decode_fingerprint(values.get(TXT_FINGERPRINT)),
        version=_decode_version(values.get(TXT_VERSION)),
        cluster=_decode_cluster(values.get(TXT_CLUSTER)),
    )


def _decode_cluster(raw: bytes | None) -> str | None:
    """A cluster id as ``cluster_id`` makes it (lower-case hex), else ``None``."""
    if raw is None or len(raw) != CLUSTER_ID_LENGTH:
        return None
    text = raw.decode("ascii", errors="replace").lower()
    return text if all(c in "0123456789abcdef" for c in text) else None


def _decode_name(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    name = _one_line(raw.decode(errors="replace"))[:MAX_NAME].strip()
    return name or None


def _decode_fingerprint(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return normalize_fingerprint(raw.decode("ascii"))
    except (UnicodeDecodeError, ConfigError):
        return None


def _decode_version(raw: bytes | None) -> int | None:
    if raw is None or not raw.isdigit() or len(raw) > 6:
        return None
    return int(raw)


def server_from_records(
    key: str,
    port: int,
    properties: Mapping[bytes, bytes | None],
    addresses: Iterable[str],
) -> DiscoveredServer:
    """A ``DiscoveredServer`` from the records of one resolved service instance."""
    txt = decode_txt(properties)
    return DiscoveredServer(
        key=key,
        name=txt.name or _one_line(instance_label_of(key)) or key,
        addresses=connectable_addresses(addresses),
        port=port,
        fingerprint=txt.fingerprint,
        version=txt.version,
        cluster=txt.cluster,
    )


def event_json(event: DiscoveryEvent) -> dict[str, object]:
    """One event as a JSON object: ``{"event": "added"|"updated"|"removed", ...server}``."""
    match event:
        case ServerAdded(server=server):
            return {"event": "added", **server.to_json()}
        case ServerUpdated(server=server):
            return {"event": "updated", **server.to_json()}
        case ServerRemoved(key=key):
            return {"event": "removed", "key": key}


def describe_server(server: DiscoveredServer) -> str:
    """Two or three lines about a server, as ``chatsecure discover`` prints them."""
    where = ", ".join(
        f"[{a}]:{server.port}" if ":" in a else f"{a}:{server.port}" for a in server.addresses
    )
    version = "?" if server.version is None else server.version
    lines = [
        f"{server.name!r} at {where}",
        f"    fingerprint {server.fingerprint or '(none advertised)'}, protocol v{version}",
    ]
    if server.instance != server.name:
        lines.append(f"    pick it with: chatsecure connect --discovered {server.instance!r}")
    return "\n".join(lines)


# --- addresses --------------------------------------------------------------------------


_NUMBER = r"(?:[0-9]+|0[xX][0-9a-fA-F]*)"
_NUMERIC_HOST = re.compile(rf"{_NUMBER}(?:\.{_NUMBER})*\.?")
"""A host of numbers and dots, as ``inet_aton`` reads them (decimal, octal with a leading 0,
hex with 0x; one to four of them); no host name is all numbers."""


def host_typo(host: str) -> str | None:
    """Why ``host`` cannot be meant as written, or None.

    The C library takes ``1.2.3`` for 1.2.0.3, ``010`` for 8 (octal) and ``2130706433`` for
    127.0.0.1, and the resolver asks the network about ``127.0.0.300`` or a name with a space
    in it: a typo must not reach another machine than the one meant (or a name server), so
    only a plain dotted quad passes as a number.
    """
    if _NUMERIC_HOST.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return (
                f"{host!r} is not an IPv4 address: give four numbers from 0 to 255, "
                "like 192.168.1.10"
            )
    if any(char.isspace() for char in host):
        return f"{host!r} has a space in it: no host name or address has one"
    return None


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (an IPv6 zone, ``%eth0``, left aside); None if it is none."""
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def needs_scope(text: str) -> bool:
    """An IPv6 link-local address without ``%interface``: no way to know where to send."""
    ip = ip_of(text)
    return ip is not None and ip.version == 6 and ip.is_link_local and not text.partition("%")[2]


def order_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """Distinct valid addresses, IPv4 first, then IPv6, each family in the given order."""
    unique = [a for a in dict.fromkeys(addresses) if ip_of(a) is not None]
    return tuple(sorted(unique, key=lambda a: ":" in a))


def connectable_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """``order_addresses`` without IPv6 link-local addresses that lack their interface."""
    return tuple(a for a in order_addresses(addresses) if not needs_scope(a))


def addresses_settled(addresses: Iterable[str], denied: Collection[int] = ()) -> bool:
    """Whether a service's address set is whole, so that a browser may show it.

    Whole: an address of each IP version, or a denial of that version (``denied`` holds 4
    and/or 6, from an NSEC record, RFC 6762 section 6.1); and no IPv6 link-local address
    still waiting for its interface, which comes with the copy of the answer that arrives
    over IPv6.
    """
    versions: set[int] = set()
    for text in addresses:
        ip = ip_of(text)
        if ip is None:
            continue
        if needs_scope(text):
            return False
        versions.add(ip.version)
    return all(version in versions or version in denied for version in (4, 6))


def advertised_addresses(listening: Sequence[str], local: Sequence[str]) -> list[str]:
    """The addresses to advertise for a server listening on ``listening`` hosts.

    A wildcard stands for every ``local`` address of its IP version: ``0.0.0.0`` for IPv4,
    ``::`` for IPv6 (a dual-stack socket is listed as both: whether ``::`` takes IPv4 too
    depends on the socket, not the address). Loopback is never advertised: a peer would dial
    its own. Link-local addresses are advertised only when nothing else is left (an IPv6 one is
    usable with the interface it was heard on, which the browser adds).
    """
    wanted: list[str] = []
    for host in listening:
        addr = ip_of(host)
        if addr is None:
            continue
        if not addr.is_unspecified:
            wanted.append(str(addr))
            continue
        for text in local:
            ip = ip_of(text)
            if ip is not None and ip.version == addr.version:
                wanted.append(text.partition("%")[0])
    ordered = [(a, ip) for a in order_addresses(wanted) if (ip := ip_of(a)) is not None]
    usable = [a for a, ip in ordered if not ip.is_loopback and not ip.is_link_local]
    return usable or [a for a, ip in ordered if ip.is_link_local]


def unadvertised_reason(listening: Sequence[str]) -> str:
    """Why ``advertised_addresses`` found nothing for a server listening on ``listening``."""
    if listening and all((ip := ip_of(host)) is not None and ip.is_loopback for host in listening):
        return f"listening on {', '.join(listening)}, loopback only"
    return "no address other than loopback"


def without_loopback(addresses: Iterable[str]) -> list[str]:
    """``addresses`` less the loopback ones, which no other machine can connect to."""
    return [a for a in addresses if (ip := ip_of(a)) is None or not ip.is_loopback]


def address_rank(
    text: str, local_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> int | None:
    """How good ``text`` is to connect to, lower is better; ``None``: never.

    0. IPv4 or routable IPv6 on a network this host is on: it answers without a router.
    1. IPv6 link-local with its interface (``fe80::1%eth0``): on the link, surely.
    2. Any other IPv4 or routable IPv6 address: perhaps through a router.

    An IPv6 link-local address without an interface cannot be connected to at all.
    """
    ip = ip_of(text)
    if ip is None or needs_scope(text):
        return None
    if ip.version == 6 and ip.is_link_local:
        return 1
    if any(ip in net for net in local_networks):
        return 0
    return 2


def preferred_addresses(
    server: DiscoveredServer,
    local_networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> tuple[str, ...]:
    """The addresses to connect to, best first: by ``address_rank``, IPv4 first among equals.

    A server on two networks advertises the addresses of both on each; the one on a
    network this host shares is the one that answers without a router; the others are
    for when it does not answer (an address it advertises but has lost). Raises
    ``ConfigError`` when the server advertises no address that can be connected to.
    """
    networks = list(local_networks)
    ranked = sorted(
        (rank, i, text)
        for i, text in enumerate(order_addresses(server.addresses))
        if (rank := address_rank(text, networks)) is not None
    )
    if not ranked:
        raise ConfigError(
            f"the server {server.name!r} advertises no address this machine can connect to"
        )
    return tuple(text for _, _, text in ranked)


def match_servers(servers: Iterable[DiscoveredServer], wanted: str) -> list[DiscoveredServer]:
    """Servers answering to ``wanted``: its full key, instance label, or friendly name.

    Case-insensitive. An exact key or instance label beats friendly names, so that
    ``chat-2`` picks one server even when two share the friendly name ``chat``.
    """
    folded = wanted.strip().casefold()
    servers = list(servers)
    for found in (
        [s for s in servers if s.key.casefold() == folded],
        [s for s in servers if s.instance.casefold() == folded],
        [s for s in servers if s.name.casefold() == folded],
    ):
        if found:
            return found
    return []
