"""The desktop client's "Servers on this network" list, fed by discovery's events.

The nodes of one cluster (the same TXT ``cluster`` and certificate) are one row: one room,
several addresses, connected to in order (the next when one is gone).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from chatsecure.client.core import safe_text, short_fingerprint
from chatsecure.discovery.records import (
    DiscoveredServer,
    DiscoveryEvent,
    ServerAdded,
    ServerRemoved,
    ServerUpdated,
    connectable_addresses,
    preferred_addresses,
)
from chatsecure.tls.trust import host_port

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One line of "Servers on this network"."""

    key: str
    name: str
    host: str
    port: int
    fingerprint: str | None
    others: tuple[tuple[str, int], ...] = ()
    """The other nodes of the same cluster room, tried after ``host:port``."""
    cluster: str | None = None
    alternates: tuple[tuple[str, int], ...] = ()
    """The other addresses the server (each node of a cluster) advertises, best first:
    tried when none of the preferred ones answers."""

    @property
    def fallbacks(self) -> tuple[tuple[str, int], ...]:
        """Every address to try after ``host:port``: the other nodes, then the alternates."""
        return (*self.others, *self.alternates)

    @property
    def address(self) -> str:
        """``host:port``, and how many more nodes the room has (``+2``)."""
        first = host_port(self.host, self.port)
        return f"{first} +{len(self.others)}" if self.others else first

    @property
    def short_fingerprint(self) -> str:
        return short_fingerprint(self.fingerprint) if self.fingerprint else "—"

    def fill(self) -> tuple[str, str]:
        """What the Host/IP and Port fields get when this row is picked."""
        return self.host, str(self.port)


class ServerList:
    """The discovered servers, in order of name, fed by the browser's events."""

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks = list(networks)
        """The networks this host is on: an address on one of them is the one to use."""
        self._nodes: dict[str, ServerRow] = {}
        """One row per advertised service, by key; ``rows`` merges a cluster's."""

    def apply(self, event: DiscoveryEvent) -> None:
        match event:
            case ServerAdded(server=server) | ServerUpdated(server=server):
                self.put(server)
            case ServerRemoved(key=key):
                self._nodes.pop(key.lower(), None)

    def put(self, server: DiscoveredServer) -> ServerRow | None:
        """Add or update ``server``; one without an address to connect to is left out.

        Returns the row that shows it (its cluster's, for a node of a cluster)."""
        key = server.key.lower()
        if not connectable_addresses(server.addresses):
            self._nodes.pop(key, None)
            return None
        host, *rest = preferred_addresses(server, self.networks)
        name = safe_text(server.name)
        self._nodes[key] = ServerRow(
            key,
            name,
            host,
            server.port,
            server.fingerprint,
            cluster=server.cluster,
            alternates=tuple((address, server.port) for address in rest),
        )
        return self.get(_row_key(self._nodes[key]))

    def get(self, key: str) -> ServerRow | None:
        """The row ``key`` (a service's key, or a cluster row's)."""
        node = self._nodes.get(key.lower())
        wanted = key if node is None else _row_key(node)
        return next((row for row in self.rows() if row.key == wanted), None)

    def rows(self) -> list[ServerRow]:
        groups: dict[str, list[ServerRow]] = {}
        for node in self._nodes.values():
            groups.setdefault(_row_key(node), []).append(node)
        rows = [_merged(key, nodes) for key, nodes in groups.items()]
        return sorted(rows, key=lambda r: (r.name.casefold(), r.address))


def _row_key(node: ServerRow) -> str:
    """The row a node is shown in: its own, or its cluster's (same id, same certificate)."""
    if node.cluster is None:
        return node.key
    return f"cluster:{node.cluster}:{node.fingerprint or ''}"


def _merged(key: str, nodes: list[ServerRow]) -> ServerRow:
    """One row for the nodes of a cluster: the first address by name, then the others."""
    if len(nodes) == 1 and nodes[0].cluster is None:
        return nodes[0]
    nodes = sorted(nodes, key=lambda n: (n.name.casefold(), n.host, n.port))
    first = nodes[0]
    others = tuple((n.host, n.port) for n in nodes[1:])
    alternates = tuple(a for n in nodes for a in n.alternates)
    return ServerRow(
        key,
        first.name,
        first.host,
        first.port,
        first.fingerprint,
        others,
        first.cluster,
        alternates,
    )
