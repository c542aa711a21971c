"""The desktop client's behaviour without a screen: form, transcript, roster, state machine,
trust dialog text and the thread bridge, nickname memory, and the controller on a real server."""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsecure.client.controller import Update
from chatsecure.client.core import (
    Connected,
    Disconnected,
    Queued,
    Received,
    Reconnecting,
    Sent,
    dialable,
    parse_target,
)
from chatsecure.client.model import HERE_NAMED, UNREADABLE
from chatsecure.client.state import (
    MAX_PASSWORD,
    ChatModel,
    ConnectRequest,
    Controller,
    GuiOptions,
    Line,
    Phase,
    Roster,
    ServerList,
    TrustBridge,
    gap_text,
    remember_nick,
    remembered_nick,
    short_fingerprint,
    trust_prompt,
    validate_form,
)
from chatsecure.client.transcript import EDITS_KEPT, NAME_SHOWN, TEXT_SHOWN, shown
from chatsecure.discovery.records import (
    DiscoveredServer,
    ServerAdded,
    ServerRemoved,
    ServerUpdated,
)
from chatsecure.protocol import limits
from chatsecure.protocol.codes import ErrorCode, NoticeCode
from chatsecure.protocol.messages import (
    Chat,
    Error,
    HistoryEnd,
    Join,
    Leave,
    Notice,
    Peer,
    Pong,
    ServerInfo,
    Shutdown,
    Welcome,
)
from chatsecure.testing import FakeServer, Mode, RawClient, ServerThread
from chatsecure.tls.trust import KnownServers, TrustQuestion
from tests.helpers import wait_for

FP = "SHA256:qd11Mv3IYZlmGAyerL06S5VFZ5AXv+TuqPcd5YM53Gc"
OLD_FP = "SHA256:" + "A" * 43
ALICE = Peer("1", "alice", "192.168.1.20")
BOB = Peer("2", "bob", "192.168.1.21")
CAROL = Peer("3", "carol", "10.0.0.7")
ROOM = "correct horse"
"""The room password of the servers here (and, with spaces around it, a typed one)."""
T = 1_700_000_000.0  # a fixed time, so the lines are predictable
STAMP = time.strftime("%H:%M:%S", time.localtime(T))


def welcome(you: Peer = ALICE, *peers: Peer, name: str = "lab") -> Connected:
    info = ServerInfo(name, "1.0")
    return Connected(Welcome(you, peers, info), "192.168.1.5", 7467, "TLSv1.3", FP)


def chatting(*peers: Peer) -> ChatModel:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    model.apply(welcome(ALICE, *peers), T)
    return model


# --- the connect form -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "want"),
    [
        ("192.168.1.5", "7467", ("192.168.1.5", 7467)),
        ("  chat.example.org ", "9000", ("chat.example.org", 9000)),
        ("10.0.0.5:7000", "", ("10.0.0.5", 7000)),  # a port in the host wins
        ("[fd00::1]:7001", "7467", ("fd00::1", 7001)),
        ("[fe80::1%lo]:7467", "", ("fe80::1%lo", 7467)),  # link-local, with its interface
        ("fd00::1", "7467", ("fd00::1", 7467)),
        ("[::1]", "8000", ("::1", 8000)),
    ],
)
def test_form_accepts_hosts_and_ports(host: str, port: str, want: tuple[str, int]) -> None:
    result = validate_form(host, port, " alice ")
    assert result.errors == {}
    assert result.request == ConnectRequest(*want, "alice")


@pytest.mark.parametrize(
    ("host", "port", "nick", "field", "says"),
    [
        ("", "7467", "a", "host", "Enter the server's IP address"),
        ("my host", "7467", "a", "host", "Not an IP address"),
        ("host/x", "7467", "a", "host", "Not an IP address"),
        ("host:99999", "7467", "a", "host", "Port must be a number"),
        ("[fe80::1", "7467", "a", "host", "No ']' after the IPv6 address"),
        ("1.2.3", "7467", "a", "host", "'1.2.3' is not an IPv4 address: give four numbers"),
        ("127.000.000.001:7000", "7467", "a", "host", "is not an IPv4 address"),
        ("fe80::1", "7467", "a", "host", "The link-local address fe80::1 needs its network"),
        ("[fe80::1%nosuch]", "7467", "a", "host", "There is no network interface 'nosuch'"),
        ("host", "", "a", "port", "Enter a port (the default is 7467)"),
        ("host", "0", "a", "port", "from 1 to 65535"),
        ("host", "65536", "a", "port", "from 1 to 65535"),
        ("host", "12a", "a", "port", "from 1 to 65535"),
        ("host", "\u0663", "a", "port", "from 1 to 65535"),
        ("host", "7467", "", "nick", "1 to 32 visible characters"),
        ("host", "7467", "\u202e\u200b ", "nick", "visible characters"),
        ("host", "7467", "x" * 33, "nick", "visible characters"),
        ("host", "7467", "b\udcffb", "nick", "visible characters"),  # cannot be sent
    ],
)
def test_form_errors_name_the_field(host: str, port: str, nick: str, field: str, says: str) -> None:
    result = validate_form(host, port, nick)
    assert result.request is None
    assert list(result.errors) == [field]
    assert says in result.errors[field]  # type: ignore[index]


def test_what_cannot_be_dialled_is_told_without_raising_and_a_pin_is_only_a_name() -> None:
    assert [dialable(h) for h in ("10.0.0.5", "fe80::1%lo", "chat.example")] == [True] * 3
    assert [dialable(h) for h in ("1.2.3", "fe80::1%nosuch9", "fe80::1")] == [False] * 3
    # A pin of an address whose interface is gone can still be named, to forget it.
    assert parse_target("[fe80::1%nosuch9]:7467", check=False) == ("fe80::1%nosuch9", 7467)
    with pytest.raises(ValueError, match="no network interface 'nosuch9'"):
        parse_target("[fe80::1%nosuch9]:7467")


def test_form_reports_every_bad_field_at_once() -> None:
    assert set(validate_form("", "x", "").errors) == {"host", "port", "nick"}


def test_form_keeps_the_advertised_fingerprint() -> None:
    request = validate_form("10.0.0.9", "7467", "bob", advertised=FP).request
    assert request is not None
    target = request.target(GuiOptions(cafile=Path("ca.pem")))
    assert (target.host, target.port, target.advertised, target.cafile) == (
        "10.0.0.9",
        7467,
        FP,
        Path("ca.pem"),
    )


def test_form_password_is_optional_and_taken_as_typed() -> None:
    request = validate_form("10.0.0.9", "7467", "bob").request
    assert request is not None
    assert request.password is None  # an empty field sends no password at all
    typed = validate_form("10.0.0.9", "7467", "bob", password=f" {ROOM} ").request
    assert typed is not None
    assert typed.password == f" {ROOM} "  # spaces are part of a password
    assert ROOM not in repr(typed)  # nor does it end up in a log or traceback


def test_form_refuses_a_password_too_long_to_send() -> None:
    result = validate_form("10.0.0.9", "7467", "bob", password="x" * (MAX_PASSWORD + 1))
    assert result.request is None
    assert result.errors == {"password": f"At most {MAX_PASSWORD} characters."}


def test_form_refuses_a_password_utf8_cannot_carry() -> None:
    result = validate_form("10.0.0.9", "7467", "bob", password="pw\udcff")
    assert result.request is None
    assert list(result.errors) == ["password"]


# --- transcript lines -------------------------------------------------------------------


def test_chat_line_shows_time_nick_and_ip() -> None:
    model = chatting(BOB)
    (line,) = model.apply(Received(Chat(BOB, "hello", T)), T)
    assert line.kind == "chat"
    assert str(line) == f"[{STAMP}] bob (192.168.1.21): hello"
    assert [style for _, style in line.segments()] == ["time", "nick", "addr", "body", "body"]


def test_join_and_leave_lines_have_their_own_kind_and_words() -> None:
    model = chatting()
    (joined,) = model.apply(Received(Join(BOB)), T)
    assert (joined.kind, str(joined)) == ("join", f"[{STAMP}] → bob (192.168.1.21) joined")
    (left,) = model.apply(Received(Leave(BOB, "timeout")), T)
    assert (left.kind, str(left)) == ("leave", f"[{STAMP}] ← bob (192.168.1.21) left (timed out)")
    (odd,) = model.apply(Received(Leave(CAROL, "cosmic\nray")), T)
    assert str(odd).endswith("left (cosmic\\nray)")  # nothing can fake a new line


