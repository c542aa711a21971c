"""`chatsecure connect` on a real pseudo-terminal, its screen read by a terminal emulator (pyte)."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

import pyte
import pytest

from chatsecure.client.terminal import OwnLines
from chatsecure.protocol.messages import Peer
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls import certs
from chatsecure.tls.trust import KnownServers
from tests.cli.test_connect import TIME
from tests.helpers import CHATSECURE

ROWS, COLS = 24, 120

CONTROLLING_TTY = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""Run the rest of argv with the pseudo-terminal on stdin as its controlling terminal, as a
shell would: so that Ctrl-C, typed, becomes a SIGINT when the terminal is in cooked mode."""


class Answering(pyte.Screen):  # type: ignore[misc]
    """A screen that answers the terminal's queries (cursor position) as a real one does."""

    def __init__(self, reply: Callable[[bytes], None]) -> None:
        super().__init__(COLS, ROWS)
        self._reply = reply

    def write_process_input(self, data: str) -> None:
        self._reply(data.encode())


class Pty:
    """``chatsecure connect ARGS`` on a pseudo-terminal of ROWS x COLS."""

    def __init__(self, *args: str, answers: bool = True) -> None:
        """``answers``: whether the terminal answers cursor-position queries (not every one
        does: prompt_toolkit then waits for the answer before each prompt)."""
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTROLLING_TTY, *CHATSECURE[1:], "connect", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(slave)
        self.raw = b""
        self._lock = threading.Lock()
        self.screen = Answering(lambda data: answers and os.write(self.master, data))
        self._stream = pyte.ByteStream(self.screen)
        self._reader = threading.Thread(target=self._read, name="pty-reader")
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process with the terminal open has gone
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self._stream.feed(data)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def lines(self) -> list[str]:
        """The screen's lines, without trailing blanks and blank lines at the end."""
        with self._lock:
            lines = [line.rstrip() for line in self.screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def text(self) -> str:
        with self._lock:
            return self.raw.decode(errors="replace")

    def wait_for(self, check: Callable[[list[str]], Any], what: str, timeout: float = 10) -> Any:
        """Wait until ``check(lines)`` is true; return what it returned."""
        deadline = time.monotonic() + timeout
        while not (found := check(self.lines())):
            if time.monotonic() > deadline:
                screen = "\n".join(self.lines())
                raise AssertionError(f"no {what} in {timeout} s; screen:\n{screen}")
            time.sleep(0.02)
        return found

    def shows(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """Wait for a screen line matching ``pattern``."""
        match: re.Match[str] = self.wait_for(
            lambda lines: next(filter(None, (re.search(pattern, line) for line in lines)), None),
            repr(pattern),
            timeout,
        )
        return match

    def wait(self, timeout: float = 5) -> int:
        """The exit code, within ``timeout`` seconds (a hang fails the test)."""
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        os.close(self.master)


@pytest.fixture
def pty_connect() -> Any:
    started: list[Pty] = []

    def start(server: ServerThread, nick: str, *options: str, answers: bool = True) -> Pty:
        term = Pty(f"127.0.0.1:{server.port}", "--nick", nick, *options, answers=answers)
        started.append(term)
        return term

    yield start
    for term in started:
        term.close()


QUESTION = r"Trust this server and remember it\? \[y/N\]"


# --- the trust question -----------------------------------------------------------------


def test_ctrl_c_at_the_trust_question_leaves_at_once(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    bob = pty_connect(server, "bob")
    bob.shows(rf"^The server 127\.0\.0\.1:{server.port} is not known yet\.$")
    bob.shows(QUESTION)
    bob.type("\x03")
    assert bob.wait() == 130
    assert "Traceback" not in bob.text()
    assert server.online() == []
    assert not KnownServers().path.exists()


def test_ctrl_d_at_the_trust_question_is_no(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    bob = pty_connect(server, "bob")
    bob.shows(QUESTION)
    bob.type("\x04")
    assert bob.wait() == 1
    said = bob.text()
    assert "is not a known server" in said
    assert "internal error" not in said
    assert "Traceback" not in said
    assert server.online() == []


def test_yes_at_the_trust_question_pins_and_connects(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    bob = pty_connect(server, "bob")
    bob.shows(QUESTION)
    bob.type("y\r")
    bob.shows(r"^connected to 'test' as bob")
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint
    bob.type("quit\r")
    assert bob.wait() == 0


def test_a_changed_certificate_is_shown_once(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    KnownServers().pin("127.0.0.1", server.port, certs.fingerprint(b"the old certificate"))
    bob = pty_connect(server, "bob")
    assert bob.wait() == 1
    assert bob.text().count("HAS CHANGED") == 1, bob.text()


# --- the chat prompt --------------------------------------------------------------------


def joined_alice(server: ServerThread) -> RawClient:
    alice = RawClient(server.host, server.port)
    alice.join("alice")
    return alice


def bob_at_the_prompt(
    server: ServerThread, pty_connect: Callable[..., Pty], alice: RawClient
) -> Pty:
    """Bob's terminal in the room with ``alice``, its prompt drawn."""
    bob: Pty = pty_connect(server, "bob", "--accept-new")
    bob.shows(r"^online: alice \(127\.0\.0\.1\)$")
    assert alice.expect("join")["peer"]["nick"] == "bob"
    bob.wait_for(lambda lines: lines[-1] == ">", "the prompt")
    return bob


def test_typed_text_stays_whole_below_an_incoming_line(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    with joined_alice(server) as alice:
        bob = bob_at_the_prompt(server, pty_connect, alice)
        bob.type("hello wor")
        bob.wait_for(lambda lines: lines[-1].endswith("hello wor"), "the typed text")

        alice.send({"type": "msg", "text": "hi bob, how are you?"})
        lines = bob.wait_for(
            lambda lines: len(lines) > 1 and "hi bob, how are you?" in lines[-2] and lines,
            "the incoming line above the input line",
        )
        assert re.fullmatch(rf"{TIME} alice \(127\.0\.0\.1\): hi bob, how are you\?", lines[-2])
        assert lines[-1] == "> hello wor", lines

        bob.type("ld\r")
        assert alice.expect("msg")["text"] == "hello world"
        bob.type("\x1b[A\r")  # the up arrow brings the line back from the history
        assert alice.expect("msg")["text"] == "hello world"
        bob.type("quit\r")
        assert bob.wait() == 0
        assert alice.expect("leave")["reason"] == "quit"


def test_older_prints_its_page_above_the_line_being_typed(
    start_server: Callable[..., ServerThread], pty_connect: Callable[..., Pty]
) -> None:
    server = start_server(replay=1)
    with joined_alice(server) as alice:
        for n, text in enumerate(("first", "second", "third")):
            alice.send({"type": "msg", "text": text, "ref": f"r{n}"})
            alice.expect("ack")
        bob = bob_at_the_prompt(server, pty_connect, alice)
        bob.shows(rf"^{TIME} alice \(127\.0\.0\.1\): third$")
        bob.type("/older 5\r")
        lines = bob.wait_for(
            lambda lines: lines[-2].startswith("* end of the earlier") and lines,
            "the page above the input line",
        )
        page = lines[lines.index("* 2 messages from earlier:") :]
        assert [re.sub(rf"^{TIME} ", "", line) for line in page[1:3]] == [
            "alice (127.0.0.1): first",
            "alice (127.0.0.1): second",
        ]
        assert page[3:] == [
            "* end of the earlier messages; there are none before them on the server",
            ">",
        ]
        bob.type("quit\r")
        assert bob.wait() == 0
        # Next after bob's join: his leave. /older was not sent as a chat line.
        assert alice.expect("leave")["peer"]["nick"] == "bob"


@pytest.mark.parametrize(("key", "code"), [("\x03", 130), ("\x04", 0)])
def test_ctrl_c_or_ctrl_d_at_the_chat_prompt_quits(
    server: ServerThread, pty_connect: Callable[..., Pty], key: str, code: int
) -> None:
    with joined_alice(server) as alice:
        bob = bob_at_the_prompt(server, pty_connect, alice)
        bob.type(key)
        assert bob.wait() == code
        assert alice.expect("leave")["reason"] == "quit"
        assert "Traceback" not in bob.text()


@pytest.mark.parametrize("run", range(3))
def test_ctrl_c_right_behind_typed_lines_is_never_lost(
    start_server: Callable[..., ServerThread], pty_connect: Callable[..., Pty], run: int
) -> None:
    """Typed lines and Ctrl-C in one burst: between two prompts the terminal is in cooked
    mode, so the Ctrl-C may come as a SIGINT just as a prompt ends. It must still leave,
    at once, with what the pace held back named and never sent."""
    server = start_server(msg_rate=2.0, msg_burst=2)
    with joined_alice(server) as alice:
        bob: Pty = pty_connect(server, "bob", "--accept-new", answers=False)  # a slow prompt
        bob.shows(r"^online: alice \(127\.0\.0\.1\)$")
        assert alice.expect("join")["peer"]["nick"] == "bob"
        for n in range(30):  # typed (or pasted slowly): each line ends a prompt
            bob.type(f"hurried {n}\r")
            time.sleep(0.02)
        time.sleep(0.5)
        bob.type("\x03")
        assert bob.wait(10) == 130, bob.text()
        text = bob.text()
        assert "Traceback" not in text, text
        assert "not running" not in text, text
        heard = []
        while not alice.silent(0.5):
            if (frame := alice.recv())["type"] == "msg":
                heard.append(frame["text"])
        named = re.findall(r"not sent, never stored: (hurried \d+)", text)
        assert heard + named == [f"hurried {n}" for n in range(len(heard) + len(named))]
        assert len(heard) <= 6, heard  # the burst, and what the pace let out before Ctrl-C


def test_ctrl_c_while_quit_waits_for_paced_lines_leaves_and_names_them(
    start_server: Callable[..., ServerThread], pty_connect: Callable[..., Pty]
) -> None:
    server = start_server(msg_rate=1.0, msg_burst=1)
    with joined_alice(server) as alice:
        bob = bob_at_the_prompt(server, pty_connect, alice)
        bob.type("".join(f"slow {n}\r" for n in range(8)) + "quit\r")
        time.sleep(0.5)  # quit waits for the paced lines to go out
        bob.type("\x03")
        assert bob.wait(10) == 130, bob.text()
        text = bob.text()
        heard = []
        while not alice.silent(0.5):
            if (frame := alice.recv())["type"] == "msg":
                heard.append(frame["text"])
        named = re.findall(r"not sent, never stored: (slow \d+)", text)
        assert heard + named == [f"slow {n}" for n in range(8)], text
        assert len(heard) <= 3, heard


def test_the_server_going_keeps_the_prompt_and_what_was_typed(
    start_server: Callable[..., ServerThread], pty_connect: Callable[..., Pty]
) -> None:
    server = start_server()
    bob = pty_connect(server, "bob", "--accept-new")
    bob.shows(r"^online: nobody else yet$")
    bob.type("half a thought")
    stopper = threading.Thread(target=server.stop, name="stopper")
    stopper.start()
    try:
        bob.shows(r"the server is shutting down")
        bob.shows(r"half a thought")  # still there: a shutdown is a drop, not the end
        bob.type("\x15\x04")  # Ctrl-U empties the line, Ctrl-D leaves
        assert bob.wait() == 0
    finally:
        stopper.join(15)


def test_an_own_line_shows_once_in_its_place_among_the_others(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    with joined_alice(server) as alice:
        bob = bob_at_the_prompt(server, pty_connect, alice)
        alice.send({"type": "msg", "text": "first, from alice"})
        bob.shows(r"first, from alice")
        bob.type("then bob\r")
        assert alice.expect("msg")["text"] == "then bob"
        alice.send({"type": "msg", "text": "last, from alice"})
        lines = bob.wait_for(
            lambda lines: "last, from alice" in lines[-2] and lines, "alice's second line"
        )
        said = [line for line in lines if re.match(TIME, line)]
        assert said == [
            m
            for m in said
            if re.fullmatch(rf"{TIME} (alice|bob) \(127\.0\.0\.1\): .*", m)  # the format
        ]
        assert [line.split(": ", 1)[1] for line in said] == [
            "first, from alice",
            "then bob",
            "last, from alice",
        ]
        assert lines[-1] == ">"  # the line typed left the input line
        assert not any("then bob" in line and not re.match(TIME, line) for line in lines), lines
        bob.type("quit\r")
        assert bob.wait() == 0


def test_a_line_typed_while_the_server_is_away_shows_as_sending_until_stored(
    start_server: Callable[..., ServerThread], pty_connect: Callable[..., Pty]
) -> None:
    server = start_server()
    port = server.port
    bob = pty_connect(server, "bob", "--accept-new")
    bob.shows(r"^online: nobody else yet$")
    bob.wait_for(lambda lines: lines[-1] == ">", "the prompt")
    server.stop()
    bob.shows(r"the server is shutting down")
    bob.type("typed while it was away\r")
    lines = bob.wait_for(lambda lines: "sending" in lines[-2] and lines, "the pending line")
    assert lines[-2:] == ["  sending: typed while it was away", ">"], lines
    start_server(port=port)
    bob.shows(r"^\* back in the room: nothing missed; sending your waiting line$", timeout=15)
    own = rf"{TIME} bob \(127\.0\.0\.1\): typed while it was away"
    lines = bob.wait_for(
        lambda lines: re.fullmatch(own, lines[-2]) and lines[-1] == ">" and lines,
        "the line, stored, above the prompt drawn again",
    )
    assert [line for line in lines if "typed while it was away" in line] == [lines[-2]], lines
    bob.type("quit\r")
    assert bob.wait() == 0


def test_many_pending_lines_show_the_newest_and_how_many_more() -> None:
    own = OwnLines(Peer("p1", "bob", "127.0.0.1"))
    for n in range(5):
        own.queued(f"r{n}", f"line {n}")
    own.done("r4")
    own.done("unknown")  # a ref it never saw changes nothing
    assert "".join(text for _, text, *_ in own.prompt()) == (
        "  (and 1 more before)\n  sending: line 1\n  sending: line 2\n  sending: line 3\n> "
    )


def test_closing_the_terminal_window_leaves_as_quit_does(
    server: ServerThread, pty_connect: Callable[..., Pty]
) -> None:
    with joined_alice(server) as alice:
        bob = bob_at_the_prompt(server, pty_connect, alice)
        bob.proc.send_signal(signal.SIGHUP)  # what the terminal's end sends
        assert bob.wait() == 128 + signal.SIGHUP
        assert alice.expect("leave")["reason"] == "quit"
        assert "Traceback" not in bob.text()
