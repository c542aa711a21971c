"""Closed sets of the wire protocol: message types and error codes."""

from __future__ import annotations

import enum
from typing import Final


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` frame. Clients may switch on these; never rename one."""

    BAD_JSON = "bad_json"
    """The line was not valid UTF-8 JSON, or not a JSON object. The connection is kept."""
    BAD_MESSAGE = "bad_message"
    """A known ``type`` with missing or wrongly typed fields. The connection is kept."""
    UNKNOWN_TYPE = "unknown_type"
    """A ``type`` this server does not know. The connection is kept."""
    FRAME_TOO_LONG = "frame_too_long"
    """A line longer than the frame limit. The connection is closed."""
    TEXT_TOO_LONG = "text_too_long"
    """A message text over the text limit. The message is refused, the connection kept."""
    BAD_NICK = "bad_nick"
    """The nick in ``hello`` is empty or too long once cleaned of what cannot show. Closed."""
    NOT_JOINED = "not_joined"
    """A ``msg`` or ``history`` before ``hello``. Closed, unless a frame before it was refused
    (a malformed ``hello``): then it is dropped and a corrected ``hello`` may follow."""
    ALREADY_JOINED = "already_joined"
    """A second ``hello``. The connection is kept."""
    HELLO_TIMEOUT = "hello_timeout"
    """No ``hello`` in time. Closed."""
    SLOW_CONSUMER = "slow_consumer"
    """The client fell too far behind reading. Closed."""
    SERVER_FULL = "server_full"
    """The server has as many sessions as it allows. Closed."""
    TOO_MANY_CONNECTIONS = "too_many_connections"
    """This IP address has as many connections as the server allows one address. Closed."""
    RATE_LIMITED = "rate_limited"
    """Frames faster than the rate limit; that frame is dropped, the connection kept."""
    FLOODING = "flooding"
    """Kept sending far above the rate limit. Closed."""
    AUTH_FAILED = "auth_failed"
    """Missing or wrong room password. Closed."""
    IDLE_TIMEOUT = "idle_timeout"
    """Nothing received (not even ``pong``) for the idle timeout. Closed."""
    SHUTTING_DOWN = "shutting_down"
    """The server is stopping and takes no new sessions. Closed."""
    NOT_STORED = "not_stored"
    """The server could not store a line (a full disk): it was not delivered. Kept."""
    HISTORY_UNAVAILABLE = "history_unavailable"
    """(v2) The server could not read its log to answer ``history`` (its Redis is out of reach,
    a disk error): no ``history_end`` follows; ask again later. Kept."""
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    """A server of a cluster cannot let anyone in while the room's shared log (Redis) is out
    of reach: try again later, or another server of the cluster. Closed."""
    REPLACED = "replaced"
    """(v2) A new connection said ``hello`` with this one's ``client`` id and nick: the client
    came back (its old connection lingering, unseen by the server), or a second program on
    the same config folder started. This older connection ends; a client does not reconnect
    after it, or the two would take turns for ever. Closed."""


class NoticeCode(enum.StrEnum):
    """The ``code`` of a ``notice`` frame. Clients may switch on these; never rename one."""

    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    """The room's shared log (Redis) is out of reach: new lines are refused (``not_stored``)
    until ``cluster_available``. The connection is kept; lines stored before are safe."""
    CLUSTER_AVAILABLE = "cluster_available"
    """The shared log is back: lines are taken again, and what others said meanwhile follows."""


LEAVE_REASONS: Final = frozenset(
    {
        "quit",
        "closed",
        "error",
        "timeout",
        ErrorCode.SLOW_CONSUMER,
        ErrorCode.FLOODING,
        ErrorCode.FRAME_TOO_LONG,
        ErrorCode.REPLACED,
        "node_lost",
    }
)
"""The ``reason`` of a ``leave``: how the session ended (``quit``; ``closed``, EOF; ``error``,
a broken connection; ``timeout``, idle) or the error code it was dropped with (``replaced``:
the same client is back on a new connection, and joins next); in a cluster,
``node_lost``: the server the peer was on stopped or died. Never
``shutdown``: at shutdown everyone gets ``shutdown`` and nobody a ``leave``."""
