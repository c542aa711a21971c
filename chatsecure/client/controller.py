"""The desktop client's controller: owns the model and the current ``ChatClient``."""

from __future__ import annotations

import collections
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

from chatsecure.client.core import (
    ChatClient,
    ClientEvent,
    Connected,
    Disconnected,
    Queued,
    Received,
    shown_seq,
)
from chatsecure.client.doorbell import RingingQueue
from chatsecure.client.form import ConnectRequest, GuiOptions, remember_nick, remember_server
from chatsecure.client.model import ChatModel, Outgoing, Phase
from chatsecure.client.resume import LastSeen, client_id
from chatsecure.client.transcript import Line, notice
from chatsecure.client.trust_dialog import PendingQuestion, TrustBridge
from chatsecure.errors import LocalProtocolError
from chatsecure.protocol.messages import Chat
from chatsecure.tls.trust import KnownServers, TrustPolicy

EVENTS_PER_TICK = 500
"""Client events handled per poll of the Tk thread, so that a flood never freezes the window."""


@dataclass(frozen=True, slots=True)
class Update:
    """What changed in one poll: transcript lines to add, whether views must be refreshed."""

    lines: list[Line]
    changed: bool
    """Whether anything but the transcript may have changed (a line said changes only it)."""


class Controller:
    """Owns the model and the current ``ChatClient``; every method runs on the UI thread."""

    def __init__(
        self,
        options: GuiOptions,
        store: KnownServers | None = None,
        *,
        now: Callable[[], float] = time.time,
        ring: Callable[[], None] | None = None,
    ) -> None:
        """``ring``: called, from the network thread, when there is something to ``poll``
        (an event, a trust question), and by ``poll`` when it left some for next time; the
        front end then polls at once rather than on its next timer tick."""
        self.options = options
        self.store = store or KnownServers()
        self.model = ChatModel()
        self.client: ChatClient | None = None
        self.bridge: TrustBridge | None = None
        self._retired: list[tuple[ChatClient, TrustBridge]] = []
        self._now = now
        self._ring = ring
        self._unqueued: collections.deque[str] = collections.deque()
        """Lines handed to the client whose ``Queued`` has not been polled yet."""

    @property
    def unsent(self) -> int:
        """Own lines typed and not stored yet (nor told as not sent)."""
        return len(self._unqueued) + len(self.model.pending)

    def connect(self, request: ConnectRequest) -> None:
        """Start connecting; a client still running is retired first."""
        self._retire()
        bridge = TrustBridge(ring=self._ring)
        policy = TrustPolicy(
            self.store,
            ask=bridge.ask,
            accept_new=self.options.accept_new,
            fingerprint=self.options.fingerprint,
        )
        client = ChatClient(
            request.target(self.options),
            request.nick,
            policy,
            password=request.password,
            reconnect=self.options.reconnect,
            client_id=client_id(),
            last_seen=LastSeen(),
            shows=True,
            events=RingingQueue(self._ring) if self._ring is not None else None,
        )
        self.model.connecting(request)
        self.client, self.bridge = client, bridge
        client.start()

    def cancel(self) -> None:
        """Stop a connection attempt."""
        if self.model.phase is Phase.CONNECTING:
            self._retire()
            self.model.cancelled()

    def leave(self) -> None:
        """Quit the server (if still connected) and go back to the connect view."""
        unsent = [*self.model.pending.values(), *self._unqueued]
        self._retire()
        self.model.left(unsent)

    def submit(self, text: str) -> Outgoing:
        """The user pressed Enter in the message box."""
        now = self._now()
        out = self.model.outgoing(text, now)
        if out.quit:
            self.leave()
        elif out.send is not None and self.client is not None:
            try:
                self.client.send(out.send)
            except LocalProtocolError as exc:  # too long for a frame, or not valid text
                said = exc.message[:1].upper() + exc.message[1:]
                return Outgoing(line=notice("error", f"{said}.", now))
            self._unqueued.append(out.send)
        return out

    def load_older(self, limit: int = 100, gap: int = 0) -> bool:
        """Ask the server for lines older than those shown (the user scrolled to the top) or,
        with ``gap``, for the newest lines still missing in that gap (scrolled to it)."""
        before = self.model.wants_gap(gap, limit) if gap else self.model.wants_older(limit)
        if before is None or self.client is None:
            return False
        self.client.request_history(before, limit)
        return True

    def next_question(self) -> PendingQuestion | None:
        return self.bridge.next() if self.bridge is not None else None

    def answer(self, pending: PendingQuestion, yes: bool) -> None:
        """The user answered a trust dialog."""
        if not yes:
            self.model.declined = pending.question
        pending.answer(yes)

    def poll(self, limit: int = EVENTS_PER_TICK) -> Update:
        """Apply the events the client queued since the last poll."""
        lines: list[Line] = []
        changed = False
        self._reap()
        client = self.client
        if client is None:
            return Update(lines, changed)
        ended, shown = False, 0
        for _ in range(limit):
            try:
                event = client.events.get_nowait()
            except queue.Empty:
                break
            changed = changed or not _only_a_line(event)
            if isinstance(event, Queued) and self._unqueued:
                self._unqueued.popleft()
            lines += self.model.apply(event, self._now())
            shown += bool(shown_seq(event))
            if isinstance(event, Connected) and (request := self.model.request) is not None:
                remember_nick(request.nick)
                remember_server(request.host, request.port)
            # Only the NotSent of a line typed meanwhile can follow Disconnected: show it too.
            ended = ended or isinstance(event, Disconnected)
        else:
            if self._ring is not None:  # more than a poll takes: the rest at the next turn
                self._ring()
        if shown:  # (the window shows these lines before it polls again)
            client.shown(shown)
        if ended:  # (every line it still had was told as NotSent before this)
            self._retire()
        return Update(lines, changed)

    def close(self, timeout: float = 3.0) -> None:
        """Quit and wait (up to ``timeout`` seconds in all) for every network thread."""
        self._retire()
        deadline = time.monotonic() + timeout
        for client, _ in self._retired:
            client.close(max(0.0, deadline - time.monotonic()))
        self._reap()

    @property
    def busy(self) -> bool:
        """Whether any network thread is still running."""
        self._reap()
        return self.client is not None or bool(self._retired)

    def _retire(self) -> None:
        self._unqueued.clear()
        if self.client is not None and self.bridge is not None:
            self.bridge.close()
            self.client.quit(at_once=True)  # (a Leave that waited has nothing left to send)
            self._retired.append((self.client, self.bridge))
        self.client, self.bridge = None, None

    def _reap(self) -> None:
        self._retired = [(c, b) for c, b in self._retired if c.alive]


def _only_a_line(event: ClientEvent) -> bool:
    """Whether ``event`` is a line said (or loaded), which adds to the transcript and changes
    nothing else shown: a busy room must not redraw the rest of the window for each."""
    return isinstance(event, Received) and isinstance(event.message, Chat)
