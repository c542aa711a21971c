"""Simulated hosts for tests: Linux network namespaces joined by veth pairs, bridges, routers.

A ``Lab`` makes namespaces with names unique to this test run and tears down every namespace
and process it made when it exits, also when the test fails. Traffic stays inside them: a
namespace starts with nothing but its own loopback, and links only join namespaces of the
same lab. Use the ``lab`` fixture (it skips only when not root or without ``ip netns``)::

    def test_x(lab: Lab) -> None:
        a, b = lab.host("a"), lab.host("b")
        lab.lan("10.77.1.0/24", a, b)          # a is 10.77.1.1, b is 10.77.1.2
        server = a.popen(sys.executable, "-m", "chatsecure", "server", ...)
        server.expect(r"fingerprint: (\\S+)")
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Literal

import pytest

PREFIX = "chatsecure-test"
"""Every namespace a lab makes is called ``chatsecure-test-<pid>-<n>-<label>``."""

_counter = itertools.count(1)


def netns_unavailable() -> str | None:
    """Why network-namespace tests cannot run here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip`` with ``args``; raise with its error output when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def remove_stale_namespaces() -> None:
    """Delete namespaces left by earlier test runs whose process is gone (killed runs)."""
    listing = ip("netns", "list", check=False).stdout
    for match in re.finditer(rf"^({PREFIX}-(\d+)-\S+)", listing, re.MULTILINE):
        name, pid = match.group(1), int(match.group(2))
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            ip("netns", "delete", name, check=False)


