"""The project's exception family.

Low-level exceptions (``ssl.SSLError``, ``OSError``, ``json.JSONDecodeError``) are mapped to
these at the I/O boundary, once; everything above that boundary only sees ``ChatError``.
"""

from __future__ import annotations

from chatsecure.protocol.codes import ErrorCode


class ChatError(Exception):
    """Base class of every error chatsecure raises on purpose."""


class ProtocolError(ChatError):
    """The wire protocol was broken; ``code`` is what goes in the ``error`` frame.

    ``ref`` is that of the ``msg`` or ``history`` refused, when it had a valid one: the
    ``error`` names it, so that the client can tell which of its lines will never be stored,
    or which request gets no answer."""

    def __init__(
        self, code: ErrorCode, message: str, *, fatal: bool = False, ref: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.ref = ref


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow. Costs only that connection."""


class TrustError(ChatError):
    """The server's certificate could not be trusted; nothing was sent to it."""


class ConfigError(ChatError):
    """A setting, file or command-line value is unusable; the message says how to fix it."""


class ConnectionClosed(ChatError):
    """The connection is gone (EOF, reset, TLS failure or timeout)."""
