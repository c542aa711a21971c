"""Unread counts, mentions of the user's nick and the urgency they cause, without a screen."""

from __future__ import annotations

import pytest

from chatsecure.client.attention import Attention, is_mention, mentions
from chatsecure.client.transcript import Line, chat_line, notice
from chatsecure.protocol.messages import Peer

ALICE = Peer("1", "alice", "192.168.1.20")
BOB = Peer("2", "bob", "192.168.1.21")
T = 1_700_000_000.0


@pytest.mark.parametrize(
    "text",
    [
        "alice",
        "hi alice",
        "Alice: are you there?",
        "ALICE!",
        "ping @alice",
        "(alice)",
        "thanks, alice.",
        "alice's turn",
    ],
)
def test_the_nick_as_a_word_in_any_case_is_a_mention(text: str) -> None:
    assert mentions(text, "alice")


@pytest.mark.parametrize(
    "text",
    ["", "malice", "alices", "alice_2 said so", "ali ce", "al1ce", "bob", "alicealice"],
)
def test_the_nick_inside_another_word_is_not_a_mention(text: str) -> None:
    assert not mentions(text, "alice")


def test_nicks_with_punctuation_or_other_scripts_are_matched_as_written() -> None:
    assert mentions("ask -x- about it", "-x-")
    assert mentions("ask -X-", "-x-")
    assert not mentions("ask -y-", "-x-")
    assert mentions("a.b, look", "a.b")
    assert not mentions("aab, look", "a.b")  # the dot is a dot, not any character
    assert mentions("ÉLODIE, viens", "élodie")
    assert not mentions("élodies", "élodie")


def test_no_nick_is_never_mentioned() -> None:
    assert not mentions("anything at all", None)
    assert not mentions("anything at all", "")
    assert not mentions("   ", "  ")


def test_only_what_others_say_can_mention_the_user() -> None:
    assert is_mention(chat_line(BOB, "alice, look", T), "alice")
    assert not is_mention(chat_line(ALICE, "I am alice", T, own=True), "alice")
    assert not is_mention(notice("info", "Connected as alice.", T), "alice")
    assert not is_mention(Line("join", "12:00:00", "joined", "alice", "10.0.0.1"), "alice")


def test_lines_from_the_log_that_name_the_user_are_mentions_but_do_not_call() -> None:
    missed = Line("history", "12:00:00", "alice, are you there?", "bob", "10.0.0.2", seq=7)
    own = Line("history", "12:00:00", "alice here", "Alice", "10.0.0.1", seq=8)
    assert is_mention(missed, "alice")  # said while she was away: highlighted
    assert not is_mention(own, "alice")
    attention = Attention(focused=False)
    assert attention.arrived([missed, own], "alice") == [True, False]
    assert not attention.urgent  # said before: the window does not call for it


def lines(*texts: str) -> list[Line]:
    return [chat_line(BOB, text, T) for text in texts]


def test_unread_lines_are_counted_only_while_the_window_has_no_focus() -> None:
    attention = Attention()
    attention.arrived(lines("one", "two"), "alice")
    assert attention.unread == 0
    assert attention.title("alice @ lab — chatsecure") == "alice @ lab — chatsecure"

    assert not attention.focus(False)  # nothing unread yet: the title stays as it is
    attention.arrived(lines("three"), "alice")
    attention.arrived([*lines("four", "five"), chat_line(ALICE, "mine", T, own=True)], "alice")
    attention.arrived([notice("info", "bob left", T)], "alice")  # only what people say counts
    assert attention.unread == 3
    assert attention.title("alice @ lab — chatsecure") == "(3) alice @ lab — chatsecure"
    assert not attention.urgent

    assert attention.focus(True)  # the title must change back
    assert attention.unread == 0
    assert attention.title("alice @ lab — chatsecure") == "alice @ lab — chatsecure"
    assert not attention.focus(True)


def test_a_mention_while_unfocused_makes_the_window_urgent_until_focused() -> None:
    attention = Attention(focused=False)
    named = attention.arrived(lines("hello", "Alice, look", "malice"), "alice")
    assert named == [False, True, False]
    assert attention.urgent
    assert attention.unread == 3
    attention.arrived(lines("still there?"), "alice")
    assert attention.urgent  # stays until the user looks
    assert attention.focus(True)
    assert not attention.urgent


def test_a_mention_while_focused_is_highlighted_but_not_urgent() -> None:
    attention = Attention(focused=True)
    assert attention.arrived(lines("alice?"), "alice") == [True]
    assert not attention.urgent
    assert attention.unread == 0


def test_reset_forgets_what_was_unread() -> None:
    attention = Attention(focused=False)
    attention.arrived(lines("alice"), "alice")
    attention.reset()
    assert attention.unread == 0
    assert not attention.urgent
    assert not attention.focused  # still without focus: later lines count again
    attention.arrived(lines("again"), "alice")
    assert attention.unread == 1