def test_a_nick_or_text_cannot_fake_a_line() -> None:
    model = chatting()
    evil = Peer("9", "eve\n[12:00:00] bob", "10.0.0.66")
    (line,) = model.apply(Received(Chat(evil, "hi\u202eolleh", T)), T)
    assert "\n" not in str(line)
    assert "\u202e" not in str(line)
    assert "eve\\n[12:00:00] bob (10.0.0.66): hi\\u202eolleh" in str(line)


EVIL = "x\n[12:00:00] admin: fake\u202e"
"""A string from a hostile server: a fake transcript line, and a right-to-left override."""


def shown_safely(text: str) -> bool:
    return "\n" not in text and "\u202e" not in text and "[12:00:00] admin" in text


def test_what_a_server_says_about_itself_and_us_cannot_fake_anything() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    me = Peer("1", "alice" + EVIL, "192.168.1.20" + EVIL)
    other = Peer("2", "bob", "10.0.0.1" + EVIL)
    info = ServerInfo("lab" + EVIL, "1.0")
    connected = Connected(Welcome(me, (other,), info), "192.168.1.5", 7467, "TLSv1.3", FP)
    lines = model.apply(connected, T)
    lines += model.apply(Received(Join(other)), T)
    lines += model.apply(Received(Error("odd" + EVIL, "refused" + EVIL)), T)
    for text in [model.status(), model.title(), *map(str, lines)]:
        assert shown_safely(text), text
    assert all(shown_safely(row.text) for row in model.roster.rows())
    assert "The server refused: refused" in str(lines[-1])
    model.left()
    assert model.notice is not None
    assert shown_safely(model.notice.text)


def test_server_errors_and_shutdown_are_error_lines() -> None:
    model = chatting()
    (refused,) = model.apply(Received(Error("text_too_long", "text longer than 10")), T)
    assert refused.kind == "error"
    assert "The server refused: text longer than 10 (text_too_long)." in str(refused)
    (bye,) = model.apply(Received(Shutdown()), T)
    assert (bye.kind, bye.text) == ("error", "The server is shutting down.")
    assert model.apply(Received(Pong()), T) == []


# --- own messages -----------------------------------------------------------------------


def test_own_message_is_pending_until_the_server_stored_it() -> None:
    model = chatting(BOB)
    out = model.outgoing("hello bob", T)
    assert out.send == "hello bob"
    assert out.clear
    assert out.line is None  # the core says Queued, then Sent
    assert model.apply(Queued("r1", "hello bob"), T) == [
        Line("pending", STAMP, "hello bob", "alice", "192.168.1.20", ref="r1")
    ]
    assert model.pending == {"r1": "hello bob"}
    assert model.apply(Sent("r1", "hello bob", 12, T), T) == [
        Line("own", STAMP, "hello bob", "alice", "192.168.1.20", ref="r1", seq=12)
    ]
    assert model.pending == {}
    assert model.paging.oldest_seq == 12


def test_a_line_stays_pending_across_a_reconnect_until_the_server_stored_it() -> None:
    model = chatting(BOB)
    model.apply(Queued("r1", "still there?"), T)
    model.apply(Reconnecting(1, 1.0, "connection lost"), T)
    model.apply(welcome(ALICE, BOB), T)
    assert model.phase is Phase.CHAT
    assert model.pending == {"r1": "still there?"}, "the core sends it again"
    model.apply(Sent("r1", "still there?", 13, T), T)
    assert model.pending == {}


@pytest.mark.parametrize(
    ("replay", "skipped", "said"),
    [
        (10, 0, "30 missed messages. 20 of them are no longer kept by the server."),
        (
            10,
            15,
            "30 missed messages. 5 of them are no longer kept by the server. The "
            "oldest 15 of the rest load as you scroll up to them.",
        ),
        (10, 20, "30 missed messages restored. The oldest 20 load as you scroll up to them."),
    ],
)
def test_a_return_says_how_many_missed_lines_the_server_no_longer_keeps(
    replay: int, skipped: int, said: str
) -> None:
    model = chatting(BOB)
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    welcome = Welcome(ALICE, (BOB,), ServerInfo("lab", "1", 2), 40, replay, skipped, log="L")
    lines = model.apply(Connected(welcome, "h", 1, "TLSv1.3", "SHA256:x", True, 30), T)
    notice = next(line for line in lines if "missed" in line.text)
    assert notice.text == said + " ─── new since you left ───"
    gaps = [line.text for line in lines if line.kind == "gap"]  # where the skipped ones load
    assert gaps == (
        [f"⋯ {skipped} earlier missed messages: they load as you scroll here ⋯"] if skipped else []
    )


def test_a_replayed_line_of_another_day_shows_its_date() -> None:
    model = chatting(BOB)
    day_before = T - 86_400
    (line,) = model.apply(Received(Chat(BOB, "yesterday", day_before, seq=4), replayed=True), T)
    assert line.stamp == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(day_before))
    (line,) = model.apply(Received(Chat(BOB, "today", T, seq=5)), T)
    assert line.stamp == STAMP


def test_replayed_lines_are_history_and_a_return_says_what_was_missed() -> None:
    model = chatting(BOB)
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    welcome = Welcome(ALICE, (BOB,), ServerInfo("lab", "1", 2), seq=9, replay=2)
    lines = model.apply(Connected(welcome, "h", 1, "TLSv1.3", "SHA256:x", True, 2, 1), T)
    said = lines[-1].text  # right above the lines it introduces, after who is here
    assert "Here: bob" in lines[-2].text
    assert "2 missed messages restored" in said
    assert "Sending your waiting line." in said
    (line,) = model.apply(Received(Chat(BOB, "while away", T, seq=8), replayed=True), T)
    assert line.kind == "history"
    assert model.wants_older() == 8
    assert model.wants_older() is None  # one request at a time
    long_ago = Chat(BOB, "long ago", T, seq=3, history=True)
    assert model.apply(Received(long_ago, older=True)) == []  # shown with the whole page
    (older,) = model.apply(Received(HistoryEnd(8, 1)), T)
    assert older.older
    assert older.kind == "history"
    assert model.wants_older() == 3
    model.apply(Received(HistoryEnd(3, 0)), T)
    assert model.wants_older() is None  # the server has nothing older


def missed(
    model: ChatModel,
    since: int,
    last: int,
    replay: int,
    *,
    again: bool = True,
    log: str | None = None,
) -> Line:
    """``model`` back after missing lines ``since`` + 1 to ``last``, the newest ``replay`` of
    them replayed: the gap's line."""
    if again:
        model.apply(Reconnecting(1, 1.0, "reset"), T)
    welcome = Welcome(
        ALICE,
        (BOB,),
        ServerInfo("lab", "1", 2),
        seq=last,
        replay=replay,
        skipped=last - since - replay,
        log=log,
    )
    lines = model.apply(Connected(welcome, "h", 1, "TLSv1.3", FP, True, last - since), T)
    assert lines[-2].text.startswith(f"{last - since} m")  # missed messages, or messages
    assert f"The oldest {last - since - replay} load as you scroll up" in lines[-2].text
    assert lines[-1].kind == "gap"
    for seq in range(last - replay + 1, last + 1):
        model.apply(Received(Chat(BOB, f"m{seq}", T, seq=seq, history=True), replayed=True), T)
    return lines[-1]


def page(model: ChatModel, before: int, seqs: range) -> list[Line]:
    """The server's answer to ``history`` before ``before``: lines ``seqs``."""
    for seq in seqs:
        chat = Chat(BOB, f"m{seq}", T, seq=seq, history=True)
        assert model.apply(Received(chat, older=True), T) == []
    return model.apply(Received(HistoryEnd(before, len(seqs))), T)


def back_with_a_gap(last: int, replay: int = 20, log: str | None = None) -> tuple[ChatModel, int]:
    """A model that saw lines up to 10, then missed 11 to ``last``, the newest ``replay`` of
    them replayed: it and its gap's id."""
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=10)), T)
    return model, missed(model, since=10, last=last, replay=replay, log=log).gap


def test_missed_lines_the_replay_left_out_load_into_their_gap_newest_page_first() -> None:
    model, gap = back_with_a_gap(260, replay=5)
    text = gap_text(model.paging.gaps[gap])
    assert text == "⋯ 245 earlier missed messages: they load as you scroll here ⋯"
    assert model.wants_older() == 10  # the top loads what came before, as it did
    model.apply(Received(HistoryEnd(10, 0)), T)
    assert model.wants_gap(gap) == 256
    assert model.wants_gap(gap) is None  # one request at a time
    assert model.wants_older() is None
    first = page(model, 256, range(156, 256))
    assert [line.seq for line in first[:-1]] == list(range(156, 256))
    assert all(line.gap == gap and line.kind == "history" for line in first[:-1])
    assert first[-1] == Line(
        "gap", "", "⋯ 145 earlier missed messages: they load as you scroll here ⋯", gap=gap
    )
    assert model.wants_gap(gap) == 156
    # The server's page reaches below the gap: what the transcript holds is not shown twice.
    second = page(model, 156, range(56, 156))
    assert [line.seq for line in second[:-1]] == list(range(56, 156))
    assert model.wants_gap(gap) == 56
    last = page(model, 56, range(1, 56))
    assert [line.seq for line in last[:-1]] == list(range(11, 56))
    assert last[-1] == Line("gap", "", "", gap=gap)  # nothing missed: the gap's line goes
    assert model.wants_gap(gap) is None
    assert model.paging.gaps == {}


