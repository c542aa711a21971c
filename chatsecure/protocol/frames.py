"""Bytes <-> frames: newline-delimited lines with a size cap. Pure, no I/O."""

from __future__ import annotations

from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.limits import MAX_FRAME


class FrameDecoder:
    """Split a byte stream into ``\\n``-terminated lines, whatever the chunking.

    Blank lines are skipped and a trailing ``\\r`` is dropped, so a human at ``openssl s_client``
    can type frames too. A line longer than ``max_frame`` bytes raises a fatal
    ``RemoteProtocolError`` as soon as it is known to be too long, even before its newline
    arrives, so an endless line never costs more than ``max_frame`` bytes of memory.
    """

    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = b""
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next chunk of the stream; return the complete frames it finished."""
        buffer = self._buffer + data if self._buffer else data
        if b"\n" not in data:
            self._buffer = buffer
            self._check(buffer)
            return []
        *lines, self._buffer = buffer.split(b"\n")
        self._check(self._buffer)
        frames = []
        for line in lines:
            frame = line[:-1] if line.endswith(b"\r") else line
            if frame:
                self._check(frame)
                frames.append(frame)
        return frames

    @property
    def pending(self) -> int:
        """Bytes held back while waiting for the end of a line."""
        return len(self._buffer)

    def _check(self, line: bytes) -> None:
        # The limit is for the line without its "\r\n"; a partial line may still lose a "\r".
        if self._max_frame and len(line) > self._max_frame + (line.endswith(b"\r")):
            self._buffer = b""
            raise RemoteProtocolError(
                ErrorCode.FRAME_TOO_LONG,
                f"frame longer than {self._max_frame} bytes",
                fatal=True,
            )
