"""Server settings: one table drives the command-line flags, the TOML file and ServerConfig.

A flag given on the command line wins over the same key in ``--config FILE``, which wins over
the default. Keys in the file are the flag names without ``--`` (``max-sessions`` or
``max_sessions``).
"""

from __future__ import annotations

import argparse
import math
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chatsecure.discovery.records import friendly_name
from chatsecure.errors import ConfigError
from chatsecure.files import make_private_folder
from chatsecure.protocol import limits
from chatsecure.tls import certs

HISTORY_DB = "history.sqlite3"
"""The room log's file name, kept beside the certificate unless ``--db`` says otherwise."""


def default_name() -> str:
    """A friendly server name from the host name: ``chat on <host>``."""
    return friendly_name(socket.gethostname())


@dataclass(slots=True)
class ServerConfig:
    """Everything a server needs to start. ``0`` turns a limit off.

    Two say what they do instead: ``msg_burst`` 0 is no burst (one frame at a time), and
    ``handshake_timeout`` 0 is ``limits.HANDSHAKE_TIMEOUT_OFF``.
    """

    host: str | None = None
    """Listen address, or a name (each address it resolves to); ``None`` listens on every
    interface, IPv4 and IPv6 on one socket."""
    port: int = limits.DEFAULT_PORT
    name: str = field(default_factory=default_name)
    cert: Path = certs.DEFAULT_CERT_DIR / certs.CERT_NAME
    key: Path = certs.DEFAULT_CERT_DIR / certs.KEY_NAME
    make_cert: bool = True
    """Make the certificate and key at ``cert`` and ``key`` if neither exists. False when the
    user named the certificate alone (``--cert``, its key in it or beside it): a mistyped path
    must not start a server with a new identity (and an empty history beside it)."""
    max_frame: int = limits.MAX_FRAME
    max_text: int = limits.MAX_TEXT
    send_buffer_limit: int = limits.SEND_BUFFER_LIMIT
    hello_timeout: float = limits.HELLO_TIMEOUT
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT
    idle_timeout: float = limits.IDLE_TIMEOUT
    max_sessions: int = limits.MAX_SESSIONS
    max_per_ip: int = limits.MAX_PER_IP
    msg_rate: float = limits.MSG_RATE
    msg_burst: int = limits.MSG_BURST
    flood_window: float = limits.FLOOD_WINDOW
    """Seconds of flooding at about 3x ``msg_rate`` before a session is disconnected."""
    tls13_only: bool = False
    password: str | None = field(default=None, repr=False)
    """The room password clients must send in ``hello``; ``None`` lets anyone in."""
    client_ca: Path | None = None
    """Mutual TLS: only clients with a certificate from this CA; its common name is the nick."""
    discovery: bool = False
    """Advertise over mDNS/DNS-SD while serving (``chatsecure server`` turns it on)."""
    advertise_ips: list[str] = field(default_factory=list)
    """Addresses to advertise instead of those the server listens on."""
    data_dir: Path | None = None
    """The folder of the room log (unless ``db``) and, through ``server_config``, of the
    certificate and key (unless given); made with mode 0700 at start. ``None``: ``certs/``."""
    db: Path | None = None
    """The room log (SQLite); ``None``: ``history.sqlite3`` in ``data_dir``, else beside the
    certificate."""
    history: int = limits.HISTORY_KEEP
    """Lines the log keeps; 0 keeps none, in memory or on disk (no file is made)."""
    replay: int = limits.REPLAY
    replay_max: int = limits.REPLAY_MAX
    durability: Literal["normal", "full"] = "normal"
    """``normal``: an acknowledged line survives a crash of the process; ``full``: of the
    machine too (a power cut), at the price of a disk flush per commit."""
    cluster: str | None = None
    """``redis://HOST:PORT/DB``: the room's log is in this Redis, shared by every server with
    the same URL and ``name`` (they are one room); ``None``: this server alone (SQLite)."""

    @property
    def db_path(self) -> Path:
        if self.db is not None:
            return self.db
        return (self.data_dir or self.cert.parent) / HISTORY_DB

    def make_data_dir(self) -> None:
        """Create ``data_dir`` (mode 0700) if it is missing; the server calls it once bound."""
        if self.data_dir is None:
            return
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(f"the data folder {self.data_dir} is a file; give a folder")
        try:
            make_private_folder(self.data_dir)
        except OSError as exc:
            raise ConfigError(
                f"cannot make the data folder {self.data_dir}: {exc.strerror or exc}"
            ) from exc