def test_a_gap_whose_lines_the_server_trimmed_says_so() -> None:
    model = chatting(BOB)
    gap = missed(model, since=0, last=50, replay=10, again=False).gap
    assert model.wants_older() is None  # nothing came before the first line
    assert model.wants_gap(gap) == 41
    lines = page(model, 41, range(31, 41))
    assert model.wants_gap(gap) == 31
    assert lines[-1].text.startswith("⋯ 30 earlier")
    (told,) = model.apply(Received(HistoryEnd(31, 0)), T)
    assert told.text == "⋯ 30 earlier missed messages: no longer kept by the server ⋯"
    assert model.wants_gap(gap) is None


def test_a_history_request_lost_with_the_connection_is_asked_again_after_it() -> None:
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=10)), T)
    assert model.wants_older() == 10
    # The connection drops before the answer: the answer will never come.
    model.apply(Received(Chat(BOB, "m9", T, seq=9, history=True), older=True), T)
    missed(model, since=10, last=20, replay=2)
    assert model.wants_older() == 10
    (line,) = page(model, 10, range(9, 10))
    assert line.seq == 9  # the half page before the drop is not shown


def test_quit_alone_quits_and_other_texts_do_not() -> None:
    model = chatting()
    assert model.outgoing("  quit ").quit
    assert model.outgoing("/quit").quit  # not said to the room
    assert model.outgoing("Quit").quit  # as a phone keyboard writes it
    assert model.outgoing("/QUIT").quit
    for command in ("/help", "/HELP", "/older", " /older 20", "/Older", "/who", "/WHO "):
        out = model.outgoing(command, T)  # the terminal's: said what does it here, not sent
        assert (out.send, out.clear) == (None, True)
        assert out.line is not None
        assert "older messages load as you scroll" in out.line.text
        assert "the list beside it shows who is here" in out.line.text
    assert model.outgoing("/helpful tip").send == "/helpful tip"
    assert model.outgoing("/who is that?").send == "/who is that?"
    assert model.outgoing("quit now").send == "quit now"
    assert model.outgoing("   ") == model.outgoing("")
    assert model.outgoing("\u200b\u3164") == model.outgoing("")  # shows nothing: not sent
    assert model.outgoing("").send is None


def test_text_limit_is_the_servers_to_enforce() -> None:
    # A server may allow longer texts than the default; only the frame limit is the client's.
    out = chatting().outgoing("x" * (limits.MAX_TEXT + 1))
    assert out.send == "x" * (limits.MAX_TEXT + 1)


def test_message_while_reconnecting_is_queued_for_the_reconnect() -> None:
    model = chatting()
    model.apply(Reconnecting(1, 1.0, "the connection was reset"), T)
    out = model.outgoing("anyone?")
    assert (out.send, out.clear, out.line) == ("anyone?", True, None)
    model.apply(Disconnected("gone", error=True), T)
    out = model.outgoing("too late")
    assert out.send is None
    assert out.line is not None
    assert "Not connected" in out.line.text


# --- the user list ----------------------------------------------------------------------


def test_roster_lists_you_first_then_everyone_by_nick() -> None:
    roster = Roster()
    roster.reset(BOB, [CAROL, ALICE])
    assert [row.text for row in roster.rows()] == [
        "bob (192.168.1.21)  — you",
        "alice (192.168.1.20)",
        "carol (10.0.0.7)",
    ]
    assert [row.me for row in roster.rows()] == [True, False, False]


def test_roster_follows_welcome_join_and_leave() -> None:
    model = chatting(BOB)
    assert [r.peer_id for r in model.roster.rows()] == ["1", "2"]
    model.apply(Received(Join(CAROL)), T)
    assert [r.peer_id for r in model.roster.rows()] == ["1", "2", "3"]
    model.apply(Received(Leave(BOB, "quit")), T)
    assert [r.peer_id for r in model.roster.rows()] == ["1", "3"]
    model.apply(Received(Leave(BOB, "quit")), T)  # a repeated leave changes nothing
    assert len(model.roster) == 2


def shown_after(listed: list[str], roster: Roster) -> list[str]:
    """What a list that showed ``listed`` shows once it made the roster's edits (or redrew)."""
    edits = roster.take_edits()
    if edits is None:
        return [row.text for row in roster.rows()]
    listed = list(listed)
    for edit in edits:
        if edit.row is None:
            del listed[edit.index]
        else:
            listed.insert(edit.index, edit.row.text)
    return listed


PEOPLE = [Peer(str(n), nick, f"10.0.0.{n}") for n, nick in enumerate("abcAB", start=1)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "leave", "look"]),
            st.sampled_from(PEOPLE),
            st.sampled_from(["a", "b", "B", "zed", "Zed"]),
        ),
        max_size=40,
    )
)
def test_the_roster_edits_keep_a_list_in_step_with_it_one_row_at_a_time(
    steps: list[tuple[str, Peer, str]],
) -> None:
    roster = Roster()
    roster.reset(PEOPLE[0], PEOPLE[1:3])
    shown = shown_after([], roster)
    for action, peer, nick in steps:
        if action == "join":  # (a join of someone here already: a new nick, as a rename)
            roster.join(Peer(peer.id, nick, peer.addr))
        elif action == "leave":
            roster.leave(peer)
        else:
            shown = shown_after(shown, roster)
            assert shown == [row.text for row in roster.rows()]
    assert shown_after(shown, roster) == [row.text for row in roster.rows()]
    assert roster.take_edits() == []


def test_a_line_said_changes_nothing_in_the_list_of_who_is_here() -> None:
    model = chatting(BOB, CAROL)
    assert model.roster.take_edits() is None  # a welcome: drawn anew
    chat = Chat(BOB, "hello", T, seq=1)
    for event in (Received(chat), Received(chat, replayed=True), Received(chat, older=True)):
        model.apply(event, T)
    assert model.roster.take_edits() == []
    model.apply(Received(Join(Peer("4", "dave", "10.0.0.9"))), T)
    model.apply(Received(Leave(BOB, "quit")), T)
    assert [(e.index, e.row and e.row.text) for e in model.roster.take_edits() or []] == [
        (3, "dave (10.0.0.9)"),
        (1, None),
    ]


def test_a_storm_of_joins_has_the_list_drawn_anew_once_rather_than_row_by_row() -> None:
    model = chatting(BOB)
    model.roster.take_edits()
    for n in range(EDITS_KEPT + 1):
        model.apply(Received(Join(Peer(str(100 + n), f"p{n}", "10.0.0.9"))), T)
    assert model.roster.take_edits() is None
    assert len(model.roster.rows()) == EDITS_KEPT + 3
    assert model.roster.take_edits() == []


# --- texts from the server, as the window shows them ------------------------------------


@pytest.mark.parametrize(
    ("text", "limit", "joiner", "said"),
    [
        ("short", 10, None, "short"),
        ("exactly 10", 10, None, "exactly 10"),
        ("x" * 11, 10, None, "xxxxxxxxxx… (1 more character)"),
        ("y" * 1_000_000, 4, None, "yyyy… (999,996 more characters)"),
        # Escapes count in what is shown: a control character is 4 characters of it.
        ("\x00\x00\x00ab", 10, None, "\\x00\\x00… (3 more characters)"),
        ("a\u202eb", 10, None, "a\\u202eb"),
        ("one\ntwo\nthree", 10, " ↵ ", "one ↵ two… (6 more characters)"),
        ("one\ntwo", 20, None, "one\\ntwo"),
    ],
)
def test_a_text_from_the_server_is_shown_safe_and_cut_past_its_limit(
    text: str, limit: int, joiner: str | None, said: str
) -> None:
    assert shown(text, limit, joiner) == said


