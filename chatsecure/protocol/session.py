"""The server's view of one connection as a state machine. Pure, no I/O.

    state           input          ->  result
    --------------  -------------      ---------------------------------------------------
    AWAITING_HELLO  hello              JOINING: the server checks password and nick
    AWAITING_HELLO  ping, pong         answered / noted, stay
    AWAITING_HELLO  msg, history       error not_joined, CLOSED (dropped, stay, after a
                                       refused frame: pipelined after a malformed hello)
    JOINING         any frame          held until the server decides, then as in JOINED
    JOINING         accept()           JOINED (the server sent welcome)
    JOINED          msg, history,      delivered, stay
                    ping, pong
    JOINED          hello              error already_joined, stay
    any             quit               CLOSED
    any             bad frame          error, stay (CLOSED if the frame was too long)
    any             close()            CLOSED (the server refused the hello or dropped the client)

The I/O layer feeds bytes with ``receive_data`` and acts on what comes back: messages to
handle, or ``RemoteProtocolError`` values to answer with an ``error`` frame. After a ``hello``
it calls ``accept()`` once the client is in (which hands over the events held meanwhile) or
``close()``; so JOINED means what the server means by joined.
"""

from __future__ import annotations

import enum

from chatsecure.errors import LocalProtocolError, RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.protocol.limits import MAX_FRAME, MAX_TEXT
from chatsecure.protocol.messages import (
    ClientMessage,
    Hello,
    HistoryRequest,
    Ping,
    Pong,
    Quit,
    SendMsg,
    parse_client,
)


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    JOINING = "joining"
    JOINED = "joined"
    CLOSED = "closed"


Event = ClientMessage | RemoteProtocolError

_PING_PONG = (Ping, Pong)

_PAUSED = (State.JOINING, State.CLOSED)
"""States in which no frame is turned into an event (for now, or for good)."""


class ServerSession:
    """Turns the bytes one client sends into validated events, in protocol order."""

    __slots__ = ("_decoder", "_held", "_max_text", "_refused_before_hello", "state")

    def __init__(self, max_frame: int = MAX_FRAME, max_text: int = MAX_TEXT) -> None:
        self._decoder = FrameDecoder(max_frame)
        self._max_text = max_text
        self._held: list[bytes] = []
        """Frames received while JOINING, for ``accept``."""
        self._refused_before_hello = False
        """A frame was refused before any ``hello`` (a malformed one, say): the lines a client
        sent right behind it are dropped, not a reason to close (a corrected one may come)."""
        self.state = State.AWAITING_HELLO

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete. Nothing after CLOSED."""
        if self.state is State.CLOSED or self._decoder.error is not None:
            return []  # (an over-long line while JOINING waits for accept())
        frames = self._decoder.feed(data)
        if self.state is State.JOINING:
            self._held += frames
            return []
        return self._receive_frames(frames)

    def accept(self) -> list[Event]:
        """The server let the client in: JOINED; return the events of the frames held since."""
        if self.state is not State.JOINING:
            raise LocalProtocolError(ErrorCode.NOT_JOINED, f"accept() in state {self.state.value}")
        self.state = State.JOINED
        held, self._held = self._held, []
        return self._receive_frames(held)

    def close(self) -> None:
        """The server ended the session; whatever arrives later is ignored."""
        self.state = State.CLOSED
        self._held = []

    @property
    def blank_lines(self) -> int:
        """Blank lines received so far: they make no event, but a rate limit counts them."""
        return self._decoder.blank_lines

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def _receive_frames(self, frames: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for frame in frames:
            events.append(self._receive_frame(frame))  # one event per frame
            if self.state in _PAUSED:
                if self.state is State.JOINING:
                    self._held = frames[len(events) :]
                return events
        if self._decoder.error is not None:
            # The frames before an over-long line still count; then the stream is over.
            self.state = State.CLOSED
            events.append(self._decoder.error)
        return events

    def _receive_frame(self, frame: bytes) -> Event:
        try:
            message = parse_client(frame, self._max_text)
        except RemoteProtocolError as exc:
            if exc.fatal:
                self.state = State.CLOSED
            elif self.state is State.AWAITING_HELLO:
                self._refused_before_hello = True
            return exc
        return self._transition(message)

    def _transition(self, message: ClientMessage) -> Event:
        if isinstance(message, Quit):
            self.state = State.CLOSED
        elif isinstance(message, _PING_PONG):
            pass
        elif self.state is State.AWAITING_HELLO:
            if isinstance(message, Hello):
                self.state = State.JOINING
            elif self._refused_before_hello:
                return RemoteProtocolError(
                    ErrorCode.NOT_JOINED, "not in the room: send a corrected hello, then this again"
                )
            else:
                self.state = State.CLOSED
                return RemoteProtocolError(ErrorCode.NOT_JOINED, "send hello first", fatal=True)
        elif isinstance(message, Hello):
            return RemoteProtocolError(ErrorCode.ALREADY_JOINED, "hello was already sent")
        else:
            assert isinstance(message, SendMsg | HistoryRequest)  # noqa: S101 - exhaustive
        return message
