"""The desktop client's "Servers on this network" list, fed by discovery's events."""

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
    preferred_address,
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

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

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
        self._rows: dict[str, ServerRow] = {}

    def apply(self, event: DiscoveryEvent) -> None:
        match event:
            case ServerAdded(server=server) | ServerUpdated(server=server):
                self.put(server)
            case ServerRemoved(key=key):
                self._rows.pop(key.lower(), None)

    def put(self, server: DiscoveredServer) -> ServerRow | None:
        """Add or update ``server``; one without an address to connect to is left out."""
        key = server.key.lower()
        if not connectable_addresses(server.addresses):
            self._rows.pop(key, None)
            return None
        host = preferred_address(server, self.networks)
        row = ServerRow(key, safe_text(server.name), host, server.port, server.fingerprint)
        self._rows[key] = row
        return row

    def get(self, key: str) -> ServerRow | None:
        return self._rows.get(key.lower())

    def rows(self) -> list[ServerRow]:
        return sorted(self._rows.values(), key=lambda r: (r.name.casefold(), r.address))