def test_the_transcript_shows_a_long_line_and_long_names_cut() -> None:
    model = chatting(BOB)
    huge = Peer("9", "n" * 100_000, "a" * 5000)
    line = model.apply(Received(Chat(huge, "x" * 1_000_000, T, seq=1)), T)[0]
    parts = {style: part for part, style in line.segments() if style != "body"}
    body = "".join(part for part, style in line.segments() if style == "body")
    assert parts["nick"] == "n" * NAME_SHOWN + f"… ({100_000 - NAME_SHOWN:,} more characters)"
    assert parts["addr"] == f" ({'a' * NAME_SHOWN}… ({5000 - NAME_SHOWN:,} more characters))"
    assert body == ": " + "x" * TEXT_SHOWN + f"… ({1_000_000 - TEXT_SHOWN:,} more characters)"
    model.apply(Received(Join(huge)), T)
    assert all(len(row.text) < 3 * NAME_SHOWN for row in model.roster.rows())


def test_the_server_s_long_name_and_messages_are_cut_where_the_window_says_them() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    lines = model.apply(welcome(ALICE, BOB, name="n" * 500_000), T)
    name = "n" * NAME_SHOWN + f"… ({500_000 - NAME_SHOWN:,} more characters)"
    assert lines[0].text == f"Connected to '{name}' at 192.168.1.5:7467 as alice (TLSv1.3)."
    assert model.title() == f"alice @ {name} — chatsecure"
    assert model.status().startswith(f"{name} at 192.168.1.5:7467 · you are alice")
    said = [
        line.text
        for message in (
            Error("c" * 1000, "e" * 100_000),
            Notice("n", "m" * 100_000),
            Leave(BOB, "r" * 1000),
        )
        for line in model.apply(Received(message), T)
    ]
    assert said == [
        f"The server refused: {'e' * TEXT_SHOWN}… (96,000 more characters) "
        f"({'c' * NAME_SHOWN}… (900 more characters)).",
        f"{'m' * TEXT_SHOWN}… (96,000 more characters)",
        f"left ({'r' * NAME_SHOWN}… (900 more characters))",
    ]
    model.apply(Disconnected("refused: " + "d" * 100_000, error=True), T)
    assert (
        model.banner
        == f"Disconnected: refused: {'d' * (TEXT_SHOWN - 9)}… (96,009 more characters)."
    )


def test_joining_a_room_of_thousands_names_the_first_few_and_counts_the_rest() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    peers = [Peer(str(n), f"p{n:05d}", "10.0.0.9") for n in range(5000, 2, -1)]
    lines = model.apply(welcome(ALICE, *peers), T)
    named = ", ".join(f"p{n:05d} (10.0.0.9)" for n in range(3, 3 + HERE_NAMED))
    assert lines[-1].text == f"Here: {named} and {4998 - HERE_NAMED:,} more."
    assert len(model.roster) == 4999


# --- the state machine ------------------------------------------------------------------


def test_connect_then_chat() -> None:
    model = ChatModel()
    assert (model.phase, model.phase.view, model.status()) == (
        Phase.CONNECT,
        "connect",
        "Not connected",
    )
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    assert model.phase is Phase.CONNECTING
    assert model.notice is not None
    assert model.notice.text == "Connecting to 192.168.1.5:7467…"
    assert model.status() == "Connecting to 192.168.1.5:7467…"
    lines = model.apply(welcome(ALICE, BOB, CAROL), T)
    assert model.phase is Phase.CHAT
    assert model.phase.view == "chat"
    assert model.notice is None
    assert [line.text for line in lines] == [
        "Connected to 'lab' at 192.168.1.5:7467 as alice (TLSv1.3).",
        "Here: bob (192.168.1.21), carol (10.0.0.7).",
    ]
    assert model.status() == (
        f"lab at 192.168.1.5:7467 · you are alice · TLSv1.3 · {short_fingerprint(FP)} · 3 here"
    )
    assert model.title() == "alice @ lab — chatsecure"


def test_alone_in_the_room_and_a_taken_nick_are_said() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    renamed = Peer("1", "alice_2", "192.168.1.20")
    texts = [line.text for line in model.apply(welcome(renamed), T)]
    assert "The nick 'alice' was taken; you are 'alice_2'." in texts
    assert "Nobody else is here yet." in texts
    # Back after a drop as alice_2 again (the client asks for it): nothing to say.
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    texts = [line.text for line in model.apply(welcome(renamed), T)]
    assert not any("was taken" in text for text in texts)
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    texts = [line.text for line in model.apply(welcome(Peer("1", "alice_3", "::1")), T)]
    assert "The nick 'alice_2' was taken; you are 'alice_3'." in texts


def test_a_taken_nick_stays_in_the_banner_over_a_replay_until_the_user_speaks() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    renamed = Peer("1", "alice_2", "192.168.1.20")
    replayed = Welcome(renamed, (BOB,), ServerInfo("lab", "1", 2), seq=80, replay=50, log="L")
    model.apply(Connected(replayed, "192.168.1.5", 7467, "TLSv1.3", FP), T)
    assert model.banner == "The nick 'alice' was taken; you are 'alice_2'."  # 50 lines follow
    assert model.outgoing("hi").send == "hi"
    assert model.banner is None
    other = ChatModel()  # nothing replayed: the line stays in view, no banner
    other.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    other.apply(welcome(renamed), T)
    assert other.banner is None


def test_drop_reconnect_and_recover() -> None:
    model = chatting(BOB)
    (line,) = model.apply(Reconnecting(2, 4.0, "the connection was reset"), T)
    assert model.phase is Phase.RECONNECTING
    assert model.phase.view == "chat"
    assert line.kind == "error"
    assert line.text == "Connection lost (the connection was reset)."
    assert model.banner == (
        "Connection lost (the connection was reset). Reconnecting in 4 s, attempt 2 of 20…"
    )
    assert model.status().startswith("Reconnecting… · lab at 192.168.1.5:7467")
    lines = model.apply(welcome(ALICE, CAROL), T)
    assert model.phase is Phase.CHAT
    assert model.banner is None
    assert lines[0].text.startswith("Reconnected to 'lab'")
    assert [r.peer_id for r in model.roster.rows()] == ["1", "3"]  # who is here now


def test_an_outage_is_one_transcript_line_and_a_banner_that_follows_each_attempt() -> None:
    model = chatting(BOB)
    transcript = model.apply(Reconnecting(1, 1.0, "the connection was reset"), T)
    assert model.banner == (
        "Connection lost (the connection was reset). Reconnecting in 1 s, attempt 1 of 20…"
    )
    for attempt, delay in [(2, 2.0), (3, 4.0), (4, 8.0)]:
        transcript += model.apply(Reconnecting(attempt, delay, "the connection was refused"), T)
        assert model.phase is Phase.RECONNECTING
        assert model.banner == (
            "Connection lost (the connection was reset); last try: the connection was refused. "
            f"Reconnecting in {delay:.0f} s, attempt {attempt} of 20…"
        )
    transcript += model.apply(welcome(ALICE, BOB), T)
    assert model.banner is None
    texts = [line.text for line in transcript]
    assert texts[0] == "Connection lost (the connection was reset)."
    assert [t for t in texts if "Connection lost" in t or "Reconnecting" in t] == [texts[0]]
    assert texts[1].startswith("Reconnected to 'lab' at 192.168.1.5:7467")


def test_a_second_outage_after_a_reconnect_gets_its_own_line() -> None:
    model = chatting(BOB)
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    model.apply(welcome(ALICE, BOB), T)
    (line,) = model.apply(Reconnecting(2, 2.0, "timed out"), T)
    assert line.text == "Connection lost (timed out)."
    assert model.banner == "Connection lost (timed out). Reconnecting in 2 s, attempt 2 of 20…"
    assert model.apply(Reconnecting(3, 4.0, "timed out"), T) == []
    assert model.banner == "Connection lost (timed out). Reconnecting in 4 s, attempt 3 of 20…"


def test_connection_ending_keeps_the_chat_view_until_back() -> None:
    model = chatting(BOB)
    (line,) = model.apply(Disconnected("the server shut down", error=False), T)
    assert model.phase is Phase.ENDED
    assert model.phase.view == "chat"
    assert (line.kind, line.text) == ("info", "Disconnected: the server shut down.")
    assert model.status().startswith("Disconnected · ")
    assert [r.peer_id for r in model.roster.rows()] == ["1", "2"]  # who was there
    model.left()
    assert model.phase is Phase.CONNECT
    assert model.notice is None  # nothing to say: the user saw why already


def test_leaving_says_so_on_the_connect_view() -> None:
    model = chatting()
    model.left()
    assert model.phase is Phase.CONNECT
    assert model.notice is not None
    assert model.notice.text == "You left 'lab'."
    assert len(model.roster) == 0


