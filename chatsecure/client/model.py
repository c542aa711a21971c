"""The desktop client's state machine: fed client events and what the user does, it says what
to show (which view, notices, banners, the status bar)."""

from __future__ import annotations

import enum
import heapq
import time
from dataclasses import dataclass, replace
from typing import Literal

from chatsecure.client.core import (
    MAX_RETRIES,
    NEVER_STORED,
    UNCONFIRMED,
    ClientEvent,
    Connected,
    Disconnected,
    NotSent,
    Queued,
    Received,
    Reconnecting,
    Sent,
    clock,
    is_help,
    is_quit,
    is_who,
    no_longer_kept,
    safe_paragraph,
    safe_text,
    sent_clock,
    short_fingerprint,
)
from chatsecure.client.form import ConnectRequest, FormField
from chatsecure.client.paging import Gap, LogPaging
from chatsecure.client.scrollback import older_command
from chatsecure.client.transcript import (
    LEAVE_REASONS,
    NAME_SHOWN,
    TEXT_SHOWN,
    Line,
    LineKind,
    Roster,
    notice,
    shown,
    shown_peer,
)
from chatsecure.protocol.codes import ErrorCode, NoticeCode
from chatsecure.protocol.messages import Chat, Error, HistoryEnd, Join, Leave, Shutdown, shows
from chatsecure.protocol.messages import Notice as ServerNotice
from chatsecure.tls.trust import TrustQuestion, host_port


def _without_blank_edges(text: str) -> str:
    """``text`` without blank lines before or after it (a paste that ends in a newline)."""
    if "\n" not in text and "\r" not in text:
        return text
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines)


HELP = (
    "quit or /quit leaves the room (so does Leave); older messages load as you scroll to the"
    " top of the chat, and the list beside it shows who is here. Any other line is sent as it"
    " is."
)
"""What ``/help`` (or the terminal's ``/older``, ``/who``) typed in the window says."""

HISTORY_RETRY = 10.0
"""Seconds after a refused history request before the next one goes."""
UNREADABLE = "Older messages cannot be loaded now: the server cannot read its history."
"""The banner while the server cannot read its history (``history_unavailable``)."""
HERE_NAMED = 50
"""People the line "Here: ..." names on joining a room (the rest are counted): the list of
who is here names them all."""


class Phase(enum.Enum):
    """Which view is shown and what it allows.

    ``CONNECT`` and ``CONNECTING`` show the connect view; ``CHAT``, ``RECONNECTING`` and
    ``ENDED`` (the connection is gone, the transcript stays readable) show the chat view.
    """

    CONNECT = "connect"
    CONNECTING = "connecting"
    CHAT = "chat"
    RECONNECTING = "reconnecting"
    ENDED = "ended"

    @property
    def view(self) -> Literal["connect", "chat"]:
        return "connect" if self in {Phase.CONNECT, Phase.CONNECTING} else "chat"


@dataclass(frozen=True, slots=True)
class Notice:
    """A message on the connect view: why the last attempt failed, or what is happening."""

    kind: Literal["info", "error"]
    text: str
    fields: frozenset[FormField] = frozenset()
    """The form fields it is about: editing one of them makes it stale."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What to do with the text typed in the message box."""

    send: str | None = None
    quit: bool = False
    line: Line | None = None
    clear: bool = False
    """Whether the message box should be emptied."""


_ADDRESS: frozenset[FormField] = frozenset({"host", "port"})
"""The fields a failed connection is about (its notice names the address)."""


def gap_text(gap: Gap) -> str:
    """What a gap's line in the transcript says."""
    if gap.gone:
        return f"⋯ {_gap_count(gap)}: no longer kept by the server ⋯"
    return f"⋯ {_gap_count(gap)}: they load as you scroll here ⋯"


def gap_full_text(gap: Gap) -> str:
    """What a gap's line says while the transcript holds all it may (nothing loads)."""
    return f"⋯ {_gap_count(gap)}: not loaded, the window holds all it can ⋯"


