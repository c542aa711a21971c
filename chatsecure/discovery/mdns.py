"""The zeroconf side of discovery: advertise a server, browse for servers.

Each ``Advertiser`` and ``Browser`` runs its own zeroconf instance on an asyncio loop on a
thread of its own, so mDNS traffic never shares the chat server's event loop (a burst of
queries cannot delay a chat line) and front ends get events through a ``queue.Queue``,
never callbacks on their thread. ``stop()`` returns only once that thread has ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import ifaddr
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf import (
    Error as ZeroconfError,
)
from zeroconf._dns import DNSPointer, DNSQuestion, DNSRecord  # not in zeroconf's __all__
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from chatsecure.discovery.records import (
    DISCOVER_TIMEOUT,
    MAX_PENDING,
    MAX_RESOLVING,
    MAX_SERVERS,
    RECORD_TTL,
    RESOLVE_TIMEOUT,
    SERVICE_TYPE,
    SETTLE_MAX,
    SETTLE_QUIET,
    DiscoveredServer,
    DiscoveryEvent,
    ServerAdded,
    ServerRemoved,
    ServerUpdated,
    addresses_settled,
    advertised_addresses,
    encode_txt,
    host_name,
    instance_label,
    instance_label_of,
    instance_name,
    match_servers,
    renamed,
    server_from_records,
    unadvertised_reason,
    without_loopback,
)
from chatsecure.errors import ChatError
from chatsecure.protocol.ratelimit import WarningBudget
from chatsecure.tls.certs import local_addresses

__all__ = [
    "SERVICE_TYPE",
    "Advertiser",
    "Browser",
    "DiscoveredServer",
    "DiscoveryEvent",
    "ServerAdded",
    "ServerRemoved",
    "ServerUpdated",
    "apply_event",
    "browse",
    "find_server",
    "local_networks",
    "multicast_interfaces",
]

log = logging.getLogger(__name__)

Interfaces = list[str | int] | InterfaceChoice
"""What zeroconf listens on: IPv4 addresses and IPv6 interface indexes, or a choice."""

_Wanted = tuple[tuple[str, ...], tuple[str | int, ...] | InterfaceChoice]
"""What an advertiser would advertise: the addresses, and the interfaces it would do it on."""

STOP_TIMEOUT = 5.0
"""Seconds ``stop()`` waits for goodbye packets and the zeroconf shutdown."""

NO_MULTICAST = "no network interface other than loopback"

RECHECK = 30.0
"""Seconds between an advertiser's looks at the host's addresses: a network that comes up
after the server, or an address added or gone, is advertised this much later at most."""

SETTLE_POLL = 0.02
"""Seconds between looks at zeroconf's cache while a service's addresses settle."""

TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_AAAA, TYPE_SRV, TYPE_NSEC = 1, 12, 16, 28, 33, 47
CLASS_IN, FLAGS_QUERY = 1, 0
"""DNS record types, class and the header flags of a query (RFC 1035, 2782, 3596, 4034)."""

WATCH_POLL = 1.0
"""Longest a browser goes between looks at whether the servers it lists are still there."""

REFRESH_AT = (80, 85, 90, 95)
"""Percentages of a server's SRV TTL at which a browser asks for it again (RFC 6762 5.2): a
live server answers and stays listed; one that does not is gone once the record expires."""

FLOOD_WARN_EVERY = 60.0
"""Fewest seconds between two warnings of one kind about a flood of announcements: one line a
minute while it lasts, not one per name it brings."""

CLAIM_WAIT = 1.5
"""Seconds an advertiser listens for a holder of its name after zeroconf's last probe: a
responder may hold an answer up to a second (RFC 6762 §14), and aggregate it a little more."""

QM = DNSQuestionType.QM
"""Ask for multicast answers only. A unicast answer (QU) reaches just one of the mDNS stacks
that share an address (avahi and a browser, two browsers on one host), so the others would
wait for the next query; a multicast answer reaches them all."""


def multicast_interfaces() -> list[str | int]:
    """Every non-loopback interface, as zeroconf wants them: IPv4 addresses, IPv6 indexes.

    Loopback is left out on purpose: nothing on it can be found by another host, and IPv6
    multicast on ``lo`` only produces send errors.
    """
    chosen: list[str | int] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                address = ipaddress.IPv6Address(ip.ip[0])
                if not address.is_loopback and adapter.index is not None:
                    chosen.append(adapter.index)
            elif not ipaddress.IPv4Address(ip.ip).is_loopback:
                chosen.append(ip.ip)
    return list(dict.fromkeys(chosen))


def local_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks this host has an address on, for picking the address to connect to."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.ip_interface(f"{address}/{ip.network_prefix}").network)
    return networks


def _open_zeroconf(interfaces: Interfaces | None) -> AsyncZeroconf:
    """A zeroconf instance on the running loop; raises ``OSError`` when there is no way out."""
    chosen = multicast_interfaces() if interfaces is None else interfaces
    if not chosen:
        raise OSError(NO_MULTICAST)
    try:
        # Made inside a coroutine, zeroconf attaches to the running loop: no thread of its own.
        return AsyncZeroconf(interfaces=chosen)
    except (RuntimeError, ValueError) as exc:  # zeroconf: "No interfaces to listen on"
        raise OSError(str(exc)) from exc


class _LoopThread:
    """An asyncio event loop running on a daemon thread of its own, made on ``start()``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(self.loop,), name=self.name)
        self._thread.daemon = True
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        assert self.loop is not None  # noqa: S101 - start() first
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loop, cancel what is left on it and wait for the thread to end."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if thread.is_alive():
            log.warning("the %s thread did not end in %.0f s", self.name, timeout)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