def test_leaving_without_waiting_for_acks_says_so_and_forgets_those_lines() -> None:
    model = chatting()
    model.apply(Queued("r1", "one"), T)
    model.apply(Queued("r2", "two"), T)
    model.left()  # Leave asked twice: without waiting
    assert model.notice is not None
    assert model.notice.text == (  # what they said, to say again if need be
        "You left 'lab' before your last 2 lines were stored: the room may not have them "
        "(“one”, “two”)."
    )
    assert model.pending == {}  # not waited for by the next Leave, in another connection
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    model.apply(welcome(ALICE), T)
    for n, text in enumerate(["three", "x" * 100, "two\nlines\x1b[2J", "six"]):
        model.apply(Queued(f"r{n + 3}", text), T)
    model.left()
    assert model.notice is not None
    assert model.notice.text.endswith(
        "your last 4 lines were stored: the room may not have them "
        f"(“three”, “{'x' * 79}…”, “two ↵ lines\\x1b[2J” and 1 more)."
    )


def test_connect_failure_goes_back_with_the_reason() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.9.9.9", 7467, "alice"))
    assert model.apply(Disconnected("timed out: the server did not answer", error=True), T) == []
    assert model.phase is Phase.CONNECT
    assert model.notice is not None
    assert model.notice.kind == "error"
    assert model.notice.text == (
        "Could not connect to 10.9.9.9:7467: timed out: the server did not answer"
    )


def test_a_failure_at_every_address_names_each_once() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.5", 7467, "alice", others=(("fd00::5", 7467),)))
    reason = (
        "none of the server's addresses answered: 10.0.0.5:7467 (connection refused); "
        "[fd00::5]:7467 (connection refused)"
    )
    model.apply(Disconnected(reason, error=True), T)
    assert model.notice is not None
    assert model.notice.text == f"Could not connect: {reason}"


AUTH_FAILED = "the server refused: wrong or missing password (auth_failed)"


@pytest.mark.parametrize(
    ("password", "field_says", "notice_says"),
    [
        (None, "This room needs a password.", "asks for a room password"),
        ("guess", "Wrong password: check it and try again.", "did not accept the password"),
    ],
)
def test_refused_password_is_explained_next_to_the_password_field(
    password: str | None, field_says: str, notice_says: str
) -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice", password=password))
    assert model.apply(Disconnected(AUTH_FAILED, error=True, code="auth_failed"), T) == []
    assert model.phase is Phase.CONNECT  # the user stays on the connect view, to retype it
    assert model.form_errors == {"password": field_says}
    assert model.notice is not None
    assert model.notice.kind == "error"
    assert model.notice.text.startswith("Not connected: 10.0.0.2:7467 ")
    assert notice_says in model.notice.text
    assert "auth_failed" not in model.notice.text  # words for people, not protocol codes
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice", password=ROOM))
    assert model.form_errors == {}  # a new attempt clears the old complaint


def test_form_errors_are_kept_by_the_model_until_the_next_attempt() -> None:
    model = ChatModel()
    errors = validate_form("", "7467", "alice").errors
    model.invalid(errors)
    assert model.form_errors == errors
    assert model.phase is Phase.CONNECT
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice"))
    assert model.form_errors == {}


def test_other_refusals_are_not_blamed_on_the_password() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice", password=ROOM))
    full = "the server refused: the server is full (1 connection) (server_full)"
    model.apply(Disconnected(full, error=True), T)
    assert model.form_errors == {}
    assert model.notice is not None
    assert model.notice.text == f"Could not connect to 10.0.0.2:7467: {full}"


@pytest.mark.parametrize(
    ("pinned", "says"),
    [(None, "you did not trust 10.0.0.2:7467"), (OLD_FP, "has changed and you kept the old pin")],
)
def test_declined_trust_is_explained_in_gui_words(pinned: str | None, says: str) -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice"))
    model.declined = TrustQuestion("10.0.0.2", 7467, FP, pinned)
    model.apply(Disconnected("long terminal advice with --fingerprint", error=True), T)
    assert model.notice is not None
    assert says in model.notice.text
    assert "--fingerprint" not in model.notice.text


def test_cancel_while_connecting() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice"))
    model.cancelled()
    assert model.phase is Phase.CONNECT
    assert model.notice is not None
    assert model.notice.text == "Connection cancelled."


def test_ipv6_server_is_written_with_brackets() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("fe80::1", 7467, "alice"))
    assert model.status() == "Connecting to [fe80::1]:7467…"


# --- trust dialogs ----------------------------------------------------------------------


def test_first_contact_prompt() -> None:
    prompt = trust_prompt(TrustQuestion("10.0.0.2", 7467, FP))
    assert (prompt.danger, prompt.accept, prompt.cancel, prompt.confirm) == (
        False,
        "Trust",
        "Cancel",
        None,
    )
    assert prompt.heading == "First connection to 10.0.0.2:7467"
    assert prompt.fingerprint == FP
    assert prompt.advertised_note is None
    assert "already trust" not in prompt.body


def test_first_contact_prompt_says_where_the_certificate_is_trusted_already() -> None:
    names = tuple(f"10.0.0.{n}:7467" for n in range(3, 8))
    prompt = trust_prompt(TrustQuestion("localhost", 7467, FP, known_as=names))
    assert prompt.body.startswith(
        "This server is not known yet. You already trust this certificate for 10.0.0.3:7467, "
        "10.0.0.4:7467, 10.0.0.5:7467 and 2 more: the same server, by another name. Compare"
    )


def test_first_contact_prompt_says_whether_discovery_agrees() -> None:
    same = trust_prompt(TrustQuestion("10.0.0.2", 7467, FP, advertised=FP))
    assert same.advertised_note is not None
    assert "matches" in same.advertised_note
    other = trust_prompt(TrustQuestion("10.0.0.2", 7467, FP, advertised=OLD_FP))
    assert other.advertised_note is not None
    assert "does NOT match" in other.advertised_note


def test_changed_certificate_prompt_is_a_loud_warning_with_both_fingerprints() -> None:
    prompt = trust_prompt(TrustQuestion("10.0.0.2", 7467, FP, pinned=OLD_FP))
    assert prompt.danger
    assert "WARNING" in prompt.heading
    assert "has changed" in prompt.heading
    assert (prompt.fingerprint, prompt.pinned) == (FP, OLD_FP)
    assert prompt.accept == "Replace pin and connect"
    assert prompt.confirm is not None  # an explicit tick before the pin can be replaced


def run_ask(bridge: TrustBridge, question: TrustQuestion) -> tuple[threading.Thread, list[bool]]:
    answers: list[bool] = []
    thread = threading.Thread(target=lambda: answers.append(bridge.ask(question)))
    thread.start()
    return thread, answers


@pytest.mark.parametrize("yes", [True, False])
def test_bridge_carries_the_question_and_the_answer(yes: bool) -> None:
    bridge = TrustBridge()
    question = TrustQuestion("10.0.0.2", 7467, FP)
    thread, answers = run_ask(bridge, question)
    wait_for(lambda: not bridge.questions.empty())
    pending = bridge.next()
    assert pending is not None
    assert pending.question == question
    assert pending.prompt.heading.startswith("First connection")
    assert thread.is_alive()  # the network thread waits for the user
    pending.answer(yes)
    thread.join(5)
    assert answers == [yes]
    assert bridge.next() is None


def test_bridge_close_says_no_to_waiting_and_later_questions() -> None:
    bridge = TrustBridge()
    question = TrustQuestion("10.0.0.2", 7467, FP)
    thread, answers = run_ask(bridge, question)
    wait_for(lambda: not bridge.questions.empty())
    bridge.close()
    thread.join(5)
    assert answers == [False]
    assert bridge.next() is None  # the answered question is not offered any more
    assert bridge.ask(question) is False  # at once, no waiting


def test_bridge_gives_up_after_its_timeout() -> None:
    bridge = TrustBridge(timeout=0.05)
    started = time.monotonic()
    assert bridge.ask(TrustQuestion("10.0.0.2", 7467, FP)) is False
    assert time.monotonic() - started < 2


# --- small things -----------------------------------------------------------------------


def test_nickname_is_remembered(chatsecure_home: Path) -> None:
    remember_nick("zoe")
    assert (chatsecure_home / "nick").read_text() == "zoe\n"
    assert remembered_nick() == "zoe"


def test_without_a_remembered_nick_the_login_name_is_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGNAME", "dana")
    monkeypatch.setenv("USER", "dana")
    assert remembered_nick(tmp_path) == "dana"


def test_short_fingerprint() -> None:
    assert short_fingerprint(FP) == "SHA256:qd11Mv3IYZlm…"


# --- the controller on a real server (no screen) ---------------------------------------


def poll_until(controller: Controller, condition: Callable[[], bool]) -> list[Line]:
    lines: list[Line] = []
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out in {controller.model.phase}"
        lines += controller.poll().lines
        time.sleep(0.005)
    return lines


