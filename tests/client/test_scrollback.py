"""``/older`` in the terminal client (``Scrollback``), fed client events as the printer is."""

from __future__ import annotations

import time

import pytest

from chatsecure.client.core import Connected, Disconnected, Received, Reconnecting, Sent
from chatsecure.client.scrollback import PAGE, USAGE, Scrollback, older_command
from chatsecure.client.terminal import resume_notice
from chatsecure.protocol.messages import Chat, Error, HistoryEnd, Peer, ServerInfo, Welcome

ALICE = Peer("1", "alice", "192.168.1.20")
BOB = Peer("2", "bob", "192.168.1.21")
T = 1_700_000_000.0
STAMP = time.strftime("%H:%M:%S", time.localtime(T))
DAY = time.strftime("%Y-%m-%d", time.localtime(T))


class Terminal:
    """A ``Scrollback`` and the history requests it made."""

    def __init__(self) -> None:
        self.asked: list[tuple[int | None, int]] = []
        self.scrollback = Scrollback(lambda before, limit: self.asked.append((before, limit)))

    def joins(
        self,
        last: int,
        replay: int,
        *,
        since: int | None = None,
        log: str | None = "L1",
        replayed: bool = True,
    ) -> list[str]:
        """Welcomed by a server whose newest line is ``last``; ``replay`` lines follow (fed
        too, if ``replayed``)."""
        missed = 0 if since is None else last - since
        skipped = max(missed - replay, 0)
        welcome = Welcome(ALICE, (BOB,), ServerInfo("lab", "1", 2), last, replay, skipped, log=log)
        connected = Connected(welcome, "h", 1, "TLSv1.3", "SHA256:x", since is not None, missed)
        printed = self.scrollback.feed(connected)
        for seq in range(last - replay + 1, last + 1) if replayed else ():
            chat = Chat(BOB, f"m{seq}", T, seq=seq, history=True)
            printed += self.scrollback.feed(Received(chat, replayed=True))
        return printed

    def answers(self, seqs: range, count: int | None = None) -> list[str]:
        """The server answers the last request with lines ``seqs``."""
        before, _ = self.asked[-1]
        printed = []
        for seq in seqs:
            chat = Chat(BOB, f"m{seq}", T, seq=seq, history=True)
            printed += self.scrollback.feed(Received(chat, older=True))
        end = HistoryEnd(before, len(seqs) if count is None else count)
        return printed + self.scrollback.feed(Received(end))


def shown(*seqs: int) -> list[str]:
    """How the terminal prints bob's lines ``seqs`` (said on another day than today)."""
    return [f"[{DAY} {STAMP}] bob (192.168.1.21): m{seq}" for seq in seqs]


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("/older", PAGE),
        ("  /older  ", PAGE),
        ("/older 7", 7),
        ("/older 200", 200),
        ("/older 0", USAGE),
        ("/older 201", USAGE),
        ("/older many", USAGE),
        ("/older ²", USAGE),  # a digit to str.isdigit(), not to int()
        ("/older ①", USAGE),
        ("/older " + "9" * 5000, USAGE),  # more digits than int() takes
        ("/older 0200", USAGE),
        ("/older 2 3", USAGE),
        ("/OLDER 7", 7),  # commands are read in any case
        ("/older 2\nplease see the lines above", None),  # a paste: sent, not lost
        ("/olderly", None),
        ("say /older", None),
        ("", None),
    ],
)
def test_the_command_is_read_and_anything_else_is_a_chat_line(
    typed: str, meant: int | str | None
) -> None:
    assert older_command(typed) == meant


def test_a_newcomer_pages_back_to_the_oldest_line_kept() -> None:
    term = Terminal()
    term.joins(last=10, replay=3)  # 8, 9 and 10 shown
    assert term.scrollback.ask(4) is None
    assert term.asked == [(8, 4)]
    assert term.answers(range(4, 8)) == [
        "* 4 messages from earlier:",
        *shown(4, 5, 6, 7),
        "* end of the earlier messages; /older for more",
    ]
    term.scrollback.ask(4)
    assert term.asked[-1] == (4, 4)
    assert term.answers(range(1, 4)) == [
        "* 3 messages from earlier:",
        *shown(1, 2, 3),
        "* end of the earlier messages; there are none before them on the server",
    ]
    said = term.scrollback.ask(4)
    assert said == "* no earlier messages on the server"
    assert len(term.asked) == 2


