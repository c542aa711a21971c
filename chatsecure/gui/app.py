"""The desktop client's window: Tk widgets and their wiring, nothing more.

What the window does lives in ``chatsecure.client`` (``form``, ``model``, ``controller`` ...;
``chatsecure.client.state`` lists them), tested without a screen; this module lays out widgets
and connects them to it. Tk is touched only from the thread that made the root: the network
thread and discovery talk to it through queues. Putting in one rings a ``Doorbell`` (a pipe
Tk watches with ``createfilehandler``), so the window takes events at once whatever the wall
clock does (Tk's ``after`` timers wait on it: set back ten minutes, a tick armed before comes
ten minutes late). A tick every ``POLL_MS`` still polls too: it is all there is on Windows, and
it notices what no thread rings for (the user scrolled to the top: load older lines).

Widgets have stable names, so tests and tools find them with ``root.nametowidget``:
``connect.servers.list``, ``connect.form.host|port|nick|password``, ``connect.form.host_error``
... (``connect.form.password_error`` says "(if the room has one)" while there is no error),
``connect.form.buttons.connect``, ``connect.notice``, ``chat.top.leave``, ``chat.banner``,
``chat.body.log.transcript``, ``chat.body.side.users``, ``chat.bottom.message``,
``chat.bottom.send``, ``status``, and the trust dialog ``trust`` with ``trust.body.fingerprint``
(and ``trust.body.pinned``), ``trust.buttons.accept``,
``trust.buttons.cancel`` and, for a changed certificate, ``trust.confirm``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import sys
import time
import tkinter as tk
from collections.abc import Callable
from tkinter import font as tkfont
from tkinter import ttk
from typing import TYPE_CHECKING, Any, Literal

from chatsecure.client.attention import Attention
from chatsecure.client.controller import Controller
from chatsecure.client.core import dialable, is_quit, parse_target, safe_text
from chatsecure.client.doorbell import Doorbell, RingingQueue
from chatsecure.client.form import (
    FormField,
    GuiOptions,
    remembered_nick,
    remembered_server,
    validate_form,
)
from chatsecure.client.model import Phase, full_text, gap_full_text
from chatsecure.client.servers import ServerList, ServerRow
from chatsecure.client.signals import handled
from chatsecure.client.transcript import MAX_SCROLLBACK_LINES, MAX_TRANSCRIPT_LINES, Line
from chatsecure.client.trust_dialog import PendingQuestion
from chatsecure.errors import ConfigError
from chatsecure.gui.urgency import set_urgent
from chatsecure.protocol import limits
from chatsecure.tls.trust import KnownServers

if TYPE_CHECKING:
    from chatsecure.discovery.mdns import Browser

POLL_MS = 40
"""How often the Tk thread looks at the client's and discovery's queues without being rung
(see ``Doorbell``), and at the transcript's view (scrolled to the top: load older lines)."""
TICK_LATE = 1.0
"""Seconds past its time after which the tick is taken for one the wall clock stepped over
(set back): it is armed again from now, the next time the doorbell rings or the view moves."""
OLDER_PAGE = 100
"""Lines asked for at a time when the user scrolls to the top."""
ENTRY_MASK = "•"
"""What the Password field shows for each character typed."""
OPTIONAL_NOTE = "(if the room has one)"
"""Next to the Password field while there is nothing wrong with it."""
BANNER_PADDING = (10, 6)
"""Room around the text of the chat view's banner (left and right, top and bottom)."""
LABEL_CHROME = 4
"""Pixels a ttk label (the clam theme's border and padding) adds to the width of its text."""
LINE_MARKS = ("seq-", "ref-")
"""The marks that name a transcript line, at its start: ``seq-N``, stored line N; ``ref-R``,
the own line sent as R (pending, then stored). Marks, not tags: a Tk text widget given a tag
for each line slows down as lines come and go, and stays slow even with the tags of dropped
lines deleted (Tk 8.6, 5,000 lines kept: 16,000 lines a second without such tags, under
1,000 with them and falling). With marks, removed with their lines, a flood keeps its pace."""

PALETTE = {
    "window": "#f3f4f6",
    "panel": "#ffffff",
    "text": "#111827",
    "muted": "#6b7280",
    "accent": "#2563eb",
    "accent_dark": "#1d4ed8",
    "own_bg": "#eaf1ff",
    "join": "#15803d",
    "leave": "#b45309",
    "error": "#b91c1c",
    "error_bg": "#fee2e2",
    "warn_bg": "#fef3c7",
    "mention_bg": "#fde68a",
    "status_bg": "#e5e7eb",
}


TYPED_KEPT = 100
"""Lines typed that Up in the message box brings back."""
CONTROL_MASK = 0x4
"""The Control key in a key event's ``state``."""