def test_controller_connects_chats_and_quits(server: ServerThread) -> None:
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
        lines = poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
        assert lines[0].text.startswith("Connected to 'test' at 127.0.0.1:")
        assert remembered_nick() == "alice"
        bob.expect("join")
        controller.submit("hi bob")
        assert bob.expect("msg")["text"] == "hi bob"
        shown: list[Line] = []

        def stored() -> bool:
            shown.extend(controller.poll().lines)
            return any(line.kind == "own" for line in shown)

        wait_for(stored)
        assert [(line.kind, line.text) for line in shown if line.ref] == [
            ("pending", "hi bob"),
            ("own", "hi bob"),
        ]
        bob.send({"type": "msg", "text": "hi alice"})
        seen: list[Line] = []

        def heard() -> bool:
            seen.extend(controller.poll().lines)
            return any(line.kind == "chat" and line.text == "hi alice" for line in seen)

        wait_for(heard)
        controller.submit("quit")
        assert controller.model.phase is Phase.CONNECT
        assert bob.expect("leave")["reason"] == "quit"
        wait_for(lambda: not controller.busy)


def test_the_controller_rings_for_events_and_again_for_those_a_poll_left(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(msg_rate=0)
    rings: list[None] = []
    controller = Controller(
        GuiOptions(discovery=False, accept_new=True), ring=lambda: rings.append(None)
    )
    try:
        controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
        wait_for(lambda: rings)  # Connected: the network thread rang
        poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
        client = controller.client
        assert client is not None
        with RawClient(server.host, server.port) as bob:
            bob.join("bob")
            for n in range(20):
                bob.send({"type": "msg", "text": f"n{n}", "ref": f"r{n}"})
            wait_for(lambda: client.events.qsize() >= 21)  # bob's join, then his lines
            rings.clear()
            controller.poll(limit=10)
            assert rings  # the rest waits for a poll: rung for it
            poll_until(controller, client.events.empty)
            rings.clear()
            controller.poll(limit=10)
            assert not rings
    finally:
        controller.close()


def test_the_controller_says_the_views_changed_for_presence_not_for_lines_said(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(msg_rate=0)
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    updates: list[Update] = []

    def polled_until(kind: str, text: str) -> list[Update]:
        updates.clear()

        def shown() -> bool:
            updates.append(controller.poll())
            return any(line.kind == kind and text in line.text for line in updates[-1].lines)

        wait_for(shown)
        return updates

    try:
        controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
        poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
        with RawClient(server.host, server.port) as bob:
            bob.join("bob")
            assert polled_until("join", "joined")[-1].changed  # the list of who is here
            for n in range(5):
                bob.send({"type": "msg", "text": f"hi {n}", "ref": f"r{n}"})
            assert not any(update.changed for update in polled_until("chat", "hi 4"))
    finally:
        controller.close()


def queued(controller: Controller, kind: type) -> bool:
    """Whether the client has queued a ``kind`` event that the controller has not polled yet."""
    client = controller.client
    return client is not None and any(isinstance(e, kind) for e in list(client.events.queue))


def test_a_line_typed_as_the_connection_dropped_is_sent_after_the_reconnect(
    server: ServerThread,
) -> None:
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
    poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
    server.call(lambda: next(iter(server.server.sessions.values())).drop(ErrorCode.FLOODING, "x"))
    wait_for(lambda: queued(controller, Reconnecting))  # the window has not seen it yet
    controller.submit("did this go?")
    lines: list[Line] = []

    def sent() -> bool:
        lines.extend(controller.poll().lines)
        return controller.model.phase is Phase.CHAT and not controller.model.pending

    wait_for(sent)
    assert not any("Not sent" in line.text for line in lines)
    assert [line.text for line in lines if line.kind == "own"] == ["did this go?"]
    controller.close()


def test_controller_shows_a_line_lost_as_the_connection_ended(server: ServerThread) -> None:
    controller = Controller(GuiOptions(discovery=False, accept_new=True, reconnect=False))
    controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
    poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
    server.call(lambda: next(iter(server.server.sessions.values())).drop(ErrorCode.FLOODING, "x"))
    wait_for(lambda: queued(controller, Disconnected))
    controller.submit("last words")  # the window does not know yet: the core says NotSent
    lines = controller.poll().lines  # the end of the connection, and what it cost
    assert controller.model.phase is Phase.ENDED
    assert [line.text for line in lines if line.kind == "error"][-1] == (
        "Not sent, never stored: last words"
    )
    wait_for(lambda: not controller.busy)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("caf\udcff", "Message not sent: it holds a character that is not valid text"),
        ("x" * limits.MAX_FRAME, "Message not sent: it is too long"),
    ],
)
def test_controller_refuses_a_text_that_cannot_be_sent_and_keeps_it(
    server: ServerThread, text: str, says: str
) -> None:
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
        poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
        bob.expect("join")
        out = controller.submit(text)
        assert (out.send, out.clear) == (None, False)  # the text stays in the box
        assert out.line is not None
        assert out.line.kind == "error"
        assert out.line.text.startswith(says)
        controller.submit("this one goes")
        assert bob.expect("msg")["text"] == "this one goes"  # the connection was kept
    controller.close()


def test_controller_shows_the_servers_refusal_of_a_text_over_its_limit(
    server: ServerThread,
) -> None:
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
    poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
    assert controller.submit("x" * (limits.MAX_TEXT + 1)).send is not None
    lines: list[Line] = []

    def refused() -> bool:
        lines.extend(controller.poll().lines)
        return any("text_too_long" in line.text for line in lines)

    wait_for(refused)
    assert controller.model.phase is Phase.CHAT
    controller.close()


def test_controller_asks_and_a_no_connects_nothing(server: ServerThread) -> None:
    controller = Controller(GuiOptions(discovery=False))
    controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
    pending = None

    def asked() -> bool:
        nonlocal pending
        controller.poll()
        pending = controller.next_question()
        return pending is not None

    wait_for(asked)
    assert pending is not None
    assert pending.question.fingerprint == server.fingerprint
    controller.answer(pending, False)
    poll_until(controller, lambda: controller.model.phase is Phase.CONNECT)
    assert controller.model.notice is not None
    assert re.search(r"you did not trust 127\.0\.0\.1:\d+", controller.model.notice.text)
    assert KnownServers().get("127.0.0.1", server.port) is None
    assert server.online() == []
    wait_for(lambda: not controller.busy)


def test_controller_cancel_while_asking_joins_nothing(server: ServerThread) -> None:
    controller = Controller(GuiOptions(discovery=False))
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        controller.connect(ConnectRequest("127.0.0.1", server.port, "ghost", password=ROOM))
        wait_for(lambda: controller.bridge is not None and not controller.bridge.questions.empty())
        controller.cancel()
        assert controller.model.phase is Phase.CONNECT
        started = time.monotonic()
        wait_for(lambda: not controller.busy)
        assert time.monotonic() - started < 2
        assert bob.silent(0.5), "the room saw a client that was cancelled"
    assert server.online() == []


def test_controller_cancel_at_once_leaves_nobody_in_the_room(server: ServerThread) -> None:
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    with RawClient(server.host, server.port) as bob:
        bob.join("bob")
        controller.connect(ConnectRequest("127.0.0.1", server.port, "ghost", password=ROOM))
        controller.cancel()
        assert controller.model.phase is Phase.CONNECT
        started = time.monotonic()
        wait_for(lambda: not controller.busy)
        assert time.monotonic() - started < 2
        # Most often the cancel comes before the hello, and the room sees nothing; on a busy
        # machine the hello may be out already, and then the client leaves at once.
        seen: list[tuple[str, str]] = []
        while not bob.silent(0.5):
            frame = bob.recv()
            seen.append((frame["type"], frame["peer"]["nick"]))
        assert seen in ([], [("join", "ghost"), ("leave", "ghost")])
    assert server.online() == []


def test_controller_cancel_after_the_hello_says_quit(fake: Callable[..., FakeServer]) -> None:
    server = fake(Mode.MUTE)
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    controller.connect(ConnectRequest("127.0.0.1", server.port, "ghost"))
    server.wait_for(lambda s: s.sessions == 1)  # the hello is out; no welcome comes
    controller.cancel()
    started = time.monotonic()
    wait_for(lambda: not controller.busy)
    assert time.monotonic() - started < 2
    server.wait_for(lambda s: len(s.received) == 2)
    assert [frame["type"] for frame in server.received] == ["hello", "quit"]
    assert controller.model.phase is Phase.CONNECT