# --- advertising ------------------------------------------------------------------------


class Advertiser:
    """Advertise one chatsecure server over mDNS/DNS-SD until ``stop()``.

    ``start()`` returns at once; probing and announcing (about two seconds) happen in the
    background. If the name is taken on the link, zeroconf picks ``<name>-2`` and so on, and
    the name that was got is logged. When there is nothing to advertise (no multicast
    interface, loopback addresses only) a warning says why and the server goes on without.
    Every ``recheck`` seconds the advertiser looks at the host's addresses and interfaces
    again; when what it would advertise changed, it withdraws and registers anew.
    """

    def __init__(
        self,
        name: str,
        port: int,
        fingerprint: str,
        addresses: list[str] | None = None,
        *,
        listening: Sequence[str] = ("0.0.0.0", "::"),  # noqa: S104
        interfaces: Interfaces | None = None,
        cluster: str | None = None,
        ttl: int = RECORD_TTL,
        recheck: float = RECHECK,
    ) -> None:
        self.name = name
        self.cluster = cluster
        """TXT ``cluster``: the room's id when this server is a node of a cluster."""
        self.port = port
        self.fingerprint = fingerprint
        self.addresses = list(addresses) if addresses else None
        """Addresses to advertise; ``None`` derives them from ``listening``."""
        self.listening = tuple(listening)
        """The hosts the server listens on; a wildcard stands for every local address of its
        IP version (see ``advertised_addresses``)."""
        self.interfaces = interfaces
        self.ttl = ttl
        """Seconds each advertised record lives: how long a killed server stays listed."""
        self.recheck = recheck
        self.advertised_name: str | None = None
        """The friendly name advertised, after any renaming; set once registered."""
        self.instance: str | None = None
        """The full service instance name registered; set once registered."""
        self.error: str | None = None
        """Why the server is not advertised, if it is not."""
        self.done = threading.Event()
        """Set when the first registration finished, successfully (``instance`` set) or not."""
        self._thread = _LoopThread("chatsecure-advertiser")
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._task: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        """Start advertising in the background; returns at once."""
        with self._lock:
            if self._task is not None or self._stopped:
                return
            self._thread.start()
            self._task = self._thread.submit(self._advertise())

    def stop(self) -> None:
        """Withdraw the service (goodbye packets), close zeroconf and end its thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._task is None:
                return
            self._task.cancel()
            withdraw = self._thread.submit(self._withdraw())
            try:
                withdraw.result(STOP_TIMEOUT)
            except (concurrent.futures.TimeoutError, ZeroconfError, OSError) as exc:
                log.warning("could not withdraw the mDNS advertisement cleanly: %r", exc)
            self._thread.stop()
            self.done.set()

    def __enter__(self) -> Advertiser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait until registered (or failed); the full instance name, or ``None``."""
        self.done.wait(timeout)
        return self.instance

    async def _advertise(self) -> None:
        """Advertise what ``_wanted`` says, and look again every ``recheck`` seconds."""
        advertised: _Wanted | None = None
        said: str | None = None
        try:
            while True:
                try:
                    advertised, said = await self._look(advertised, said)
                except Exception:
                    # A bug, or zeroconf failing in a way not foreseen: said, and tried again,
                    # rather than the server going unadvertised in silence from now on.
                    log.exception(
                        "advertising over mDNS failed; trying again in %.0f s", self.recheck
                    )
                    advertised = None
                    with contextlib.suppress(Exception):
                        await self._withdraw()
                self.done.set()
                await asyncio.sleep(self.recheck)
        finally:
            self.done.set()

    async def _look(
        self, advertised: _Wanted | None, said: str | None
    ) -> tuple[_Wanted | None, str | None]:
        """One look: (re-)register if what to advertise changed; what is advertised now, and
        the reason last said for not advertising."""
        why = None
        try:
            wanted = self._wanted()
        except OSError as exc:
            wanted, why = None, str(exc.strerror or exc)
        if advertised is not None and wanted != advertised:
            log.info("the addresses to advertise changed; withdrawing to advertise anew")
            await self._withdraw()
            advertised = None
        if wanted is not None and advertised is None:
            try:
                await self._register(*wanted)
                advertised, said = wanted, None
            except (OSError, ZeroconfError) as exc:
                why = str(exc.strerror or exc) if isinstance(exc, OSError) else repr(exc)
                await self._withdraw()
        if advertised is None and why is not None:
            self.error = why
            if why != said:  # once per reason, not at every look
                log.warning(
                    "not advertising over mDNS (%s): the server runs, but clients must "
                    "type its address",
                    why,
                )
                said = why
        return advertised, said

    def _wanted(self) -> _Wanted:
        """The addresses to advertise and the interfaces to do it on, as of now.

        Raises ``OSError`` saying why when there is nothing to advertise.
        """
        interfaces = multicast_interfaces() if self.interfaces is None else self.interfaces
        if not interfaces:
            raise OSError(NO_MULTICAST)
        chosen = interfaces if isinstance(interfaces, InterfaceChoice) else tuple(interfaces)
        return tuple(self._wanted_addresses()), chosen

    def _wanted_addresses(self) -> list[str]:
        """The addresses to advertise; raises ``OSError`` saying why when there is none."""
        if self.addresses:
            given = without_loopback(self.addresses)
            if not given:
                raise OSError("the addresses given to advertise are loopback only")
            return given
        found = advertised_addresses(self.listening, local_addresses(link_local=True))
        if not found:
            raise OSError(unadvertised_reason(self.listening))
        return found

    async def _register(
        self, addresses: tuple[str, ...], interfaces: tuple[str | int, ...] | InterfaceChoice
    ) -> None:
        chosen = interfaces if isinstance(interfaces, InterfaceChoice) else list(interfaces)
        self._zc = _open_zeroconf(chosen)
        wanted = instance_label(self.name)
        server = host_name(socket.gethostname(), secrets.token_hex(3))
        probe = AsyncServiceInfo(SERVICE_TYPE, instance_name(wanted), server=server, port=self.port)
        # Probe first so that the records announced already carry the name that was got:
        # browsers then see one consistent service, not a rename afterwards.
        await self._zc.zeroconf.async_wait_for_start()
        await _claim(self._zc.zeroconf, probe)
        got = instance_label_of(probe.name)
        # The nodes of a cluster are one room: each keeps the room's name (the instance label
        # alone gets the "-2" that keeps it unique on the link).
        friendly = self.name if self.cluster is not None else renamed(self.name, wanted, got)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            probe.name,
            port=self.port,
            properties=encode_txt(friendly, self.fingerprint, cluster=self.cluster),
            server=server,
            parsed_addresses=list(addresses),
            host_ttl=self.ttl,
            other_ttl=self.ttl,
        )
        self._info = info
        announced = await self._zc.async_register_service(info, cooperating_responders=True)
        if got != wanted:
            log.warning("the name %r is taken on this network; advertising as %r", wanted, got)
        self.advertised_name, self.instance = friendly, info.name
        self.error = None
        self.done.set()
        log.info(
            "advertising %r over mDNS as %s, port %d, addresses %s",
            friendly,
            info.name,
            self.port,
            ", ".join(addresses),
        )
        await announced

    async def _withdraw(self) -> None:
        """Say goodbye for what is registered, if anything, and close zeroconf."""
        zc, info, instance = self._zc, self._info, self.instance
        self._zc = self._info = None
        self.instance = self.advertised_name = None
        if zc is None:
            return
        try:
            if info is not None and instance is not None:
                goodbye = await zc.async_unregister_service(info)
                await goodbye
                log.info("withdrew the mDNS advertisement %s", info.name)
        finally:
            await zc.async_close()


