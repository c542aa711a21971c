"""What the chat view shows: transcript lines, with a style for each part, and who is here."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from chatsecure.client.core import clock, safe_paragraph, safe_text
from chatsecure.protocol import limits
from chatsecure.protocol.messages import Peer

NEW_LINE = " ↵ "
"""Where a message of several lines (a pasted paragraph) breaks, in the window: each message
is one line of the transcript there."""

MAX_TRANSCRIPT_LINES = 5000
"""Lines the transcript keeps while the user follows the newest: older ones are dropped from
the top, and come back by scrolling up (``history`` pages)."""
MAX_SCROLLBACK_LINES = 2 * MAX_TRANSCRIPT_LINES
"""Lines the transcript may hold while the user reads older ones: no page is loaded past it,
and live lines then drop the oldest anyway."""

TEXT_SHOWN = limits.MAX_TEXT
"""Characters of one text from the server (a line said, the message of an error or a notice)
that the window shows, then how many more there are. A server refuses longer lines by default
(``--max-text``); one run without that limit, or a hostile one, may send a million, and Tk
lays out a line of 100,000 characters in a third of a second, of a million (no spaces) in
half a minute, the window frozen meanwhile."""
NAME_SHOWN = 100
"""Characters of a name from the server (a nick, an address, the server's name, a reason or
code) that the window shows: a nick has at most ``MAX_NICK``, an address about 50."""


def shown(text: str, limit: int, joiner: str | None = None) -> str:
    """``text`` from the server, as the window shows it: made safe (``safe_text``; with a
    ``joiner``, ``safe_paragraph``) and, past ``limit`` characters, cut there and followed by
    how many more it has."""

    def safe(part: str) -> str:
        return safe_text(part) if joiner is None else safe_paragraph(part, joiner)

    head = text[:limit]
    said = safe(head)
    if len(said) > limit:  # escapes made it longer: fewer of its characters fit, each whole
        size = kept = 0
        for char in head:
            size += len(safe(char))  # (alone, never shorter than in the whole)
            if size > limit:
                break
            kept += 1
        head = head[:kept]
        said = safe(head)
    more = len(text) - len(head)
    if not more:
        return said
    return f"{said}… ({more:,} more character{'' if more == 1 else 's'})"


def shown_peer(peer: Peer) -> str:
    """``nick (addr)``, as the window shows them (``shown``, each a name)."""
    return f"{shown(peer.nick, NAME_SHOWN)} ({shown(peer.addr, NAME_SHOWN)})"


LineKind = Literal["chat", "own", "pending", "history", "join", "leave", "error", "info", "gap"]
"""``pending``: an own line the server has not stored yet; ``history``: a line said before we
came (or while we were away), replayed or loaded by scrolling up; ``gap``: where missed lines
that the replay left out belong (``LogPaging.gaps``), until they are loaded."""

LEAVE_REASONS = {  # every reason a server sends (protocol.codes.LEAVE_REASONS); others shown raw
    "quit": "left",
    "closed": "left (connection closed)",
    "timeout": "left (timed out)",
    "error": "left (connection broken)",
    "slow_consumer": "was dropped (too far behind reading)",
    "flooding": "was dropped for flooding",
    "frame_too_long": "was dropped (sent an over-long frame)",
    "replaced": "left (reconnecting)",
    "node_lost": "left (their server is gone)",
}


@dataclass(frozen=True, slots=True)
class Line:
    """One transcript line. ``segments`` says how to style each part."""

    kind: LineKind
    stamp: str
    text: str
    nick: str | None = None
    addr: str | None = None
    ref: str | None = None
    """For an own line: the ref it was sent with, so that ``Sent`` can replace ``pending``."""
    older: bool = False
    """Loaded by scrolling up: it goes above every line shown."""
    gap: int = 0
    """Loaded into gap ``gap`` (``Gap.id``), or for a ``gap`` line, the gap it marks."""
    seq: int = 0
    """The stored line's ``seq``; 0 for notices and for servers that keep no log."""
    unsent: str | None = None
    """For the notice of a line the server refused: its whole text, to offer back."""
    divider: int = 0
    """On the notice above the lines said while the user was away ("new since you left"):
    how many of them the replay brings. If they fill more than the view, the window shows
    them from this notice down rather than only the newest."""

    def segments(self) -> tuple[tuple[str, str], ...]:
        """(text, style) pairs; styles are ``time``, ``nick``, ``addr`` and ``body``."""
        if self.kind == "gap":
            return ((self.text, "body"),)
        parts: list[tuple[str, str]] = [(f"[{self.stamp}] ", "time")]
        if self.nick is None:
            parts.append((self.text, "body"))
            return tuple(parts)
        nick, addr = shown(self.nick, NAME_SHOWN), shown(self.addr or "", NAME_SHOWN)
        who = [(nick, "nick"), (f" ({addr})", "addr")]
        if self.kind in {"chat", "own", "pending", "history"}:
            parts += [*who, (": ", "body"), (shown(self.text, TEXT_SHOWN, NEW_LINE), "body")]
        else:
            arrow = "→ " if self.kind == "join" else "← "
            parts += [(arrow, "body"), *who, (f" {self.text}", "body")]
        return tuple(parts)

    def __str__(self) -> str:
        return "".join(text for text, _ in self.segments())