def test_controller_close_while_asking_unblocks_the_network_thread(server: ServerThread) -> None:
    controller = Controller(GuiOptions(discovery=False))
    controller.connect(ConnectRequest("127.0.0.1", server.port, "alice"))
    wait_for(lambda: controller.bridge is not None and not controller.bridge.questions.empty())
    started = time.monotonic()
    controller.close()
    assert not controller.busy
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("typed", "says"), [(None, "needs a password"), ("wrong horse", "Wrong password")]
)
def test_controller_with_a_refused_password_stays_on_the_connect_view(
    start_server: Callable[..., ServerThread], typed: str | None, says: str
) -> None:
    server = start_server(password=ROOM)
    controller = Controller(GuiOptions(discovery=False, accept_new=True))
    request = ConnectRequest("127.0.0.1", server.port, "alice", password=typed)
    controller.connect(request)
    poll_until(controller, lambda: controller.model.phase is not Phase.CONNECTING)
    assert controller.model.phase is Phase.CONNECT
    assert says in controller.model.form_errors["password"]
    assert server.online() == []
    wait_for(lambda: not controller.busy)


def test_controller_sends_the_typed_password_and_never_writes_it_down(
    start_server: Callable[..., ServerThread], chatsecure_home: Path
) -> None:
    server = start_server(password=ROOM)
    # The typed password counts, not the one the window was started with (the field's prefill).
    options = GuiOptions(discovery=False, accept_new=True, password=ROOM.upper())
    controller = Controller(options)
    controller.connect(ConnectRequest("127.0.0.1", server.port, "alice", password=ROOM))
    poll_until(controller, lambda: controller.model.phase is Phase.CHAT)
    assert server.online() == ["alice"]
    written = [p for p in chatsecure_home.rglob("*") if p.is_file()]
    assert written  # the pin and the nick were remembered ...
    assert not [p for p in written if ROOM.encode() in p.read_bytes()]  # ... not this
    controller.close()
    assert not controller.busy


# --- the discovered servers -------------------------------------------------------------


def found(key: str, name: str, *addresses: str, fp: str | None = FP) -> DiscoveredServer:
    return DiscoveredServer(key, name, addresses, 7467, fp, 1)


def test_server_list_follows_added_updated_removed() -> None:
    servers = ServerList()
    servers.apply(ServerAdded(found("Lab._chatsecure._tcp.local.", "lab", "10.0.0.5")))
    servers.apply(ServerAdded(found("Attic._chatsecure._tcp.local.", "attic", "10.0.0.9")))
    assert [(r.name, r.address, r.short_fingerprint) for r in servers.rows()] == [
        ("attic", "10.0.0.9:7467", short_fingerprint(FP)),
        ("lab", "10.0.0.5:7467", short_fingerprint(FP)),
    ]
    servers.apply(ServerUpdated(found("Lab._chatsecure._tcp.local.", "lab", "10.0.0.6", fp=None)))
    row = servers.get("lab._chatsecure._tcp.local.")
    assert row is not None
    assert (row.fill(), row.short_fingerprint) == (("10.0.0.6", "7467"), "—")
    servers.apply(ServerRemoved("LAB._chatsecure._tcp.local."))  # keys are case-insensitive
    assert [r.name for r in servers.rows()] == ["attic"]


def test_server_list_prefers_an_address_on_our_network() -> None:
    servers = ServerList([ipaddress.ip_network("192.168.7.0/24")])
    row = servers.put(found("x._chatsecure._tcp.local.", "x", "10.0.0.5", "192.168.7.20"))
    assert row is not None
    assert row.host == "192.168.7.20"
    v6 = servers.put(found("y._chatsecure._tcp.local.", "y", "fd00::7"))
    assert v6 is not None
    assert v6.address == "[fd00::7]:7467"


def test_server_list_uses_link_local_with_interface_but_never_without() -> None:
    servers = ServerList([ipaddress.ip_network("192.168.7.0/24")])
    row = servers.put(found("x._chatsecure._tcp.local.", "x", "192.0.2.5", "fe80::5%eth0"))
    assert row is not None
    assert row.address == "[fe80::5%eth0]:7467"
    assert servers.put(found("y._chatsecure._tcp.local.", "y", "fe80::6")) is None
    assert [r.name for r in servers.rows()] == ["x"]


def test_a_server_row_tries_every_address_it_advertises_best_first() -> None:
    servers = ServerList([ipaddress.ip_network("192.168.7.0/24")])
    row = servers.put(found("x._tcp.local.", "x", "fd77::1", "10.0.0.5", "192.168.7.20"))
    assert row is not None
    assert (row.host, row.address) == ("192.168.7.20", "192.168.7.20:7467")  # one server: no +2
    assert row.fallbacks == (("10.0.0.5", 7467), ("fd77::1", 7467))


def test_a_cluster_row_tries_every_node_then_their_other_addresses() -> None:
    servers = ServerList()
    servers.put(DiscoveredServer("a._chatsecure._tcp.local.", "lab 3", ("10.0.0.5", "fd00::5"),
                                 7467, FP, 2, "ab" * 8))  # fmt: skip
    row = servers.put(DiscoveredServer("b._chatsecure._tcp.local.", "lab 3", ("10.0.0.6",),
                                       7468, FP, 2, "ab" * 8))  # fmt: skip
    assert row is not None
    assert row.fallbacks == (("10.0.0.6", 7468), ("fd00::5", 7467))


def test_server_names_cannot_fake_lines() -> None:
    row = ServerList().put(found("z._chatsecure._tcp.local.", "evil\nname", "10.0.0.5"))
    assert row is not None
    assert row.name == "evil\\nname"


def node(key: str, address: str, cluster: str | None, fp: str | None = FP) -> DiscoveredServer:
    return DiscoveredServer(key, "lab 3", (address,), 7467, fp, 2, cluster)


def test_the_nodes_of_one_cluster_are_one_row_with_every_address() -> None:
    servers = ServerList()
    servers.apply(ServerAdded(node("lab 3._chatsecure._tcp.local.", "10.0.0.5", "ab" * 8)))
    servers.apply(ServerAdded(node("lab 3-2._chatsecure._tcp.local.", "10.0.0.6", "ab" * 8)))
    servers.apply(ServerAdded(node("alone._chatsecure._tcp.local.", "10.0.0.9", None)))
    rows = servers.rows()
    assert [(r.name, r.address) for r in rows] == [
        ("lab 3", "10.0.0.5:7467 +1"),
        ("lab 3", "10.0.0.9:7467"),
    ]
    room = rows[0]
    assert (room.fill(), room.others) == (("10.0.0.5", "7467"), (("10.0.0.6", 7467),))
    assert servers.get(room.key) == room
    assert servers.get("LAB 3-2._chatsecure._tcp.local.") == room  # a node finds its room
    servers.apply(ServerRemoved("lab 3._chatsecure._tcp.local."))
    [left, _alone] = servers.rows()
    assert (left.fill(), left.others) == (("10.0.0.6", "7467"), ())


def test_nodes_with_another_certificate_are_not_taken_for_the_same_room() -> None:
    servers = ServerList()
    servers.put(node("a._chatsecure._tcp.local.", "10.0.0.5", "ab" * 8))
    servers.put(node("b._chatsecure._tcp.local.", "10.0.0.6", "ab" * 8, fp="SHA256:" + "Z" * 43))
    assert sorted(r.address for r in servers.rows()) == ["10.0.0.5:7467", "10.0.0.6:7467"]


def test_a_cluster_row_connects_to_every_node_in_order() -> None:
    request = ConnectRequest("10.0.0.5", 7467, "alice", others=(("10.0.0.6", 7467),))
    target = request.target(GuiOptions())
    assert target.addresses == (("10.0.0.5", 7467), ("10.0.0.6", 7467))


def test_a_roster_stops_growing_at_the_largest_room_a_client_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MAX_ROOM", 3)
    model = chatting(BOB)  # alice and bob
    for n in range(5):  # a hostile server's joins, each a new id
        model.apply(Received(Join(Peer(f"x{n}", f"x{n}", "10.0.0.9"))), T)
    assert len(model.roster) == 3
    model.apply(Received(Join(Peer(BOB.id, "bob", BOB.addr))), T)  # one it has: still taken
    assert len(model.roster) == 3


def pause_over(model: ChatModel) -> None:
    """The pause after a refused history request is over (``HISTORY_RETRY`` seconds)."""
    model._history_retry_at = 0.0


def test_a_history_request_refused_for_the_rate_goes_again_and_no_line_shows_twice() -> None:
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=10)), T)
    assert model.wants_older() == 10
    (said,) = model.apply(Received(Error("rate_limited", "too many frames"), older=True), T)
    assert "rate_limited" in said.text
    assert model.wants_older() is None  # not at once
    pause_over(model)
    assert model.wants_older() == 10  # no answer comes to a refused request: ask again
    # Were it our ping that was refused, the first answer comes after all, then the second.
    assert [line.seq for line in page(model, 10, range(5, 10))] == [5, 6, 7, 8, 9]
    assert page(model, 10, range(5, 10)) == []
    assert model.wants_older() == 5