def test_missed_lines_the_replay_left_out_come_first_newest_page_first_then_older_ones() -> None:
    term = Terminal()
    term.joins(last=10, replay=10)
    term.scrollback.feed(Reconnecting(1, 1.0, "reset"))
    term.joins(last=30, replay=5, since=10)  # 11 to 25 missed and not replayed
    term.scrollback.ask(10)
    assert term.asked == [(26, 10)]
    assert term.answers(range(16, 26)) == [
        "* 10 messages you missed (the replay left them out):",
        *shown(*range(16, 26)),
        "* end of those; 5 messages missed before them: /older",
    ]
    term.scrollback.ask(10)
    assert term.asked[-1] == (16, 5)  # only what the gap still misses
    assert term.answers(range(11, 16))[-1] == "* end of those; that is all you missed"
    # Lines 1 to 10 were shown before the drop: the next page is nothing new.
    assert term.scrollback.ask(10) == ("* no earlier messages on the server")


def test_a_page_of_a_gap_the_server_no_longer_keeps_says_so_at_once() -> None:
    term = Terminal()
    term.joins(last=40, replay=5, since=10)  # a client restarted: it saw up to 10 last time
    term.scrollback.ask(10)
    assert term.asked == [(36, 10)]
    # Fewer than asked for: the server keeps nothing before them (trimmed).
    assert term.answers(range(30, 36))[-1] == (
        "* end of those; the 19 messages missed before them are no longer kept by the server"
    )
    term.scrollback.ask(10)
    assert term.asked[-1] == (11, 10)  # then what came before the gap
    assert term.answers(range(0)) == ["* no earlier messages on the server"]


def test_an_answer_longer_than_asked_for_keeps_no_more_than_was_asked() -> None:
    # A hostile server that sends lines without end: the page does not grow past the request.
    term = Terminal()
    term.joins(last=100_000, replay=3)
    term.scrollback.ask(4)
    assert term.asked == [(99_998, 4)]
    printed = term.answers(range(1, 20_000), count=4)
    assert printed[1:-1] == shown(1, 2, 3, 4)


def test_a_page_that_holds_the_first_line_is_the_last() -> None:
    term = Terminal()
    term.joins(last=12, replay=2)
    term.scrollback.ask(10)
    assert term.answers(range(1, 11))[-1] == (
        "* end of the earlier messages; there are none before them on the server"
    )
    assert term.scrollback.ask(10) == "* no earlier messages on the server"
    assert len(term.asked) == 1


def test_an_older_typed_while_one_loads_waits_its_turn() -> None:
    term = Terminal()
    term.joins(last=300, replay=50)
    assert term.scrollback.ask(100) is None
    assert term.scrollback.ask(100) is None
    assert term.asked == [(251, 100)]
    assert not term.scrollback.settled(0.01)
    printed = term.answers(range(151, 251))
    assert printed[-1] == "* end of the earlier messages; /older for more"
    assert term.asked[-1] == (151, 100)  # the second one went when the first was answered
    term.answers(range(51, 151))
    assert term.scrollback.settled(0.01)


def test_lines_of_the_room_and_own_lines_count_as_shown() -> None:
    term = Terminal()
    term.joins(last=0, replay=0)  # an empty room
    assert term.scrollback.ask(5) == ("* no earlier messages on the server")
    term.scrollback.feed(Received(Chat(BOB, "live", T, seq=1)))
    term.scrollback.feed(Sent("r1", "mine", 2, T))
    assert term.scrollback.ask(5) == ("* no earlier messages on the server")
    assert term.asked == []  # 1 is the oldest shown: nothing can be before it


def test_a_server_that_replays_nothing_pages_from_its_newest_line() -> None:
    term = Terminal()
    term.joins(last=20, replay=0)
    term.scrollback.ask(5)
    assert term.asked == [(21, 5)]


def test_a_server_without_a_log_has_no_history_to_load() -> None:
    """A v1 server, or one started with ``--history 0``: its welcome names no log."""
    term = Terminal()
    term.joins(last=0, replay=0, log=None)
    assert term.scrollback.ask(5) == "* this server keeps no history"
    assert term.asked == []


def test_nothing_is_asked_while_the_connection_is_down_and_a_lost_answer_is_asked_again() -> None:
    term = Terminal()
    term.joins(last=100, replay=10)
    term.scrollback.ask(10)
    term.scrollback.ask(10)  # waiting for the first
    term.scrollback.feed(Reconnecting(1, 1.0, "reset"))
    assert term.scrollback.settled(0.01)  # nothing will come: a script's quit need not wait
    assert term.scrollback.ask(10) == "* not in the room now: /older works once back"
    term.joins(last=100, replay=0, since=100)
    term.scrollback.ask(10)
    assert term.asked == [(91, 10), (91, 10)]  # asked again: the first answer never came
    term.scrollback.feed(Disconnected("the server went away", error=True))
    assert term.scrollback.ask(10) == "* not in the room now: /older works once back"


