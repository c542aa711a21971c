"""Trust on first use: the ``known_servers`` store, shared by every client.

Like SSH's ``known_hosts``: the first time a ``host:port`` is met its certificate
fingerprint is shown and, once accepted, pinned; later connections must present the same
certificate. A changed certificate is refused loudly unless the user replaces the pin.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from chatsecure.errors import TrustError
from chatsecure.files import make_private_folder

log = logging.getLogger(__name__)

KNOWN_SERVERS = "known_servers"


def config_home() -> Path:
    """``$CHATSECURE_HOME``, else ``$XDG_CONFIG_HOME/chatsecure``, else ``~/.config/chatsecure``."""
    if home := os.environ.get("CHATSECURE_HOME"):
        return Path(home)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "chatsecure"


@contextlib.contextmanager
def config_locked(path: Path) -> Iterator[None]:
    """Hold the lock of ``path``'s config folder (its ``.lock``) while a file there is read,
    changed and written: clients that share the folder (a window and a terminal) take turns,
    and neither undoes what the other wrote. Raises ``OSError``."""
    make_private_folder(path.parent)
    fd = os.open(path.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (and with it the lock)


def save_private(
    path: Path, data: str | bytes, *, mode: int = 0o600, durable: bool = False
) -> None:
    """Write ``data`` to ``path``, readable by its owner only whatever the umask (a pin or a
    key others could read or write is none; or ``mode``: a certificate is 0644), from the
    first byte on, and whole or not at all (a crash mid-write leaves the old file;
    ``durable``: a power cut too); the folder is made 0700 if missing. Raises ``OSError``."""
    make_private_folder(path.parent)
    # A name of its own (0600): two clients sharing the folder never write into one file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:7467``): how every address is shown."""
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_key(host: str, port: int) -> str:
    """How a server is named in the store: ``host:port``, IPv6 in brackets, lower case, an
    address in its shortest form (``0:0::1`` is ``::1``: one server, one pin)."""
    host = host.lower().removeprefix("[").removesuffix("]")
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    return host_port(host, port)


def _rekeyed(key: str) -> str:
    """A stored ``host:port`` as ``server_key`` names it now: a pin written before addresses
    were written shortest (``[fd00::0005]:7467``) is still found, and still guards its server."""
    host, _, port = key.rpartition(":")
    return server_key(host, int(port)) if host and port.isascii() and port.isdigit() else key


@dataclass(frozen=True, slots=True)
class TrustQuestion:
    """What a client asks its user before it pins (or replaces the pin of) a server."""

    host: str
    port: int
    fingerprint: str
    pinned: str | None = None
    """The fingerprint pinned before, if the certificate changed."""
    advertised: str | None = None
    """The fingerprint the server advertised over mDNS, when it was found that way."""
    known_as: tuple[str, ...] = ()
    """Other addresses (``server_key``) this certificate is trusted for already: the same
    server, most likely, reached by another name."""

    @property
    def changed(self) -> bool:
        return self.pinned is not None


Ask = Callable[[TrustQuestion], bool]
"""Asks the user; True pins the new fingerprint. Called on the client's network thread."""


class KnownServers:
    """The ``known_servers`` file: one ``host:port SHA256:...`` line per server."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_home() / KNOWN_SERVERS
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        pins: dict[str, str] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return pins
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and not parts[0].startswith("#"):
                pins[_rekeyed(parts[0])] = parts[1]
        return pins

    def _save(self, pins: dict[str, str]) -> None:
        head = "# chatsecure pinned server certificates: host:port fingerprint\n"
        body = "".join(f"{k} {fp}\n" for k, fp in sorted(pins.items()))
        save_private(self.path, head + body, durable=True)  # (lost pins: asked again, or worse)

    def get(self, host: str, port: int) -> str | None:
        """The pinned fingerprint of ``host:port``, if any."""
        with self._lock:
            return self._load().get(server_key(host, port))

    def pin(self, host: str, port: int, fingerprint: str) -> None:
        """Pin (or re-pin) ``host:port`` to ``fingerprint``."""
        with self._lock, config_locked(self.path):
            pins = self._load()
            pins[server_key(host, port)] = fingerprint
            self._save(pins)

    def names_of(self, fingerprint: str) -> list[str]:
        """The addresses pinned to ``fingerprint``, sorted."""
        with self._lock:
            return sorted(k for k, fp in self._load().items() if fp == fingerprint)

    def ports_of(self, host: str) -> list[str]:
        """The addresses pinned for ``host``, on any port, sorted."""
        prefix = server_key(host, 0).removesuffix("0")
        with self._lock:
            return sorted(k for k in self._load() if k.startswith(prefix))

    def remove(self, host: str, port: int, *, only: str | None = None) -> bool:
        """Forget ``host:port`` (``only`` if it is pinned to that fingerprint); return whether
        it was."""
        with self._lock, config_locked(self.path):
            pins = self._load()
            key = server_key(host, port)
            found = key in pins and only in (None, pins[key])
            if found:
                del pins[key]
                self._save(pins)
            return found


TRUST_QUESTION = "Trust this server and remember it? [y/N] "
"""The terminal's question after ``new_server_message``; only ``y`` or ``yes`` pins."""


