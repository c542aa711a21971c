"""When the chat window should ask for the user's attention; no tkinter here.

While the window has no keyboard focus, lines that others say are counted (the title shows
the count, ``(3) alice @ lab — chatsecure``) and a line that names the user's nick makes the
window urgent. Focus back on the window clears both. Lines that name the nick are highlighted
whether the window has the focus or not, also those from the room's log (missed while away).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from chatsecure.client.transcript import Line


def mentions(text: str, nick: str | None) -> bool:
    """Whether ``text`` names ``nick`` as a word, ignoring case.

    ``bob``, ``Bob:`` and ``@BOB`` name bob; ``bobby`` and ``jimbob`` do not. A nick that
    starts or ends with punctuation (``-x-``) is matched as written, between non-word characters.
    """
    wanted = (nick or "").strip()
    if not wanted:
        return False
    pattern = rf"(?<!\w){re.escape(wanted)}(?!\w)"
    return re.search(pattern, text, re.IGNORECASE) is not None


def is_mention(line: Line, nick: str | None) -> bool:
    """Whether ``line`` is something another person said that names ``nick``: live, or
    from the log (missed while away, or scrolled back to)."""
    if line.kind == "history":  # (one's own lines come back from the log as history too)
        return (line.nick or "").casefold() != (nick or "").casefold() and mentions(line.text, nick)
    return line.kind == "chat" and mentions(line.text, nick)


class Attention:
    """Counts what others said while the window had no focus; says when to ask for attention."""

    def __init__(self, *, focused: bool = True) -> None:
        self.focused = focused
        self.unread = 0
        """Lines others said since the window lost the focus."""
        self.urgent = False
        """Whether a line named the user since the window lost the focus."""

    def arrived(self, lines: Sequence[Line], nick: str | None) -> list[bool]:
        """Take new transcript lines; return, for each, whether it names ``nick``."""
        named = [is_mention(line, nick) for line in lines]
        if not self.focused:
            self.unread += sum(1 for line in lines if line.kind == "chat")
            # (Only live lines: the log's were said before, and are highlighted only.)
            self.urgent = self.urgent or any(
                name and line.kind == "chat" for name, line in zip(named, lines, strict=True)
            )
        return named

    def focus(self, focused: bool) -> bool:
        """The window gained (or lost) the keyboard focus; whether the title or hint changes."""
        changed = focused and (self.unread > 0 or self.urgent)
        self.focused = focused
        if focused:
            self.reset()
        return changed

    def reset(self) -> None:
        """Forget what was unread (the user read it, or left the room)."""
        self.unread = 0
        self.urgent = False

    def title(self, base: str) -> str:
        """The window title: ``base``, after the unread count when there is one."""
        return f"({self.unread}) {base}" if self.unread else base