def chat_line(peer: Peer, text: str, ts: float | None = None, *, own: bool = False) -> Line:
    return Line("own" if own else "chat", clock(ts), text, peer.nick, peer.addr)


def notice(kind: Literal["info", "error"], text: str, ts: float | None = None) -> Line:
    return Line(kind, clock(ts), text)


# --- who is here ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RosterRow:
    peer_id: str
    text: str
    me: bool


@dataclass(frozen=True, slots=True)
class RosterEdit:
    """One change to the list of who is here, as a list widget makes it: ``row`` put in at
    ``index``, or (``row`` None) the row at ``index`` deleted."""

    index: int
    row: RosterRow | None


EDITS_KEPT = 1000
"""Changes the roster keeps for the window to make one by one; past that many, it draws the
list anew (a storm of joins: one redraw costs less than thousands of edits)."""

_Key = tuple[bool, str, str]
"""Where a peer goes in the list: you first, then by nick (then id, so that no two tie)."""


class Roster:
    """The people in the room, as the welcome, joins and leaves say; and, for a list that
    shows them, what changed since it last looked (``take_edits``): in a room of thousands,
    redrawing the whole list for each join (let alone each line said) takes the window's
    time."""

    def __init__(self) -> None:
        self.me: Peer | None = None
        self._peers: dict[str, Peer] = {}
        self._order: list[_Key] = []
        """The keys of ``rows()``, in order."""
        self._edits: list[RosterEdit] | None = None
        """What changed since ``take_edits`` last gave it; None: the list must be drawn anew."""

    def reset(self, me: Peer | None, peers: Iterable[Peer] = ()) -> None:
        self.me = me
        self._peers = {p.id: p for p in peers}
        if me is not None:
            self._peers[me.id] = me
        self._order = sorted(self._key(p) for p in self._peers.values())
        self._edits = None

    def join(self, peer: Peer) -> None:
        old = self._peers.get(peer.id)
        if old == peer:
            return
        if old is None and len(self._peers) >= limits.MAX_ROOM:
            return  # (past it, a hostile server's joins are not kept)
        if old is not None:  # here already: under another nick, or from another address
            self._remove(old)
        self._peers[peer.id] = peer
        key = self._key(peer)
        index = bisect.bisect_left(self._order, key)
        self._order.insert(index, key)
        self._note(RosterEdit(index, self._row(peer)))

    def leave(self, peer: Peer) -> None:
        old = self._peers.pop(peer.id, None)
        if old is not None:
            self._remove(old)

    def __len__(self) -> int:
        return len(self._peers)

    @property
    def me_first(self) -> bool:
        """Whether the first of ``rows()`` is you (it is, unless the room has not got you)."""
        return bool(self._order) and not self._order[0][0]

    def peers(self) -> list[Peer]:
        """You first, then everyone else by nick."""
        return [self._peers[peer_id] for _, _, peer_id in self._order]

    def rows(self) -> list[RosterRow]:
        """``peers()`` as a list shows them."""
        return [self._row(peer) for peer in self.peers()]

    def take_edits(self) -> list[RosterEdit] | None:
        """The changes since the last call, in order: made one by one to a list that showed
        ``rows()`` then, it shows ``rows()`` now. None: draw the list anew from ``rows()``
        (after ``reset``, or more than ``EDITS_KEPT`` changes)."""
        edits, self._edits = self._edits, []
        return edits

    def _remove(self, peer: Peer) -> None:
        index = bisect.bisect_left(self._order, self._key(peer))
        del self._order[index]
        self._note(RosterEdit(index, None))

    def _note(self, edit: RosterEdit) -> None:
        if self._edits is not None and len(self._edits) < EDITS_KEPT:
            self._edits.append(edit)
        else:
            self._edits = None

    def _key(self, peer: Peer) -> _Key:
        me_id = self.me.id if self.me is not None else None
        return (peer.id != me_id, peer.nick.casefold(), peer.id)

    def _row(self, peer: Peer) -> RosterRow:
        me = self.me is not None and peer.id == self.me.id
        return RosterRow(peer.id, shown_peer(peer) + ("  — you" if me else ""), me)
