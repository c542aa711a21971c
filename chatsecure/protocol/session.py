"""The server's view of one connection as a state machine. Pure, no I/O.

    state           frame     ->  result
    --------------  --------      ------------------------------------------
    AWAITING_HELLO  hello         JOINED (the server then assigns the nick)
    AWAITING_HELLO  ping, pong    answered / noted, stay
    AWAITING_HELLO  msg           error not_joined, CLOSED
    JOINED          msg, ping,    delivered, stay
                    pong
    JOINED          hello         error already_joined, stay
    any             quit          CLOSED
    any             bad frame     error, stay (CLOSED if the frame was too long)

The I/O layer feeds bytes with ``receive_data`` and acts on what comes back: messages to
handle, or ``RemoteProtocolError`` values to answer with an ``error`` frame.
"""

from __future__ import annotations

import enum

from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.protocol.limits import MAX_FRAME, MAX_TEXT
from chatsecure.protocol.messages import (
    ClientMessage,
    Hello,
    Ping,
    Pong,
    Quit,
    SendMsg,
    parse_client,
)


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    JOINED = "joined"
    CLOSED = "closed"


Event = ClientMessage | RemoteProtocolError


class ServerSession:
    """Turns the bytes one client sends into validated events, in protocol order."""

    __slots__ = ("_decoder", "_max_text", "state")

    def __init__(self, max_frame: int = MAX_FRAME, max_text: int = MAX_TEXT) -> None:
        self._decoder = FrameDecoder(max_frame)
        self._max_text = max_text
        self.state = State.AWAITING_HELLO

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete. Nothing after CLOSED."""
        if self.state is State.CLOSED:
            return []
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            events.append(self._receive_frame(frame))
            if self.closed:
                return events
        if self._decoder.error is not None:
            # The frames before an over-long line still count; then the stream is over.
            self.state = State.CLOSED
            events.append(self._decoder.error)
        return events

    @property
    def blank_lines(self) -> int:
        """Blank lines received so far: they make no event, but a rate limit counts them."""
        return self._decoder.blank_lines

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def _receive_frame(self, frame: bytes) -> Event:
        try:
            message = parse_client(frame, self._max_text)
        except RemoteProtocolError as exc:
            if exc.fatal:
                self.state = State.CLOSED
            return exc
        return self._transition(message)

    def _transition(self, message: ClientMessage) -> Event:
        if isinstance(message, Quit):
            self.state = State.CLOSED
        elif isinstance(message, Ping | Pong):
            pass
        elif self.state is State.AWAITING_HELLO:
            if isinstance(message, Hello):
                self.state = State.JOINED
            else:
                self.state = State.CLOSED
                return RemoteProtocolError(ErrorCode.NOT_JOINED, "send hello first", fatal=True)
        elif isinstance(message, Hello):
            return RemoteProtocolError(ErrorCode.ALREADY_JOINED, "hello was already sent")
        else:
            assert isinstance(message, SendMsg)  # noqa: S101 - exhaustive over ClientMessage
        return message