@dataclass(frozen=True, slots=True)
class Setting:
    """One server setting: its ``ServerConfig`` field, its value type and its help."""

    field: str
    kind: type
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


SETTINGS = (
    Setting(
        "host",
        str,
        "address to listen on, or a name: each of its addresses "
        "(default: every interface, IPv4 and IPv6)",
        "HOST",
    ),
    Setting("port", int, f"TCP port (default {limits.DEFAULT_PORT}; 0 picks a free one)", "PORT"),
    Setting("name", str, "server name shown to clients (default: chat on <host name>)", "NAME"),
    Setting(
        "data_dir",
        Path,
        "folder for the certificate, its key and the history, made with mode 0700 if missing "
        "(default: certs/ under the current folder); for running as a service",
        "DIR",
    ),
    Setting(
        "cert",
        Path,
        "certificate file (default server.crt in --data-dir, else certs/; made if missing)",
        "FILE",
    ),
    Setting(
        "key",
        Path,
        "private key file (default: in the certificate's file if it holds one, else beside it,"
        " named like it with .key; mode 0600)",
        "FILE",
    ),
    Setting(
        "password_file", Path, "clients must send the password in this file's first line", "FILE"
    ),
    Setting(
        "client_ca",
        Path,
        "admit only clients with a certificate from this CA (mutual TLS)",
        "FILE",
    ),
    Setting("tls13_only", bool, "refuse TLS 1.2 clients"),
    Setting(
        "db",
        Path,
        f"the room's history database (default {HISTORY_DB} in --data-dir, else beside --cert)",
        "FILE",
    ),
    Setting(
        "history",
        int,
        f"lines of history kept (default {limits.HISTORY_KEEP:,}; 0: store nothing)",
        "N",
    ),
    Setting("replay", int, f"lines a newcomer is shown (default {limits.REPLAY})", "N"),
    Setting(
        "replay_max",
        int,
        f"most missed lines sent to a returning client (default {limits.REPLAY_MAX})",
        "N",
    ),
    Setting(
        "durability",
        str,
        "normal: acknowledged lines survive a crash of the server (default); "
        "full: a power cut too (slower)",
        choices=("normal", "full"),
    ),
    Setting(
        "cluster",
        str,
        "one room with every server using this Redis and the same --name "
        "(needs the cluster extra; the history is kept there instead of --db)",
        "redis://HOST:PORT/DB",
    ),
    Setting("max_sessions", int, f"connections at once (default {limits.MAX_SESSIONS})", "N"),
    Setting("max_per_ip", int, f"connections per IP address (default {limits.MAX_PER_IP})", "N"),
    Setting("msg_rate", float, f"frames per second per client (default {limits.MSG_RATE})", "R"),
    Setting(
        "msg_burst",
        int,
        f"frames a client may send at once (default {limits.MSG_BURST}; 0: one at a time)",
        "N",
    ),
    Setting(
        "idle_timeout", float, f"drop clients silent for S s (default {limits.IDLE_TIMEOUT:g})", "S"
    ),
    Setting(
        "handshake_timeout",
        float,
        f"S seconds to finish TLS (default {limits.HANDSHAKE_TIMEOUT:g}; "
        f"0: {limits.HANDSHAKE_TIMEOUT_OFF:g} s, the event loop's own limit)",
        "S",
    ),
    Setting(
        "hello_timeout", float, f"S seconds to send hello (default {limits.HELLO_TIMEOUT})", "S"
    ),
    Setting("max_frame", int, f"longest frame in bytes (default {limits.MAX_FRAME})", "BYTES"),
    Setting("max_text", int, f"longest message in characters (default {limits.MAX_TEXT})", "N"),
    Setting(
        "send_buffer_limit",
        int,
        f"bytes queued for a client before it is dropped (default {limits.SEND_BUFFER_LIMIT})",
        "BYTES",
    ),
)
_BY_KEY = {s.field: s for s in SETTINGS}
_NOT_LIMITS = frozenset({"port", "history", "replay", "replay_max"})
"""Numeric settings that are not limits (0 does not turn them off, or not in that sense)."""


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag (default None, so that the config file can fill it in)."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="read settings from TOML")
    limits_group = parser.add_argument_group("limits (0 turns one off, unless it says otherwise)")
    for setting in SETTINGS:
        numeric = setting.kind in (int, float) and setting.field not in _NOT_LIMITS
        target = limits_group if numeric else parser
        if setting.kind is bool:
            target.add_argument(setting.flag, action="store_true", default=None, help=setting.help)
        else:
            target.add_argument(
                setting.flag,
                type=setting.kind,
                metavar=setting.metavar,
                choices=setting.choices,
                help=setting.help,
            )


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, checked against the table."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    table = raw.get("server", raw)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: server must be a table ([server]), not {table!r}")
    if table is not raw and len(raw) > 1:  # (a setting above [server] would be dropped)
        outside = ", ".join(repr(key) for key in raw if key != "server")
        raise ConfigError(
            f"{path}: {outside} outside [server]; put every setting under [server], "
            "or leave [server] out"
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = _BY_KEY.get(key.replace("-", "_"))
        if setting is None:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[setting.field] = _convert(setting, value, path)
    return values


def _convert(setting: Setting, value: object, path: Path) -> object:
    kind = setting.kind
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float
        # (a TOML true is a Python int too: not a port, a count or a limit)
        else isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, kind if kind is not Path else str)
    )
    if not ok:
        kind_name = {int: "an integer", float: "a number", bool: "true or false"}.get(
            kind, "a path" if kind is Path else "a string"
        )
        raise ConfigError(f"{path}: {setting.field} must be {kind_name}, not {value!r}")
    if setting.choices is not None and value not in setting.choices:
        raise ConfigError(f"{path}: {setting.field} must be one of {', '.join(setting.choices)}")
    if kind is Path:
        try:
            return path.parent / Path(str(value)).expanduser()  # (~ first: it is absolute)
        except RuntimeError:  # ~nobody, or no home folder at all
            raise ConfigError(
                f"{path}: {setting.field}: cannot find the home folder in {value!r}"
            ) from None
    return float(value) if kind is float else value  # type: ignore[arg-type]