class App:
    """The chatsecure window on ``root``: a connect view, a chat view and a status bar."""

    def __init__(
        self, root: tk.Tk, options: GuiOptions, *, store: KnownServers | None = None
    ) -> None:
        self.root = root
        self.options = options
        self.doorbell = Doorbell() if _watches_files(root) else None
        ring = self.doorbell.ring if self.doorbell is not None else None
        self.controller = Controller(options, store, ring=ring)
        self.servers = ServerList()
        self._dialog: TrustDialog | None = None
        self._view: str | None = None
        self._tick: str | None = None
        self._tick_due = 0.0
        """When ``_tick`` should run (``time.monotonic()``)."""
        self._closed = False
        self._typed: list[str] = []
        """Lines typed in the message box, oldest first (Up and Down bring them back)."""
        self._recalled: int | None = None
        """Which of ``_typed`` Up or Down put in the box; None: what is typed now."""
        self._draft = ""
        """What was in the box when Up first went back: Down past the newest brings it back."""
        self._after_sent: tuple[Callable[[], None], str, str] | None = None
        """Leave or close, asked while own lines were not stored yet: done once they are (or
        asked again), and the verbs the banner says meanwhile (see ``_waiting_text``)."""
        self._gaps_paged: set[int] = set()
        """Gaps a page was asked for since their line came on screen (one a sighting)."""
        self._discovery: Discovery | None = None
        self.attention = Attention()
        self._urgent = False
        """Whether the window's urgency hint is set."""
        self._focus_check: str | None = None
        self._follow = True
        """Whether the newest line was in view when the transcript's view last changed."""
        self._unseen = 0
        """Lines others said that came in below the view while the user read back."""
        self._divider_counted = False
        """Whether ``_unseen`` was counted from the view (``_count_below``), not added up."""
        self._divider_left: int | None = None
        """Replayed lines still to come after a return's "new since you left" line, shown
        while the view followed the newest (None: no such return). At 0, if the divider is
        out of view, the view goes back to it, once (see ``_show_newest``)."""
        self._size = (0, 0)
        """The transcript's size when its view last changed."""
        self.fonts = _fonts(root)
        _style(root, self.fonts)
        root.title("chatsecure")
        root.geometry("900x600")
        root.minsize(660, 440)
        root.configure(background=PALETTE["window"])
        self.status = ttk.Label(root, name="status", style="Status.TLabel", anchor="w")
        self.status.pack(side="bottom", fill="x")
        self.connect_view = self._build_connect()
        self.chat_view = self._build_chat()
        root.protocol("WM_DELETE_WINDOW", self._close_asked)
        # Enter presses the focused button, as Space does (and not the window's default too).
        root.bind_class("TButton", "<Return>", _press)
        for sequence in ("<FocusIn>", "<FocusOut>"):  # on every widget of every window of ours
            root.bind_all(sequence, self._focus_moved, add="+")
        self._fill_defaults()
        self._start_discovery()
        self._render()
        if self.doorbell is not None:
            root.tk.createfilehandler(self.doorbell.fileno, tk.READABLE, self._rung)
        self._arm_tick()
        if options.target:
            root.after_idle(self._connect)

    # -- layout --------------------------------------------------------------------------

    def _build_connect(self) -> ttk.Frame:
        # Everything but the server list keeps its size; the list takes what is left, so a
        # small window shrinks the list and never hides a field, a button or a message.
        view = ttk.Frame(self.root, name="connect", padding=(24, 14, 24, 8))
        header = ttk.Frame(view, name="header")
        header.pack(side="top", fill="x")
        ttk.Label(header, text="chatsecure", style="Title.TLabel").pack(side="left")
        ttk.Label(header, text="secure chat on your network", style="Muted.TLabel").pack(
            side="left", padx=(12, 0), pady=(8, 0)
        )

        servers = ttk.LabelFrame(view, name="servers", text=" Servers on this network ")
        self.server_list = ttk.Treeview(
            servers,
            name="list",
            columns=("name", "address", "fingerprint"),
            show="headings",
            height=5,
            selectmode="browse",
        )
        for column, heading, width in (  # together as wide as the list at the smallest window
            ("name", "Name", 220),
            ("address", "Address", 150),
            ("fingerprint", "Fingerprint", 180),
        ):
            self.server_list.heading(column, text=heading, anchor="w")
            self.server_list.column(column, width=width, minwidth=60, anchor="w")
        bar = ttk.Scrollbar(servers, orient="vertical", command=self.server_list.yview)
        self.server_list.configure(yscrollcommand=bar.set)
        self.servers_hint = ttk.Label(servers, name="hint", style="Muted.TLabel")
        self.servers_hint.pack(side="bottom", fill="x", padx=10, pady=(2, 8))
        bar.pack(side="right", fill="y", pady=8, padx=(0, 8))
        self.server_list.pack(side="left", fill="both", expand=True, padx=(8, 0), pady=8)
        self.server_list.bind("<<TreeviewSelect>>", self._on_server_selected)
        self.server_list.bind("<Double-1>", self._on_server_chosen)
        self.server_list.bind("<Return>", self._on_server_chosen)

        form = ttk.LabelFrame(view, name="form", text=" Or type an address ", padding=(12, 4))
        form.pack(side="bottom", fill="x")
        servers.pack(side="top", fill="both", expand=True, pady=(10, 10))
        form.columnconfigure(2, weight=1)
        self.entries: dict[FormField, ttk.Entry] = {}
        self.field_errors: dict[FormField, ttk.Label] = {}
        self._texts: dict[FormField, tk.StringVar] = {}
        rows: tuple[tuple[FormField, str, int], ...] = (
            ("host", "Host or IP", 28),
            ("port", "Port", 8),
            ("nick", "Nickname", 20),
            ("password", "Password", 20),
        )
        for row, (name, label, width) in enumerate(rows):
            ttk.Label(form, text=label).grid(row=row, column=0, sticky="w", pady=3)
            text = tk.StringVar(form)
            entry = ttk.Entry(
                form,
                name=name,
                width=width,
                font=self.fonts["body"],
                show=ENTRY_MASK if name == "password" else "",
                textvariable=text,
            )
            entry.grid(row=row, column=1, sticky="w", padx=(12, 12), pady=3)
            entry.bind("<Return>", lambda _e: self._connect())
            _select_all_on_ctrl_a(entry)
            error = ttk.Label(form, name=f"{name}_error", style="FieldError.TLabel")
            error.grid(row=row, column=2, sticky="ew")
            _wrap_to_width(error)
            self.entries[name] = entry
            self.field_errors[name] = error
            self._texts[name] = text

        buttons = ttk.Frame(form, name="buttons")
        buttons.grid(row=len(rows), column=1, columnspan=2, sticky="ew", padx=(12, 0), pady=(6, 2))
        self.connect_button = ttk.Button(
            buttons, name="connect", text="Connect", style="Accent.TButton", command=self._connect
        )
        self.connect_button.pack(side="left", anchor="n")
        self.cancel_button = ttk.Button(buttons, name="cancel", text="Cancel", command=self._cancel)
        # The notice sits beside the button it answers, as wide as the form lets it be. It is
        # the view's child (``connect.notice``) laid out in the buttons row.
        self.notice = ttk.Label(view, name="notice", style="Notice.TLabel", justify="left")
        self.notice.pack(in_=buttons, side="left", fill="x", expand=True, padx=(14, 0))
        _wrap_to_width(self.notice)
        self.root.bind("<Escape>", lambda _e: self._cancel())
        for name, text in self._texts.items():
            text.trace_add("write", lambda *_a, field=name: self._edited(field))
        return view

    def _build_chat(self) -> ttk.Frame:
        view = ttk.Frame(self.root, name="chat", padding=(14, 10, 14, 8))
        top = ttk.Frame(view, name="top")
        top.pack(fill="x")
        # Leave is packed first: a long room name is cut, never the button.
        self.leave_button = ttk.Button(
            top, name="leave", text="Leave", width=8, command=self._leave
        )
        self.leave_button.pack(side="right")
        self.room_label = ttk.Label(top, name="room", style="Room.TLabel")
        self.room_label.pack(side="left")
        self.where_label = ttk.Label(top, name="where", style="Muted.TLabel")
        self.where_label.pack(side="left", padx=(10, 0), pady=(4, 0))
        self.banner = ttk.Label(view, name="banner", style="Warn.TLabel", justify="left")
        _wrap_to_width(self.banner, padding=BANNER_PADDING[0] * 2)

        # Packed before the body, so that a small window shrinks the transcript, not this.
        bottom = ttk.Frame(view, name="bottom")
        bottom.pack(side="bottom", fill="x")
        self.message = ttk.Entry(bottom, name="message", font=self.fonts["body"])
        _select_all_on_ctrl_a(self.message)
        self.message.pack(side="left", fill="x", expand=True, ipady=3)
        self.message.bind("<Return>", lambda _e: self._send())
        self.message.bind("<Up>", lambda _e: self._recall(-1))
        self.message.bind("<Down>", lambda _e: self._recall(1))
        # The transcript takes no focus: the keys that read back work from the message box.
        self.message.bind("<Prior>", lambda _e: self._scroll_transcript("up"))
        self.message.bind("<Next>", lambda _e: self._scroll_transcript("down"))
        self.message.bind("<Control-Home>", lambda _e: self._scroll_transcript("top"))
        self.message.bind("<Control-End>", lambda _e: self._scroll_transcript("end"))
        self.send_button = ttk.Button(
            bottom, name="send", text="Send", style="Accent.TButton", command=self._send
        )
        self.send_button.pack(side="left", padx=(8, 0))

        body = ttk.PanedWindow(view, name="body", orient="horizontal")
        body.pack(fill="both", expand=True, pady=(10, 8))
        self.body = body
        log_frame = ttk.Frame(body, name="log", style="Panel.TFrame")
        self.transcript = tk.Text(
            log_frame,
            name="transcript",
            wrap="word",
            state="disabled",
            height=10,
            width=60,
            **self._flat_panel(),
            padx=10,
            pady=8,
            spacing1=2,
            spacing3=2,
            cursor="arrow",
        )
        scroll = ttk.Scrollbar(log_frame, orient="vertical", command=self.transcript.yview)
        self._scrollbar = scroll
        self.transcript.configure(yscrollcommand=self._scrolled)
        self.transcript.bind("<Key>", self._type_into_message)
        self.transcript.bind("<Map>", self._transcript_shown)
        scroll.pack(side="right", fill="y")
        self.transcript.pack(side="left", fill="both", expand=True)
        # Shown over the foot of the chat while the user reads back and lines come in below.
        self.below = ttk.Button(
            log_frame, name="below", style="Accent.TButton", command=self._to_newest
        )
        self._tag_transcript()
        self._clear_transcript()
        body.add(log_frame, weight=4)

        side = ttk.Frame(body, name="side", style="Panel.TFrame", padding=(10, 8))
        self.users_title = ttk.Label(side, name="title", style="PanelHeading.TLabel")
        self.users_title.pack(fill="x")
        self.users = tk.Listbox(
            side,
            name="users",
            **self._flat_panel(),
            activestyle="none",
            selectbackground=PALETTE["own_bg"],
            selectforeground=PALETTE["text"],
            width=26,
        )
        self.users.pack(fill="both", expand=True, pady=(6, 0))
        body.add(side, weight=1)

        return view

    def _flat_panel(self) -> dict[str, Any]:
        """Options that make a classic Tk widget look like the ttk panel it sits on."""
        return {
            "font": self.fonts["body"],
            "background": PALETTE["panel"],
            "foreground": PALETTE["text"],
            "relief": "flat",
            "borderwidth": 0,
            "highlightthickness": 0,
        }

    def _tag_transcript(self) -> None:
        text = self.transcript
        bold, italic = self.fonts["bold"], self.fonts["italic"]
        colours = {
            "chat": PALETTE["text"],
            "own": PALETTE["text"],
            "join": PALETTE["join"],
            "leave": PALETTE["leave"],
            "error": PALETTE["error"],
            "info": PALETTE["muted"],
            "pending": PALETTE["muted"],
            "history": PALETTE["muted"],
            "gap": PALETTE["muted"],
        }
        for kind, colour in colours.items():
            text.tag_configure(kind, foreground=colour)
            text.tag_configure(f"{kind}-time", foreground=PALETTE["muted"])
            text.tag_configure(f"{kind}-addr", foreground=PALETTE["muted"])
            text.tag_configure(f"{kind}-nick", font=bold)
            text.tag_configure(f"{kind}-body")
        for kind in ("join", "leave", "info", "gap"):
            text.tag_configure(f"{kind}-body", font=italic)
        text.tag_configure("pending-body", font=italic)
        text.tag_configure("own", background=PALETTE["own_bg"])
        text.tag_configure("pending", background=PALETTE["own_bg"])
        text.tag_configure("own-nick", foreground=PALETTE["accent_dark"])
        text.tag_configure("chat-nick", foreground=PALETTE["text"])
        text.tag_configure("mention", background=PALETTE["mention_bg"])  # made last, shown on top

    # -- what the user does --------------------------------------------------------------

    def _fill_defaults(self) -> None:
        host, port = "", str(limits.DEFAULT_PORT)
        if (last := remembered_server()) is not None:
            host, port = last[0], str(last[1])
        if self.options.target:
            try:
                host, number = parse_target(self.options.target)
                port = str(number)
            except ValueError:
                host = self.options.target  # validation will say what is wrong with it
        self._set_entry("host", host)
        self._set_entry("port", port)
        self._set_entry("nick", self.options.nick or remembered_nick())
        self._set_entry("password", self.options.password or "")

    def _set_entry(self, name: FormField, value: str) -> None:
        entry = self.entries[name]
        entry.delete(0, "end")
        entry.insert(0, value)

    def _connect(self) -> None:
        if self._closed or self.controller.model.phase is not Phase.CONNECT:
            return
        host, port = self.entries["host"].get(), self.entries["port"].get()
        row = self._selected_server()
        picked = row is not None and row.fill() == (host, port)
        advertised = row.fingerprint if row is not None and picked else None
        nick, password = self.entries["nick"].get(), self.entries["password"].get()
        result = validate_form(host, port, nick, advertised, password)
        if result.request is None:
            self.controller.model.invalid(result.errors)
            self._render()
            self._focus_first_error()
            return
        request = result.request
        if row is not None and picked and row.fallbacks:  # every node, every address, in order
            # (less an address whose interface has gone since it was heard)
            others = tuple(a for a in row.fallbacks if dialable(a[0]))
            request = dataclasses.replace(request, others=others)
        self.controller.connect(request)
        self._render()

    def _edited(self, name: FormField) -> None:
        if not self._closed and self.controller.model.edited(name):
            self._render()

    def _focus_first_error(self) -> None:
        errors = self.controller.model.form_errors
        if errors:
            entry = self.entries[next(iter(errors))]
            entry.focus_set()
            entry.select_range(0, "end")

    def _cancel(self) -> None:
        self.controller.cancel()
        self._render()

    def _leave(self) -> None:
        if self._wait_for_pending(self._leave_now, "leaves", "Leave"):
            return
        self._leave_now()

    def _leave_now(self) -> None:
        self._after_sent = None
        self.controller.leave()
        self._render()

    def _wait_for_pending(self, action: Callable[[], None], does: str, again: str) -> bool:
        """Whether ``action`` (leave, close) waits for own lines not stored yet. Asked a first
        time, it does (the banner says so); asked again, it is done at once without them."""
        if not self.controller.unsent:
            return False
        if self._after_sent is not None and self._after_sent[0] == action:
            return False  # asked again
        self._after_sent = (action, does, again)  # (Leave, then close: the close waits)
        self._render()
        return True

    def _waiting_text(self) -> str | None:
        """What the banner says while Leave or close waits for lines (their count now)."""
        if self._after_sent is None:
            return None
        _, does, again = self._after_sent
        pending = self.controller.unsent
        lines, them = ("1 line", "it") if pending == 1 else (f"{pending} lines", "them")
        return (
            f"{lines} not stored yet: this window {does} once the server has stored {them}. "
            f"{again} again to do it now: the room may then never get {them}."
        )

    def _send(self) -> None:
        if self.controller.model.phase.view != "chat":
            return
        typed = self.message.get()
        if is_quit(typed):  # as Leave: the lines not stored yet are waited for
            self.message.delete(0, "end")
            self._leave()
            return
        out = self.controller.submit(typed)
        if out.clear:
            self.message.delete(0, "end")
            if typed.strip() and (not self._typed or self._typed[-1] != typed):
                self._typed = [*self._typed, typed][-TYPED_KEPT:]
            self._recalled = None
            self._divider_left = None  # (and no going back to a return's divider after it)
            self.transcript.see("end")  # one's own line, in view: back to the newest
        if out.line is not None:
            self._append([out.line], [False])
        self._render()

    def _recall(self, step: int) -> str:
        """Up and Down in the message box: the lines typed before, as a shell recalls them."""
        typed = self._typed
        if not typed:
            return "break"
        if self._recalled is None:
            if step > 0:
                return "break"  # already below the newest: nothing to go down to
            self._draft = self.message.get()  # what was being typed: back at the bottom
        at = len(typed) if self._recalled is None else self._recalled
        at = max(0, min(len(typed), at + step))
        self._recalled = None if at == len(typed) else at
        self.message.delete(0, "end")
        self.message.insert(0, self._draft if self._recalled is None else typed[at])
        return "break"

    def _type_into_message(self, event: tk.Event[tk.Misc]) -> str | None:
        """A key typed while the transcript has the focus (after a click in it) goes to the
        message box, as in other chat windows; keys that select or copy stay."""
        control = isinstance(event.state, int) and event.state & CONTROL_MASK
        if not event.char or not event.char.isprintable() or control:
            return None
        if str(self.message.cget("state")) == "disabled":
            return None
        self.message.focus_set()
        self.message.insert("insert", event.char)
        return "break"

    def _selected_server(self) -> ServerRow | None:
        selection = self.server_list.selection()
        return self.servers.get(selection[0]) if selection else None

    def _on_server_selected(self, _event: object = None) -> None:
        row = self._selected_server()
        if row is not None:
            host, port = row.fill()
            self._set_entry("host", host)
            self._set_entry("port", port)

    def _on_server_chosen(self, _event: object = None) -> None:
        self._on_server_selected()
        self._connect()

    def _close_asked(self) -> None:
        """The window's close button: close, once the lines typed are stored (see
        ``_wait_for_pending``)."""
        if self._closed:
            return
        if self._view == "chat" and self._wait_for_pending(self.close, "closes", "Close"):
            return
        self.close()

    def close(self) -> None:
        """Quit cleanly at once: leave the server, stop discovery, close the window."""
        if self._closed:
            return
        self._closed = True
        # The window may be gone already (destroyed under us): then only the rest remains.
        with contextlib.suppress(tk.TclError):
            if self._tick is not None:
                self.root.after_cancel(self._tick)
            if self._focus_check is not None:
                self.root.after_cancel(self._focus_check)
            if self._dialog is not None:
                self._dialog.destroy()
            self.root.withdraw()
        self._tick = self._dialog = self._focus_check = None
        self.controller.close()
        if self._discovery is not None:
            self._discovery.stop()
        if self.doorbell is not None:  # (after the threads that ring it, as far as they end)
            # Tcl's notifier, not the window, holds the handler: it must go before the fd.
            with contextlib.suppress(tk.TclError):
                self.root.tk.deletefilehandler(self.doorbell.fileno)
            self.doorbell.close()
        with contextlib.suppress(tk.TclError):
            self.root.destroy()

    # -- what the network does -----------------------------------------------------------

    def _arm_tick(self) -> None:
        self._tick = self.root.after(POLL_MS, self._ticked)
        self._tick_due = time.monotonic() + POLL_MS / 1000

    def _ticked(self) -> None:
        self._tick = None
        try:
            self._poll()
        finally:
            if not self._closed:
                self._arm_tick()

    def _rung(self, _fd: int, _mask: int) -> None:
        """The doorbell: a thread put something in a queue."""
        if self._closed or self.doorbell is None:
            return
        self.doorbell.answer()
        self._poll()
        self._mend_tick()

    def _mend_tick(self) -> None:
        """Arm the tick again if it is late: the wall clock was set back since it was armed."""
        if self._tick is not None and time.monotonic() - self._tick_due > TICK_LATE:
            self.root.after_cancel(self._tick)
            self._arm_tick()

    def _poll(self) -> None:
        """Take what the network thread and discovery queued; look at the view."""
        if self._closed:
            return
        update = self.controller.poll()
        if update.changed:
            self._render()
            if self._view == "connect":
                self._focus_first_error()  # the server refused a field (the password)
        if update.lines:
            self._arrived(update.lines)
        if self._after_sent is not None:
            if any(line.kind == "error" and line.ref for line in update.lines):
                self._after_sent = None  # a line was not sent after all: see why first
                self._render()
            elif not self.controller.unsent:
                self._after_sent[0]()
                return
        if self._view == "chat" and not self._load_into_gap_in_view():
            self._load_older_at_top()
        self._ask_trust()
        if self._discovery is not None and self._discovery.poll(self.servers):
            self._render_servers()

    def _ask_trust(self) -> None:
        dialog = self._dialog
        if dialog is not None:
            if dialog.pending.answered:  # cancelled meanwhile: the question is moot
                dialog.destroy()
                self._dialog = None
            return
        pending = self.controller.next_question()
        if pending is not None:
            self._dialog = TrustDialog(self, pending, self._answered)

    def _answered(self, pending: PendingQuestion, yes: bool) -> None:
        self.controller.answer(pending, yes)
        if self._dialog is not None:
            self._dialog.destroy()
            self._dialog = None

    # -- drawing -------------------------------------------------------------------------

    def _render(self) -> None:
        model = self.controller.model
        view = model.phase.view
        if view != self._view:
            self._switch(view)
        self.root.title(self.attention.title(model.title()))
        self.status.configure(text=model.status())
        if view == "connect":
            self._render_connect()
        else:
            self._render_chat()

    def _switch(self, view: str) -> None:
        self._view = view
        self.attention.reset()  # what was unread belongs to the room left behind
        self._show_urgency()
        if view == "chat":
            self.connect_view.pack_forget()
            self._clear_transcript()
            self.chat_view.pack(fill="both", expand=True)
            self.message.configure(state="normal")
            self.message.delete(0, "end")
            self.message.focus_set()
        else:
            self.chat_view.pack_forget()
            self.connect_view.pack(fill="both", expand=True)
            self._focus_connect()

    def _focus_connect(self) -> None:
        """The first field left to fill in (a first start: the host), else Connect."""
        for name in ("host", "nick"):
            entry = self.entries[name]
            if not entry.get().strip():
                entry.focus_set()
                return
        self.connect_button.focus_set()

    def _render_connect(self) -> None:
        model = self.controller.model
        connecting = model.phase is Phase.CONNECTING
        self.connect_button.state(["disabled"] if connecting else ["!disabled"])
        if connecting:
            self.cancel_button.pack(side="left", anchor="n", padx=(8, 0), after=self.connect_button)
        else:
            self.cancel_button.pack_forget()
        for name, label in self.field_errors.items():
            error = model.form_errors.get(name, "")
            if name == "password" and not error:
                label.configure(text=OPTIONAL_NOTE, style="Muted.TLabel")
            else:
                label.configure(text=error, style="FieldError.TLabel")
        notice = model.notice
        self.notice.configure(
            text=notice.text if notice else "",
            style="NoticeError.TLabel" if notice and notice.kind == "error" else "Notice.TLabel",
        )

    def _render_chat(self) -> None:
        model = self.controller.model
        conn = model.connection
        if conn is not None:
            self.room_label.configure(text=model.server_name)
            self.where_label.configure(text=model.where)
        banner = "\n".join(said for said in (model.banner, self._waiting_text()) if said)
        if banner:
            style = "Error.TLabel" if model.phase is Phase.ENDED else "Warn.TLabel"
            self.banner.configure(text=banner, style=style)
            self.banner.pack(fill="x", pady=(8, 0), before=self.body)
        else:
            self.banner.pack_forget()
        ended = model.phase is Phase.ENDED
        self.leave_button.configure(text="Back" if ended else "Leave")
        self.message.configure(state="disabled" if ended else "normal")
        self.send_button.state(["disabled"] if ended else ["!disabled"])
        # Without a connection the list is who was there, not who is: greyed, and titled so.
        offline = model.phase in {Phase.RECONNECTING, Phase.ENDED}
        title = "Last seen here" if offline else "In this room"
        self.users_title.configure(text=f"{title} ({len(model.roster)})")
        self._render_users(offline)

    def _render_users(self, offline: bool) -> None:
        """Make the list's rows those of the roster: only what changed (a join, a leave) in a
        room of thousands, where drawing it all anew takes the window's time."""
        users, roster = self.users, self.controller.model.roster
        edits = roster.take_edits()
        if edits is None:
            users.delete(0, "end")
            if rows := roster.rows():
                users.insert("end", *(row.text for row in rows))
        for edit in edits or ():
            if edit.row is None:
                users.delete(edit.index)
            else:
                users.insert(edit.index, edit.row.text)
        colour = PALETTE["muted"] if offline else PALETTE["text"]
        if str(users.cget("foreground")) != colour:
            users.configure(foreground=colour)
        if users.size():  # (a row's colour moves with it as rows go in and out above it)
            mine = "" if not roster.me_first else colour if offline else PALETTE["accent_dark"]
            if str(users.itemcget(0, "foreground")) != mine:  # ("": the list's own colour)
                users.itemconfigure(0, foreground=mine)

    def _render_servers(self) -> None:
        selected = self.server_list.selection()
        self.server_list.delete(*self.server_list.get_children())
        for row in self.servers.rows():
            self.server_list.insert(
                "", "end", iid=row.key, values=(row.name, row.address, row.short_fingerprint)
            )
        keep = [key for key in selected if self.server_list.exists(key)]
        if keep:
            self.server_list.selection_set(keep)
        self._render_servers_hint()

    def _render_servers_hint(self) -> None:
        if self._discovery is None:
            hint = "Discovery is off: type the server's address below."
        elif self._discovery.error:
            hint = f"Cannot look for servers ({self._discovery.error}): type an address below."
        elif self.servers.rows():
            hint = "Double-click a server (or select it and press Enter) to connect."
        else:
            hint = "Looking for servers… (a server on another subnet needs its address typed)"
        self.servers_hint.configure(text=hint)

    def _scrolled(self, first: float, last: float) -> None:
        """The transcript's view changed: move the scrollbar, and note whether the newest
        line is in view. A change of the transcript's size (the banner shown, the window
        resized) cuts lines at the bottom: that is not the user scrolling up, so if the
        newest line was in view it is brought back."""
        self._scrollbar.set(first, last)
        self._mend_tick()  # (a view at the top loads older lines at the next tick)
        if float(last) >= 0.999 and self._unseen:
            self._unseen = 0  # the newest lines are in view: nothing below to point to
            self._divider_counted = False
            self.below.place_forget()
        text = self.transcript
        size = (text.winfo_width(), text.winfo_height())
        if size != self._size:
            self._size = size
            if self._follow:
                text.after_idle(self._follow_newest)
            if self._unseen and self._divider_counted:  # the count of a return, anew
                text.after_idle(self._count_below)
            return
        self._follow = float(last) >= 0.999

    def _scroll_transcript(self, where: Literal["up", "down", "top", "end"]) -> str:
        """PageUp and PageDown, Ctrl+Home and Ctrl+End in the message box move the chat: the
        transcript itself takes no focus."""
        text = self.transcript
        if where == "top":
            text.yview_moveto(0.0)
        elif where == "end":
            text.see("end")
        else:
            text.yview_scroll(-1 if where == "up" else 1, "pages")
        return "break"

    def _to_newest(self) -> None:
        """The "new messages below" button: to the newest line (the button goes with it)."""
        self.transcript.see("end")

    def _tell_unseen(self, count: int) -> None:
        """``count`` more lines others said came in below the view: say so at its foot."""
        self._unseen += count
        said = "1 new message" if self._unseen == 1 else f"{self._unseen} new messages"
        self.below.configure(text=f"↓ {said}")
        self.below.place(relx=0.5, rely=1.0, y=-8, anchor="s")

    def _clear_transcript(self) -> None:
        self._follow = True
        self._unseen = 0
        self._divider_counted = False
        self._divider_left = None
        self.below.place_forget()
        text = self.transcript
        text.configure(state="normal")
        self._delete_lines("1.0", "end")
        # Lines arrive above the "pending" mark: below it wait own lines not yet stored.
        # ("end" is past the last newline, where no insertion can go: the mark would never
        # be above anything.)
        text.mark_set("pending", "end-1c")
        text.mark_gravity("pending", "right")
        text.configure(state="disabled")

    def _arrived(self, lines: list[Line]) -> None:
        """Show lines from the network; count them while the window has no focus."""
        me = self.controller.model.roster.me
        refused = next((line.unsent for line in lines if line.unsent is not None), None)
        back = refused is not None and not self.message.get()
        if back:  # its whole text goes back in the box: the transcript need not hold it all
            lines = [_shortened(line) if line.unsent is refused else line for line in lines]
        named = self.attention.arrived(lines, me.nick if me is not None else None)
        self._append(lines, named)
        if back and refused is not None:
            self.message.insert(0, refused)  # back in the box, to shorten or fix
        self.root.title(self.attention.title(self.controller.model.title()))
        self._show_urgency()

    def _append(self, lines: list[Line], named: list[bool]) -> None:
        """Add ``lines`` to the transcript, highlighting those that name the user.

        Own lines wait below the "pending" mark until the server stored them; then they take
        their place above it, in the order the server gave. Older lines (scrolling up) go on
        top; missed lines loaded into a gap go below its line, above the lines after them.
        """
        text = self.transcript
        # A transcript not on screen yet (the chat view is just being shown) follows the end.
        at_bottom = not text.winfo_ismapped() or text.yview()[1] >= 0.999
        text.configure(state="normal")
        if self.controller.model.paging.new_log:  # the seqs shown count in a log the server lost
            self.controller.model.paging.new_log = False
            if stale := [mark for mark in text.mark_names() if mark.startswith("seq-")]:
                text.mark_unset(*stale)
        text.mark_set("older", "1.0")
        text.mark_gravity("older", "right")
        prepended = inserted = 0
        pages: set[int] = set()  # the gaps a page goes into (at the "gap-N-page" mark)
        rows: int | None = None  # display lines above what the user reads (see _mark_reading)
        for line, mention in zip(lines, named, strict=True):
            if line.kind == "gap" and text.tag_ranges(f"gap-{line.gap}-line"):
                self._retell_gap(line)  # how many it still misses, or that none do
                continue
            if line.kind == "gap" and not line.text:
                continue  # the end of a gap whose line went with the oldest lines
            tags: tuple[str, ...] = ("mention",) if mention else ()
            names = [f"seq-{line.seq}"] if line.seq else []
            if line.ref is not None:
                names.append(f"ref-{line.ref}")
                if (pending := self._line_named(f"ref-{line.ref}")) is not None:
                    self._delete_lines(pending, f"{pending} +1 lines")  # it is stored now
            where = "older" if line.older else "end" if line.kind == "pending" else "pending"
            if line.kind == "gap":
                tags += (f"gap-{line.gap}-line",)
            elif line.gap:
                if self._line_named(f"gap-{line.gap}") is None:
                    continue  # its gap's line went with the oldest lines: nowhere to put it
                if self._line_named(f"seq-{line.seq}") is not None:
                    continue  # shown already (an own line re-sent, acknowledged as stored)
                where = f"gap-{line.gap}-page"
                if line.gap not in pages:  # a page goes above the one before (newer lines)
                    pages.add(line.gap)
                    text.mark_set(where, f"gap-{line.gap}")
                    text.mark_gravity(where, "right")
                    if rows is None:
                        rows = self._mark_reading(f"gap-{line.gap}")
                inserted += 1
            prepended += line.older
            if line.divider:
                text.mark_set("divider", where)
                text.mark_gravity("divider", "left")
                self._divider_left = line.divider if at_bottom else None
            elif self._divider_left:  # the replay after it comes first (then the others)
                replayed = line.kind == "history" and not line.older and not line.gap
                self._divider_left = self._divider_left - 1 if replayed else None
            # A pending line goes after the mark, which stays before it (with no line pending
            # yet, both are at the end: the mark's usual gravity would carry it along).
            text.mark_gravity("pending", "left" if where == "end" else "right")
            start = text.index("end-1c" if where == "end" else where)  # (where it goes)
            for part, style in line.segments():
                text.insert(where, part, (line.kind, f"{line.kind}-{style}", *tags))
            text.insert(where, "\n", (line.kind, *tags))
            for name in names:  # (right gravity: a line put in above moves it along)
                text.mark_set(name, start)
            if line.kind == "gap":  # its lines go right below it, each page above the last
                text.mark_set(f"gap-{line.gap}", where)
                text.mark_gravity(f"gap-{line.gap}", "left")
        text.mark_gravity("pending", "right")
        # Bounded: the oldest lines go (scrolling up brings them back), but never the lines
        # on screen while the user reads older ones, unless there are twice as many.
        count, cap = self._line_count(), MAX_TRANSCRIPT_LINES
        reading = not at_bottom and int(text.index("@0,0").split(".")[0]) <= count - cap
        if count > cap and (reading or ((prepended or inserted) and not at_bottom)):
            cap = MAX_SCROLLBACK_LINES
        excess = count - cap
        if excess > 0:
            self._delete_lines("1.0", f"{excess + 1}.0")
            paging = self.controller.model.paging
            for gap in list(paging.gaps):  # (first: they count in dropped_before)
                if not text.tag_ranges(f"gap-{gap}-line"):  # its line went with the oldest
                    paging.forget_gap(gap)
                    text.mark_unset(f"gap-{gap}", f"gap-{gap}-page")
            oldest = self._oldest_seq_shown()
            if oldest is not None:
                paging.dropped_before(oldest)
        text.configure(state="disabled")
        said = sum(
            line.kind in {"chat", "history"} and not line.older and not line.gap for line in lines
        )
        if at_bottom:  # following the newest lines: older ones loaded meanwhile change nothing
            self._show_newest()
        elif inserted and rows is not None and rows >= 0:
            # What the user reads stays where it was; the page goes above it, off screen.
            text.yview("reading")
            text.yview_scroll(-rows, "units")
        elif prepended:
            text.yview(f"{prepended + 1}.0")  # reading older lines: what was on top stays
        text.mark_unset("reading")
        if said and not at_bottom:  # (the user reads back: the view stays, and says so)
            self._tell_unseen(said)
        if self._divider_left == 0 and not at_bottom:
            self._divider_left = None  # the user scrolled during the replay: no jump after

    def _follow_newest(self) -> None:
        """(Asked for before the view changed again: only if it still follows the newest.)"""
        if self._follow:
            self._show_newest()

    def _transcript_shown(self, _event: object) -> None:
        """The chat came on screen: place a return that came before it (from the form)."""
        if self._divider_left == 0:
            self.transcript.after_idle(self._show_newest)

    def _show_newest(self) -> None:
        """Bring the newest line into view, unless that takes a return's divider out of it."""
        text = self.transcript
        text.see("end")
        if self._divider_left == 0 and text.winfo_ismapped():  # (else once it is shown)
            self._divider_left = None
            if text.dlineinfo("divider") is None:
                self._stop_at_divider()

    def _stop_at_divider(self) -> None:
        """The lines said while the user was away fill more than the view: show them from the
        first on, as the user reads, and say how many more are below."""
        self.transcript.yview("divider")
        self._follow = False
        self._unseen = 0
        self._count_below()
        self._divider_counted = True

    def _count_below(self) -> None:
        """Say how many stored lines are below the view (after a return, or a resize then)."""
        text = self.transcript
        last = text.index(f"@0,{text.winfo_height()} lineend")  # the bottom line in view
        marks = text.dump(last, "end", mark=True)
        count = sum(key == "mark" and name.startswith("seq-") for key, name, _ in marks)
        self._unseen = 0
        if count:
            self._tell_unseen(count)
        else:
            self.below.place_forget()

    def _mark_reading(self, at: str) -> int:
        """Before a page goes in at ``at``: if the line there is on screen (the user reads
        it, or the lines below), mark it, to stay after the page, and return how many display
        lines are above it on screen; else -1 (text that goes in off screen moves nothing)."""
        text = self.transcript
        if text.dlineinfo(at) is None:
            return -1
        text.mark_set("reading", at)
        text.mark_gravity("reading", "right")
        counted = text.count("@0,0", at, "displaylines")  # (None for none)
        return int(counted[0]) if counted else 0

    def _retell_gap(self, line: Line) -> None:
        """A gap's line says how many lines it still misses; with none left, it goes."""
        text, tag = self.transcript, f"gap-{line.gap}-line"
        start, end = _pairs(text.tag_ranges(tag))[0]
        if not line.text:
            text.delete(start, end)
            text.mark_unset(f"gap-{line.gap}", f"gap-{line.gap}-page")
            return
        text.delete(start, f"{start} lineend")  # (its newline stays: the gap's mark follows it)
        text.insert(start, line.text, (line.kind, f"{line.kind}-body", tag))

    def _load_into_gap_in_view(self) -> bool:
        """A gap's line came on screen: ask for the newest lines it still misses, a page each
        time it comes on screen (or, with the transcript full, say that they do not load)."""
        room = MAX_SCROLLBACK_LINES - self._line_count()
        text = self.transcript
        self._gaps_paged -= self.controller.model.refused_gaps()  # asked again, in view
        for gap_id, gap in self.controller.model.paging.gaps.items():
            ranges = text.tag_ranges(f"gap-{gap_id}-line")
            if not ranges or text.dlineinfo(ranges[0]) is None:
                self._gaps_paged.discard(gap_id)  # off screen: the next sighting loads a page
                continue
            if gap_id in self._gaps_paged:
                continue
            if room >= min(OLDER_PAGE, gap.missing):
                if self.controller.load_older(OLDER_PAGE, gap=gap_id):
                    self._gaps_paged.add(gap_id)
                    return True
                continue
            if text.get(ranges[0], f"{ranges[0]} lineend") != gap_full_text(gap):
                text.configure(state="normal")
                self._retell_gap(Line("gap", "", gap_full_text(gap), gap=gap_id))
                text.configure(state="disabled")
        return False

    def _load_older_at_top(self) -> None:
        """The top of the transcript is in view (scrolled up, or too few lines to fill the
        window): ask for the lines before it."""
        text = self.transcript
        first = text.yview()[0]
        room = MAX_SCROLLBACK_LINES - self._line_count()
        if first > 0.0:
            return
        if room >= OLDER_PAGE:
            self.controller.load_older(OLDER_PAGE)
        elif self.controller.model.wants_more_older() and not text.tag_ranges("full"):
            # Full: say so at the top, rather than look like the start of the room. (The
            # line goes with the oldest lines once others come in; then loading goes on.)
            text.configure(state="normal")
            said = full_text(MAX_SCROLLBACK_LINES)
            text.insert("1.0", f"{said}\n", ("gap", "gap-body", "full"))
            text.configure(state="disabled")

    def _line_count(self) -> int:
        return int(self.transcript.index("end-1c").split(".")[0]) - 1

    def _oldest_seq_shown(self) -> int | None:
        """The ``seq`` of the first stored line in the transcript (a few notices may come first)."""
        for key, name, _ in self.transcript.dump("1.0", "201.0", mark=True):
            if key == "mark" and name.startswith("seq-"):
                return int(name.removeprefix("seq-"))
        return None

    def _line_named(self, mark: str) -> str | None:
        """Where the line (or gap) named ``mark`` starts; None if the transcript has none."""
        try:
            return str(self.transcript.index(mark))
        except tk.TclError:  # no such mark: Tk read the name as an index, and found none
            return None

    def _delete_lines(self, start: str, end: str) -> None:
        """Delete the lines from ``start`` to ``end`` (both line starts), and their names: a
        deleted line's marks would stay, at the start of the line after it."""
        text = self.transcript
        marks = text.dump(start, end, mark=True)  # (not those at ``end``: the next line's)
        names = [name for key, name, _ in marks if key == "mark" and name.startswith(LINE_MARKS)]
        if names:
            text.mark_unset(*names)
        text.delete(start, end)

    # -- attention -----------------------------------------------------------------------

    def _focus_moved(self, _event: object) -> None:
        # Within the window focus moves out of one widget and into another: look once both
        # events are handled, then only a change of window counts.
        if self._focus_check is None and not self._closed:
            self._focus_check = self.root.after_idle(self._check_focus)

    def _check_focus(self) -> None:
        self._focus_check = None
        if self._closed:
            return
        focused = bool(self.root.tk.call("focus"))  # "" unless a window of ours has the focus
        if self.attention.focus(focused):
            self.root.title(self.attention.title(self.controller.model.title()))
        self._show_urgency()

    def _show_urgency(self) -> None:
        urgent = self.attention.urgent
        if urgent != self._urgent:
            self._urgent = urgent
            set_urgent(self.root, urgent)

    # -- discovery -----------------------------------------------------------------------

    def _start_discovery(self) -> None:
        if self.options.discovery:
            ring = self.doorbell.ring if self.doorbell is not None else None
            self._discovery = Discovery.start(self.servers, ring)
        self._render_servers_hint()


