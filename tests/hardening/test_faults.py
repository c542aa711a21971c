"""Faults: clients that die mid-frame or lose their network are removed, with one leave each."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chatsecure.testing import RawClient, ServerThread
from tests.hardening.helpers import PEER_PROCESS, Proc, peer_argv
from tests.netns import Lab, ip, lab

__all__ = ["lab"]  # the fixture, for the tests below


def test_kill_9_mid_frame_gives_exactly_one_leave_and_no_half_message(
    server: ServerThread,
) -> None:
    with RawClient(server.host, server.port) as observer:
        observer.join("observer")
        victim = Proc(peer_argv("client", server.host, str(server.port), "victim", "half"))
        try:
            assert victim.line() == "half"
            assert observer.expect("join")["peer"]["nick"] == "victim"
            time.sleep(0.1)  # the half frame is in the server's buffer by now
            victim.kill()
            leave = observer.expect("leave", timeout=3)
        finally:
            victim.stop()
            victim.close()
        assert (leave["peer"]["nick"], leave["reason"]) in {
            ("victim", "closed"),
            ("victim", "error"),
        }
        assert observer.silent(0.3), "one leave, and nothing of the half frame"
        assert server.online() == ["observer"]


# --- a client whose network disappears ------------------------------------------------------

IDLE = 1.0
"""The server's idle timeout in these tests: pings at 0.5 s, dropped by 1 s of silence."""

SUBNET = "10.206.6.0/30"
"""The link between the two namespaces: the server is .1, the client .2."""


def leaves_of(output: str, nick: str) -> list[dict[str, Any]]:
    frames = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [f for f in frames if f["type"] == "leave" and f["peer"]["nick"] == nick]


@pytest.mark.netns
@pytest.mark.parametrize("cut", ["link-down", "link-deleted"])
def test_client_whose_network_disappears_is_removed_within_the_idle_timeout_once(
    lab: Lab, cert_dir: Path, cut: str
) -> None:
    server_ns, client_ns = lab.host("srv"), lab.host("cli")
    server_ip, _ = lab.lan(SUBNET, server_ns, client_ns)
    config = {
        "host": None,  # every interface of its namespace: loopback for the observer, the link
        "port": 0,
        "name": "netns",
        "cert": f"{cert_dir}/server.crt",
        "key": f"{cert_dir}/server.key",
        "idle_timeout": IDLE,
    }
    server = server_ns.popen(sys.executable, str(PEER_PROCESS), "server", json.dumps(config))
    port = server.expect(r"port (\d+)").group(1)
    # The observer answers pings, so only the cut-off client goes.
    observer = server_ns.popen(
        sys.executable, str(PEER_PROCESS), "client", "127.0.0.1", port, "observer", "chat"
    )
    observer.expect(r'"joined"')
    victim = client_ns.popen(
        sys.executable, str(PEER_PROCESS), "client", server_ip, port, "victim", "dead"
    )
    victim.expect("joined")
    observer.expect(r'"type": "join".*"nick": "victim"')
    last_word = time.monotonic()
    if cut == "link-down":
        client_ns.ip("link", "set", "eth0", "down")
    else:  # the interface is gone, then the process and its namespace
        client_ns.ip("link", "delete", "eth0")
        victim.stop(sig=9)
        lab.hosts.remove(client_ns)
        ip("netns", "delete", client_ns.name)
    observer.expect(r'"type": "leave".*"nick": "victim"', timeout=IDLE + 2)
    took = time.monotonic() - last_word
    with pytest.raises(AssertionError):  # no second leave
        observer.expect(r'"type": "leave"', timeout=0.5)
    leaves = leaves_of(observer.out, "victim")
    assert len(leaves) == 1, leaves
    assert leaves[0]["reason"] in ({"timeout"} if cut == "link-down" else {"timeout", "error"})
    assert took < IDLE + 0.75, f"removed {took:.2f} s after its last word"
    print(f"{cut}: leave ({leaves[0]['reason']}) {took:.2f} s after the client's last word")
    assert not re.search(r'"type": "(eof|error)"', observer.out), "the observer stayed"
    assert server.popen.poll() is None, server.err