QUOTED_LINES = 3
"""How many unsent lines the notice after leaving quotes (each cut to ``QUOTED_LENGTH``)."""
QUOTED_LENGTH = 80


def _quoted(texts: list[str]) -> str:
    """`` (“one”, “two”)``: the lines left unsent, for the user to say again if need be."""
    if not texts:
        return ""
    shown = [safe_paragraph(text, " ↵ ") for text in texts[:QUOTED_LINES]]
    end = QUOTED_LENGTH - 1
    cut = [text if len(text) <= QUOTED_LENGTH else text[:end] + "…" for text in shown]
    more = len(texts) - len(cut)
    return f" ({', '.join(f'“{text}”' for text in cut)}{f' and {more} more' if more else ''})"


def full_text(lines: int) -> str:
    """The top line of a transcript that holds all it may (``lines``) while the server has
    older lines."""
    return (
        f"⋯ older messages not loaded: the window holds {lines:,} lines"
        " (the terminal client's /older shows them) ⋯"
    )


def _refused(message: str, code: str) -> str:
    """What the window says of an ``error`` from the server."""
    return f"The server refused: {shown(message, TEXT_SHOWN)} ({shown(code, NAME_SHOWN)})."


def _gap_count(gap: Gap) -> str:
    return f"{gap.missing} earlier missed message{'' if gap.missing == 1 else 's'}"


