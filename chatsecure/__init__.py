"""chatsecure: a secure chat for local networks and beyond."""

from __future__ import annotations

__version__ = "0.1.0"

from chatsecure.errors import (
    ChatError,
    ConfigError,
    ConnectionClosed,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    TrustError,
)

__all__ = [
    "ChatError",
    "ConfigError",
    "ConnectionClosed",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "TrustError",
    "__version__",
]
