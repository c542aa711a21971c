"""Small helpers shared by the tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import time

from chatsecure.testing import RawClient

QUIET = 0.2
"""Seconds to wait before deciding that nothing more is coming."""


def all_silent(*clients: RawClient, wait: float = QUIET) -> bool:
    """True if none of ``clients`` receives a frame within ``wait`` (one wait for all)."""
    time.sleep(wait)
    return all(client.silent(0.01) for client in clients)


def chat_works(sender: RawClient, receiver: RawClient, text: str = "still chatting") -> None:
    """Assert that a message from ``sender`` reaches ``receiver`` intact."""
    sender.send({"type": "msg", "text": text})
    frame = receiver.expect("msg")
    assert frame["text"] == text
