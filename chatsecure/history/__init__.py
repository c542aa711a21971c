"""The room's durable, ordered log of chat lines (see ``log.py`` for the interface)."""

from __future__ import annotations

from chatsecure.history.log import (
    DEFAULT_DB,
    Appended,
    Appends,
    Draft,
    Fed,
    HistoryError,
    LogReset,
    Opened,
    Record,
    RoomLog,
    SharedLog,
)
from chatsecure.history.memory import MemoryLog
from chatsecure.history.sqlite import SqliteLog

__all__ = [
    "DEFAULT_DB",
    "Appended",
    "Appends",
    "Draft",
    "Fed",
    "HistoryError",
    "LogReset",
    "MemoryLog",
    "Opened",
    "Record",
    "RoomLog",
    "SharedLog",
    "SqliteLog",
]
