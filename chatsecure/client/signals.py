"""Signals that end a client (a ``kill``, the terminal closed), handled the same in each."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def handled(names: tuple[str, ...], handler: Callable[[int, Any], object]) -> Iterator[None]:
    """While in, ``handler`` takes the signals ``names`` that this platform has, except those
    ignored when the process started (``nohup`` ignores SIGHUP); the old handlers come back
    after. Only the main thread may set handlers: elsewhere (a test's thread) it sets none."""
    signums = [
        signum
        for signum in (getattr(signal, name) for name in names if hasattr(signal, name))
        if signal.getsignal(signum) is not signal.SIG_IGN
    ]
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        signums = []
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
