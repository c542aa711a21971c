"""Clients that vanish all at once (their process killed) leave no session behind in memory."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from chatsecure.testing import ServerThread

CLIENTS = 300
"""Enough for a cycle per session to show; thousands were measured by hand (see the commit)."""


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees memory during the test: a cycle then stays visible."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_cyclic_gc")
def test_sessions_of_killed_clients_are_freed_without_the_cyclic_gc(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(max_sessions=0, max_per_ip=0, history=0)
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.server.mass_holder", str(server.port), str(CLIENTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == f"ready {CLIENTS}"
        server.wait_online(CLIENTS, timeout=30)
        sessions = server.call(lambda: [weakref.ref(s) for s in server.server.connections])
        assert len(sessions) == CLIENTS
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    deadline = time.monotonic() + 20
    while server.call(lambda: len(server.server.connections)):
        assert time.monotonic() < deadline, "the server never noticed the clients were gone"
        time.sleep(0.05)
    time.sleep(0.2)  # the loop's last callbacks for the closed connections
    alive = sum(ref() is not None for ref in sessions)
    assert alive == 0, f"{alive} closed sessions are held by reference cycles"
