"""The server as people run it: a subprocess, signals, a fresh certificate."""

from __future__ import annotations

import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from chatsecure.server import SHUTDOWN_GRACE
from chatsecure.testing import RawClient, joined
from chatsecure.tls import certs
from tests.helpers import CHATSECURE, ServerProcess

SERVER_MODULE = [sys.executable, "-m", "chatsecure.server"]


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_signal_sends_shutdown_to_clients_and_exits_0(cert_dir: Path, sig: signal.Signals) -> None:
    server = ServerProcess(
        [
            *SERVER_MODULE,
            "--cert",
            str(cert_dir / "server.crt"),
            "--key",
            str(cert_dir / "server.key"),
        ]
    )
    try:
        with joined("127.0.0.1", server.port, "alice", "bob") as (alice, bob):
            server.proc.send_signal(sig)
            started = time.monotonic()
            for client in (alice, bob):
                assert client.expect("shutdown") == {"type": "shutdown"}
                assert client.closed()
        code, log = server.wait()
        took = time.monotonic() - started
    finally:
        server.kill()
    assert code == 0, log
    assert "Traceback" not in log
    assert took < SHUTDOWN_GRACE, "clients that closed at once did not make the server wait"


NOHUP = (
    "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, '-m', 'chatsecure.server', *sys.argv[1:]])"
)
"""``nohup``: the server started with SIGHUP ignored."""


def test_a_server_started_under_nohup_outlives_its_terminal(cert_dir: Path) -> None:
    cert = ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
    server = ServerProcess([sys.executable, "-c", NOHUP, *cert])
    try:
        with joined("127.0.0.1", server.port, "alice") as (alice,):
            server.proc.send_signal(signal.SIGHUP)  # the shell it was started from went
            time.sleep(0.5)  # (time to stop, had it taken the signal)
            alice.send({"type": "ping"})
            assert alice.expect("pong") == {"type": "pong"}, "no shutdown: still serving"
            assert server.proc.poll() is None
    finally:
        server.kill()


def test_a_server_paused_past_its_idle_timeout_keeps_clients_that_spoke_meanwhile(
    cert_dir: Path,
) -> None:
    """SIGSTOP for longer than ``--idle-timeout``: what the clients sent meanwhile waits in
    the server's sockets, so on SIGCONT nobody is dropped as idle."""
    cert = ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
    server = ServerProcess([*SERVER_MODULE, *cert, "--idle-timeout", "2"])
    try:
        with joined("127.0.0.1", server.port, "alice", "bob") as (alice, bob):
            server.proc.send_signal(signal.SIGSTOP)
            try:
                for n in range(6):  # 3 s of lines, at a pace that keeps a client alive
                    alice.send({"type": "msg", "text": f"paused {n}"})
                    time.sleep(0.5)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            texts = [bob.expect("msg")["text"] for _ in range(6)]
            assert texts == [f"paused {n}" for n in range(6)]
            bob.send({"type": "msg", "text": "and bob"})
            assert alice.expect("msg")["text"] == "and bob"
        code, log = server.stop()
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.kill()
    assert code == 0, log
    assert "was paused for" in log
    assert "nothing heard for too long" not in log


def test_a_server_killed_by_a_fatal_signal_says_so(cert_dir: Path) -> None:
    """SIGBUS comes when a memory-mapped file (SQLite's -shm) cannot be written any more."""
    cert = ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
    server = ServerProcess([*SERVER_MODULE, *cert])
    try:
        code, log = server.stop(signal.SIGBUS)
    finally:
        server.kill()
    assert code == -signal.SIGBUS
    assert "Fatal Python error: Bus error" in log


def test_server_logs_joins_and_leaves_but_never_message_text(cert_dir: Path) -> None:
    server = ServerProcess(
        [
            *CHATSECURE,
            "server",
            "--cert",
            str(cert_dir / "server.crt"),
            "--key",
            str(cert_dir / "server.key"),
        ]
    )
    try:
        with joined("127.0.0.1", server.port, "alice", "bob") as (alice, bob):
            alice.send({"type": "msg", "text": "secret words"})
            bob.expect("msg")
            alice.send({"type": "quit"})
            bob.expect("leave")
        code, log = server.stop()
    finally:
        server.kill()
    assert code == 0
    assert "secret words" not in log
    for expected in ("alice", "bob", "127.0.0.1", "joined", "left"):
        assert expected in log, f"{expected!r} missing from the log:\n{log}"


@pytest.mark.parametrize(
    "command",
    [SERVER_MODULE, [*CHATSECURE, "server"]],
    ids=["python-m-chatsecure.server", "chatsecure-server"],
)
def test_first_start_in_an_empty_folder_makes_a_certificate(
    tmp_path: Path, command: list[str]
) -> None:
    server = ServerProcess(command, cwd=tmp_path)
    try:
        cert = tmp_path / "certs" / "server.crt"
        key = tmp_path / "certs" / "server.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert server.fingerprint == certs.cert_fingerprint(cert)
        with RawClient("127.0.0.1", server.port) as client:
            presented = client.sock.getpeercert(binary_form=True)
            assert presented is not None
            assert certs.fingerprint(presented) == server.fingerprint
            client.join("alice")
        code, log = server.stop()
    finally:
        server.kill()
    assert code == 0
    assert log.count("generated") == 1, log
    assert str(Path("certs") / "server.crt") in log


def test_second_start_reuses_the_certificate(tmp_path: Path) -> None:
    first = ServerProcess(SERVER_MODULE, cwd=tmp_path)
    try:
        first.stop()
    finally:
        first.kill()
    second = ServerProcess(SERVER_MODULE, cwd=tmp_path)
    try:
        _, log = second.stop()
    finally:
        second.kill()
    assert second.fingerprint == first.fingerprint
    assert "generated" not in log