def test_a_refused_request_for_a_gap_is_told_to_the_window_to_ask_again() -> None:
    model, gap = back_with_a_gap(last=100)
    assert model.wants_gap(gap) == 81
    unreadable = Received(Error(ErrorCode.HISTORY_UNAVAILABLE, "later", "ab-h1"), older=True)
    model.apply(unreadable, T)
    assert model.refused_gaps() == {gap}  # the window asks for it again while it shows it
    assert model.refused_gaps() == set()  # (said once)
    assert model.wants_gap(gap) is None  # after the pause
    pause_over(model)
    assert model.wants_gap(gap) == 81
    assert model.wants_older() is None  # one request at a time
    model.apply(unreadable, T)
    assert model.refused_gaps() == {gap}
    pause_over(model)
    assert model.wants_older() == 10
    model.apply(unreadable, T)
    assert model.refused_gaps() == set()  # that one was for older lines, not a gap


def test_scrolling_up_on_a_server_that_replays_nothing_loads_its_newest_lines() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    welcome = Welcome(ALICE, (BOB,), ServerInfo("lab", "1", 2), seq=20, log="L")
    model.apply(Connected(welcome, "h", 1, "TLSv1.3", FP), T)
    assert model.wants_older() == 21


def test_scrolling_up_before_the_replay_has_come_asks_for_what_is_older_than_it() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("192.168.1.5", 7467, "alice"))
    welcome = Welcome(ALICE, (BOB,), ServerInfo("lab", "1", 2), seq=1000, replay=50, log="L")
    model.apply(Connected(welcome, "h", 1, "TLSv1.3", FP), T)
    assert model.wants_older() == 951  # not 1001: the answer would be the replay again


def test_a_server_that_cannot_read_its_history_is_not_asked_again_at_once_nor_told_twice() -> None:
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=10)), T)
    assert model.wants_older() == 10
    unreadable = Received(Error(ErrorCode.HISTORY_UNAVAILABLE, "later", "ab-h1"), older=True)
    assert model.apply(unreadable, T) == []  # nothing at the end of the chat: the user is at
    assert model.banner == UNREADABLE  # its top, below the banner
    assert model.wants_older() is None  # the top still in view: not in a loop
    pause_over(model)
    assert model.wants_older() == 10
    model.apply(unreadable, T)
    pause_over(model)
    assert model.wants_older() == 10
    page(model, 10, range(8, 10))
    assert model.banner is None  # it loads again
    assert model.wants_older() == 8
    model.apply(Received(Error(ErrorCode.BAD_JSON, "not JSON")), T)  # not for the request
    assert model.wants_older() is None  # still out
    assert model.banner is None


def test_the_unreadable_history_banner_goes_when_the_shared_log_is_back_and_no_pause_stays() -> (
    None
):
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=10)), T)
    assert model.wants_older() == 10
    model.apply(Received(Error(ErrorCode.HISTORY_UNAVAILABLE, "later", "ab-h1"), older=True), T)
    assert model.banner == UNREADABLE
    model.apply(Received(Notice(NoticeCode.CLUSTER_AVAILABLE, "back")), T)
    assert model.banner is None
    assert model.wants_older() is None  # (the pause: 10 s)
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    model.apply(welcome(ALICE, BOB), T)
    assert model.wants_older() == 10  # a new connection: no pause left from the last one


def test_oldest_lines_dropped_below_a_gap_leave_its_lines_to_it() -> None:
    model, gap = back_with_a_gap(100)
    # The transcript dropped all above the replay but the gap's line.
    model.paging.dropped_before(81)
    assert model.wants_older() == 11  # not 81: 11 to 80 are the gap's to load
    model.apply(Received(HistoryEnd(11, 0)), T)
    model.paging.forget_gap(gap)  # its line went too: then they come on top
    model.paging.dropped_before(81)
    assert model.wants_older() == 81


def test_an_answer_for_above_lines_dropped_meanwhile_is_not_put_on_top() -> None:
    # Older lines were asked for; lines came in the meantime and the transcript dropped its
    # oldest, up to 41: the answer (before 10) would go above 41, a hole of 10 to 40.
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=10)), T)
    assert model.wants_older() == 10
    model.paging.dropped_before(41)
    assert model.wants_older() is None  # its answer still comes: the next would take its lines
    assert page(model, 10, range(5, 10)) == []
    assert model.wants_older() == 41  # scrolled up again: the lines just above those kept
    assert [line.seq for line in page(model, 41, range(36, 41))] == list(range(36, 41))


def test_an_answer_to_another_request_is_not_taken_for_ours() -> None:
    model, gap = back_with_a_gap(300)
    assert model.wants_gap(gap) == 281
    # (For a ping, in truth: a server older than refs on history names none.)
    model.apply(Received(Error("rate_limited", "too many frames"), older=True), T)
    pause_over(model)
    assert model.wants_older() == 10
    # The gap's answer comes after all: not lines on top, nor the end of the top's request.
    assert page(model, 281, range(181, 281)) == []
    assert model.wants_gap(gap) is None  # the top's request is still out
    (top,) = page(model, 10, range(9, 10))
    assert (top.seq, top.older) == (9, True)


def test_an_answer_that_adds_nothing_is_not_asked_for_again() -> None:
    model, gap = back_with_a_gap(60)
    assert model.wants_gap(gap) == 41
    # Lines, but none in the gap (a server whose log has holes there): the gap is closed.
    assert page(model, 41, range(5, 11)) == [Line("gap", "", "", gap=gap)]
    assert model.wants_gap(gap) is None
    assert model.wants_older() == 10
    assert page(model, 10, range(20, 22)) == []  # none older than those shown
    assert model.wants_older() is None


def test_a_gap_of_a_log_the_server_lost_is_not_filled_from_its_new_one() -> None:
    model, gap = back_with_a_gap(300, log="log-one-00000001")
    model.apply(Reconnecting(1, 1.0, "reset"), T)
    new = Welcome(ALICE, (BOB,), ServerInfo("lab", "1", 2), seq=5, replay=5, log="log-two-00000002")
    lines = model.apply(Connected(new, "h", 1, "TLSv1.3", FP, True, 5), T)
    told = Line("gap", "", "⋯ 270 earlier missed messages: no longer kept by the server ⋯", gap=gap)
    assert told in lines
    assert model.paging.new_log  # the window forgets the old log's seqs (lines dropped name them)
    assert model.wants_gap(gap) is None
    model.apply(Received(Chat(BOB, "new log", T, seq=1, history=True), replayed=True), T)
    assert model.wants_older() is None  # nothing before its first line


def test_a_stray_history_line_does_not_spoil_the_answer_of_a_server_that_names_requests() -> None:
    model = chatting(BOB)
    model.apply(Received(Chat(BOB, "seen", T, seq=100)), T)
    stray = Chat(BOB, "stray", T, seq=50, history=True)
    assert model.apply(Received(stray, older=True), T) == []  # no request out: not shown
    assert model.wants_older() == 100
    for seq in range(96, 100):
        model.apply(Received(Chat(BOB, f"m{seq}", T, seq=seq, history=True), older=True), T)
    lines = model.apply(Received(HistoryEnd(100, 4, "ab-h1")), T)
    assert [line.seq for line in lines] == [96, 97, 98, 99]
    assert model.wants_older() == 96  # the request is done: the next may go


def test_the_end_of_a_late_answer_does_not_end_the_request_asked_again() -> None:
    model, gap = back_with_a_gap(300)
    assert model.wants_gap(gap) == 281
    # (For a ping, in truth: a server older than refs on history names none.)
    model.apply(Received(Error("rate_limited", "too many frames"), older=True), T)
    pause_over(model)
    # The lost answer comes after all, its lines before the request is asked again...
    for seq in range(181, 281):
        model.apply(Received(Chat(BOB, f"m{seq}", T, seq=seq, history=True), older=True), T)
    assert model.wants_gap(gap) == 281
    # ...and its end after: not the end of the request asked again, which still loads.
    assert model.apply(Received(HistoryEnd(281, 100)), T) == []
    lines = page(model, 281, range(181, 281))
    assert [line.seq for line in lines[:-1]] == list(range(181, 281))
    assert lines[-1].text.startswith("⋯ 170 earlier missed messages")


def test_a_reason_that_ends_a_sentence_is_not_given_a_second_full_stop() -> None:
    model = chatting(BOB)
    reason = "the certificate changed; forget the old pin and connect again."
    model.apply(Disconnected(reason, error=True), T)
    assert model.banner == f"Disconnected: {reason}"
