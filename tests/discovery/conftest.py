"""Discovery fixtures: the network-namespace lab (see ``tests/netns.py``)."""

from __future__ import annotations

from tests.netns import lab

__all__ = ["lab"]
