"""The browser's resolve slots take turns: names that change without end cannot keep them.

No network here: the browser's lookups are its own method, given names by ``_changed`` as
zeroconf's browser would; what is tested is the bookkeeping of slots and waiting names.
"""

from __future__ import annotations

import asyncio

import pytest
from zeroconf import ServiceStateChange

from chatsecure.discovery.mdns import Browser
from chatsecure.discovery.records import SERVICE_TYPE, DiscoveredServer

HOGS = [f"hog{n}.{SERVICE_TYPE}" for n in range(8)]
GENUINE = f"genuine.{SERVICE_TYPE}"


class ChangingBrowser(Browser):
    """A browser whose hog names change again during every lookup (a neighbour rewriting
    their TXT records faster than a lookup takes)."""

    def __init__(self) -> None:
        super().__init__(max_resolving=len(HOGS))
        self.looked_up: list[str] = []

    async def _lookup(self, name: str) -> DiscoveredServer | None:
        self.looked_up.append(name)
        await asyncio.sleep(0.005)
        if name in HOGS:
            self._changed(None, SERVICE_TYPE, name, ServiceStateChange.Updated)  # type: ignore[arg-type]
        return None


@pytest.mark.asyncio
async def test_a_name_waiting_is_looked_up_while_others_change_without_end() -> None:
    browser = ChangingBrowser()
    for name in HOGS:
        browser._changed(None, SERVICE_TYPE, name, ServiceStateChange.Added)  # type: ignore[arg-type]
    browser._changed(None, SERVICE_TYPE, GENUINE, ServiceStateChange.Added)  # type: ignore[arg-type]
    for _ in range(100):  # 0.5 s at most
        if GENUINE in browser.looked_up:
            break
        await asyncio.sleep(0.005)
    try:
        assert GENUINE in browser.looked_up
        assert len(browser._resolving) <= len(HOGS)
    finally:
        await browser._close()