class Discovery:
    """Feeds "Servers on this network" from the mDNS browser's queue."""

    def __init__(self, browser: Browser, ring: Callable[[], None] | None = None) -> None:
        self.browser = browser
        self._ring = ring

    @classmethod
    def start(cls, servers: ServerList, ring: Callable[[], None] | None = None) -> Discovery:
        """Browse; ``ring`` is called when an event is queued (see ``Doorbell``)."""
        from chatsecure.discovery.mdns import Browser, local_networks

        servers.networks = local_networks()
        browser = Browser(RingingQueue(ring) if ring is not None else None)
        browser.start()  # opens zeroconf on its own thread; quick, and bounded by its timeout
        return cls(browser, ring)

    @property
    def error(self) -> str | None:
        return self.browser.error

    def poll(self, servers: ServerList, limit: int = 200) -> bool:
        """Apply the browser's events; whether any came."""
        changed = False
        for _ in range(limit):
            try:
                event = self.browser.events.get_nowait()
            except queue.Empty:
                break
            servers.apply(event)
            changed = True
        else:
            if self._ring is not None:  # more than a poll takes: the rest at the next turn
                self._ring()
        return changed

    def stop(self) -> None:
        self.browser.stop()


class TrustDialog:
    """The question "trust this server?", as a window that never blocks the event loop."""

    def __init__(
        self,
        app: App,
        pending: PendingQuestion,
        answered: Callable[[PendingQuestion, bool], None],
    ) -> None:
        self.pending = pending
        prompt = pending.prompt
        self.window = tk.Toplevel(app.root, name="trust", background=PALETTE["window"])
        self.window.title(prompt.title)
        self.window.transient(app.root)
        self.window.resizable(False, False)
        frame = ttk.Frame(self.window, name="body", padding=(22, 18))
        frame.pack(fill="both", expand=True)
        ttk.Label(
            frame,
            name="heading",
            text=prompt.heading,
            style="DangerHeading.TLabel" if prompt.danger else "Heading.TLabel",
            wraplength=520,
        ).pack(anchor="w")
        ttk.Label(frame, name="text", text=prompt.body, wraplength=520, justify="left").pack(
            anchor="w", pady=(8, 12)
        )
        rows = [("Fingerprint presented now" if prompt.danger else "Fingerprint", "fingerprint")]
        values = {"fingerprint": prompt.fingerprint, "pinned": prompt.pinned or ""}
        if prompt.pinned:
            rows.append(("Fingerprint pinned before", "pinned"))
        for label, name in rows:
            ttk.Label(frame, text=label, style="Muted.TLabel").pack(anchor="w")
            entry = ttk.Entry(frame, name=name, width=60, font=app.fonts["mono"])
            entry.insert(0, values[name])
            entry.configure(state="readonly")
            entry.pack(anchor="w", fill="x", pady=(2, 8))
        if prompt.advertised_note:
            ttk.Label(frame, name="advertised", text=prompt.advertised_note).pack(anchor="w")
        self.confirm: ttk.Checkbutton | None = None
        if prompt.confirm:
            self.confirm = ttk.Checkbutton(
                self.window, name="confirm", text=prompt.confirm, command=self._confirmed
            )
            self.confirm.state(["!alternate"])
            self.confirm.pack(anchor="w", padx=22)
        buttons = ttk.Frame(self.window, name="buttons", padding=(22, 12, 22, 18))
        buttons.pack(fill="x")
        self.accept = ttk.Button(
            buttons,
            name="accept",
            text=prompt.accept,
            style="Danger.TButton" if prompt.danger else "Accent.TButton",
            command=lambda: answered(pending, True),
        )
        self.accept.pack(side="right")
        cancel = ttk.Button(
            buttons, name="cancel", text=prompt.cancel, command=lambda: answered(pending, False)
        )
        cancel.pack(side="right", padx=(0, 8))
        if self.confirm is not None:
            self.accept.state(["disabled"])
            cancel.focus_set()
        else:
            self.accept.focus_set()
            self.window.bind("<Return>", lambda _e: answered(pending, True))
        self.window.bind("<Escape>", lambda _e: answered(pending, False))
        self.window.protocol("WM_DELETE_WINDOW", lambda: answered(pending, False))
        _center(self.window, over=app.root)

    def _confirmed(self) -> None:
        if self.confirm is not None:
            ticked = self.confirm.instate(["selected"])
            self.accept.state(["!disabled"] if ticked else ["disabled"])

    def destroy(self) -> None:
        self.window.destroy()


