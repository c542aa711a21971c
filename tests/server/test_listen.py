"""Where a server listens: every address it says it listens on takes connections, and it
says no more than it does (wildcards only inside a namespace of the test's)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chatsecure.discovery.records import advertised_addresses
from tests.discovery.procs import env, start_server
from tests.netns import Host, Lab, lab

__all__ = ["lab"]  # the fixture, for the tests below

pytestmark = pytest.mark.netns

LOCAL = ["127.0.0.1", "10.0.0.5", "::1", "fd00::5"]


def probe(host: Host, listen: str, hosts_file: Path | None = None) -> list[dict[str, Any]]:
    """What ``listen_sockets(listen, 0)`` binds in ``host``: see ``listen_probe``.

    ``hosts_file``: resolve names with it as ``/etc/hosts`` (bound over it in a mount
    namespace of the probe's own)."""
    command = [sys.executable, "-m", "tests.server.listen_probe", listen]
    if hosts_file is not None:
        mount = 'mount --bind "$0" /etc/hosts && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", mount, str(hosts_file), *command]
    result = host.run(*command, env=env())
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found


def both_ways(lab: Lab) -> Host:
    """A namespace with IPv4 and IPv6 loopback (and nothing else)."""
    return lab.host("srv")


def test_double_colon_listens_over_ipv4_too_and_says_so(lab: Lab) -> None:
    (listening,) = probe(both_ways(lab), "::")
    assert listening["reaches"] == {"127.0.0.1": True, "::1": True}
    assert listening["shown"].endswith("(every interface, IPv4 and IPv6)")
    assert advertised_addresses(listening["hosts"], LOCAL) == ["10.0.0.5", "fd00::5"]


def test_ipv4_wildcard_says_and_advertises_ipv4_only(lab: Lab) -> None:
    (listening,) = probe(both_ways(lab), "0.0.0.0")
    assert listening["reaches"] == {"127.0.0.1": True, "::1": False}
    assert listening["shown"].endswith("(every interface, IPv4 only)")
    assert advertised_addresses(listening["hosts"], LOCAL) == ["10.0.0.5"]


def test_ipv6_only_socket_says_and_advertises_ipv6_only(lab: Lab) -> None:
    (listening,) = probe(both_ways(lab), "v6only")
    assert listening["reaches"] == {"127.0.0.1": False, "::1": True}
    assert listening["shown"].endswith("(every interface, IPv6 only)")
    assert advertised_addresses(listening["hosts"], LOCAL) == ["fd00::5"]


def test_default_listens_both_ways_and_says_so(lab: Lab) -> None:
    (listening,) = probe(both_ways(lab), "")
    assert listening["reaches"] == {"127.0.0.1": True, "::1": True}
    assert listening["shown"].startswith("[::]:")
    assert listening["shown"].endswith("(every interface, IPv4 and IPv6)")


def test_server_prints_what_each_socket_takes(lab: Lab, cert_dir: Path) -> None:
    host = both_ways(lab)
    server = start_server(
        host, cert_dir, "v4", "--host", "0.0.0.0", "--no-discovery", advertised=False
    )
    assert f"listening on 0.0.0.0:{server.port} (every interface, IPv4 only)\n" in server.proc.out


def test_a_name_is_listened_on_at_every_address_it_resolves_to(lab: Lab, tmp_path: Path) -> None:
    hosts_file = tmp_path / "hosts"  # Debian's: localhost is 127.0.0.1 and ::1
    hosts_file.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.1 localhost\n")
    found = probe(both_ways(lab), "localhost", hosts_file)
    assert len(found) == 2  # (once each, though named twice)
    port = found[0]["port"]  # the same on both: --port 0 picks one for the name
    assert sorted(each["shown"] for each in found) == [
        f"127.0.0.1:{port} (127.0.0.1)",
        f"[::1]:{port} (::1)",
    ]
    for each in found:
        assert each["reaches"] == {"127.0.0.1": True, "::1": True}


def test_an_address_of_a_name_this_machine_lacks_is_left_out(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("v4")  # IPv6 off, as in many containers, but ::1 still in /etc/hosts
    for interface in ("all", "default", "lo"):
        host.run("sysctl", "-q", "-w", f"net.ipv6.conf.{interface}.disable_ipv6=1")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    (listening,) = probe(host, "localhost", hosts_file)
    assert listening["shown"] == f"127.0.0.1:{listening['port']} (127.0.0.1)"
    assert listening["reaches"]["127.0.0.1"]


def link_local(host: Host, interface: str) -> str:
    """The IPv6 link-local address ``interface`` gets once up (DAD is off in a lab's host)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        shown = host.ip("-6", "addr", "show", "dev", interface, "scope", "link").stdout
        if match := re.search(r"inet6 (fe80::[0-9a-f:]+)/64", shown):
            return match.group(1)
        time.sleep(0.05)
    raise AssertionError(f"{interface} of {host.name} got no link-local address")


def test_a_link_local_address_with_its_interface_is_listened_on(lab: Lab, cert_dir: Path) -> None:
    host = lab.host("srv")
    interface = lab.stub(host)
    address = f"{link_local(host, interface)}%{interface}"
    server = start_server(
        host, cert_dir, "ll", "--host", address, "--no-discovery", advertised=False
    )
    assert f"listening on [{address}]:{server.port} ({address})\n" in server.proc.out
    dial = f"import socket; socket.create_connection(({address!r}, {server.port}), timeout=5)"
    host.run(sys.executable, "-c", dial)