def read_password(path: Path) -> str:
    """The room password: the first line of ``path``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read password file {path}: {exc.strerror}") from exc
    if not lines or not lines[0]:
        raise ConfigError(f"the password file {path} is empty")
    return lines[0]


MAX_NUMBER = 10**12
"""More than any count, size or time a server can use; larger ones overflow C and SQLite."""


def _check_number(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a number, not {value}")
    if value < 0:
        raise ConfigError(f"{name} cannot be negative")
    if value > MAX_NUMBER:
        raise ConfigError(f"{name} cannot be more than {MAX_NUMBER:,}, not {value:,}")


def server_config(args: argparse.Namespace) -> ServerConfig:
    """Merge command line, config file and defaults into a ``ServerConfig``."""
    values = read_config_file(args.config) if args.config else {}
    from_file = set(values)
    for setting in SETTINGS:
        given = getattr(args, setting.field, None)
        if given is not None:
            values[setting.field] = given
            from_file.discard(setting.field)
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            where = f"{args.config}: " if key in from_file else ""
            _check_number(f"{where}{key.replace('_', '-')}", value)
    if "name" in values and not values["name"].strip():  # (clients would show '' for it)
        where = f"{args.config}: " if "name" in from_file else ""
        raise ConfigError(f"{where}name cannot be blank: the name clients see the room by")
    if not 0 <= values.get("port", 0) < 65536:
        where = f"{args.config}: " if "port" in from_file else ""
        raise ConfigError(f"{where}port must be from 0 to 65535, not {values['port']}")
    # --cert alone: its key is in it (one PEM for both) or beside it (/x/server.crt,
    # /x/server.key), and the pair is never made (a mistyped path would start a server with
    # a new identity).
    alone = "cert" in values and "key" not in values
    if alone:
        values["key"] = certs.key_of(values["cert"])
    data_dir = values.get("data_dir")
    if data_dir is not None:  # a --cert or --key given one by one still wins
        values.setdefault("cert", data_dir / certs.CERT_NAME)
        values.setdefault("key", data_dir / certs.KEY_NAME)
    values["make_cert"] = not alone
    password_file = values.pop("password_file", None)
    config = ServerConfig(**values)
    if password_file is not None:
        config.password = read_password(password_file)
    return config
