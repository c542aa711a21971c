"""chatsecure processes in a test's namespaces: a server, a browser, a client.

zeroconf never runs in the test process: every server, browser and client that speaks mDNS is
a subprocess started with ``ip netns exec`` in a namespace the test made.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.netns import Host, Proc

REPO = Path(__file__).resolve().parents[2]
DISCOVER_SECONDS = 2.5
"""How long a test's ``chatsecure discover`` listens; a server answers within about 1 s."""


def env() -> dict[str, str]:
    """The environment for chatsecure subprocesses: this checkout first, unbuffered output."""
    values = dict(os.environ)  # includes the test's private CHATSECURE_HOME
    values["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), values.get("PYTHONPATH")]))
    values["PYTHONUNBUFFERED"] = "1"
    return values


def chatsecure(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "chatsecure", *args)


@dataclass
class RunningServer:
    proc: Proc
    port: int
    fingerprint: str
    instance: str | None
    """The instance label it advertises as (after any rename); None when not advertising."""


def start_server(
    host: Host, cert_dir: Path, name: str, *extra: str, advertised: bool = True
) -> RunningServer:
    """``chatsecure server`` in ``host`` on a free port; waits until it listens (and advertises).

    Unless it is a node of a cluster (whose history is in Redis), it keeps none: servers
    sharing ``cert_dir`` would share the file beside it."""
    keeps = [] if "--cluster" in extra else ["--history", "0"]
    proc = host.popen(
        *chatsecure(
            "server",
            "--port",
            "0",
            "--name",
            name,
            *keeps,
            "--cert",
            str(cert_dir / "server.crt"),
            "--key",
            str(cert_dir / "server.key"),
            *extra,
        ),
        env=env(),
    )
    port = int(proc.expect(r"listening on \S+:(\d+) ").group(1))
    fingerprint = proc.expect(r"certificate fingerprint: (\S+)").group(1)
    instance = None
    if advertised:
        pattern = r"advertising .* as (.+)\._chatsecure\._tcp\.local\., port (\d+)"
        match = proc.expect(pattern, stream="stderr")
        assert int(match.group(2)) == port
        instance = match.group(1)
    return RunningServer(proc, port, fingerprint, instance)


def start_discover(host: Host, seconds: float = DISCOVER_SECONDS) -> Proc:
    """Start ``chatsecure discover --json`` in ``host``; ``found()`` reads its answer."""
    return host.popen(*chatsecure("discover", "--json", "--timeout", str(seconds)), env=env())


def found(proc: Proc) -> list[dict[str, Any]]:
    """The servers a ``start_discover`` process listed (its exit code checked)."""
    code = proc.wait(DISCOVER_SECONDS + 10)
    servers: list[dict[str, Any]] = json.loads(proc.out)
    assert code == (0 if servers else 1), proc.err
    return servers


def discover(host: Host, seconds: float = DISCOVER_SECONDS) -> list[dict[str, Any]]:
    """``chatsecure discover --json`` in ``host``: the servers it found."""
    return found(start_discover(host, seconds))
