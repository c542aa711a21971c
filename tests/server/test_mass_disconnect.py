"""Clients that vanish all at once (their process killed) leave no session behind in memory."""

from __future__ import annotations

import contextlib
import gc
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from chatsecure import server as server_module
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


@contextlib.contextmanager
def clients_killed_at_the_end(server: ServerThread) -> Iterator[None]:
    """``CLIENTS`` joined clients in a child process, all killed at once (SIGKILL) at the end."""
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
        yield
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.usefixtures("no_cyclic_gc")
def test_sessions_of_killed_clients_are_freed_without_the_cyclic_gc(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(max_sessions=0, max_per_ip=0, history=0)
    with clients_killed_at_the_end(server):
        sessions = server.call(lambda: [weakref.ref(s) for s in server.server.connections])
        assert len(sessions) == CLIENTS
    deadline = time.monotonic() + 20
    while server.call(lambda: len(server.server.connections)):
        assert time.monotonic() < deadline, "the server never noticed the clients were gone"
        time.sleep(0.05)
    time.sleep(0.2)  # the loop's last callbacks for the closed connections
    alive = sum(ref() is not None for ref in sessions)
    assert alive == 0, f"{alive} closed sessions are held by reference cycles"


def test_memory_is_handed_back_after_clients_vanish_even_with_no_idle_sweep(
    start_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    releases: list[int] = []
    original = server_module.release_memory

    def counted() -> None:
        releases.append(len(releases))
        original()

    monkeypatch.setattr(server_module, "release_memory", counted)
    monkeypatch.setattr(server_module, "RELEASE_EVERY", CLIENTS // 2)
    # Every limit off, as in the benchmarks: no idle sweep runs to hand memory back.
    server = start_server(max_sessions=0, max_per_ip=0, history=0, idle_timeout=0)
    with clients_killed_at_the_end(server):
        time.sleep(1.5)  # the hand-back the connections' burst asked for
        before = len(releases)
    deadline = time.monotonic() + 10
    while len(releases) == before:
        assert time.monotonic() < deadline, "nothing handed back after the clients vanished"
        time.sleep(0.05)
    assert server.call(lambda: len(server.server.connections)) == 0
