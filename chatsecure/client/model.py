"""The desktop client's state machine: fed client events and what the user does, it says what
to show (which view, notices, banners, the status bar)."""

from __future__ import annotations

import enum
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
    describe,
    is_quit,
    safe_text,
    sent_clock,
    short_fingerprint,
)
from chatsecure.client.form import ConnectRequest, FormField
from chatsecure.client.transcript import LEAVE_REASONS, Line, LineKind, Roster, notice
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


@dataclass(slots=True)
class Gap:
    """Lines missed while away that the replay left out (``skipped``): the seqs after
    ``after`` and before ``before``. They are loaded a page at a time, newest first, into
    their place in the transcript (below the gap's own line) as the user scrolls to it."""

    id: int
    after: int
    before: int
    gone: bool = False
    """The server keeps none of the lines left: they were trimmed from its log."""

    @property
    def missing(self) -> int:
        return max(self.before - self.after - 1, 0)

    @property
    def text(self) -> str:
        """What the gap's line in the transcript says."""
        if self.gone:
            return f"⋯ {self._count}: no longer kept by the server ⋯"
        return f"⋯ {self._count}: they load as you scroll here ⋯"

    @property
    def full_text(self) -> str:
        """What the gap's line says while the transcript holds all it may (nothing loads)."""
        return f"⋯ {self._count}: not loaded, the window holds all it can ⋯"

    @property
    def _count(self) -> str:
        return f"{self.missing} earlier missed message{'' if self.missing == 1 else 's'}"


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
        """The chat view's warning while reconnecting or after the connection ended."""
        self._lost_reason = ""
        """Why the connection was lost, while reconnecting (attempts may fail otherwise)."""
        self.declined: TrustQuestion | None = None
        self.pending: dict[str, str] = {}
        """Own lines sent but not yet stored by the server, by ref."""
        self.oldest_seq: int | None = None
        """The oldest line shown, for loading older ones; None before any sequenced line."""
        self.all_loaded = False
        """The server has nothing older than ``oldest_seq``."""
        self.gaps: dict[int, Gap] = {}
        """Missed lines not in the transcript yet, by ``Gap.id`` (one per return that was
        not replayed whole)."""
        self._gap_ids = 0
        self._asked: int | None = None
        """The history request out (one at a time): 0 for older lines (the top of the
        transcript), else the id of the gap it fills."""
        self._asked_before = 0
        """Its ``before``: the ``history_end`` that answers it says the same."""
        self._page: list[Line] = []
        """The lines of the answer coming in: shown together once it ends, in one piece and
        in order."""
        self._answered = False
        """Whether the answer coming in brought any line, shown or not."""
        self._late = False
        """Lines came with no request out: the answer to one given up for lost, whose end
        must not be taken for the end of the next one's."""
        self._log: str | None = None
        """The log of the last welcome: another one numbers its lines afresh."""
        self.new_log = False
        """Back on a server that lost its log: the seqs of the lines shown count in the old
        one (the transcript forgets them, then sets this back)."""

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

    def left(self) -> None:
        """The user quit (or went back after the connection ended)."""
        if self.phase in {Phase.CHAT, Phase.RECONNECTING} and self.connection is not None:
            self.notice = Notice("info", f"You left '{self.server_name}'.")
        self.phase = Phase.CONNECT
        self.banner = None
        self.roster.reset(None)

    def outgoing(self, text: str, ts: float | None = None) -> Outgoing:
        """Decide what typing ``text`` and pressing Enter does."""
        if is_quit(text):
            return Outgoing(quit=True, clear=True)
        if not shows(text):
            return Outgoing(clear=True)
        text = _without_blank_edges(text)
        if self.phase not in {Phase.CHAT, Phase.RECONNECTING} or self.roster.me is None:
            return Outgoing(line=notice("error", "Not connected: the message was not sent.", ts))
        # How long a text may be is the server's to say (text_too_long); the core refuses
        # what cannot be sent at all (Controller.submit). While reconnecting, the line waits
        # and goes out after the reconnect: it shows as pending (``Queued``) meanwhile.
        return Outgoing(send=text, clear=True)

    def dropped_before(self, seq: int) -> None:
        """The transcript dropped its oldest lines: ``seq`` is the oldest stored line left
        (or, above it, a gap that still misses lines: those load there, not on top)."""
        for gap in self.gaps.values():
            seq = min(seq, gap.after + 1)
        self.oldest_seq = seq
        self.all_loaded = False

    def wants_older(self) -> int | None:
        """The ``before`` of a request for older lines, if one should be made now."""
        if self.phase is not Phase.CHAT or self._asked is not None or self.all_loaded:
            return None
        if self.oldest_seq is None or self.oldest_seq <= 1:
            return None
        self._asked, self._asked_before = 0, self.oldest_seq
        return self.oldest_seq

    def wants_gap(self, gap_id: int) -> int | None:
        """The ``before`` of a request for lines of gap ``gap_id``, if one should be made now."""
        gap = self.gaps.get(gap_id)
        if self.phase is not Phase.CHAT or self._asked is not None or gap is None:
            return None
        if gap.gone or not gap.missing:
            return None
        self._asked, self._asked_before = gap_id, gap.before
        return gap.before

    def forget_gap(self, gap_id: int) -> None:
        """The transcript dropped the gap's line (it grew too long): nothing loads there now."""
        self.gaps.pop(gap_id, None)

    # -- what the network said -----------------------------------------------------------

    def apply(self, event: ClientEvent, ts: float | None = None) -> list[Line]:
        """Take one client event; return the transcript lines it adds."""
        match event:
            case Connected():
                return self._connected(event, ts)
            case Received(message=Chat() as chat, replayed=replayed, older=older):
                return self._chat(chat, ts, replayed=replayed, older=older)
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
                self._saw(seq)
                me = self.roster.me
                return [Line("own", sent_clock(sent, ts), text, me.nick, me.addr, ref=ref, seq=seq)]
            case NotSent(text=text, ref=ref, why=why):
                if ref is None:  # told by text alone: the first line waiting with it
                    ref = next((r for r, waiting in self.pending.items() if waiting == text), None)
                self.pending.pop(ref or "", None)
                # All of it: the transcript is the only place left that holds it.
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
        lost = f"Connection lost ({self._lost_reason})"
        if event.reason != self._lost_reason:  # why the last attempt failed, if not the same
            lost += f"; last try: {event.reason}"
        self.banner = (
            f"{lost}. Reconnecting in {event.delay:.0f} s, attempt {event.attempt} of "
            f"{MAX_RETRIES}…"
        )
        return [notice("error", f"Connection lost ({event.reason}).", ts)] if first else []

    def _saw(self, seq: int) -> None:
        if seq and (self.oldest_seq is None or seq < self.oldest_seq):
            self.oldest_seq = seq

    def _connected(self, event: Connected, ts: float | None) -> list[Line]:
        again = self.phase is Phase.RECONNECTING
        self.phase = Phase.CHAT
        self.connection = event
        self.banner = None
        self.notice = None
        welcome = event.welcome
        # The nick asked for: after a drop, the one given before (the client asks for it).
        me = self.roster.me
        request = self.request
        asked = me.nick if again and me is not None else request.nick if request else None
        self.roster.reset(welcome.you, welcome.peers)
        verb = "Reconnected to" if again else "Connected to"
        # Lines still pending stay so: the core sends them again and each comes back as Sent.
        lines = [
            notice(
                "info",
                f"{verb} '{self.server_name}' at {self.where} as {safe_text(welcome.you.nick)} "
                f"({event.tls_version}).",
                ts,
            )
        ]
        # An answer on its way was lost with the connection.
        self._asked, self._page, self._answered, self._late = None, [], False, False
        abandoned = []
        if again and None not in (self._log, welcome.log) and welcome.log != self._log:
            # A new log (the server lost its database): its seqs start again, so neither a
            # gap nor the top of the transcript can be filled from it.
            for gap in self.gaps.values():
                gap.gone = True
                abandoned.append(Line("gap", "", gap.text, gap=gap.id))
            again, self.new_log = False, True
        self._log = welcome.log
        if not again:
            self.oldest_seq, self.all_loaded, self.gaps = None, False, {}
        if asked is not None and welcome.you.nick != asked:
            lines.append(
                notice(
                    "info",
                    f"The nick '{safe_text(asked)}' was taken; "
                    f"you are '{safe_text(welcome.you.nick)}'.",
                    ts,
                )
            )
        others = sorted(welcome.peers, key=lambda p: p.nick.casefold())
        here = ", ".join(describe(p) for p in others)
        lines.append(notice("info", f"Here: {here}." if here else "Nobody else is here yet.", ts))
        # Last, right above the lines it introduces (the replay follows the welcome).
        if event.resumed:
            lines.append(notice("info", self._resume_text(event, again), ts))
            if welcome.skipped:
                lines.append(self._gap(welcome.seq - event.missed, welcome.seq - welcome.replay))
        elif welcome.replay:
            lines.append(notice("info", "Earlier in this room:", ts))
        return abandoned + lines

    @staticmethod
    def _resume_text(event: Connected, again: bool) -> str:
        missed, skipped = event.missed, event.welcome.skipped
        if not missed:
            said = "Nothing was said while you were away."
        elif again:
            said = f"{missed} missed message{'' if missed == 1 else 's'} restored."
        else:
            said = f"{missed} message{'' if missed == 1 else 's'} while you were away."
        if skipped:
            said += f" The oldest {skipped} load as you scroll up to them."
        if event.resent:
            lines = "line" if event.resent == 1 else f"{event.resent} lines"
            said += f" Sending your waiting {lines}."
        return said + (" ─── new since you left ───" if missed else "")

    def _gap(self, after: int, last: int) -> Line:
        """A gap for the missed lines after ``after`` up to ``last``, and its line."""
        self._gap_ids += 1
        gap = self.gaps[self._gap_ids] = Gap(self._gap_ids, after, last + 1)
        self._saw(after + 1)  # scrolling to the top loads what came before them
        return Line("gap", "", gap.text, gap=gap.id)

    def _chat(self, chat: Chat, now: float | None, *, replayed: bool, older: bool) -> list[Line]:
        own = self.roster.me is not None and chat.sender.id == self.roster.me.id
        kind: LineKind = "history" if replayed or older else "own" if own else "chat"
        sender, stamp = chat.sender, sent_clock(chat.ts, now)
        line = Line(kind, stamp, chat.text, sender.nick, sender.addr, seq=chat.seq)
        if not older:
            self._saw(chat.seq)
            return [line]
        if self._asked is None:
            self._late = True
            return []
        self._answered = True
        if self._asked:  # a page of a gap: only what it misses (the rest is shown)
            gap = self.gaps.get(self._asked)
            if gap is not None and gap.after < chat.seq < gap.before:
                self._page.append(replace(line, gap=gap.id))
        elif self._asked == 0 and (self.oldest_seq is None or chat.seq < self.oldest_seq):
            self._page.append(replace(line, older=True))
        return []

    def _page_end(self, end: HistoryEnd) -> list[Line]:
        """The answer to a history request is complete: its lines, and the gap's line anew."""
        asked, page, answered, late = self._asked, self._page, self._answered, self._late
        self._page, self._answered, self._late = [], False, False
        if late or asked is None or end.before != self._asked_before:
            # The late answer to a request given up for lost (see ``_received``): ours is
            # still to come, or was this one.
            return []
        self._asked = None
        if not asked:
            # (Lines came but none older than those shown: a late answer's, most likely.
            # Asking the same again would bring the same.)
            self.all_loaded = self.all_loaded or end.count == 0 or (answered and not page)
            if page:
                self._saw(page[0].seq)  # (in ascending order)
            return page
        gap = self.gaps.get(asked)
        if gap is None:
            return []
        if page:
            gap.before = page[0].seq
        elif answered:  # lines, but none inside: the server has nothing in between
            gap.before = gap.after + 1
        gap.gone = end.count == 0  # (the server has nothing before ``before`` any more)
        if gap.gone or not gap.missing:
            del self.gaps[gap.id]  # its line says so, and stays or goes: nothing to load there
        return [*page, Line("gap", "", gap.text if gap.missing else "", gap=gap.id)]

    def _received(self, message: object, ts: float | None) -> list[Line]:
        match message:
            case HistoryEnd():
                return self._page_end(message)
            case Join(peer=peer):
                self.roster.join(peer)
                return [Line("join", clock(ts), "joined", peer.nick, peer.addr)]
            case Leave(peer=peer, reason=reason):
                self.roster.leave(peer)
                said = LEAVE_REASONS.get(reason, f"left ({safe_text(reason)})")
                return [Line("leave", clock(ts), said, peer.nick, peer.addr)]
            case Error(code=code, message=text):
                if self._asked is not None:
                    # Most likely our history request, which gets no answer now (an error
                    # without ref is told apart from no other way): the next one may go. A
                    # late answer is told apart by its ``before`` and its seqs.
                    self._asked, self._page, self._answered = None, [], False
                refused = f"The server refused: {safe_text(text)} ({safe_text(code)})."
                return [notice("error", refused, ts)]
            case ServerNotice(code=code, message=text):
                kind: Literal["info", "error"] = (
                    "error" if code == NoticeCode.CLUSTER_UNAVAILABLE else "info"
                )
                return [notice(kind, safe_text(text), ts)]
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
            self.banner = f"Disconnected: {reason}."
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
        return f"Could not connect to {where}: {reason}"

    # -- what to show --------------------------------------------------------------------

    @property
    def server_name(self) -> str:
        """The name the server gave itself, made safe to show; else its address."""
        conn = self.connection
        name = conn.welcome.server.name if conn is not None else ""
        return safe_text(name) if name else self.where

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
            f"you are {safe_text(me.nick)}",
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
            return f"{safe_text(conn.welcome.you.nick)} @ {self.server_name} — chatsecure"
        return "chatsecure"
