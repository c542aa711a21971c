"""``/older`` in the terminal client: the earlier lines of the room's log, a page at a time.

A terminal cannot put lines above those it printed, so a page comes below, framed by a line
that says what it is. Lines missed while away that the replay left out come first, newest page
first (the ones just before those shown), then the lines before the oldest shown. No line is
printed twice: ``LogPaging`` knows which ones were shown.

The input side asks (``ask``) and the printer's thread feeds the client's events (``feed``),
hence the lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from chatsecure.client.core import (
    ClientEvent,
    Connected,
    Disconnected,
    Received,
    Reconnecting,
    Sent,
    format_message,
)
from chatsecure.client.paging import LogPaging, Page
from chatsecure.protocol import limits
from chatsecure.protocol.messages import Chat, Error, HistoryEnd

COMMAND = "/older"
NOTHING_EARLIER = "* no earlier messages on the server"
PAGE = 50
"""Lines ``/older`` asks for without a number."""
USAGE = (
    f"* {COMMAND} [N] prints up to N earlier lines (1 to {limits.HISTORY_PAGE_MAX}; {PAGE} if"
    " no N is given)"
)
"""What a wrong ``/older`` prints."""


def older_command(text: str) -> int | str | None:
    """The lines a typed ``/older [N]`` asks for, a usage message if N is wrong, or None if
    ``text`` is not the command (it is sent as a chat line)."""
    words = text.split()
    if not words or words[0].lower() != COMMAND or "\n" in text.strip():
        return None  # (a paste of several lines is a message, whatever its first word)
    if len(words) == 1:
        return PAGE
    # ASCII digits only: str.isdigit() also takes "²", which int() does not.
    if len(words) == 2 and re.fullmatch("[0-9]{1,3}", words[1]):
        count = int(words[1])
        if 1 <= count <= limits.HISTORY_PAGE_MAX:
            return count
    return USAGE


def _messages(count: int) -> str:
    return f"{count} message{'' if count == 1 else 's'}"


def _the(count: int) -> str:
    """``the message``, ``the 5 messages``."""
    return "the message" if count == 1 else f"the {count} messages"


class Scrollback:
    """What ``/older`` asks for next, and how the answer is printed.

    ``request(before, limit)`` sends a ``history`` request (``ChatClient.request_history``).
    One goes at a time: an ``/older`` typed (or piped in) while one is out waits its turn."""

    def __init__(self, request: Callable[[int | None, int], object]) -> None:
        self._request = request
        self._paging = LogPaging()
        self._changed = threading.Condition()
        self._joined = False
        self._again = False
        self._keeps_log = False
        """Whether the server keeps a log (v2, not ``--history 0``): else it has no history."""
        self._waiting: list[int] = []
        """The limits of the ``/older`` commands waiting for the request out to end."""

    def ask(self, limit: int) -> str | None:
        """``/older``: make the request, or queue it; else what to print instead."""
        with self._changed:
            if not self._joined:
                return f"* not in the room now: {COMMAND} works once back"
            if not self._keeps_log:
                return "* this server keeps no history"
            if self._paging.asking:
                self._waiting.append(limit)
                return None
            return self._next(limit)

    def settled(self, timeout: float) -> bool:
        """Wait until no ``/older`` is loading (a script's ``/older`` then ``quit``)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not (self._paging.asking or self._waiting) or not self._joined, timeout
            )

    def feed(self, event: ClientEvent) -> list[str]:
        """Take one client event; return the lines to print for it (a page, when whole)."""
        with self._changed:
            lines = self._fed(event)
            if self._waiting and not self._paging.asking and self._joined:
                said = self._next(self._waiting.pop(0))
                if said is not None:
                    lines.append(said)
                    self._waiting.clear()  # (nothing more to load: they would say the same)
            self._changed.notify_all()
            return lines

    def _next(self, limit: int) -> str | None:
        """Send the request for the next page (missed lines first), or say why there is none."""
        paging = self._paging
        for gap in sorted(paging.gaps.values(), key=lambda gap: gap.id, reverse=True):
            asked = min(limit, gap.missing)
            before = paging.wants_gap(gap.id, asked)
            if before is not None:
                self._request(before, asked)
                return None
        before = paging.wants_older(limit)
        if before is None:
            return NOTHING_EARLIER
        self._request(before, limit)
        return None

    def _fed(self, event: ClientEvent) -> list[str]:
        paging = self._paging
        match event:
            case Connected(welcome=welcome, resumed=resumed, missed=missed):
                self._keeps_log = welcome.log is not None
                abandoned, _ = paging.connected(
                    welcome, again=self._again, resumed=resumed, missed=missed
                )
                self._joined = self._again = True
                return [
                    f"* {_the(gap.missing)} missed earlier and not shown"
                    f" {'is' if gap.missing == 1 else 'are'} lost: the server lost its history"
                    for gap in abandoned
                    if gap.missing
                ]
            case Reconnecting() | Disconnected():
                lost = paging.asking or self._waiting
                self._joined = False
                paging.refused()  # an answer on its way is lost with the connection
                self._waiting.clear()
                if lost:
                    return [f"* the earlier messages asked for did not come: {COMMAND} again"]
            case Received(message=Chat() as chat, older=True):
                paging.line(chat)
            case Received(message=Chat(seq=seq)) | Sent(seq=seq):
                paging.saw(seq)
            case Received(message=HistoryEnd() as end):
                page = paging.page_end(end)
                return [] if page is None else self._printed(page)
            case Received(message=Error(), older=True) if paging.asking:
                paging.refused()  # (the error itself is printed as any other)
        return []

    def _printed(self, page: Page) -> list[str]:
        """The header of a page, then (by the caller) its lines, then what is left."""
        lines = page.lines
        gap = page.gap
        them = "it" if len(lines) == 1 else "them"
        if gap is None:
            if not lines:
                return [NOTHING_EARLIER]
            more = (
                f"there are none before {them} on the server"
                if self._paging.all_loaded
                else f"{COMMAND} for more"
            )
            return [
                f"* {_messages(len(lines))} from earlier:",
                *lines_of(lines),
                f"* end of the earlier messages; {more}",
            ]
        if gap.missing and gap.gone:
            kept = "is no longer kept" if gap.missing == 1 else "are no longer kept"
            before = f" before {them}" if lines else ""
            left = f"{_the(gap.missing)} missed{before} {kept} by the server"
        elif gap.missing:
            left = f"{_messages(gap.missing)} missed before {them}: {COMMAND}"
        elif other := sum(g.missing for g in self._paging.gaps.values() if not g.gone):
            left = f"that is all you missed then; {_messages(other)} missed earlier: {COMMAND}"
        else:
            left = "that is all you missed"
        if not lines:
            return [f"* {left}"]
        return [
            f"* {_messages(len(lines))} you missed (the replay left {them} out):",
            *lines_of(lines),
            f"* end of those; {left}",
        ]


def lines_of(chats: list[Chat]) -> list[str]:
    """Chat lines as the terminal prints them."""
    return [line for chat in chats if (line := format_message(chat)) is not None]
