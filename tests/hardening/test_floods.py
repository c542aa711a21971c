"""Floods: a client over the rate is refused, then cut off; everyone else keeps chatting fast."""

from __future__ import annotations

import json
import logging
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from chatsecure.testing import RawClient, ServerThread, joined
from tests.helpers import CHATSECURE

RATE = 20.0
BURST = 5
WINDOW = 1.0
"""Small limits so that a flood is over in about a second (the defaults are 5/s, 20, 10 s)."""


def limited(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(msg_rate=RATE, msg_burst=BURST, flood_window=WINDOW)


def msg(text: str) -> bytes:
    return json.dumps({"type": "msg", "text": text}).encode() + b"\n"


def drain(client: RawClient, codes: list[str]) -> bool:
    """Read what has arrived without waiting; collect error codes. False once closed."""
    while True:
        try:
            frame = client.recv(0.001)
        except TimeoutError:
            return True
        except (EOFError, OSError):
            return False
        if frame["type"] == "error":
            codes.append(frame["code"])


def flood(
    client: RawClient, seconds: float = 5.0, batch: bytes = msg("flood") * 50
) -> tuple[list[str], float]:
    """Send ``batch`` as fast as the socket takes it until the server closes the connection.

    Returns the error codes the server sent and how long the flood lasted.
    """
    codes: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            client.send_raw(batch)
        except OSError:
            break
        if not drain(client, codes):
            break
    while drain(client, codes) and time.monotonic() - started < seconds:
        time.sleep(0.01)
    return codes, time.monotonic() - started


def paced(client: RawClient, per_second: float, seconds: float) -> tuple[list[str], bool]:
    """Send at a steady pace; return the error codes and whether the connection survived."""
    codes: list[str] = []
    start = time.monotonic()
    for i in range(int(per_second * seconds)):
        time.sleep(max(0.0, start + i / per_second - time.monotonic()))
        try:
            client.send_raw(msg(f"paced {i}"))
        except OSError:
            return codes, False
        if not drain(client, codes):
            return codes, False
    time.sleep(0.1)
    return codes, drain(client, codes)


def test_fast_flooder_is_rate_limited_then_cut_off_as_flooding(
    start_server: Callable[..., ServerThread],
) -> None:
    server = limited(start_server)
    with joined(server.host, server.port, "bob", "flooder") as (bob, flooder):
        codes, lasted = flood(flooder)
        assert "rate_limited" in codes
        assert codes[-1] == "flooding", codes[-5:]
        assert lasted < 3, f"flooded for {lasted:.1f} s before being cut off"
        delivered, leaves = 0, 0
        while not bob.silent(0.2):
            frame = bob.recv()
            delivered += frame["type"] == "msg"
            leaves += frame["type"] == "leave"
        assert leaves == 1
        assert BURST <= delivered <= BURST + RATE * lasted + 1, "only frames within the rate pass"
        assert server.online() == ["bob"]


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(b'{"type":"pong"}\n' * 50, id="pong"),
        pytest.param(b"\n" * 1000, id="blank-lines"),
        pytest.param(b"\r\n" * 500, id="blank-crlf-lines"),
        pytest.param(b'{"type":"hello","nick":"again"}\n' * 50, id="second-hello"),
    ],
)
def test_flood_of_frames_that_say_nothing_is_cut_off_like_any_other(
    start_server: Callable[..., ServerThread], batch: bytes
) -> None:
    """Unasked-for pongs and blank lines cost the server like messages; others do not wait."""
    server = limited(start_server)
    with joined(server.host, server.port, "bob", "flooder") as (bob, flooder):
        codes, lasted = flood(flooder, batch=batch)
        assert "rate_limited" in codes
        assert codes[-1] == "flooding", codes[-5:]
        assert lasted < 3, f"flooded for {lasted:.1f} s before being cut off"
        leave = bob.expect("leave")
        assert (leave["peer"]["nick"], leave["reason"]) == ("flooder", "flooding")
        assert server.online() == ["bob"]
        started = time.monotonic()
        with RawClient(server.host, server.port) as carol:
            carol.join("carol")
            bob.expect("join")
        assert time.monotonic() - started < 1, "a newcomer joins at once"


