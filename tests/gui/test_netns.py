"""The servers list with discovery on: only inside network namespaces this test makes.

The server runs in one namespace, the two GUI clients (``netns_driver.py``) in another, joined
by a veth pair; the windows go to this run's Xvfb through its socket file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.netns import Lab, lab

__all__ = ["lab"]

DRIVER = Path(__file__).with_name("netns_driver.py")


@pytest.mark.netns
@pytest.mark.gui
def test_discovered_server_is_listed_picked_chatted_with_and_dropped(
    lab: Lab, display: str, cert_dir: Path
) -> None:
    srv, cli = lab.host("srv"), lab.host("cli")
    server_ip, client_ip = lab.lan("10.77.15.0/24", srv, cli)
    server = srv.popen(
        sys.executable, "-m", "chatsecure", "server", "--name", "gui lab", "--port", "7467",
        "--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key"),
    )  # fmt: skip
    fingerprint = server.expect(r"fingerprint: (\S+)").group(1)
    driver = cli.popen(
        sys.executable, str(DRIVER), "--server", server_ip, "--port", "7467",
        "--name", "gui lab", "--fingerprint", fingerprint,
        env={**os.environ, "DISPLAY": display},
    )  # fmt: skip
    driver.expect(rf"listed: gui lab at {server_ip}:7467 \(SHA256:", timeout=20)
    driver.expect(rf"alice joined from the list as alice \({client_ip}\)")
    driver.expect(rf"alice sees bob \({client_ip}\)")
    driver.expect(rf"bob saw: \[[\d:]+\] alice \({client_ip}\): hello from the list")
    driver.expect("bob left")
    driver.expect("ready for server stop")
    stopping = time.monotonic()
    assert server.stop() == 0  # SIGTERM: shutdown to clients, goodbye packets on the link
    driver.expect("removed from the list", timeout=10)
    assert time.monotonic() - stopping < 3
    driver.expect("alice is back at the connect view")
    assert driver.wait(15) == 0, driver.err
    assert "Traceback" not in driver.err