async def _claim(zc: Zeroconf, probe: AsyncServiceInfo) -> None:
    """Probe for ``probe.name`` on the link, renaming it ("-2", "-3") while another has it.

    zeroconf probes with "QU" questions, whose answers come by unicast to port 5353. Where
    several responders share a host (two servers on one machine, the nodes of a cluster), the
    kernel hands each unicast datagram to one of their sockets only, often not ours (RFC 6762
    §15.1), and the name would be claimed twice. So the probing is done while browsing the
    type with answers by multicast, which every socket gets: they come during the probing
    (which takes over a second), and zeroconf renames on any that names us.

    zeroconf's probing ends as it sends its last probe, and a responder that multicast its
    records less than a second ago holds its answer back until that second is over (RFC 6762
    §14): a server started a second or two after another on the same host could miss its
    answer and take its name. So the name is ours only once ``CLAIM_WAIT`` more has passed
    with no answer naming it (§8.1 waits 250 ms after the last probe).
    """
    loop = asyncio.get_running_loop()
    wanted = instance_label_of(probe.name)
    number = 2
    browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[_ignore], question_type=QM)
    try:
        while True:
            await zc.async_check_service(probe, allow_name_change=True)
            deadline = loop.time() + CLAIM_WAIT
            while not (taken := _named(zc, probe.name)) and (left := deadline - loop.time()) > 0:
                await zc.async_wait(left * 1000)  # (a change in the cache ends it sooner)
            if not taken:
                return
            while _named(zc, probe.name):  # (zeroconf's own renaming would make "x-2-2")
                probe.name = instance_name(f"{wanted}-{number}")
                number += 1
    finally:
        await browser.async_cancel()


