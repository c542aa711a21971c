"""Which lines of the room's log a client has shown, and which page of it to ask for next.

Both clients load lines the user has not seen a page at a time (``history``): older ones,
before the oldest shown, and the lines missed while away that the replay left out
(``skipped``), into their gap. ``LogPaging`` is that bookkeeping, without I/O or wording: fed
the welcome, the lines shown and the answers, it says what to ask for and which lines of an
answer are new. One request is out at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatsecure.protocol.limits import HISTORY_PAGE_MAX
from chatsecure.protocol.messages import Chat, HistoryEnd, Welcome


@dataclass(slots=True)
class Gap:
    """Lines missed while away that the replay left out (``skipped``): the seqs after
    ``after`` and before ``before``. They load a page at a time, newest first."""

    id: int
    after: int
    before: int
    gone: bool = False
    """The server keeps none of the lines left: they were trimmed from its log."""

    @property
    def missing(self) -> int:
        return max(self.before - self.after - 1, 0)


@dataclass(frozen=True, slots=True)
class Page:
    """The complete answer to our request: its lines not shown yet, in ascending seq."""

    lines: list[Chat]
    count: int
    """How many lines the server sent (fewer than asked for: it has no more)."""
    gap: Gap | None
    """The gap it was for (its bounds are moved already), or None for older lines."""


class LogPaging:
    """The lines of one server's log a client has shown, and the history request it has out."""

    def __init__(self) -> None:
        self.oldest_seq: int | None = None
        """The oldest line shown, for loading older ones; None before any sequenced line."""
        self.all_loaded = False
        """The server has nothing older than ``oldest_seq``."""
        self.gaps: dict[int, Gap] = {}
        """Missed lines not shown yet, by ``Gap.id`` (one per return not replayed whole)."""
        self.new_log = False
        """Back on a server that lost its log: the seqs of the lines shown count in the old
        one (a front end that keeps them forgets them, then sets this back)."""
        self._gap_ids = 0
        self._asked: int | None = None
        """The history request out: 0 for older lines, else the id of the gap it fills."""
        self._asked_before = 0
        """Its ``before``: the ``history_end`` that answers it says the same."""
        self._asked_limit: int | None = None
        """Its ``limit``, if known: an answer with fewer lines says the server has no more."""
        self._page: list[Chat] = []
        """The lines of the answer coming in, kept until it ends (shown in one piece)."""
        self._answered = False
        """Whether the answer coming in brought any line, new or not."""
        self._late = False
        """Lines came with no request out: the answer to one given up for lost, whose end
        must not be taken for the end of the next one's."""
        self._log: str | None = None
        """The log of the last welcome: another one numbers its lines afresh."""
        self._moot = False
        """The request out for older lines asked for lines above some no longer shown: its
        answer is not shown (see ``dropped_before``)."""

    @property
    def asking(self) -> bool:
        """Whether a request is out (no other may go until it is answered or given up)."""
        return self._asked is not None

    def saw(self, seq: int) -> None:
        """Line ``seq`` (0: not sequenced) is shown, live or replayed."""
        if seq and (self.oldest_seq is None or seq < self.oldest_seq):
            self.oldest_seq = seq

    def connected(
        self, welcome: Welcome, *, again: bool, resumed: bool, missed: int
    ) -> tuple[list[Gap], Gap | None]:
        """A welcome: ``again`` in the same run (after a drop), ``resumed`` where we left off.

        Returns the gaps abandoned because the server has a new log (its seqs start again, so
        nothing can fill them from it), and the gap for the lines the replay leaves out."""
        self._asked, self._page, self._answered, self._late = None, [], False, False
        self._moot = False
        abandoned: list[Gap] = []
        if again and None not in (self._log, welcome.log) and welcome.log != self._log:
            for gap in self.gaps.values():
                gap.gone = True
                abandoned.append(gap)
            again, self.new_log = False, True
        self._log = welcome.log
        if not again:
            self.oldest_seq, self.all_loaded, self.gaps = None, False, {}
        if welcome.seq:
            # The replay (the newest lines up to the welcome's seq, which are consecutive)
            # follows, and then the lines said since, live: shown as they come, before the
            # answer to any request made now. A request made before they are fed asks for
            # what is older than all of them.
            self.saw(welcome.seq - welcome.replay + 1)
        if not (resumed and welcome.skipped):
            return abandoned, None
        self._gap_ids += 1
        # (From the oldest line the log keeps: those missed before it are gone.)
        last = welcome.seq - welcome.replay
        after = max(welcome.seq - missed, last - welcome.skipped)
        gap = self.gaps[self._gap_ids] = Gap(self._gap_ids, after, last + 1)
        self.saw(after + 1)  # what comes before the gap is older than it
        return abandoned, gap

    def wants_older(self, limit: int | None = None) -> int | None:
        """The ``before`` of a request for up to ``limit`` lines older than those shown, if
        one may go now."""
        if self._asked is not None or self.all_loaded:
            return None
        if self.oldest_seq is None or self.oldest_seq <= 1:
            return None
        self._asked, self._asked_before, self._asked_limit = 0, self.oldest_seq, limit
        return self.oldest_seq

    def wants_gap(self, gap_id: int, limit: int | None = None) -> int | None:
        """The ``before`` of a request for up to ``limit`` lines of gap ``gap_id``, if one
        may go now."""
        gap = self.gaps.get(gap_id)
        if self._asked is not None or gap is None or gap.gone or not gap.missing:
            return None
        self._asked, self._asked_before, self._asked_limit = gap_id, gap.before, limit
        return gap.before

    def forget_gap(self, gap_id: int) -> None:
        """Nothing is to load into gap ``gap_id`` any more."""
        self.gaps.pop(gap_id, None)

    def dropped_before(self, seq: int) -> None:
        """The front end dropped its oldest lines: ``seq`` is the oldest it keeps (or, above
        it, a gap that still misses lines: those load there, not before the oldest)."""
        for gap in self.gaps.values():
            seq = min(seq, gap.after + 1)
        if self._asked == 0 and seq > self._asked_before:
            # The answer to the request out would go on top, above lines no longer shown: a
            # hole. It still comes (and a request made meanwhile would take its lines for
            # its own): it is dropped when it ends, then the top asks again.
            self._moot = True
        self.oldest_seq = seq
        self.all_loaded = False

    def line(self, chat: Chat) -> None:
        """A line of an answer to ``history``: kept for the page if it is new."""
        if self._asked is None:
            self._late = True
            return
        self._answered = True
        if len(self._page) >= (self._asked_limit or HISTORY_PAGE_MAX):
            # More than asked for: a broken or hostile server's, which never ends its answer
            # would otherwise fill the client's memory. What it sent beyond is not kept.
            return
        if self._asked:  # a page of a gap: only what it misses (the rest is shown)
            gap = self.gaps.get(self._asked)
            if gap is not None and gap.after < chat.seq < gap.before:
                self._page.append(chat)
        elif self.oldest_seq is None or chat.seq < self.oldest_seq:
            self._page.append(chat)

    def refused(self) -> int | None:
        """The request out gets no answer (refused, or lost with the connection): the next
        one may go. Returns what it asked for: the id of its gap, 0 for older lines, None if
        none was out. (Against a server older than ``ref`` on ``history``, an error without
        ``ref`` is taken for the refusal; should it have been for something else, the late
        answer is told apart by its ``before`` and seqs.)"""
        asked = self._asked
        self._asked, self._page, self._answered, self._moot = None, [], False, False
        return asked

    def page_end(self, end: HistoryEnd) -> Page | None:
        """The end of an answer: the page, or None if it answers no request of ours (a late
        answer to one given up for lost, or one for a gap forgotten meanwhile)."""
        asked, page, answered, late = self._asked, self._page, self._answered, self._late
        self._page, self._answered, self._late = [], False, False
        # A server that names requests (``ref``) answers none given up for lost: lines that
        # came with no request out were stray, not a late answer, and this end is ours.
        if (late and end.ref is None) or asked is None or end.before != self._asked_before:
            return None  # ours is still to come, or was this one
        self._asked = None
        if self._moot:
            self._moot = False
            return None
        # Fewer lines than asked for, or the first line of all: there are none before these.
        last = end.count < (self._asked_limit or 1) or (bool(page) and page[0].seq <= 1)
        if not asked:
            # (Lines came but none older than those shown: a late answer's, most likely.
            # Asking the same again would bring the same.)
            self.all_loaded = self.all_loaded or last or (answered and not page)
            if page:
                self.saw(page[0].seq)
            return Page(page, end.count, None)
        gap = self.gaps.get(asked)
        if gap is None:
            return None
        if page:
            gap.before = page[0].seq
        elif answered:  # lines, but none inside: the server has nothing in between
            gap.before = gap.after + 1
        gap.gone = last  # (the server has nothing before ``before`` any more)
        if gap.gone or not gap.missing:
            del self.gaps[gap.id]
        return Page(page, end.count, gap)