def test_an_error_for_the_request_lets_the_next_one_go_and_a_second_answer_adds_nothing() -> None:
    term = Terminal()
    term.joins(last=100, replay=10)
    term.scrollback.ask(10)
    term.scrollback.feed(Received(Error("bad_json", "not JSON")))  # not for the request
    assert not term.scrollback.settled(0.01)  # the request is still out
    term.scrollback.feed(Received(Error("history_unavailable", "later", "ab12-h3"), older=True))
    term.scrollback.ask(10)
    assert term.asked == [(91, 10), (91, 10)]
    assert term.answers(range(81, 91)) == [
        "* 10 messages from earlier:",
        *shown(*range(81, 91)),
        "* end of the earlier messages; /older for more",
    ]
    assert term.answers(range(81, 91)) == []  # the same again (a late answer): nothing new


def test_a_server_with_a_new_log_starts_afresh() -> None:
    term = Terminal()
    term.joins(last=500, replay=10)
    term.scrollback.feed(Reconnecting(1, 1.0, "reset"))
    term.joins(last=3, replay=3, since=0, log="L2")  # its seqs start again
    term.scrollback.ask(10)
    assert term.asked == []  # 1 is shown: the old log's 491 are no guide here


def test_an_older_typed_before_the_replay_is_shown_asks_for_what_is_older_than_it() -> None:
    """A script's ``/older`` is read while the printer is still at the welcome."""
    term = Terminal()
    term.joins(last=3000, replay=50, replayed=False)
    term.scrollback.ask(50)
    assert term.asked == [(2951, 50)]


def test_lines_missed_in_two_outages_load_newest_outage_first_and_say_so() -> None:
    term = Terminal()
    term.joins(last=10, replay=10)
    term.scrollback.feed(Reconnecting(1, 1.0, "reset"))
    term.joins(last=30, replay=5, since=10)  # 11 to 25 not replayed
    term.scrollback.feed(Reconnecting(1, 1.0, "reset"))
    term.joins(last=50, replay=5, since=30)  # 31 to 45 not replayed
    term.scrollback.ask(50)
    assert term.asked == [(46, 15)]
    assert term.answers(range(31, 46))[-1] == (
        "* end of those; that is all you missed then; 15 messages missed earlier: /older"
    )
    term.scrollback.ask(50)
    assert term.asked[-1] == (26, 15)
    assert term.answers(range(11, 26))[-1] == "* end of those; that is all you missed"


def test_missed_lines_a_server_lost_with_its_history_are_said_to_be_lost() -> None:
    term = Terminal()
    term.joins(last=40, replay=5, since=10)  # 11 to 35 not replayed
    term.scrollback.feed(Reconnecting(1, 1.0, "reset"))
    printed = term.joins(last=2, replay=2, since=0, log="L2")
    assert printed == [
        "* the 25 messages missed earlier and not shown are lost: the server lost its history"
    ]
    assert term.scrollback.ask(10) == "* no earlier messages on the server"  # 1 is shown


def test_pages_lost_with_the_connection_are_said_not_to_have_come() -> None:
    term = Terminal()
    term.joins(last=100, replay=10)
    assert term.scrollback.feed(Reconnecting(1, 1.0, "reset")) == []  # nothing was asked
    term.joins(last=100, replay=0, since=100)
    term.scrollback.ask(10)
    assert term.scrollback.feed(Reconnecting(1, 1.0, "reset")) == [
        "* the earlier messages asked for did not come: /older again"
    ]
    assert term.scrollback.feed(Reconnecting(2, 2.0, "refused")) == []  # said once


@pytest.mark.parametrize(
    ("missed", "replay", "skipped", "said"),
    [
        (6, 6, 0, "* back in the room: 6 missed messages restored"),
        (
            6,
            4,
            2,
            "* back in the room: 6 missed messages (the oldest 2 are not shown: /older shows them)",
        ),
        (6, 0, 6, "* back in the room: 6 missed messages (none are shown: /older shows them)"),
        (0, 0, 0, "* back in the room: nothing missed"),
        (
            30,
            10,
            0,
            "* back in the room: 30 missed messages, 20 of them no longer kept by the server",
        ),
        (
            30,
            10,
            15,
            "* back in the room: 30 missed messages, 5 of them no longer kept by the server (the "
            "oldest 15 of the rest are not shown: /older shows them)",
        ),
    ],
)
def test_the_return_says_what_was_missed_and_how_to_see_what_is_not_shown(
    missed: int, replay: int, skipped: int, said: str
) -> None:
    welcome = Welcome(ALICE, (), ServerInfo("lab", "1", 2), 50, replay, skipped, log="L")
    assert resume_notice(Connected(welcome, "h", 1, "TLSv1.3", "SHA256:x", True, missed)) == said
