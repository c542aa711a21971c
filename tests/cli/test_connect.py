"""`chatsecure connect`, the terminal client, driven through pipes as a script drives it."""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatsecure.client.core import safe_text
from chatsecure.client.resume import SAVE_EVERY
from chatsecure.client.terminal import NOT_DELIVERED, ONLINE_NAMED
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls import certs
from chatsecure.tls.trust import KnownServers
from tests.helpers import CHATSECURE, Terminal
from tests.netns import Lab, lab

__all__ = ["lab"]

TIME = r"\[\d\d:\d\d:\d\d\]"


def terminal(server: ServerThread, nick: str, *options: str) -> Terminal:
    return Terminal(f"127.0.0.1:{server.port}", "--nick", nick, *options)


def test_terminal_client_chats_with_a_raw_client(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = terminal(server, "bob", "--accept-new")
        try:
            bob.expect(r"^connected to 'test' as bob \(TLSv1\.[23], SHA256:")
            bob.expect(r"^online: alice \(127\.0\.0\.1\)$")
            assert alice.expect("join")["peer"]["nick"] == "bob"
            bob.say("hello alice")
            frame = alice.expect("msg")
            assert frame["text"] == "hello alice"
            assert frame["from"]["nick"] == "bob"
            alice.send({"type": "msg", "text": "hi bob"})
            bob.expect(rf"^{TIME} alice \(127\.0\.0\.1\): hi bob$")
            bob.say("quit")
            assert bob.wait() == 0, bob.stderr
            leave = alice.expect("leave")
            assert leave["peer"]["nick"] == "bob"
            assert leave["reason"] == "quit"
        finally:
            bob.kill()
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint


def test_a_big_room_is_named_in_part_on_connecting_and_whole_by_who(
    server: ServerThread,
) -> None:
    others = [RawClient(server.host, server.port) for _ in range(ONLINE_NAMED + 2)]
    bob = None
    try:
        for number, other in enumerate(others, 1):
            other.join(f"m{number:02}")
        bob = terminal(server, "bob", "--accept-new")
        named = ", ".join(f"m{n:02} \\(127\\.0\\.0\\.1\\)" for n in range(1, ONLINE_NAMED + 1))
        bob.expect(rf"^online: {named} and 2 more \(/who names everyone\)$")
        others[4].close()  # m05 leaves, m13 comes
        bob.expect(rf"^{TIME} \* m05 \(127\.0\.0\.1\) left \(")
        with RawClient(server.host, server.port) as late:
            late.join("m13")
            bob.expect(rf"^{TIME} \* m13 \(127\.0\.0\.1\) joined$")
            bob.say("/who")
            here = [f"m{n:02}" for n in range(1, ONLINE_NAMED + 4) if n != 5]
            listed = ", ".join(f"{nick} (127.0.0.1)" for nick in ["bob", *here])
            line = bob.expect(r"^\* \d+ here, you first: .*$").group(0)
            assert line == f"* {len(here) + 1} here, you first: {listed}"
            bob.say("and hello")  # `/who` was not said to the room: this is the next line
            assert late.expect("msg")["text"] == "and hello"
        bob.say("quit")
        assert bob.wait() == 0, bob.stderr
    finally:
        if bob is not None:
            bob.kill()
        for other in others:
            other.close()


def test_two_terminal_clients_chat_and_see_each_other_come_and_go(server: ServerThread) -> None:
    bob = terminal(server, "bob", "--accept-new")
    carol = None
    try:
        bob.expect(r"^online: nobody else yet$")
        carol = terminal(server, "carol", "--accept-new")
        carol.expect(r"^online: bob \(127\.0\.0\.1\)$")
        bob.expect(rf"^{TIME} \* carol \(127\.0\.0\.1\) joined$")
        carol.say("hi bob, it's carol")
        bob.expect(rf"^{TIME} carol \(127\.0\.0\.1\): hi bob, it's carol$")
        bob.say("hello carol")
        carol.expect(rf"^{TIME} bob \(127\.0\.0\.1\): hello carol$")
        carol.end_input()  # end of the script: the client quits
        assert carol.wait() == 0, carol.stderr
        bob.expect(rf"^{TIME} \* carol \(127\.0\.0\.1\) left \(quit\)$")
        bob.say("quit")
        assert bob.wait() == 0, bob.stderr
    finally:
        bob.kill()
        if carol is not None:
            carol.kill()
    assert not any("hi bob" in line for line in carol.seen), "no echo of one's own message"


def test_unknown_server_is_refused_without_a_terminal_and_nothing_is_sent(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatsecure.server")
    bob = terminal(server, "bob")
    try:
        assert bob.wait() == 1
    finally:
        bob.kill()
    errors = "\n".join(bob.stderr)
    assert server.fingerprint in errors
    assert "--accept-new" in errors
    assert "--fingerprint" in errors
    assert not KnownServers().path.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("TLS connection from" in m for m in messages), "the client did connect"
    assert not any("joined" in m or "refused frame" in m for m in messages), messages
    assert server.online() == []


def test_expected_fingerprint_connects_and_pins(server: ServerThread) -> None:
    bob = terminal(server, "bob", "--fingerprint", server.fingerprint.removeprefix("SHA256:"))
    try:
        bob.expect(r"^connected to 'test' as bob")
        bob.end_input()
        assert bob.wait() == 0
    finally:
        bob.kill()
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint


def test_other_fingerprint_is_refused(server: ServerThread) -> None:
    expected = certs.fingerprint(b"some other certificate")
    bob = terminal(server, "bob", "--fingerprint", expected)
    try:
        assert bob.wait() == 1
    finally:
        bob.kill()
    errors = "\n".join(bob.stderr)
    assert expected in errors
    assert server.fingerprint in errors
    assert server.online() == []


def test_malformed_fingerprint_is_refused_before_connecting(server: ServerThread) -> None:
    bob = terminal(server, "bob", "--fingerprint", "SHA256:nonsense")
    try:
        assert bob.wait() == 1
    finally:
        bob.kill()
    assert "not a SHA-256 fingerprint" in "\n".join(bob.stderr)


def test_changed_certificate_is_refused_loudly_until_forgotten(server: ServerThread) -> None:
    old = certs.fingerprint(b"the certificate this server had before")
    KnownServers().pin("127.0.0.1", server.port, old)
    name = f"127.0.0.1:{server.port}"

    refused = terminal(server, "bob", "--accept-new")
    try:
        assert refused.wait() == 1
    finally:
        refused.kill()
    errors = "\n".join(refused.stderr)
    assert "HAS CHANGED" in errors
    assert old in errors
    assert server.fingerprint in errors
    assert f"chatsecure forget {name}" in errors
    assert KnownServers().get("127.0.0.1", server.port) == old
    assert server.online() == []

    forget = Terminal.run_cli("forget", name)
    assert forget.returncode == 0, forget.stderr
    assert f"forgot {name}" in forget.stdout
    assert KnownServers().get("127.0.0.1", server.port) is None

    again = terminal(server, "bob", "--accept-new")
    try:
        again.expect(r"^connected to 'test' as bob")
        again.say("quit")
        assert again.wait() == 0
    finally:
        again.kill()
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint


def test_forget_of_an_unknown_server_fails() -> None:
    result = Terminal.run_cli("forget", "127.0.0.1:9")
    assert result.returncode == 1
    assert "was not pinned" in result.stderr
    assert "pinned for that host" not in result.stderr


def test_a_pin_of_an_address_whose_interface_is_gone_can_be_forgotten() -> None:
    KnownServers().pin("fe80::1%nosuch9", 7467, certs.fingerprint(b"a server on a lost link"))
    result = Terminal.run_cli("forget", "[fe80::1%nosuch9]:7467")
    assert result.returncode == 0, result.stderr
    assert KnownServers().get("fe80::1%nosuch9", 7467) is None


def test_forget_without_the_port_names_the_pins_of_that_host() -> None:
    fingerprint = certs.fingerprint(b"a server on another port")
    KnownServers().pin("127.0.0.1", 17470, fingerprint)
    KnownServers().pin("127.0.0.10", 17470, fingerprint)  # (another host: not named)
    result = Terminal.run_cli("forget", "127.0.0.1")
    assert result.returncode == 1
    assert result.stderr.endswith(
        "127.0.0.1:7467 was not pinned in "
        f"{KnownServers().path}; pinned for that host: 127.0.0.1:17470\n"
    )


@pytest.mark.parametrize("target", ["host:abc", "host:0", "[::1", ""])
def test_forget_of_a_malformed_address_is_a_clear_error(target: str) -> None:
    result = Terminal.run_cli("forget", target)
    assert result.returncode == 1
    assert result.stderr.startswith("chatsecure: ")
    assert "Traceback" not in result.stderr


def test_refused_nick_exits_1_with_the_reason(server: ServerThread) -> None:
    bob = terminal(server, " \u200b ", "--accept-new")
    try:
        assert bob.wait() == 1
    finally:
        bob.kill()
    assert "bad_nick" in "\n".join(bob.stderr)


@pytest.mark.parametrize("target", ["127.0.0.1:0", "127.0.0.1:70000", "[::1", ":7467"])
def test_bad_target_exits_1(target: str) -> None:
    result = Terminal.run_cli("connect", target, "--nick", "bob", "--accept-new")
    assert result.returncode == 1
    assert result.stderr.startswith("chatsecure: ")


def test_a_server_restart_is_a_drop_the_client_comes_back_from_and_no_line_is_lost(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server()
    port = server.port
    bob = terminal(server, "bob", "--accept-new")
    try:
        bob.expect(r"^connected to")
        server.stop()
        bob.expect(rf"^{TIME} ! the server is shutting down$")
        bob.say("typed while it was away")  # queued, sent after the reconnect
        again = start_server(port=port)
        bob.expect(r"^connected to", timeout=15)
        bob.expect(r"^\* back in the room: nothing missed; sending your waiting line$")
        with RawClient(again.host, again.port) as alice:
            welcome = alice.join("alice")
            assert [m["text"] for m in alice.replayed] == ["typed while it was away"]
            assert [p["nick"] for p in welcome["peers"]] == ["bob"]
        bob.end_input()
        assert bob.wait() == 0
        assert any("the server shut down" in line for line in bob.stderr)
    finally:
        bob.kill()


def test_end_of_input_waits_until_every_line_is_stored(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = terminal(server, "bob", "--accept-new")
        try:
            bob.expect(r"^connected to")
            for n in range(20):
                bob.say(f"line {n}")
            bob.end_input()
            assert bob.wait() == 0
            alice.expect("join")
            assert [alice.expect("msg")["text"] for _ in range(20)] == [
                f"line {n}" for n in range(20)
            ]
        finally:
            bob.kill()


BOB_SAID = (rf"^{TIME} bob \(127\.0\.0\.1\): one$", rf"^{TIME} bob \(127\.0\.0\.1\): two$")
"""What a terminal prints of bob's ``say_stored(bob, "one", "two")``."""


def say_stored(client: RawClient, *texts: str) -> None:
    """``texts`` said by ``client``, each stored (acknowledged) before the next."""
    for n, text in enumerate(texts):
        client.send({"type": "msg", "text": text, "ref": f"r{n}"})
        client.expect("ack")


def sees_then_quits(term: Terminal, *patterns: str) -> None:
    """``term`` prints lines matching ``patterns`` in order, then leaves on ``quit`` with 0."""
    try:
        for pattern in patterns:
            term.expect(pattern)
        term.say("quit")
        assert term.wait() == 0, term.stderr
    finally:
        term.kill()


def test_back_in_a_room_it_first_found_empty_a_client_hears_what_it_missed(
    server: ServerThread,
) -> None:
    sees_then_quits(terminal(server, "alice", "--accept-new"), r"^online: nobody else yet$")
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        say_stored(bob, "one", "two")
    sees_then_quits(
        terminal(server, "alice"),
        r"^\* back in the room: 2 missed messages restored$",
        *BOB_SAID,
    )


def test_a_newcomer_is_told_which_lines_were_said_before_it_came(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        say_stored(bob, "one", "two")
        sees_then_quits(
            terminal(server, "carol", "--accept-new"),
            r"^online: bob \(127\.0\.0\.1\)$",
            r"^\* earlier in the room, the last 2 lines:$",
            *BOB_SAID,
        )


def test_older_prints_the_missed_lines_the_replay_left_out_then_earlier_ones(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(replay=2, replay_max=3)
    said = [rf"^{TIME} bob \(127\.0\.0\.1\): {text}$" for text in ("one", "two", "three", "four")]
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        say_stored(bob, "one", "two", "three")
    sees_then_quits(terminal(server, "alice", "--accept-new"), *said[1:3])  # the last 2
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        say_stored(bob, "four", "five", "six", "seven", "eight", "nine")
    alice = terminal(server, "alice")
    alice.expect(
        r"^\* back in the room: 6 missed messages \(the oldest 3 are not shown: "
        r"/older shows them\)$"
    )
    for _ in range(3):
        alice.say("/older 2")  # each waits for the one before to be answered
    alice.say("/older")
    sees_then_quits(
        alice,
        r"^\* 2 messages you missed \(the replay left them out\):$",
        rf"^{TIME} bob \(127\.0\.0\.1\): five$",
        rf"^{TIME} bob \(127\.0\.0\.1\): six$",
        r"^\* end of those; 1 message missed before them: /older$",
        r"^\* 1 message you missed \(the replay left it out\):$",
        said[3],
        r"^\* end of those; that is all you missed$",
        r"^\* 2 messages from earlier:$",
        *said[1:3],
        r"^\* end of the earlier messages; /older for more$",
        r"^\* 1 message from earlier:$",
        said[0],
        r"^\* end of the earlier messages; there are none before it on the server$",
    )
    replayed = alice.seen.index("* 2 messages you missed (the replay left them out):")
    assert not [line for line in alice.seen[replayed:] if "seven" in line], "printed once"


def test_quit_right_after_piped_lines_waits_for_their_acks(server: ServerThread) -> None:
    """A script's ``printf 'done\\nquit\\n'``: the line is stored, and said to be."""
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        err = piped_bob(server, alice, b"build finished\nall green\nquit\n")
        assert b"not sent" not in err, err
        assert [alice.expect("msg")["text"] for _ in range(2)] == ["build finished", "all green"]
        assert alice.expect("leave")["reason"] == "quit"


@pytest.mark.parametrize(
    "commands",
    [b"/quit\n", b"/Help\n/QUIT\n"],  # commands are read in any case, and never said
    ids=["quit", "any-case"],
)
def test_slash_quit_leaves_as_quit_does_and_is_not_said(
    server: ServerThread, commands: bytes
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        piped_bob(server, alice, b"bye all\n" + commands + b"not this\n")
        assert alice.expect("msg")["text"] == "bye all"
        assert alice.expect("leave")["reason"] == "quit"  # and nothing said between


@pytest.mark.parametrize("refused", [b"longer than ten", b"y" * 300], ids=["too-long", "long"])
def test_a_piped_line_the_server_refuses_is_named_and_the_rest_goes_on_to_the_end(
    start_server: Callable[..., ServerThread], refused: bytes
) -> None:
    server = start_server(max_text=10)
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        # then end of input; the exit code tells the script that a line was not stored
        err = piped_bob(server, alice, b"short\n" + refused + b"\nlast\n", NOT_DELIVERED)
        assert [alice.expect("msg")["text"] for _ in range(2)] == ["short", "last"]
        assert alice.expect("leave")["reason"] == "quit"
    [named] = [line for line in err.decode().splitlines() if "not stored" in line]
    assert named.startswith("chatsecure: not stored: the server refused it ("), err
    # Named by its start when long: not a screenful of it again.
    text = safe_text(refused.decode()) if len(refused) < 300 else f"{'y' * 200}… (300 characters)"
    assert named.endswith(f"; text_too_long): {text}"), err


def test_a_piped_line_that_shows_nothing_is_skipped_like_a_blank_one(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        err = piped_bob(server, alice, b"first\n\x07\n\xe2\x80\x8b\n   \nlast\n")
        assert [alice.expect("msg")["text"] for _ in range(2)] == ["first", "last"]
        assert alice.expect("leave")["reason"] == "quit"
    assert b"not" not in err, err


def test_a_piped_line_too_long_to_send_at_all_is_named_and_told_by_the_exit_code(
    server: ServerThread,
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        err = piped_bob(server, alice, b"short\n" + b"x" * 20_000 + b"\n", NOT_DELIVERED)
        assert alice.expect("msg")["text"] == "short"
    assert b"message not sent: it is too long (20000 characters" in err, err


def connect_process(server: ServerThread, nick: str) -> subprocess.Popen[bytes]:
    """``chatsecure connect`` with byte pipes, for input that is not UTF-8."""
    # (--no-discovery: accepted as gui and server take it; connect never looks anyway)
    options = ["--nick", nick, "--accept-new", "--no-discovery"]
    return subprocess.Popen(
        [*CHATSECURE, "connect", f"127.0.0.1:{server.port}", *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def piped_bob(server: ServerThread, alice: RawClient, stdin: bytes, code: int = 0) -> bytes:
    """``chatsecure connect`` as bob, fed ``stdin`` once ``alice`` saw him join; it must exit
    with ``code``. Returns its stderr."""
    proc = connect_process(server, "bob")
    try:
        assert alice.expect("join")["peer"]["nick"] == "bob"
    finally:
        err = finish(proc, stdin)
    assert proc.returncode == code, err
    return err


def finish(proc: subprocess.Popen[bytes], stdin: bytes = b"") -> bytes:
    """Give ``proc`` its input and wait (bounded) for its exit; return its stderr."""
    try:
        _, err = proc.communicate(stdin, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return err


def test_nick_that_is_not_utf8_exits_1_at_once(server: ServerThread) -> None:
    proc = connect_process(server, os.fsdecode(b"\xff"))  # argv gets the raw byte 0xff
    err = finish(proc)
    assert proc.returncode == 1
    assert err.startswith(b"chatsecure: the nick holds a character that is not valid text")
    assert b"Traceback" not in err
    assert server.online() == []


def test_input_line_that_is_not_utf8_is_sent_replaced_and_quit_still_works(
    server: ServerThread,
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        err = piped_bob(server, alice, b"hi\n\xff caf\xe9\nquit\n")
        assert b"Traceback" not in err
        assert alice.expect("msg")["text"] == "hi"
        assert alice.expect("msg")["text"] == "\ufffd caf\ufffd"
        assert alice.expect("leave")["reason"] == "quit"


@pytest.mark.netns
def test_scoped_ipv6_link_local_address_connects(lab: Lab, cert_dir: Path) -> None:
    """``[fe80::...%eth0]:PORT``, as the README shows, between two namespaces of a test lab."""
    srv, cli = lab.host("srv"), lab.host("cli")
    lab.lan("10.77.16.0/24", srv, cli)  # each end of the link is eth0 in its namespace
    server = srv.popen(
        sys.executable, "-m", "chatsecure", "server", "--no-discovery", "--port", "7467",
        "--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key"),
    )  # fmt: skip
    server.expect(r"fingerprint: ")
    deadline = time.monotonic() + 5
    while not (found := re.search(r"inet6 (fe80::[0-9a-f:]+)/64", srv.ip("-6", "addr").stdout)):
        assert time.monotonic() < deadline, "no link-local address on the lab's link"
        time.sleep(0.05)
    target = f"[{found.group(1)}%eth0]:7467"
    bob = cli.popen(
        sys.executable, "-m", "chatsecure", "connect", target, "--nick", "bob", "--accept-new",
        stdin=True,
    )  # fmt: skip
    bob.expect(r"^connected to 'chat on .*' as bob \(TLSv1\.[23], SHA256:")
    bob.send("quit")
    assert bob.wait() == 0, bob.err
    assert "[fe80::" in KnownServers().path.read_text()  # pinned under its scoped address


def test_several_addresses_are_tried_in_order_until_one_answers(server: ServerThread) -> None:
    from tests.redis_server import free_port

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = Terminal(dead, f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new")
        try:
            bob.expect(rf"^connected to 'test' as bob at 127\.0\.0\.1:{server.port} \(TLSv1")
            assert alice.expect("join")["peer"]["nick"] == "bob"
            bob.say("quit")
            assert bob.wait() == 0, bob.stderr
        finally:
            bob.kill()
    # said as the client's other news are, not as a server's log line
    said = rf"chatsecure: cannot reach {dead} \(.*\); trying 127\.0\.0\.1:{server.port}"
    assert any(re.fullmatch(said, line) for line in bob.stderr), bob.stderr
    assert KnownServers().get("127.0.0.1", server.port) == server.fingerprint


def test_a_bad_address_among_several_is_a_clear_error() -> None:
    result = Terminal.run_cli("connect", "127.0.0.1:7467", "host:notaport", "--nick", "bob")
    assert result.returncode != 0
    assert "notaport" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_kill_or_a_closed_terminal_leaves_as_quit_does(
    server: ServerThread, sig: signal.Signals
) -> None:
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = terminal(server, "bob", "--accept-new")
        try:
            bob.expect(r"^online: alice")
            assert alice.expect("join")["peer"]["nick"] == "bob"
            say_stored(alice, "one")
            bob.expect(rf"^{TIME} alice \(127\.0\.0\.1\): one$")
            bob.proc.send_signal(sig)
            assert bob.wait() == 128 + sig, bob.stderr
            assert alice.expect("leave")["reason"] == "quit"  # said, not a dropped connection
            assert not any("Traceback" in line for line in bob.stderr), bob.stderr
        finally:
            bob.kill()


def test_a_client_killed_in_a_quiet_moment_shows_nothing_again(server: ServerThread) -> None:
    """The last seq seen is written once lines pause, not only at the end: a ``kill -9``
    a moment after a burst still finds every line of it seen."""
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = terminal(server, "bob", "--accept-new")
        try:
            bob.expect(r"^online: alice")
            alice.expect("join")
            say_stored(alice, "one", "two", "three")
            bob.expect(rf"^{TIME} alice \(127\.0\.0\.1\): three$")
            time.sleep(SAVE_EVERY + 0.5)
            bob.proc.kill()
            bob.wait()
        finally:
            bob.kill()
        sees_then_quits(terminal(server, "bob"), r"^\* back in the room: nothing missed$")


def test_a_client_killed_while_lines_flow_shows_each_once_after_its_restart(
    server: ServerThread,
) -> None:
    """What is kept for the restart is what was shown, as it is shown: a ``kill -9`` a moment
    after a line (more coming every 0.15 s) neither shows it again nor skips any."""
    texts = [f"n{n}" for n in range(12)]

    def shown(term: Terminal) -> list[str]:
        return [m.group(1) for line in term.seen if (m := re.search(r": (n\d+)$", line))]

    with RawClient(server.host, server.port) as alice:
        alice.join("alice")

        def say(text: str) -> None:
            alice.send({"type": "msg", "text": text, "ref": text})
            alice.expect("ack")

        bob = terminal(server, "bob", "--accept-new")
        try:
            bob.expect(r"^online: alice")
            alice.expect("join")
            for n, text in enumerate(texts[:6]):
                say(text)
                bob.expect(rf"^{TIME} alice \(127\.0\.0\.1\): {text}$")
                time.sleep(0.1 if n == 5 else 0.15)
            bob.proc.kill()
            bob.wait()
        finally:
            bob.kill()
        assert alice.expect("leave")["peer"]["nick"] == "bob"
        for text in texts[6:]:
            say(text)
        again = terminal(server, "bob")
        sees_then_quits(again, r"^\* back in the room: 6 missed messages restored$", r": n11$")
    assert shown(bob) + shown(again) == texts


def test_what_a_client_keeps_is_its_users_alone_even_with_a_lax_umask(
    server: ServerThread, tmp_path: Path
) -> None:
    """Pins, the client id and the last seq seen: a pin others could write is no pin."""
    home = tmp_path / "fresh-home"
    connect = [*CHATSECURE, "connect", f"127.0.0.1:{server.port}", "--nick", "lax", "--accept-new"]
    result = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *connect],
        input="hello\nquit\n",
        env={**os.environ, "CHATSECURE_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    kept = {path.name: stat.S_IMODE(path.stat().st_mode) for path in home.iterdir()}
    assert kept == dict.fromkeys([".lock", "known_servers", "client_id", "last_seen.json"], 0o600)


def test_a_reader_of_its_output_that_goes_ends_it_quietly(server: ServerThread) -> None:
    """``chatsecure connect ... | head -2``: the pipe closes; the client leaves, no traceback."""
    with RawClient(server.host, server.port) as alice:
        alice.join("alice")
        bob = subprocess.Popen(
            [*CHATSECURE, "connect", f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert bob.stdout is not None
            assert bob.stdout.readline().startswith(b"connected to")
            assert alice.expect("join")["peer"]["nick"] == "bob"
            bob.stdout.close()  # the reader went
            alice.send({"type": "msg", "text": "anyone reading?"})
            assert bob.wait(10) == 141
            assert alice.expect("leave")["reason"] == "quit"
        finally:
            if bob.poll() is None:
                bob.kill()
            _, err = bob.communicate(timeout=10)
        assert b"Traceback" not in err, err


def test_verbose_logs_every_frame_but_never_the_room_password(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    server = start_server(password="open sesame")
    secret = tmp_path / "room-password"
    secret.write_text("open sesame\n")
    bob = terminal(server, "bob", "--accept-new", "--password-file", str(secret), "-v")
    try:
        bob.expect(r"^online: nobody else yet$")
        bob.say("hello frames")
        bob.say("quit")
        assert bob.wait() == 0, bob.stderr
    finally:
        bob.kill()
    err = "\n".join(bob.stderr)
    assert re.search(r'-> \{"type":"hello".*"password":"\*\*\*"', err), err
    assert re.search(r'<- \{"type":"welcome"', err)
    assert re.search(r'-> \{"type":"msg".*hello frames', err)
    assert "open sesame" not in err


@pytest.mark.parametrize("given", [False, True], ids=["none", "wrong"])
def test_a_room_password_refused_says_how_to_give_one_if_none_was(
    start_server: Callable[..., ServerThread], tmp_path: Path, given: bool
) -> None:
    server = start_server(password="open sesame")
    secret = tmp_path / "room-password"
    secret.write_text("guess\n")
    options = ("--password-file", str(secret)) if given else ()
    bob = terminal(server, "bob", "--accept-new", *options)
    try:
        assert bob.wait() == 1
    finally:
        bob.kill()
    refused = (
        f"chatsecure: cannot connect to 127.0.0.1:{server.port}: the server refused: wrong or "
        "missing password (auth_failed)"
    )
    hint = "; give the room's password with --password-file FILE"
    assert bob.stderr[-1] == refused + ("" if given else hint), bob.stderr


def test_input_closed_at_the_start_is_no_input(server: ServerThread) -> None:
    """``chatsecure connect ... <&-``: Python's stdin is None; nothing to say, it leaves."""
    proc = subprocess.run(
        [*CHATSECURE, "connect", f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new"],
        preexec_fn=lambda: os.close(0),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