def _press(event: tk.Event[tk.Misc]) -> str:
    if isinstance(event.widget, ttk.Button):
        event.widget.invoke()
    return "break"


REFUSED_SHOWN = 200
"""Characters of a refused text that its notice shows when the whole is back in the box."""


def _shortened(line: Line) -> Line:
    """The notice of a refused line (its reason, then its text) with the start of the text
    only: a 4,000-character text would push its reason out of view."""
    unsent = safe_text(line.unsent or "")
    if len(unsent) <= REFUSED_SHOWN:
        return line
    reason = line.text.removesuffix(unsent)
    shown = f"{reason}{unsent[:REFUSED_SHOWN]}… (all {len(line.unsent or '')} characters"
    return dataclasses.replace(line, text=f"{shown} are back in the message box)")


def _pairs(ranges: tuple[Any, ...]) -> list[tuple[Any, Any]]:
    """``tag_ranges`` as (start, end) pairs, last first, so deleting keeps the others valid."""
    return list(zip(ranges[::2], ranges[1::2], strict=True))[::-1]


def _wrap_to_width(label: ttk.Label, padding: int = 0) -> None:
    """Wrap ``label``'s text to the width the layout gives it, whatever the window's size.

    ``padding`` is what the label's style puts left and right of the text, together.
    """

    def wrap(event: tk.Event[ttk.Label]) -> None:
        width = max(1, event.width - LABEL_CHROME - padding)
        if str(label.cget("wraplength")) != str(width):  # the same value would relayout again
            label.configure(wraplength=width)

    label.bind("<Configure>", wrap, add="+")