def test_three_and_a_half_times_the_rate_is_cut_off_but_one_and_a_half_is_not(
    start_server: Callable[..., ServerThread],
) -> None:
    server = limited(start_server)
    with joined(server.host, server.port, "steady", "greedy") as (steady, greedy):
        results: dict[str, tuple[list[str], bool]] = {}
        started = time.monotonic()
        cut_at: list[float] = []

        def run_greedy() -> None:
            results["greedy"] = paced(greedy, 3.5 * RATE, 2 * WINDOW)
            cut_at.append(time.monotonic() - started)

        thread = threading.Thread(target=run_greedy)
        thread.start()
        try:
            results["steady"] = paced(steady, 1.5 * RATE, 2 * WINDOW)
        finally:
            thread.join(10)
        greedy_codes, greedy_alive = results["greedy"]
        steady_codes, steady_alive = results["steady"]
        assert not greedy_alive
        assert greedy_codes[-1] == "flooding"
        assert cut_at[0] < 2 * WINDOW, f"3.5x the rate kept up for {cut_at[0]:.1f} s"
        assert steady_alive, f"1.5x the rate was cut off: {steady_codes[-3:]}"
        assert set(steady_codes) <= {"rate_limited"}
        assert server.online() == ["steady"]


def test_others_keep_low_latency_while_flooders_keep_coming_back(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """Flooders reconnect and flood at full speed for 2 s; alice's lines reach bob promptly.

    The admin's log gets at most its budget of warnings, however many floods there were.
    """
    caplog.set_level(logging.WARNING, logger="chatsecure.server")
    server = limited(start_server)
    stop = threading.Event()
    floods: list[list[str]] = []

    def attacker() -> None:
        while not stop.is_set():
            with RawClient(server.host, server.port) as flooder:
                flooder.join("flooder")
                floods.append(flood(flooder, seconds=3)[0])

    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        thread = threading.Thread(target=attacker)
        thread.start()
        latencies: list[float] = []
        try:
            for i in range(int(2.0 / 0.1)):  # 10 lines a second: within alice's rate
                sent = time.monotonic()
                alice.send({"type": "msg", "text": f"line {i}"})
                while True:
                    frame = bob.recv(2)
                    if frame["type"] == "msg" and frame["from"]["nick"] == "alice":
                        break
                latencies.append(time.monotonic() - sent)
                assert frame["text"] == f"line {i}"
                time.sleep(max(0.0, sent + 0.1 - time.monotonic()))
        finally:
            stop.set()
            thread.join(10)
        alice_codes: list[str] = []
        drain(alice, alice_codes)
        assert alice_codes == [], "alice, within the rate, was never refused"
    assert len(floods) >= 3, "the attacker came back several times"
    assert all(codes and codes[-1] == "flooding" for codes in floods[:-1])
    worst, typical = max(latencies), statistics.median(latencies)
    print(
        f"{len(floods)} floods; alice->bob median {typical * 1e3:.1f} ms, max {worst * 1e3:.1f} ms"
    )
    assert worst < 0.5, f"a line took {worst:.2f} s during the flood"
    warnings = [r for r in caplog.records if r.name == "chatsecure.server"]
    assert 0 < len(warnings) <= 20, f"{len(warnings)} warnings for {len(floods)} floods"
    assert all("@127.0.0.1]" in r.getMessage() for r in warnings), "each names the address"


def errors_within(client: RawClient, seconds: float) -> list[str]:
    """The codes of the errors that arrive within ``seconds`` (pings skipped) or until EOF."""
    codes: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = client.recv(left)
        except (TimeoutError, EOFError):
            break
        assert frame["type"] in {"ping", "error"}, frame
        if frame["type"] == "error":
            codes.append(frame["code"])
    return codes


def test_quit_and_the_answer_to_a_ping_pass_even_when_the_rate_is_exhausted(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(msg_rate=0.5, msg_burst=1, idle_timeout=0.4)
    with RawClient(server.host, server.port) as busy:
        busy.join("busy")
        busy.send_raw(msg("one") + msg("two"))
        assert busy.expect("error")["code"] == "rate_limited"
        busy.expect("ping", timeout=2)
        busy.send_raw(b'{"type":"pong"}\n' * 2)  # the answer, then one nobody asked for
        codes = errors_within(busy, 0.15)
        assert codes == ["rate_limited"], "the answer passed, the pong nobody asked for did not"
        busy.send({"type": "quit"})
        assert errors_within(busy, 3) == [], "quit is never refused"
        assert busy.closed(0.1)
        assert server.online() == []


@pytest.mark.parametrize(
    ("joins", "tail", "code"),
    [
        pytest.param(True, b"x" * 20_000 + b"\n", "frame_too_long", id="over-long-line"),
        pytest.param(False, msg("before hello"), "not_joined", id="msg-before-hello"),
    ],
)
def test_fatal_error_over_the_rate_still_closes_the_connection(
    start_server: Callable[..., ServerThread], joins: bool, tail: bytes, code: str
) -> None:
    """The rate limit never swallows the error that ends a stream (it left a deaf session)."""
    server = start_server(msg_rate=1.0, msg_burst=1)
    with (
        joined(server.host, server.port, "bob") as (bob,),
        RawClient(server.host, server.port) as carol,
    ):
        if joins:
            carol.join("carol")
            bob.expect("join")
        # One frame takes the only token, the next is refused, then the fatal one.
        carol.send_raw(b'{"type":"ping"}\n' * 2 + tail)
        assert carol.expect("pong")
        assert carol.expect("error")["code"] == "rate_limited"
        assert carol.expect("error")["code"] == code
        assert carol.closed(3)
        if joins:
            assert bob.expect("leave")["reason"] == code
        assert server.online() == ["bob"]


def test_a_line_over_the_rate_is_refused_by_its_ref(
    start_server: Callable[..., ServerThread],
) -> None:
    server = limited(start_server)
    with joined(server.host, server.port, "bob") as (bob,):
        lines = [{"type": "msg", "text": f"line {n}", "ref": f"r{n}"} for n in range(BURST + 1)]
        bob.send_raw(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        refused = bob.expect("error")
        assert (refused["code"], refused["ref"]) == ("rate_limited", f"r{BURST}")
        assert [bob.expect("ack")["ref"] for _ in range(BURST)] == [f"r{n}" for n in range(BURST)]


def test_a_script_that_pipes_many_lines_gets_every_one_stored_none_refused(
    start_server: Callable[..., ServerThread],
) -> None:
    """The client paces itself to the rate the server states: nothing is refused as too fast,
    nobody is cut off as a flood, and every line arrives once, in order."""
    server = limited(start_server)
    count = 3 * int(RATE)  # three times what the server takes in a second
    with joined(server.host, server.port, "alice") as (alice,):
        piped = subprocess.run(
            [*CHATSECURE, "connect", f"127.0.0.1:{server.port}", "--nick", "bob", "--accept-new"],
            input="".join(f"line {n}\n" for n in range(count)),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert piped.returncode == 0, piped.stderr
        assert "refused" not in piped.stdout + piped.stderr
        assert "not sent" not in piped.stderr
        alice.expect("join")
        assert [alice.expect("msg")["text"] for _ in range(count)] == [
            f"line {n}" for n in range(count)
        ]
        assert alice.expect("leave")["reason"] == "quit"


def piped_terminal(server: ServerThread, nick: str, **options: Any) -> subprocess.Popen[str]:
    """``chatsecure connect`` with its stdin, stdout and stderr as text pipes."""
    return subprocess.Popen(
        [*CHATSECURE, "connect", f"127.0.0.1:{server.port}", "--nick", nick, "--accept-new"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def test_quit_lets_the_lines_held_back_by_the_pace_go_out_first(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(msg_rate=4.0, msg_burst=3)  # the client: 3.6 a second, 1 at once
    with joined(server.host, server.port, "alice") as (alice,):
        bob = piped_terminal(server, "bob")
        _, err = bob.communicate("".join(f"line {n}\n" for n in range(8)) + "quit\n", 30)
        assert bob.returncode == 0, err
        assert "not sent" not in err
        alice.expect("join")
        assert [alice.expect("msg")["text"] for _ in range(8)] == [f"line {n}" for n in range(8)]


def test_a_kill_leaves_at_once_and_names_every_line_held_back(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(msg_rate=1.0, msg_burst=3)  # the client: 0.9 a second, 1 at once
    with joined(server.host, server.port, "alice") as (alice,):
        bob = piped_terminal(server, "bob")
        try:
            assert bob.stdin is not None
            bob.stdin.write("".join(f"line {n}\n" for n in range(10)))
            bob.stdin.flush()
            alice.expect("join")
            assert alice.expect("msg")["text"] == "line 0"
            started = time.monotonic()
            bob.send_signal(signal.SIGTERM)
            _, err = bob.communicate(timeout=15)
            assert time.monotonic() - started < 8, "it did not wait for the paced lines"
        finally:
            if bob.poll() is None:
                bob.kill()
                bob.communicate()
        assert bob.returncode == 128 + signal.SIGTERM, err
        stored = ["line 0"]
        while not alice.silent(0.5):
            frame = alice.recv()
            if frame["type"] == "msg":
                stored.append(frame["text"])
        not_sent = re.findall(r"not sent, never stored: (line \d+)", err)
        assert stored + not_sent == [f"line {n}" for n in range(10)], err
        # Paced 1.1 s apart: none went out after the signal (one may have just before it).
        assert len(stored) <= 2, stored


def test_nohup_keeps_a_client_through_a_hangup(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice") as (alice,):
        bob = piped_terminal(
            server, "bob", preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)
        )
        try:
            assert alice.expect("join")["peer"]["nick"] == "bob"
            bob.send_signal(signal.SIGHUP)
            assert alice.silent(1.0), "bob left on a hangup he was told to ignore"
            assert bob.poll() is None
            _, err = bob.communicate("still here\nquit\n", 15)
        finally:
            if bob.poll() is None:
                bob.kill()
                bob.communicate()
        assert bob.returncode == 0, err
        assert alice.expect("msg")["text"] == "still here"