class ChatModel:
    """The desktop client's state: fed client events, it says what to show."""

    def __init__(self) -> None:
        self.phase = Phase.CONNECT
        self.roster = Roster()
        self.request: ConnectRequest | None = None
        self.connection: Connected | None = None
        self.notice: Notice | None = None
        self.form_errors: dict[FormField, str] = {}
        """What is wrong with each field of the connect form: from checking it, or the server."""
        self.banner: str | None = None
        """The chat view's warning while reconnecting, after the connection ended, or while
        the server cannot read its history (``UNREADABLE``)."""
        self._lost_reason = ""
        """Why the connection was lost, while reconnecting (attempts may fail otherwise)."""
        self.declined: TrustQuestion | None = None
        self.pending: dict[str, str] = {}
        """Own lines sent but not yet stored by the server, by ref."""
        self.paging = LogPaging()
        """The lines of the log shown, and the page of history loading (older lines at the
        top, missed ones into their gap's place)."""
        self._history_retry_at = 0.0
        """``time.monotonic()`` before which no history request goes: one was refused."""
        self._taken: str | None = None
        """The banner saying the nick asked for was taken, while it is up."""
        self._refused_gaps: set[int] = set()
        """Gaps whose request was refused since the window last asked (``refused_gaps``)."""

    # -- what the user did ---------------------------------------------------------------

    def invalid(self, errors: dict[FormField, str]) -> None:
        """The connect form did not pass its check: show why, next to each field."""
        self.form_errors = dict(errors)

    def edited(self, name: FormField) -> bool:
        """The user changed a field of the connect form: its error, and a notice about it, go.

        Returns whether anything shown changed.
        """
        stale = self.notice is not None and name in self.notice.fields
        if stale:
            self.notice = None
        return self.form_errors.pop(name, None) is not None or stale

    def connecting(self, request: ConnectRequest) -> None:
        self.form_errors = {}
        self.phase = Phase.CONNECTING
        self.request = request
        self.pending = {}
        self.connection = None
        self.declined = None
        self.banner = None
        self.roster.reset(None)
        where = host_port(request.host, request.port)
        self.notice = Notice("info", f"Connecting to {where}…")

    def cancelled(self) -> None:
        """The user gave up waiting for the connection."""
        self.phase = Phase.CONNECT
        self.notice = Notice("info", "Connection cancelled.")

    def left(self, unsent: list[str] | None = None) -> None:
        """The user quit (or went back after the connection ended), leaving the own lines
        ``unsent`` not stored yet (by default those pending)."""
        # Lines left without waiting for their acks (Leave asked twice) are not pending in the
        # next connection: nothing would ever acknowledge them there.
        texts = list(self.pending.values()) if unsent is None else unsent
        unconfirmed, self.pending = len(texts), {}
        if self.phase in {Phase.CHAT, Phase.RECONNECTING} and self.connection is not None:
            said = f"You left '{self.server_name}'."
            if unconfirmed:
                many = unconfirmed > 1
                lines, them = (f"{unconfirmed} lines", "them") if many else ("line", "it")
                said = (
                    f"You left '{self.server_name}' before your last {lines} "
                    f"{'were' if many else 'was'} stored: the room may not have {them}"
                    f"{_quoted(texts)}."
                )
            self.notice = Notice("info", said)
        self.phase = Phase.CONNECT
        self.banner = None
        self.roster.reset(None)

    def outgoing(self, text: str, ts: float | None = None) -> Outgoing:
        """Decide what typing ``text`` and pressing Enter does."""
        if is_quit(text):
            return Outgoing(quit=True, clear=True)
        if is_help(text) or is_who(text) or older_command(text) is not None:
            # The terminal's commands: told what does it here, never said to the room.
            return Outgoing(line=notice("info", HELP, ts), clear=True)
        if not shows(text):
            return Outgoing(clear=True)
        text = _without_blank_edges(text)
        if self.phase not in {Phase.CHAT, Phase.RECONNECTING} or self.roster.me is None:
            return Outgoing(line=notice("error", "Not connected: the message was not sent.", ts))
        if self.banner is not None and self.banner == self._taken:
            self.banner = None  # seen: the user speaks under the new nick
        # How long a text may be is the server's to say (text_too_long); the core refuses
        # what cannot be sent at all (Controller.submit). While reconnecting, the line waits
        # and goes out after the reconnect: it shows as pending (``Queued``) meanwhile.
        return Outgoing(send=text, clear=True)

    def wants_older(self, limit: int | None = None) -> int | None:
        """The ``before`` of a request for up to ``limit`` older lines, if one should be made
        now."""
        if self.phase is not Phase.CHAT or time.monotonic() < self._history_retry_at:
            return None
        return self.paging.wants_older(limit)

    def wants_more_older(self) -> bool:
        """Whether the server may have lines older than those shown (asked for or not)."""
        oldest = self.paging.oldest_seq
        return self.phase is Phase.CHAT and not self.paging.all_loaded and (oldest or 0) > 1

    def wants_gap(self, gap_id: int, limit: int | None = None) -> int | None:
        """The ``before`` of a request for up to ``limit`` lines of gap ``gap_id``, if one
        should be made now."""
        if self.phase is not Phase.CHAT or time.monotonic() < self._history_retry_at:
            return None
        return self.paging.wants_gap(gap_id, limit)

    def refused_gaps(self) -> set[int]:
        """The gaps whose request was refused since the last call: the window, which asks
        for a page of a gap once each time it comes in view, asks again for these while they
        stay in view (after the pause, as at the top)."""
        refused, self._refused_gaps = self._refused_gaps, set()
        return refused

    # -- what the network said -----------------------------------------------------------

    def apply(self, event: ClientEvent, ts: float | None = None) -> list[Line]:
        """Take one client event; return the transcript lines it adds."""
        match event:
            case Connected():
                return self._connected(event, ts)
            case Received(message=Chat() as chat, replayed=replayed, older=older):
                return self._chat(chat, ts, replayed=replayed, older=older)
            case Received(message=Error() as error, older=True):
                return self._history_refused(error, ts)
            case Received(message=message):
                return self._received(message, ts)
            case Reconnecting():
                return self._reconnecting(event, ts)
            case Disconnected(reason=reason, error=error, code=code):
                return self._disconnected(reason, error, code, ts)
            case Queued(ref=ref, text=text) if self.roster.me is not None:
                self.pending[ref] = text
                me = self.roster.me
                return [Line("pending", clock(ts), text, me.nick, me.addr, ref=ref)]
            case Sent(ref=ref, text=text, seq=seq, ts=sent) if self.roster.me is not None:
                self.pending.pop(ref, None)
                self.paging.saw(seq)
                me = self.roster.me
                return [Line("own", sent_clock(sent, ts), text, me.nick, me.addr, ref=ref, seq=seq)]
            case NotSent(text=text, ref=ref, why=why):
                if ref is None:  # told by text alone: the first line waiting with it
                    ref = next((r for r, waiting in self.pending.items() if waiting == text), None)
                self.pending.pop(ref or "", None)
                # All of it: the transcript is the only place left that holds it.
                why = shown(why, TEXT_SHOWN)  # (a refusal quotes the server's message)
                said = f"{why[:1].upper()}{why[1:]}: {safe_text(text)}"
                refused = why not in {NEVER_STORED, UNCONFIRMED}
                # In place of its pending line; a refused text is offered back to edit.
                return [Line("error", clock(ts), said, ref=ref, unsent=text if refused else None)]
        return []

    def _reconnecting(self, event: Reconnecting, ts: float | None) -> list[Line]:
        """One transcript line per outage; the banner follows each attempt."""
        first = self.phase is not Phase.RECONNECTING
        if first:
            self.phase = Phase.RECONNECTING
            self._lost_reason = event.reason
        lost = f"Connection lost ({shown(self._lost_reason, TEXT_SHOWN)})"
        if event.reason != self._lost_reason:  # why the last attempt failed, if not the same
            lost += f"; last try: {shown(event.reason, TEXT_SHOWN)}"
        self.banner = (
            f"{lost}. Reconnecting in {event.delay:.0f} s, attempt {event.attempt} of "
            f"{MAX_RETRIES}…"
        )
        said = f"Connection lost ({shown(event.reason, TEXT_SHOWN)})."
        return [notice("error", said, ts)] if first else []

    def _connected(self, event: Connected, ts: float | None) -> list[Line]:
        again = self.phase is Phase.RECONNECTING
        self.phase = Phase.CHAT
        self.connection = event
        self.banner = None
        self.notice = None
        self._history_retry_at = 0.0  # (a refusal on the last connection says nothing here)
        welcome = event.welcome
        # The nick asked for: after a drop, the one given before (the client asks for it).
        me = self.roster.me
        request = self.request
        asked = me.nick if again and me is not None else request.nick if request else None
        self.roster.reset(welcome.you, welcome.peers)
        you = welcome.you.nick
        verb = "Reconnected to" if again else "Connected to"
        # Lines still pending stay so: the core sends them again and each comes back as Sent.
        lines = [
            notice(
                "info",
                f"{verb} '{self.server_name}' at {self.where} as {shown(you, NAME_SHOWN)} "
                f"({event.tls_version}).",
                ts,
            )
        ]
        # An answer on its way was lost with the connection.
        abandoned, gap = self.paging.connected(
            welcome, again=again, resumed=event.resumed, missed=event.missed
        )
        if asked is not None and welcome.you.nick != asked:
            taken = (
                f"The nick '{shown(asked, NAME_SHOWN)}' was taken; you are "
                f"'{shown(you, NAME_SHOWN)}'."
            )
            lines.append(notice("info", taken, ts))
            if welcome.replay:  # the replay that follows pushes that line out of view at once
                self.banner = self._taken = taken
        # (The first by nick: sorting a room of 200,000 to name 50 would take the window's time.)
        others = heapq.nsmallest(HERE_NAMED, welcome.peers, key=lambda p: p.nick.casefold())
        here = ", ".join(shown_peer(p) for p in others)
        if (more := len(welcome.peers) - len(others)) > 0:
            here += f" and {more:,} more"
        lines.append(notice("info", f"Here: {here}." if here else "Nobody else is here yet.", ts))
        # Last, right above the lines it introduces (the replay follows the welcome).
        if event.resumed:
            said = notice("info", self._resume_text(event, again), ts)
            # (With lines left out, the window opens at the newest: the gap loads upwards.)
            lines.append(replace(said, divider=welcome.replay if gap is None else 0))
            if gap is not None:
                lines.append(Line("gap", "", gap_text(gap), gap=gap.id))
        elif welcome.replay:
            lines.append(notice("info", "Earlier in this room:", ts))
        return [Line("gap", "", gap_text(gap), gap=gap.id) for gap in abandoned] + lines

    @staticmethod
    def _resume_text(event: Connected, again: bool) -> str:
        missed, skipped, gone = event.missed, event.welcome.skipped, no_longer_kept(event)
        if not missed:
            said = "Nothing was said while you were away."
        elif again:
            restored = "" if gone else " restored"  # (not all of them)
            said = f"{missed} missed message{'' if missed == 1 else 's'}{restored}."
        else:
            said = f"{missed} message{'' if missed == 1 else 's'} while you were away."
        if gone:
            said += f" {gone} of them {'is' if gone == 1 else 'are'} no longer kept by the server."
        if skipped:
            rest = " of the rest" if gone else ""
            said += f" The oldest {skipped}{rest} load as you scroll up to them."
        if event.resent:
            lines = "line" if event.resent == 1 else f"{event.resent} lines"
            said += f" Sending your waiting {lines}."
        return said + (" ─── new since you left ───" if missed else "")

    def _chat(self, chat: Chat, now: float | None, *, replayed: bool, older: bool) -> list[Line]:
        if older:  # shown with the rest of its page, once it is complete
            self.paging.line(chat)
            return []
        self.paging.saw(chat.seq)
        return [self._line(chat, now, history=replayed)]

    def _line(self, chat: Chat, now: float | None, *, history: bool) -> Line:
        own = self.roster.me is not None and chat.sender.id == self.roster.me.id
        kind: LineKind = "history" if history else "own" if own else "chat"
        sender, stamp = chat.sender, sent_clock(chat.ts, now)
        return Line(kind, stamp, chat.text, sender.nick, sender.addr, seq=chat.seq)

    def _page_end(self, end: HistoryEnd, now: float | None) -> list[Line]:
        """The answer to a history request is complete: its lines, and the gap's line anew."""
        page = self.paging.page_end(end)
        if page is None:
            return []
        if self.banner == UNREADABLE:
            self.banner = None
        lines = [self._line(chat, now, history=True) for chat in page.lines]
        gap = page.gap
        if gap is None:
            return [replace(line, older=True) for line in lines]
        # The gap's line says what is left, or goes: nothing more loads there.
        text = gap_text(gap) if gap.missing else ""
        return [*(replace(line, gap=gap.id) for line in lines), Line("gap", "", text, gap=gap.id)]

    def _history_refused(self, error: Error, ts: float | None) -> list[Line]:
        """The server refused our history request: no answer comes to it."""
        if asked := self.paging.refused():
            self._refused_gaps.add(asked)
        # Not at once again (the top of the chat is still in view): a server that cannot read
        # its history now would be asked, and answer, in a loop.
        self._history_retry_at = time.monotonic() + HISTORY_RETRY
        if error.code == ErrorCode.HISTORY_UNAVAILABLE:
            self.banner = UNREADABLE  # above the chat: the user is at its top, not its end
            return []
        return [notice("error", _refused(error.message, error.code), ts)]

    def _received(self, message: object, ts: float | None) -> list[Line]:
        match message:
            case HistoryEnd():
                return self._page_end(message, ts)
            case Join(peer=peer):
                self.roster.join(peer)
                return [Line("join", clock(ts), "joined", peer.nick, peer.addr)]
            case Leave(peer=peer, reason=reason):
                self.roster.leave(peer)
                said = LEAVE_REASONS.get(reason) or f"left ({shown(reason, NAME_SHOWN)})"
                return [Line("leave", clock(ts), said, peer.nick, peer.addr)]
            case Error(code=code, message=text):
                return [notice("error", _refused(text, code), ts)]
            case ServerNotice(code=code, message=text):
                if code == NoticeCode.CLUSTER_AVAILABLE and self.banner == UNREADABLE:
                    self.banner = None  # (the shared log is back: history reads again)
                kind: Literal["info", "error"] = (
                    "error" if code == NoticeCode.CLUSTER_UNAVAILABLE else "info"
                )
                return [notice(kind, shown(text, TEXT_SHOWN), ts)]
            case Shutdown():
                return [notice("error", "The server is shutting down.", ts)]
        return []

    def _disconnected(
        self, reason: str, error: bool, code: str | None, ts: float | None
    ) -> list[Line]:
        if self.phase is Phase.CONNECTING:
            self.phase = Phase.CONNECT
            if code == ErrorCode.AUTH_FAILED:
                self._password_refused()
            else:
                self.notice = Notice("error", self._failure(reason), _ADDRESS)
            return []
        if self.phase in {Phase.CHAT, Phase.RECONNECTING}:
            self.phase = Phase.ENDED
            self.pending.clear()  # each unsent line was told as NotSent before this
            self.banner = f"Disconnected: {shown(reason, TEXT_SHOWN).rstrip('.')}."  # (one stop)
            # (The list stays, as who was there when the connection was last up.)
            return [notice("error" if error else "info", self.banner, ts)]
        return []

    def _password_refused(self) -> None:
        where = self.where
        if self.request is not None and self.request.password is not None:
            self.form_errors = {"password": "Wrong password: check it and try again."}
            text = f"Not connected: {where} did not accept the password."
        else:
            self.form_errors = {"password": "This room needs a password."}
            text = f"Not connected: {where} asks for a room password. Type it and connect again."
        self.notice = Notice("error", text, frozenset({"password"}))

    def _failure(self, reason: str) -> str:
        where = self.where
        declined = self.declined
        if declined is not None and declined.changed:
            return (
                f"Not connected: the certificate of {where} has changed and you kept the "
                "old pin. Ask the server's owner whether they made a new certificate."
            )
        if declined is not None:
            return f"Not connected: you did not trust {where}."
        reason = shown(reason, TEXT_SHOWN)
        if where.lower() in reason.lower():  # (it names each address it tried)
            return f"Could not connect: {reason}"
        return f"Could not connect to {where}: {reason}"

    # -- what to show --------------------------------------------------------------------

    @property
    def server_name(self) -> str:
        """The name the server gave itself, made safe to show; else its address."""
        conn = self.connection
        name = conn.welcome.server.name if conn is not None else ""
        return shown(name, NAME_SHOWN) if name else self.where

    @property
    def where(self) -> str:
        if self.request is None:
            return "?"
        return host_port(self.request.host, self.request.port)

    def status(self) -> str:
        """The status bar: server, nick, TLS version and a short fingerprint."""
        match self.phase:
            case Phase.CONNECT:
                return "Not connected"
            case Phase.CONNECTING:
                return f"Connecting to {self.where}…"
        conn = self.connection
        if conn is None:  # pragma: no cover - chat phases always have a connection
            return self.where
        me = self.roster.me or conn.welcome.you
        parts = [
            f"{self.server_name} at {self.where}",
            f"you are {shown(me.nick, NAME_SHOWN)}",
            conn.tls_version,
            short_fingerprint(conn.fingerprint),
        ]
        if self.phase is Phase.RECONNECTING:
            parts.insert(0, "Reconnecting…")
        elif self.phase is Phase.ENDED:
            parts.insert(0, "Disconnected")
        else:
            parts.append(f"{len(self.roster)} here")
        return " · ".join(parts)

    def title(self) -> str:
        conn = self.connection
        if self.phase.view == "chat" and conn is not None:
            return f"{shown(conn.welcome.you.nick, NAME_SHOWN)} @ {self.server_name} — chatsecure"
        return "chatsecure"