def _select_all_on_ctrl_a(entry: ttk.Entry) -> None:
    """Ctrl+A selects all the text, as on every desktop (Tk on X11 moves to the line start)."""

    def select_all(_event: object) -> str:
        entry.selection_range(0, "end")
        entry.icursor("end")
        return "break"  # not the class binding's move to the line start as well

    for sequence in ("<Control-a>", "<Control-A>"):
        entry.bind(sequence, select_all)


def _center(window: tk.Toplevel, over: tk.Misc) -> None:
    """Put ``window`` over the middle of ``over`` (window managers may still move it)."""
    window.update_idletasks()
    width, height = window.winfo_reqwidth(), window.winfo_reqheight()
    x = over.winfo_rootx() + max(0, (over.winfo_width() - width) // 2)
    y = over.winfo_rooty() + max(0, (over.winfo_height() - height) // 3)
    window.geometry(f"+{x}+{y}")


# --- looks ------------------------------------------------------------------------------


def _fonts(root: tk.Tk) -> dict[str, tkfont.Font]:
    base = tkfont.nametofont("TkDefaultFont", root=root)
    family = base.actual("family")
    size = max(10, int(base.actual("size")))
    base.configure(size=size)
    tkfont.nametofont("TkTextFont", root=root).configure(size=size)
    mono = tkfont.nametofont("TkFixedFont", root=root).actual("family")
    return {
        "body": tkfont.Font(root=root, family=family, size=size + 1),
        "bold": tkfont.Font(root=root, family=family, size=size + 1, weight="bold"),
        "italic": tkfont.Font(root=root, family=family, size=size + 1, slant="italic"),
        "title": tkfont.Font(root=root, family=family, size=size + 10, weight="bold"),
        "heading": tkfont.Font(root=root, family=family, size=size + 3, weight="bold"),
        "mono": tkfont.Font(root=root, family=mono, size=size),
    }


def _style(root: tk.Tk, fonts: dict[str, tkfont.Font]) -> None:
    style = ttk.Style(root)
    style.theme_use("clam")
    p = PALETTE
    style.configure(".", background=p["window"], foreground=p["text"])
    style.configure("TFrame", background=p["window"])
    style.configure("Panel.TFrame", background=p["panel"])
    style.configure("TLabelframe", background=p["window"], bordercolor="#d1d5db")
    style.configure("TLabelframe.Label", background=p["window"], foreground=p["muted"])
    style.configure("TLabel", background=p["window"])
    style.configure("Title.TLabel", font=fonts["title"], foreground=p["accent_dark"])
    style.configure("Room.TLabel", font=fonts["heading"])
    style.configure("Heading.TLabel", font=fonts["heading"])
    style.configure("DangerHeading.TLabel", font=fonts["heading"], foreground=p["error"])
    style.configure("PanelHeading.TLabel", background=p["panel"], font=fonts["bold"])
    style.configure("Muted.TLabel", foreground=p["muted"])
    style.configure("FieldError.TLabel", foreground=p["error"])
    style.configure("Notice.TLabel", foreground=p["muted"])
    style.configure("NoticeError.TLabel", foreground=p["error"])
    style.configure("Warn.TLabel", background=p["warn_bg"], padding=BANNER_PADDING)
    style.configure(
        "Error.TLabel", background=p["error_bg"], foreground=p["error"], padding=BANNER_PADDING
    )
    style.configure(
        "Status.TLabel", background=p["status_bg"], foreground="#374151", padding=(10, 4)
    )
    style.configure("TButton", padding=(12, 4))
    # A box that takes no typing (the chat ended) must not look as if it did.
    style.map(
        "TEntry",
        fieldbackground=[("disabled", p["window"])],
        foreground=[("disabled", p["muted"])],
    )
    style.configure("Accent.TButton", background=p["accent"], foreground="#ffffff")
    style.map(
        "Accent.TButton",
        background=[("disabled", "#93c5fd"), ("active", p["accent_dark"])],
        foreground=[("disabled", "#eff6ff")],
    )
    style.configure("Danger.TButton", background=p["error"], foreground="#ffffff")
    style.map(
        "Danger.TButton",
        background=[("disabled", "#fca5a5"), ("active", "#991b1b")],
        foreground=[("disabled", "#fef2f2")],
    )
    style.configure("Treeview", rowheight=int(fonts["body"].metrics("linespace")) + 8)
    style.configure("Treeview.Heading", font=fonts["bold"], background=p["window"], relief="flat")
    style.configure("Treeview", background=p["panel"], fieldbackground=p["panel"])


# --- entry point ------------------------------------------------------------------------


def run(options: GuiOptions) -> int:
    """Open the window and run until it is closed (or the process is told to stop)."""
    try:
        root = tk.Tk(className="chatsecure")
    except tk.TclError as exc:
        raise ConfigError(
            f"cannot open a window ({exc}); `chatsecure connect HOST` chats from a terminal"
        ) from None
    app = App(root, options)

    def stop(_signum: int, _frame: object) -> None:
        # Runs on the main thread between Tk events, once Tk's loop wakes (tests/gui/test_wake
        # checks that it does with the tick an hour away, as after the clock was set back).
        root.after_idle(app.close)

    try:
        # SIGHUP: the terminal it was started from was closed.
        with handled(("SIGTERM", "SIGINT", "SIGHUP"), stop):
            root.mainloop()
    finally:
        app.close()
    return 0


def _watches_files(root: tk.Tk) -> bool:
    """Whether this Tk can watch a pipe (``createfilehandler``): not on Windows."""
    return sys.platform != "win32" and hasattr(root.tk, "createfilehandler")
