"""`chatsecure connect` in a subprocess against servers that lie, go silent, flood or restart."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chatsecure.client.terminal import NOT_DELIVERED
from chatsecure.testing import FakeServer, Mode, RawClient, ServerThread
from tests.gui.proxy import Proxy
from tests.helpers import CHATSECURE, Terminal

TIME = r"\[(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\]"
"""A line's time; the fake server's lines are from 2023, so they show their date too."""
EVE = r"eve \(127\.0\.0\.1\)"
Fake = Callable[..., FakeServer]


@pytest.fixture
def connect(fake: Fake) -> Iterator[Callable[..., tuple[FakeServer, Terminal]]]:
    """A FakeServer in ``mode`` and the terminal client connected to it (killed at the end)."""
    terminals: list[Terminal] = []

    def start(mode: Mode, **options: Any) -> tuple[FakeServer, Terminal]:
        server = fake(mode, **options)
        term = Terminal(f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new")
        terminals.append(term)
        return server, term

    yield start
    for term in terminals:
        term.kill()


def leaves_within(term: Terminal, seconds: float) -> int:
    """The exit code, once the client has left within ``seconds``."""
    started = time.monotonic()
    code = term.wait(seconds + 5)
    assert time.monotonic() - started < seconds, f"took {time.monotonic() - started:.1f} s"
    return code


def test_bad_fields_neither_kill_nor_silence_the_terminal_client(
    connect: Callable[..., Any],
) -> None:
    _, term = connect(Mode.BAD_FIELDS)
    term.expect(r"^connected to 'fake' as bob")
    for text in ("ts far in the future", "ts far in the past", "ts a string", "ts null"):
        term.expect(rf"^{TIME} {EVE}: {text}$")
    term.expect(rf"^{TIME} {EVE}: ts overflows$")
    term.expect(rf"^{TIME} {EVE}: after the bad fields$")
    term.say("quit")
    assert leaves_within(term, 3.0) == 0, term.stderr
    assert len(term.stderr) <= 2, term.stderr


@pytest.mark.parametrize("how", ["quit", "end of input"])
def test_leaves_within_3_s_when_the_server_never_closes(
    connect: Callable[..., Any], how: str
) -> None:
    _, term = connect(Mode.SILENT)
    term.expect(r"^connected to 'fake' as bob")
    if how == "quit":
        term.say("quit")
    else:
        term.end_input()
    assert leaves_within(term, 3.0) == 0, term.stderr


def test_a_flood_of_lines_is_shown_whole_and_in_order(connect: Callable[..., Any]) -> None:
    count = 20_000
    _, term = connect(Mode.FLOOD, count=count)
    term.expect(r"^connected to 'fake' as bob")
    term.expect(rf"^{TIME} {EVE}: end of the flood$", timeout=60)
    flood = [line.rsplit(": ", 1)[1] for line in term.seen if ": flood " in line]
    assert flood == [f"flood {n}" for n in range(1, count + 1)]
    term.say("quit")
    assert leaves_within(term, 3.0) == 0, term.stderr
    assert term.stderr == []


def test_a_flood_of_unknown_frames_writes_one_warning(connect: Callable[..., Any]) -> None:
    _, term = connect(Mode.UNKNOWN_FLOOD, count=100_000)
    term.expect(r"^connected to 'fake' as bob")
    term.expect(rf"^{TIME} {EVE}: end of the flood$", timeout=60)
    term.end_input()
    assert leaves_within(term, 3.0) == 0, term.stderr
    assert len(term.stderr) == 1, term.stderr
    assert "unknown type 'zzz'" in term.stderr[0]
    assert sum(map(len, term.stderr)) < 200


def test_an_unknown_frame_before_welcome_is_ignored(connect: Callable[..., Any]) -> None:
    _, term = connect(Mode.MOTD)
    term.expect(r"^connected to 'fake' as bob")
    term.expect(rf"^{TIME} {EVE}: after the motd$")
    term.end_input()
    assert leaves_within(term, 3.0) == 0, term.stderr


def test_a_graceful_restart_reconnects_and_a_piped_line_is_not_lost(
    connect: Callable[..., Any],
) -> None:
    server, term = connect(Mode.SHUTDOWN)
    term.say("said as the server stopped")
    term.expect(r"^connected to 'fake' as bob")
    term.expect(r"! the server is shutting down$")
    term.expect(r"^connected to 'fake' as bob")  # the same server, back
    term.say("said after it came back")
    term.end_input()
    assert leaves_within(term, 5.0) == 0, term.stderr
    assert server.sessions == 2
    stored = [text for text in server.texts if text.startswith("said")]
    assert stored[-2:] == ["said as the server stopped", "said after it came back"]
    assert any("retry 1 in 1 s" in line for line in term.stderr), term.stderr
    assert not any("Broken pipe" in line for line in term.stderr), term.stderr


def test_a_server_that_fails_every_session_after_welcome_counts_the_retries(
    connect: Callable[..., Any],
) -> None:
    _, term = connect(Mode.FAIL_AFTER_WELCOME)
    for _ in range(3):
        term.expect(r"^connected to 'fake' as bob")
    deadline = time.monotonic() + 10
    while not any("retry 3 in 4 s" in line for line in term.stderr):
        assert time.monotonic() < deadline, term.stderr
        time.sleep(0.05)
    retries = [line for line in term.stderr if "retry" in line]
    assert [line.split("retry ")[1] for line in retries] == ["1 in 1 s", "2 in 2 s", "3 in 4 s"]
    term.say("quit")
    assert leaves_within(term, 3.0) == 0, term.stderr


def test_a_server_name_with_an_escape_sequence_is_shown_escaped_once(fake: Fake) -> None:
    server = fake(Mode.PLAIN, name="\x1b]0;owned\x07lab")
    term = Terminal(f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new")
    try:
        term.expect(r"^connected to '\\x1b\]0;owned\\x07lab' as bob")
        term.say("quit")
        assert leaves_within(term, 3.0) == 0, term.stderr
    finally:
        term.kill()


def test_quit_at_the_end_of_piped_input_waits_for_a_reconnect_as_the_end_does(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server()
    with RawClient(server.host, server.port) as alice, Proxy((server.host, server.port)) as proxy:
        alice.join("alice")
        term = Terminal(
            f"127.0.0.1:{proxy.port}", "--nick", "ci", "--fingerprint", server.fingerprint
        )
        try:
            term.expect(r"^connected to ")
            proxy.hold()
            proxy.drop()  # the server restarts, say, as the script ends
            term.say("build finished")
            term.say("quit")
            time.sleep(3.5)  # longer than quit waits for acks (2 s)
            assert term.proc.poll() is None  # waiting, not gone with the line
            proxy.release()
            assert leaves_within(term, 10.0) == 0, term.stderr
        finally:
            term.kill()
        said = []
        for _ in range(20):  # joins and leaves, the line, and the script's own leave
            frame = alice.recv(5)
            if frame["type"] == "msg":
                said.append(frame["text"])
            if frame["type"] == "leave" and frame.get("reason") == "quit":
                break
        assert said == ["build finished"]


def test_quit_typed_at_a_terminal_whose_output_is_piped_leaves_at_once_while_down(
    start_server: Callable[..., ServerThread],
) -> None:
    """``chatsecure connect ... | tee chat.log``: a person types, on a terminal; their `quit`
    leaves at once while the connection is down, as on a terminal, naming the line not sent."""
    server = start_server()
    master, slave = os.openpty()
    with Proxy((server.host, server.port)) as proxy:
        argv = [f"127.0.0.1:{proxy.port}", "--nick", "ana", "--fingerprint", server.fingerprint]
        proc = subprocess.Popen(
            [*CHATSECURE, "connect", *argv],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("connected to ")
            proxy.hold()
            proxy.drop()
            time.sleep(0.5)  # (the client sees the drop)
            os.write(master, b"said while down\nquit\n")
            _, err = proc.communicate(timeout=10)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == NOT_DELIVERED, err
    assert "not sent, never stored: said while down" in err
