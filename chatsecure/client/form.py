"""The desktop client's connect form: what it checks, what it asks for, what it remembers."""

from __future__ import annotations

import contextlib
import getpass
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chatsecure.client.core import Target, parse_target, port_number, require_sendable
from chatsecure.errors import ProtocolError
from chatsecure.protocol import limits
from chatsecure.protocol.messages import clean_nick
from chatsecure.tls.trust import config_home, host_port, save_private

NICK_FILE = "nick"
"""The file in the config folder that remembers the last nickname used in the desktop client."""
SERVER_FILE = "server"
"""The file in the config folder that remembers the last server the desktop client got into
(``HOST:PORT``), to fill in the form at the next start."""
MAX_PASSWORD = 1024
"""Longest room password the connect form sends: longer than anyone types, and a frame holds it."""


@dataclass(frozen=True, slots=True)
class GuiOptions:
    """What ``chatsecure gui`` was started with."""

    target: str | None = None
    """``HOST[:PORT]`` to fill in and connect to at once."""
    nick: str | None = None
    discovery: bool = True
    cafile: Path | None = None
    fingerprint: str | None = None
    accept_new: bool = False
    cert: Path | None = None
    """Our client certificate, for servers that admit clients by certificate."""
    key: Path | None = None
    password: str | None = field(default=None, repr=False)
    """Prefills the Password field (``--password-file``), for servers that ask for one."""
    reconnect: bool = True


def remembered_nick(home: Path | None = None) -> str:
    """The nickname used last time, else the login name (may be empty)."""
    path = (home or config_home()) / NICK_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        nick = path.read_text(encoding="utf-8").strip()
        if nick:
            return nick
    try:
        return getpass.getuser()[: limits.MAX_NICK]
    except (OSError, KeyError):
        return ""


def remember_nick(nick: str, home: Path | None = None) -> None:
    """Remember ``nick`` for the next start; failing to write is not worth an error."""
    path = (home or config_home()) / NICK_FILE
    with contextlib.suppress(OSError):
        save_private(path, nick + "\n")


def remembered_server(home: Path | None = None) -> tuple[str, int] | None:
    """The server the desktop client last got into, if it remembers one."""
    path = (home or config_home()) / SERVER_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        return parse_target(path.read_text(encoding="utf-8").strip())
    return None


def remember_server(host: str, port: int, home: Path | None = None) -> None:
    """Remember the server got into for the next start; failing to write is not an error."""
    path = (home or config_home()) / SERVER_FILE
    with contextlib.suppress(OSError):
        save_private(path, host_port(host, port) + "\n")


FormField = Literal["host", "port", "nick", "password"]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A validated connect form."""

    host: str
    port: int
    nick: str
    advertised: str | None = None
    """The fingerprint discovery advertised, when the server was picked from the list."""
    password: str | None = field(default=None, repr=False)
    """The room password sent in ``hello``; never written to disk."""
    others: tuple[tuple[str, int], ...] = ()
    """More addresses of the same room: the other nodes of a discovered cluster."""

    def target(self, options: GuiOptions) -> Target:
        return Target(
            self.host,
            self.port,
            cafile=options.cafile,
            advertised=self.advertised,
            cert=options.cert,
            key=options.key,
            others=self.others,
        )


@dataclass(frozen=True, slots=True)
class FormResult:
    """Either a request or, per field, what is wrong with it."""

    request: ConnectRequest | None
    errors: dict[FormField, str] = field(default_factory=dict)


_HOST_PUNCTUATION = frozenset(".-_:%[]")


def validate_form(
    host: str, port: str, nick: str, advertised: str | None = None, password: str = ""
) -> FormResult:
    """Check the connect form; the host may carry its own port (``10.0.0.5:7000``).

    The password is optional and taken as typed (spaces count); empty means none.
    """
    errors: dict[FormField, str] = {}
    host_text = host.strip()
    parsed_host, parsed_port = "", 0
    if not host_text:
        errors["host"] = "Enter the server's IP address or host name."
    elif not all(c.isalnum() or c in _HOST_PUNCTUATION for c in host_text):
        errors["host"] = "Not an IP address or host name."
    else:
        try:
            parsed_host, parsed_port = parse_target(host_text, default_port=0)
        except ValueError as exc:
            said = str(exc)
            errors["host"] = said[:1].upper() + said[1:] + "."  # (capitalize() lowers "IPv6")
    if parsed_port == 0:
        port_text = port.strip()
        if not port_text:
            errors["port"] = f"Enter a port (the default is {limits.DEFAULT_PORT})."
        elif (number := port_number(port_text)) is None:
            errors["port"] = "A number from 1 to 65535."
        else:
            parsed_port = number
    try:
        clean = require_sendable(clean_nick(nick), "the nick")
    except ProtocolError:
        errors["nick"] = f"1 to {limits.MAX_NICK} visible characters."
        clean = ""
    if len(password) > MAX_PASSWORD:
        errors["password"] = f"At most {MAX_PASSWORD} characters."
    else:
        try:
            require_sendable(password, "the password")
        except ProtocolError:
            errors["password"] = "Only characters that can be typed."  # noqa: S105 - a message
    if errors:
        return FormResult(None, errors)
    request = ConnectRequest(parsed_host, parsed_port, clean, advertised, password or None)
    return FormResult(request)
