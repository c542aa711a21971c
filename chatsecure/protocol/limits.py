"""Every limit and default of the protocol and the server, in one place."""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1
"""The wire protocol version; sent in ``welcome`` and advertised over mDNS as ``v``."""

DEFAULT_PORT: Final = 7467
"""The TCP port a server listens on when none is given (unassigned by IANA)."""

MAX_FRAME: Final = 16 * 1024
"""Longest line (bytes, newline excluded) a peer may send; longer closes the connection."""

MAX_TEXT: Final = 4000
"""Longest message text in characters; longer is refused, the connection kept."""

MAX_NICK: Final = 32
"""Longest nick in characters."""

HELLO_TIMEOUT: Final = 10.0
"""Seconds a client has after the TLS handshake to send ``hello``."""

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a client has to finish the TLS handshake."""

SEND_BUFFER_LIMIT: Final = 1024 * 1024
"""Bytes a session may have queued for sending before it is dropped as a slow consumer."""

CERT_DAYS: Final = 825
"""Default validity of a generated certificate, in days."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds a client waits for TCP, TLS and ``welcome`` together."""
