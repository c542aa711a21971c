"""Shared fixtures: a private trust store, a certificate, a real server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatsecure.testing import FakeServer, Mode, ServerThread, server_config
from chatsecure.tls import certs
from tests.redis_server import RedisServer, redis_server_fixture


@pytest.fixture(autouse=True)
def chatsecure_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty config folder (trust store, remembered nick)."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHATSECURE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server certificate and key made once for the whole run."""
    out = tmp_path_factory.mktemp("certs")
    certs.generate(out)
    return out


@pytest.fixture
def start_server(cert_dir: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start servers with config overrides; all are stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        server = ServerThread(server_config(cert_dir, **overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on 127.0.0.1 for the whole run (skipped if none is installed)."""
    yield from redis_server_fixture(tmp_path_factory)


@pytest.fixture
def fake(cert_dir: Path) -> Iterator[Callable[..., FakeServer]]:
    """Start FakeServers; all are stopped at the end of the test."""
    started: list[FakeServer] = []

    def start(mode: Mode, **options: Any) -> FakeServer:
        server = FakeServer(cert_dir, mode, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """A real server on 127.0.0.1 with an ephemeral port and default limits."""
    return start_server()


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves threads running behind it."""
    before = set(threading.enumerate())
    yield
    deadline = 50
    leaked: set[threading.Thread] = set()
    for _ in range(deadline):
        leaked = {t for t in threading.enumerate() if t not in before and t.is_alive()}
        if not leaked:
            return
        threading.Event().wait(0.1)
    pytest.fail(f"test leaked threads: {sorted(t.name for t in leaked)}")
