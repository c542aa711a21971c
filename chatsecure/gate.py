"""Where connections come in: accepting them, and their TLS handshakes, counted per address.

asyncio's ``create_server`` accepts every connection and starts its handshake without a word to
us until TLS is up, so one address could hold as many half-made connections as it opened (each
a file descriptor and about 36 KiB of the server's memory, for up to the handshake timeout: 15,000
took a server from 44 to 540 MB). The gate accepts them itself and hands each to the event loop
(``connect_accepted_socket``) only while that address has fewer handshakes under way than its
limit; one more is closed at once, before a byte of TLS. When the server's limit of all
handshakes is reached, the oldest under way is cut for the new one: an honest handshake takes
milliseconds, so what is cut is what stalls, and addresses that fill every slot with stalled
handshakes do not shut everyone else out.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from functools import partial

from chatsecure.protocol.ratelimit import WarningBudget

log = logging.getLogger(__name__)

ACCEPT_BATCH = 128
"""Connections accepted per readiness of a listening socket (asyncio's own loop takes up to
its backlog, 100, at a time): a burst is taken in few loop iterations, and a long one does not
keep the loop from everything else."""

ACCEPT_RETRY = 1.0
"""Seconds a listening socket rests after the system refused to accept (out of file
descriptors or memory), as asyncio's own accept loop does."""

_OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

_GONE_ALREADY = frozenset(
    {
        errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTDOWN,
        errno.EHOSTUNREACH, errno.ENONET, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EPERM,
    }
)  # fmt: skip
"""What accept(2) says of one pending connection that went wrong (it says to try again): the
next one is taken."""

_REFUSED_CERTIFICATE = ("CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE")
"""Why OpenSSL ends the handshake of a client whose certificate the server does not take."""


class Gate:
    """Accept connections on listening sockets and run their TLS handshakes.

    At most ``per_address`` handshakes of one address (``key`` of it: an IPv6 address's /64)
    are under way at once, and a connection beyond is closed as soon as it is accepted; at most
    ``total`` in all, the oldest cut for a new one (0: no limit). ``factory`` makes the protocol
    of each connection, as for ``create_server``; a connection whose handshake fails never
    reaches it.
    """

    def __init__(
        self,
        ctx: ssl.SSLContext,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        handshake_timeout: float,
        per_address: int,
        total: int,
        key: Callable[[str], str],
        address: Callable[[object], str],
    ) -> None:
        self._ctx = ctx
        self._factory = factory
        self._timeout = handshake_timeout
        self._per_address = per_address
        self._total = total
        self._key = key
        self._address = address
        self._loop = asyncio.get_running_loop()
        self._sockets: list[socket.socket] = []
        self._under_way: collections.Counter[str] = collections.Counter()
        """Handshakes under way, by ``key`` of their address."""
        self._handshakes: dict[asyncio.Task[object], None] = {}
        """The handshakes under way, the oldest first."""
        self._warnings = WarningBudget()
        self._refusals = WarningBudget()
        """Warnings of the limits biting: a flood of them must not hide the others."""

    @property
    def handshakes(self) -> int:
        """Connections accepted whose TLS handshake has not ended yet."""
        return len(self._handshakes)

    def open(self, sock: socket.socket) -> None:
        """Start accepting on the listening socket ``sock`` (the gate closes it in ``close``)."""
        sock.setblocking(False)
        self._sockets.append(sock)
        self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets; handshakes under way go on (their
        clients are told why they cannot stay, see ``ChatServer.admit``)."""
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets = []

    async def wait_closed(self) -> None:
        """Cut the handshakes still under way and wait until they have ended."""
        for task in self._handshakes:
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peername = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE_ALREADY:
                    continue
                self._rest(sock, exc)
                return
            self._admit(conn, peername)

    def _admit(self, conn: socket.socket, peername: object) -> None:
        addr = self._address(peername)
        key = self._key(addr)
        limit = self._per_address
        if limit and self._under_way[key] >= limit:
            conn.close()
            self._warn(
                self._refusals,
                "refused a connection from %s: %d connections from %s are in their TLS "
                "handshake already (--max-per-ip)",
                addr,
                limit,
                key,
            )
            return
        if self._total and len(self._handshakes) >= self._total:
            oldest = next(iter(self._handshakes))
            oldest.cancel()  # (its transport is aborted; _ended counts it out)
            del self._handshakes[oldest]
            self._warn(
                self._refusals,
                "cut the oldest TLS handshake under way for a connection from %s: %d are "
                "under way (--max-sessions)",
                addr,
                self._total,
            )
        conn.setblocking(False)
        self._under_way[key] += 1
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ctx, ssl_handshake_timeout=self._timeout
            )
        )
        self._handshakes[task] = None
        task.add_done_callback(partial(self._ended, key, addr))

    def _ended(self, key: str, addr: str, task: asyncio.Task[object]) -> None:
        self._handshakes.pop(task, None)
        self._under_way[key] -= 1
        if not self._under_way[key]:
            del self._under_way[key]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, ssl.SSLError) and exc.reason in _REFUSED_CERTIFICATE:
            self._warn(
                self._warnings,
                "refused the TLS handshake of %s: its client certificate: %s",
                addr,
                exc,
            )
        else:  # a port scan, a client gone, a handshake too slow, a client speaking no TLS
            log.debug("TLS handshake with %s failed: %r", addr, exc)

    def _rest(self, sock: socket.socket, exc: OSError) -> None:
        """The system refused to accept: stop reading ``sock`` for ``ACCEPT_RETRY`` seconds
        (else its readiness would spin the loop), and say so."""
        if exc.errno in _OUT_OF:
            self._warn(self._warnings, "cannot accept connections for a second: %s", exc)
        else:
            log.error("cannot accept connections for a second", exc_info=exc)
        self._loop.remove_reader(sock.fileno())
        self._loop.call_later(ACCEPT_RETRY, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if sock in self._sockets:  # (not closed meanwhile)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _warn(self, budget: WarningBudget, msg: str, *args: object) -> None:
        allowed, dropped = budget.allow(self._loop.time())
        if allowed:
            if dropped:
                log.warning("(%d similar warnings were not logged)", dropped)
            log.warning(msg, *args)