def new_server_message(question: TrustQuestion) -> str:
    """What a terminal shows before it asks whether to trust a server met for the first time."""
    return (
        f"The server {host_port(question.host, question.port)} is not known yet.\n"
        f"Its certificate fingerprint is {question.fingerprint}\n"
        + (f"{trusted_elsewhere(question)}\n" if question.known_as else "")
        + "Compare it with the fingerprint the server printed when it started."
    )


def trusted_elsewhere(question: TrustQuestion) -> str:
    """That the certificate is trusted for other addresses already (``known_as``)."""
    names = question.known_as
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"You already trust this certificate for {shown}: the same server, by another name."


def changed_message(question: TrustQuestion, store: KnownServers) -> str:
    """The loud refusal for a changed certificate, naming both fingerprints and the fix."""
    name = server_key(question.host, question.port)
    return (
        f"WARNING: THE CERTIFICATE OF {name} HAS CHANGED!\n"
        f"  pinned:    {question.pinned}\n"
        f"  presented: {question.fingerprint}\n"
        "Someone may be intercepting this connection, or the server made a new certificate.\n"
        f"If you know the change is genuine, remove the old pin with\n"
        f"  chatsecure forget {name}\n"
        f"(or delete its line in {store.path}) and connect again."
    )


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """How a client decides to trust a server it has no CA for."""

    store: KnownServers
    ask: Ask | None = None
    accept_new: bool = False
    fingerprint: str | None = None
    """A fingerprint learned out of band (``--fingerprint``): the only one accepted."""

    def check(
        self,
        host: str,
        port: int,
        presented: str,
        advertised: str | None = None,
        siblings: Sequence[tuple[str, int]] = (),
    ) -> TrustQuestion | None:
        """Decide what needs no user: None when trusted (pinning if the policy says so).

        Raises ``TrustError`` for a certain refusal, and returns the question to put to the
        user when only they can decide (a new server, or a changed certificate).

        ``siblings`` are the other addresses of the same room (the servers of one cluster,
        given together, which share one certificate): an address met for the first time that
        presents the certificate pinned for one of them is that room, and is pinned without a
        question. Only a certificate already trusted passes so; a different one is asked
        about as usual, and an address pinned to another certificate is a changed one.
        """
        name = server_key(host, port)
        if advertised is not None and advertised != presented:
            raise TrustError(
                f"{name} presented {presented}, but the server found on the network "
                f"advertised {advertised}; refusing (someone may be impersonating it)"
            )
        if self.fingerprint is not None:
            if presented != self.fingerprint:
                raise TrustError(
                    f"{name} presented {presented}, not the expected {self.fingerprint}"
                )
            if (pinned := self.store.get(host, port)) not in (None, presented):
                # Out of band, the user vouched for the new one: said, so that a pasted
                # fingerprint never replaces a pin unnoticed.
                log.warning("%s was pinned to %s; --fingerprint replaces that pin", name, pinned)
            self.store.pin(host, port, presented)
            return None
        pinned = self.store.get(host, port)
        if pinned == presented:
            return None
        if pinned is None and any(self.store.get(*other) == presented for other in siblings):
            self.store.pin(host, port, presented)
            return None
        if pinned is None and self.accept_new:
            self.store.pin(host, port, presented)
            return None
        known_as = () if pinned is not None else tuple(self.store.names_of(presented))
        return TrustQuestion(host, port, presented, pinned, advertised, known_as)

    def resolve(self, question: TrustQuestion) -> None:
        """Ask the user (if there is a way to); pin on yes, raise ``TrustError`` on no."""
        if self.ask is not None and self.ask(question):
            self.store.pin(question.host, question.port, question.fingerprint)
            return
        if question.changed:
            raise TrustError(changed_message(question, self.store))
        raise TrustError(
            f"{server_key(question.host, question.port)} is not a known server (fingerprint "
            f"{question.fingerprint}); compare it with the one the server printed, then pass "
            "--fingerprint with it, or --accept-new"
        )

    def verify(self, host: str, port: int, presented: str, advertised: str | None = None) -> None:
        """Return if ``presented`` is trusted for ``host:port``, asking if needed; else raise."""
        question = self.check(host, port, presented, advertised)
        if question is not None:
            self.resolve(question)
