"""Bytes <-> frames: newline-delimited lines with a size cap. Pure, no I/O."""

from __future__ import annotations

from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.limits import MAX_FRAME


class FrameDecoder:
    """Split a byte stream into ``\\n``-terminated lines, whatever the chunking.

    Blank lines are skipped and a trailing ``\\r`` is dropped, so a human at ``openssl s_client``
    can type frames too; ``blank_lines`` counts the skipped ones, so that a rate limit can still
    charge them (a stream of bare newlines must cost a client like any other). A line longer
    than ``max_frame`` bytes ends the stream as soon as it is known to be too long, even before
    its newline arrives, so an endless line never costs more than ``max_frame`` bytes of memory.
    The frames before it are still returned and ``error`` is set to a fatal
    ``RemoteProtocolError``; every later ``feed`` raises it. What comes out never depends on how
    the stream was split into chunks.
    """

    __slots__ = ("_buffer", "_max_frame", "_more", "_pending", "blank_lines", "error")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = b""
        """The start of the unfinished line: what followed the last newline."""
        self._more = bytearray()
        """What came of the unfinished line after that, in chunks without a newline: added to
        at the end (amortised, not a copy of all at each chunk; nor an object per chunk, which
        a byte at a time would make 48 bytes of memory each), joined once, when the line ends."""
        self._pending = 0
        self._max_frame = max_frame
        self.error: RemoteProtocolError | None = None
        """Set once a line was too long; the stream is over then."""
        self.blank_lines = 0
        """Blank lines skipped so far (before an over-long line, if there was one)."""

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk of the stream; return the complete frames it finished."""
        if self.error is not None:
            raise self.error
        if not data:
            return []
        *lines, rest = data.split(b"\n")
        if not lines:
            # Nothing ends here: it waits, and what came before it is not looked at again (a
            # long line trickled a byte at a time costs its length, not its square).
            self._more += data
            self._pending += len(data)
            # The limit is for the line without its "\r\n": a "\r" last may be half of one.
            if self._too_long(self._pending - data.endswith(b"\r")):
                return self._fail([])
            return []
        if self._more:  # (only the line that ends here is joined, not the whole chunk)
            lines[0] = b"".join((self._buffer, self._more, lines[0]))
            self._more = bytearray()
        elif self._buffer:
            lines[0] = self._buffer + lines[0]
        frames: list[bytes] = []
        for line in lines:
            frame = line.removesuffix(b"\r")
            if self._too_long(len(frame)):
                return self._fail(frames)
            if frame:
                frames.append(frame)
            else:
                self.blank_lines += 1
        if self._too_long(len(rest) - rest.endswith(b"\r")):
            return self._fail(frames)
        self._buffer = rest
        self._pending = len(rest)
        return frames

    @property
    def pending(self) -> int:
        """Bytes held back while waiting for the end of a line."""
        return self._pending

    def _too_long(self, length: int) -> bool:
        return 0 < self._max_frame < length

    def _fail(self, frames: list[bytes]) -> list[bytes]:
        self._buffer, self._more, self._pending = b"", bytearray(), 0
        self.error = RemoteProtocolError(
            ErrorCode.FRAME_TOO_LONG, f"frame longer than {self._max_frame} bytes", fatal=True
        )
        return frames
