"""`chatsecure connect` whose output cannot carry every character (PYTHONIOENCODING, a Windows
console or a redirect in cp1252): such a character is shown escaped, and the chat goes on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chatsecure.testing import RawClient, ServerThread
from tests.cli.test_tty import Pty
from tests.helpers import Terminal

TIME = r"\[\d\d:\d\d:\d\d\]"
ALICE = r"alice \(127\.0\.0\.1\)"


def say_a_smile_then_more(alice: RawClient) -> None:
    """Once the client joined: a line with characters latin-1 and ASCII lack, then one more."""
    alice.expect("join")
    alice.send({"type": "msg", "text": "a smile \U0001f642 in \u65e5\u672c"})
    alice.send({"type": "msg", "text": "and the next line"})


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_a_character_the_output_cannot_show_is_shown_escaped_and_the_chat_goes_on(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", encoding)  # (for the child: read at its start)
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = Terminal(
            f"127.0.0.1:{server.port}",
            "--nick",
            "bob",
            "--fingerprint",
            server.fingerprint,
            "--no-discovery",
        )
        try:
            bob.expect(r"^connected to 'test' as bob")
            say_a_smile_then_more(alice)
            bob.expect(rf"^{TIME} {ALICE}: a smile \\U0001f642 in \\u65e5\\u672c$")
            bob.expect(rf"^{TIME} {ALICE}: and the next line$")
            bob.say("quit")
            assert bob.wait() == 0, bob.stderr
        finally:
            bob.kill()
    assert not [line for line in bob.stderr if "Error" in line], bob.stderr


def test_on_a_terminal_in_latin_1_a_character_it_cannot_show_costs_nothing(
    start_server: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The welcome is printed before the prompt starts, the chat lines through prompt_toolkit
    (which replaces what it cannot encode): neither may end the client."""
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    server = start_server(name="lab \U0001f642")
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = Pty(f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new", "--no-discovery")
        try:
            bob.shows(r"^connected to 'lab \\U0001f642' as bob")
            say_a_smile_then_more(alice)
            bob.shows(rf"^{TIME} {ALICE}: and the next line$")
            assert any(": a smile ? in ??" in line for line in bob.lines()), bob.lines()
            bob.type("quit\r")
            assert bob.wait() == 0
        finally:
            bob.close()
    assert "Traceback" not in bob.text()