def _named(zc: Zeroconf, name: str) -> bool:
    """Whether another responder's answer for ``name`` is in zeroconf's cache."""
    return zc.cache.current_entry_with_name_and_alias(SERVICE_TYPE, name) is not None


def _ignore(
    zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
) -> None:
    """A browser's handler for changes nobody needs: the cache is what is looked at."""


def _warn(budget: WarningBudget, message: str, *args: object) -> None:
    """Log ``message`` if ``budget`` allows it now."""
    if budget.allow(time.monotonic())[0]:
        log.warning(message, *args)


# --- browsing ---------------------------------------------------------------------------


class Browser:
    """Find chatsecure servers on the link; events go to ``events`` (a ``queue.Queue``).

    Thread-safe. ``ServerAdded`` comes once a service is resolved (addresses, port, TXT);
    ``ServerUpdated`` when any of that changes; ``ServerRemoved`` when it says goodbye or
    its records expire. If zeroconf cannot start (no multicast interface), ``error`` says why
    and no events come.

    What a neighbour announces is bounded: at most ``max_resolving`` names are resolved at
    once, at most ``max_pending`` more wait their turn (newer ones are dropped), and at most
    ``max_servers`` are listed; each bound reached is logged at most once a minute.
    """

    def __init__(
        self,
        events: queue.Queue[DiscoveryEvent] | None = None,
        *,
        interfaces: Interfaces | None = None,
        resolve_timeout: float = RESOLVE_TIMEOUT,
        max_resolving: int = MAX_RESOLVING,
        max_pending: int = MAX_PENDING,
        max_servers: int = MAX_SERVERS,
    ) -> None:
        self.events: queue.Queue[DiscoveryEvent] = events if events is not None else queue.Queue()
        self.interfaces = interfaces
        """IPv4 addresses and IPv6 interface indexes to browse on; ``None``: all but loopback."""
        self.resolve_timeout = resolve_timeout
        self.max_resolving = max_resolving
        self.max_pending = max_pending
        self.max_servers = max_servers
        self.error: str | None = None
        """Why browsing is not possible, once ``start()`` returned; else ``None``."""
        self._thread = _LoopThread("chatsecure-browser")
        self._lock = threading.Lock()
        self._state = "new"
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._known: dict[str, DiscoveredServer] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._pending: dict[str, str] = {}
        """Names waiting for a free resolve, by key, oldest first."""
        self._again: set[str] = set()
        self._asked: dict[str, tuple[float, int]] = {}
        """Per known server: the ``created`` of its SRV record and how many of ``REFRESH_AT``
        were asked for since."""
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._too_many_names = WarningBudget(1, FLOOD_WARN_EVERY)
        self._too_many_servers = WarningBudget(1, FLOOD_WARN_EVERY)

    def start(self) -> None:
        """Open zeroconf and start browsing; returns once the browser runs (or failed)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "running"
            self._thread.start()
            try:
                self._thread.submit(self._open()).result(STOP_TIMEOUT)
            except (OSError, ZeroconfError, concurrent.futures.TimeoutError) as exc:
                self.error = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
                log.warning("cannot browse for servers over mDNS: %s", self.error)

    def stop(self) -> None:
        """Stop browsing; zeroconf and its thread are gone when this returns."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._state = "stopped"
            try:
                self._thread.submit(self._close()).result(STOP_TIMEOUT)
            except (concurrent.futures.TimeoutError, ZeroconfError, OSError) as exc:
                log.warning("the mDNS browser did not close cleanly: %r", exc)
            self._thread.stop()

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- on the browser's own loop -------------------------------------------------------

    async def _open(self) -> None:
        self._zc = _open_zeroconf(self.interfaces)
        await self._zc.zeroconf.async_wait_for_start()
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._changed], question_type=QM
        )
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _close(self) -> None:
        self._closing = True  # a resolve that ends now starts no other
        self._pending.clear()
        tasks = list(self._resolving.values())
        if self._watcher is not None:
            tasks.append(self._watcher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_close()

    def _changed(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._pending.pop(key, None)
            task = self._resolving.pop(key, None)
            if task is not None:
                task.cancel()
            self._again.discard(key)
            self._asked.pop(key, None)
            if self._known.pop(key, None) is not None:
                self.events.put(ServerRemoved(name))
            self._next()
            return
        if key in self._resolving:
            self._again.add(key)  # resolve once more when the current attempt ends
        elif not self._room_for(key):
            log.debug("not resolving %s: the list of servers is full", name)
        elif len(self._resolving) < self.max_resolving:
            self._start(key, name)
        elif key in self._pending or len(self._pending) < self.max_pending:
            self._pending[key] = name
        else:
            _warn(
                self._too_many_names,
                "a neighbour on this network announces too many chatsecure servers: %d "
                "already wait to be looked up, and the names beyond them are ignored",
                len(self._pending),
            )
            log.debug("ignoring %s: too many names wait to be looked up", name)

    def _room_for(self, key: str) -> bool:
        """Whether the server ``key`` may be listed: it is already, or the list is not full."""
        if key in self._known or len(self._known) < self.max_servers:
            return True
        _warn(
            self._too_many_servers,
            "more than %d chatsecure servers on this network (a neighbour announces too many):"
            " listing no more until some go",
            self.max_servers,
        )
        return False

    def _start(self, key: str, name: str) -> None:
        if not self._closing:
            self._resolving[key] = asyncio.get_running_loop().create_task(self._resolve(name))

    def _next(self) -> None:
        """Start resolving the names that wait, as far as there is room."""
        while self._pending and len(self._resolving) < self.max_resolving:
            key = next(iter(self._pending))
            name = self._pending.pop(key)
            if self._room_for(key):
                self._start(key, name)

    async def _resolve(self, name: str) -> None:
        key = name.lower()
        try:
            while True:
                self._again.discard(key)
                server = await self._lookup(name)
                if server is not None:
                    self._publish(key, server)
                if key not in self._again:
                    return
                if self._pending:
                    # Changed again meanwhile, and others wait: it goes behind them (names
                    # changed without end must not keep every slot). The pending names may
                    # pass their bound by the few resolves running.
                    self._again.discard(key)
                    self._pending[key] = name
                    return
        finally:
            if self._resolving.get(key) is asyncio.current_task():
                del self._resolving[key]
                self._next()

    async def _lookup(self, name: str) -> DiscoveredServer | None:
        assert self._zc is not None  # noqa: S101 - set in _open()
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            found = await info.async_request(
                self._zc.zeroconf, self.resolve_timeout * 1000, question_type=QM
            )
        except ZeroconfError as exc:
            log.debug("resolving %s failed: %r", name, exc)
            return None
        if not found or not info.port:
            log.debug("could not resolve %s in time", name)
            return None
        info = await self._settle(info)
        if not info.port:
            return None
        server = server_from_records(name, info.port, info.properties, _addresses(info))
        return server if server.addresses else None

    async def _settle(self, info: AsyncServiceInfo) -> AsyncServiceInfo:
        """``info`` once its address set is whole, or has not changed for ``SETTLE_QUIET``.

        zeroconf calls a service resolved at its first address, but the rest may follow:
        the A and AAAA answers can come apart, and a dual-stack browser gets each answer
        twice, first over IPv4, where a link-local AAAA record has no interface, then over
        IPv6 with it. Showing the first state would show a server without its IPv4 address
        or with one nobody can connect to, and an update a millisecond later.
        """
        assert self._zc is not None  # noqa: S101 - set in _open()
        zc = self._zc.zeroconf
        loop = asyncio.get_running_loop()
        started = changed = loop.time()
        seen = _addresses(info)
        while not addresses_settled(seen, _denied(zc, info.server)):
            if loop.time() - changed >= SETTLE_QUIET or loop.time() - started >= SETTLE_MAX:
                log.debug("taking %s with addresses %s", info.name, ", ".join(seen))
                break
            await asyncio.sleep(SETTLE_POLL)
            fresh = AsyncServiceInfo(SERVICE_TYPE, info.name)
            if fresh.load_from_cache(zc) and fresh.port:
                info = fresh
            if (now := _addresses(info)) != seen:
                seen, changed = now, loop.time()
        return info

    async def _watch(self) -> None:
        """Ask again for the SRV record of each server listed as it ages; drop it once expired.

        zeroconf's browser reports a service removed only when its PTR record goes, and it
        keeps a PTR at least 1125 s whatever its TTL, re-asking for the PTR alone: a server
        that died without a goodbye would stay listed for 19 minutes at least. The SRV
        record, with the server's short TTL, is what says it is still there.
        """
        assert self._zc is not None  # noqa: S101 - set in _open()
        zc = self._zc.zeroconf
        failed: set[type[Exception]] = set()
        while True:
            now = current_time_millis()
            wake = now + WATCH_POLL * 1000
            for key, server in list(self._known.items()):
                try:
                    due = self._check(zc, key, server, now)
                except Exception as exc:
                    # zeroconf's cache is used here beyond its public API: should that change,
                    # or a bug show, said once, and the other servers (and the next poll) are
                    # still looked at rather than servers staying listed forever in silence.
                    if type(exc) in failed:
                        log.debug("watching %s failed again: %r", key, exc)
                    else:
                        failed.add(type(exc))
                        log.exception("watching %s failed; going on", key)
                    continue
                if due is not None:
                    wake = min(wake, due)
            await asyncio.sleep(max(wake - current_time_millis(), 10) / 1000)

    def _check(self, zc: Zeroconf, key: str, server: DiscoveredServer, now: float) -> float | None:
        """Ask again for a listed server's SRV record if due, or drop it if expired; when
        (zeroconf's milliseconds) it wants looking at again, ``None`` once dropped."""
        srv = _freshest(zc.cache.async_all_by_details(server.key, TYPE_SRV, CLASS_IN), now)
        if srv is None:
            self._expired(zc, key, server.key)
            return None
        created, asked = self._asked.get(key, (srv.created, 0))
        if created != srv.created:
            asked = 0
        if asked < len(REFRESH_AT) and srv.get_expiration_time(REFRESH_AT[asked]) <= now:
            _ask_again(zc, server.key)
            asked += 1
        self._asked[key] = (srv.created, asked)
        return srv.get_expiration_time(REFRESH_AT[asked] if asked < len(REFRESH_AT) else 100)

    def _expired(self, zc: Zeroconf, key: str, name: str) -> None:
        """A listed server's SRV record expired unanswered: it is gone, the PTR with it."""
        log.debug("%s did not answer before its records expired", name)
        pointers = [
            record
            for record in zc.cache.async_all_by_details(SERVICE_TYPE, TYPE_PTR, CLASS_IN)
            if isinstance(record, DNSPointer) and record.alias.lower() == key
        ]
        # Without its PTR zeroconf sees the server anew (an "added") if it comes back.
        records = [
            zc.cache.async_all_by_details(name, kind, CLASS_IN) for kind in (TYPE_SRV, TYPE_TXT)
        ]
        zc.cache.async_remove_records([*pointers, *records[0], *records[1]])
        self._changed(zc, SERVICE_TYPE, name, ServiceStateChange.Removed)

    def _publish(self, key: str, server: DiscoveredServer) -> None:
        old = self._known.get(key)
        if old == server or not self._room_for(key):  # (the list filled while it resolved)
            return
        self._known[key] = server
        self.events.put(ServerAdded(server) if old is None else ServerUpdated(server))


def _addresses(info: AsyncServiceInfo) -> list[str]:
    """A resolved service's addresses, IPv6 link-local ones with their interface if known."""
    return [
        *info.parsed_addresses(IPVersion.V4Only),
        *info.parsed_scoped_addresses(IPVersion.V6Only),
    ]


def _freshest(records: list[DNSRecord], now: float) -> DNSRecord | None:
    """The record of ``records`` that expires last, unless all of them have expired."""
    alive = [record for record in records if not record.is_expired(now)]
    return max(alive, key=lambda r: r.get_expiration_time(100), default=None)


def _ask_again(zc: Zeroconf, name: str) -> None:
    """Send a multicast query for the SRV and TXT records of the service ``name``."""
    out = DNSOutgoing(FLAGS_QUERY)
    out.add_question(DNSQuestion(name, TYPE_SRV, CLASS_IN))
    out.add_question(DNSQuestion(name, TYPE_TXT, CLASS_IN))
    zc.async_send(out)


def _denied(zc: Zeroconf, host: str | None) -> set[int]:
    """The IP versions ``host`` has no address of, as its NSEC record says (RFC 6762 6.1)."""
    record = zc.cache.get_by_details(host, TYPE_NSEC, CLASS_IN) if host else None
    present = getattr(record, "rdtypes", None)  # DNSNsec, which zeroconf does not export
    if not isinstance(present, list):
        return set()
    return {version for version, kind in ((4, TYPE_A), (6, TYPE_AAAA)) if kind not in present}


def apply_event(servers: dict[str, DiscoveredServer], event: DiscoveryEvent) -> None:
    """Keep ``servers`` (by key) up to date with one event."""
    match event:
        case ServerAdded(server=server) | ServerUpdated(server=server):
            servers[server.key.lower()] = server
        case ServerRemoved(key=key):
            servers.pop(key.lower(), None)


def browse(
    timeout: float | None = DISCOVER_TIMEOUT,
    *,
    until: Callable[[Mapping[str, DiscoveredServer]], bool] | None = None,
    on_event: Callable[[DiscoveryEvent], None] | None = None,
    interfaces: Interfaces | None = None,
) -> list[DiscoveredServer]:
    """Browse for ``timeout`` seconds (``None``: until interrupted) or until ``until(servers)``.

    Blocks the calling thread; for the command line. Returns the servers present at the
    end, sorted by name; raises ``ChatError`` when this host cannot browse at all.
    """
    servers: dict[str, DiscoveredServer] = {}
    with Browser(interfaces=interfaces) as browser:
        if browser.error is not None:
            raise ChatError(f"cannot look for servers on this network: {browser.error}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or (left := deadline - time.monotonic()) > 0:
            try:
                # A bounded wait even without a deadline, so that Ctrl-C is seen promptly.
                event = browser.events.get(timeout=1.0 if deadline is None else left)
            except queue.Empty:
                continue
            apply_event(servers, event)
            if on_event is not None:
                on_event(event)
            if until is not None and until(servers):
                break
    return sorted(servers.values(), key=lambda s: (s.name.casefold(), s.key.casefold()))


def find_server(wanted: str, timeout: float = DISCOVER_TIMEOUT) -> DiscoveredServer:
    """Browse until the one server called ``wanted`` shows up; ``ChatError`` if it does not.

    ``wanted`` is a full key, an instance label or a friendly name (see ``match_servers``).
    """
    servers = browse(timeout, until=lambda found: bool(match_servers(found.values(), wanted)))
    found = match_servers(servers, wanted)
    if not found:
        names = ", ".join(repr(s.instance) for s in servers) or "none"
        raise ChatError(f"no server called {wanted!r} on this network (found: {names})")
    if len(found) > 1:
        names = ", ".join(repr(s.instance) for s in found)
        raise ChatError(f"{len(found)} servers are called {wanted!r}; pick one of {names}")
    server = found[0]
    if server.fingerprint is None:
        raise ChatError(f"the server {server.instance!r} advertises no valid fingerprint")
    log.info("found %r at %s, port %d", server.name, ", ".join(server.addresses), server.port)
    return server