class Proc:
    """A process in a namespace with pipes that can be read up to a pattern, with timeouts."""

    def __init__(self, args: Sequence[str], popen: subprocess.Popen[bytes]) -> None:
        self.args = list(args)
        self.popen = popen
        self.out = ""
        self.err = ""
        self._cursor = {"stdout": 0, "stderr": 0}
        self._selector = selectors.DefaultSelector()
        for stream in (popen.stdout, popen.stderr):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                self._selector.register(stream, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self, timeout: float) -> bool:
        """Read what is available (waiting up to ``timeout``); False once both pipes closed."""
        if not self._selector.get_map():
            time.sleep(min(timeout, 0.05))
            return False
        for key, _ in self._selector.select(timeout):
            data = os.read(key.fd, 65536)
            if not data:
                self._selector.unregister(key.fileobj)
                continue
            text = data.decode(errors="replace")
            if key.fileobj is self.popen.stdout:
                self.out += text
            else:
                self.err += text
        return True

    def expect(
        self,
        pattern: str,
        timeout: float = 10.0,
        stream: Literal["stdout", "stderr"] = "stdout",
    ) -> re.Match[str]:
        """Wait until ``pattern`` appears in ``stream`` after the previous match; the match."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.out if stream == "stdout" else self.err
            match = regex.search(text, self._cursor[stream])
            if match is not None:
                self._cursor[stream] = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0 or (not self._pump(left) and self.popen.poll() is not None):
                raise AssertionError(
                    f"{pattern!r} not seen on {stream} of {self.args[-6:]} "
                    f"(exit {self.popen.poll()})\n--- stdout:\n{self.out}\n--- stderr:\n{self.err}"
                )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the exit (reading the pipes meanwhile); the exit code."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.args[-6:]} still running after {timeout} s")
            self._pump(0.05)
        while self._pump(0):
            pass
        return self.popen.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal the process, wait for it (killing it if it lingers); the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                return self.wait(timeout)
            except AssertionError:
                self.popen.kill()
        return self.wait(timeout)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.stop()
        self.close_stdin()
        self._selector.close()
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


class Host:
    """One network namespace: a simulated host."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.addresses: list[str] = []
        """Addresses given by ``Lab.lan``/``Lab.stub``, in order."""
        self._links = 0

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.addresses})"

    def next_interface(self) -> str:
        name = f"eth{self._links}"
        self._links += 1
        return name

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ip("-n", self.name, *args)

    def sysctl(self, setting: str) -> None:
        self.run("sysctl", "-qw", setting)

    def run(
        self,
        *args: str,
        timeout: float = 15.0,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace to the end."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{args} failed in {self.name} with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str, stdin: bool = False, env: dict[str, str] | None = None) -> Proc:
        """Start a command in this namespace; the lab stops it at the end."""
        command = ["ip", "netns", "exec", self.name, *args]
        popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        proc = Proc(command, popen)
        self.lab.procs.append(proc)
        return proc


class Lab:
    """Namespaces, links and processes for one test; all of them gone after ``close()``."""

    def __init__(self) -> None:
        self.prefix = f"{PREFIX}-{os.getpid()}-{next(_counter)}"
        self.hosts: list[Host] = []
        self.procs: list[Proc] = []

    def __enter__(self) -> Lab:
        remove_stale_namespaces()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, label: str, *, forwarding: bool = False) -> Host:
        """A new namespace with loopback up, IPv6 DAD off (addresses usable at once)."""
        host = Host(self, f"{self.prefix}-{label}")
        ip("netns", "add", host.name)
        self.hosts.append(host)
        host.ip("link", "set", "lo", "up")
        host.sysctl("net.ipv6.conf.all.accept_dad=0")
        host.sysctl("net.ipv6.conf.default.accept_dad=0")
        host.sysctl(f"net.ipv4.ip_forward={int(forwarding)}")
        host.sysctl(f"net.ipv6.conf.all.forwarding={int(forwarding)}")
        return host

    def _address(self, host: Host, interface: str, address: str) -> None:
        version = ipaddress.ip_interface(address).version
        host.ip(*(["-6"] if version == 6 else []), "addr", "add", address, "dev", interface,
                *(["nodad"] if version == 6 else []))  # fmt: skip
        host.addresses.append(str(ipaddress.ip_interface(address).ip))

    def _up(self, host: Host, interface: str) -> None:
        host.ip("link", "set", interface, "up")
        if host.ip("route", "show", "224.0.0.0/4").stdout.strip() == "":
            # Tools that do not pick an interface for multicast themselves need a route.
            host.ip("route", "add", "224.0.0.0/4", "dev", interface)

    def lan(self, subnet: str, *hosts: Host, subnet6: str | None = None) -> list[str]:
        """Join ``hosts`` on one link; host ``i`` gets address ``i + 1`` of each subnet.

        Two hosts get a veth pair; more get a bridge in a switch namespace of their own.
        Returns the IPv4 addresses in order.
        """
        net4 = ipaddress.ip_network(subnet)
        net6 = ipaddress.ip_network(subnet6) if subnet6 else None
        interfaces: list[str] = []
        if len(hosts) == 2:
            a, b = hosts
            ifa, ifb = a.next_interface(), b.next_interface()
            a.ip("link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns", b.name)
            interfaces = [ifa, ifb]
        else:
            switch = self.host(f"sw{len(self.hosts)}")
            switch.ip("link", "add", "br0", "type", "bridge")
            switch.ip("link", "set", "br0", "up")
            for i, host in enumerate(hosts):
                port, interface = f"p{i}", host.next_interface()
                switch.ip("link", "add", port, "type", "veth", "peer", "name", interface,
                          "netns", host.name)  # fmt: skip
                switch.ip("link", "set", port, "master", "br0", "up")
                interfaces.append(interface)
        found: list[str] = []
        for i, (host, interface) in enumerate(zip(hosts, interfaces, strict=True)):
            address = f"{net4[i + 1]}/{net4.prefixlen}"
            self._address(host, interface, address)
            found.append(str(net4[i + 1]))
            if net6 is not None:
                self._address(host, interface, f"{net6[i + 1]}/{net6.prefixlen}")
            self._up(host, interface)
        return found

    def stub(self, host: Host, *addresses: str) -> str:
        """Give ``host`` a multicast-capable link with nobody else on it (a veth pair in itself).

        ``addresses`` are with prefix length (``10.77.0.1/24``); returns the interface name.
        """
        interface = host.next_interface()
        host.ip("link", "add", interface, "type", "veth", "peer", "name", f"{interface}p")
        host.ip("link", "set", f"{interface}p", "up")
        for address in addresses:
            self._address(host, interface, address)
        self._up(host, interface)
        return interface

    def close(self) -> None:
        """Stop every process, then delete every namespace (and with them their links)."""
        errors: list[str] = []
        for proc in reversed(self.procs):
            try:
                proc.close()
            except (OSError, AssertionError) as exc:
                errors.append(f"{proc.args}: {exc}")
        self.procs.clear()
        for host in reversed(self.hosts):
            result = ip("netns", "delete", host.name, check=False)
            if result.returncode != 0:
                errors.append(result.stderr.strip())
        self.hosts.clear()
        if errors:
            raise RuntimeError("lab teardown: " + "; ".join(errors))


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh lab; skips only when namespaces are impossible here (not root, no ``ip``)."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Lab() as made:
        yield made
