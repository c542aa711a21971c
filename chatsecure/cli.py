"""The ``chatsecure`` command line: argument parsing and wiring, nothing more."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import importlib
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from chatsecure import __version__
from chatsecure.errors import ChatError, RemoteProtocolError
from chatsecure.history.cli import add_history_arguments, cmd_history
from chatsecure.protocol import limits
from chatsecure.protocol.messages import clean_nick
from chatsecure.settings import add_server_arguments
from chatsecure.tls import certs

log = logging.getLogger("chatsecure")


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log details for debugging (DEBUG; a client: every frame)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")


def _add_trust(parser: argparse.ArgumentParser) -> None:
    # One way only: with --cafile the others would be ignored, and --fingerprint wins over
    # --accept-new, so a combination is a mistake to point out, not to guess at.
    titled = parser.add_argument_group("server verification (one of)")
    group = titled.add_mutually_exclusive_group()
    group.add_argument(
        "--cafile", type=Path, metavar="FILE", help="verify the server with this CA bundle"
    )
    group.add_argument(
        "--fingerprint", metavar="SHA256:...", help="trust only this certificate fingerprint"
    )
    group.add_argument(
        "--accept-new",
        action="store_true",
        help="pin a server seen for the first time without asking",
    )
    auth = parser.add_argument_group("getting in (when the server asks)")
    auth.add_argument(
        "--cert", type=Path, metavar="FILE", help="your client certificate (mutual TLS)"
    )
    auth.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help="the key of --cert (default: in --cert if it holds one, else beside it, named like "
        "it with .key)",
    )
    auth.add_argument(
        "--password-file", type=Path, metavar="FILE", help="send the room password in FILE"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatsecure", description="Secure chat for local networks and beyond."
    )
    parser.add_argument("--version", action="version", version=f"chatsecure {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    server = sub.add_parser(
        "server",
        help="run a chat server",
        description="Run a chat server (TLS), announced on this network unless --no-discovery.",
    )
    add_server_arguments(server)
    _add_discovery(server)
    server.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (pip install 'chatsecure[fast]'), else asyncio",
    )
    _add_logging(server)

    connect = sub.add_parser(
        "connect",
        help="chat from the terminal (stdin lines are messages)",
        description="Chat from the terminal: each line is a message, but for commands (/help).",
    )
    connect.add_argument(
        "target",
        metavar="HOST[:PORT]",
        nargs="*",
        help=f"the server's host name or IP address, and its port if not {limits.DEFAULT_PORT} "
        f"(an IPv6 address with a port goes in brackets: [::1]:{limits.DEFAULT_PORT}); "
        "several: the servers of one cluster, tried in order (the next when one is gone)",
    )
    connect.add_argument(
        "--port",
        metavar="PORT",
        help=f"the port of each HOST given without one (default {limits.DEFAULT_PORT})",
    )
    connect.add_argument(
        "--nick",
        metavar="NICK",
        help="your nick (1-32 characters); with --cert, the certificate's name is your nick",
    )
    # (Exclusive in the parser: refused before any code could look on the network.)
    looking = connect.add_mutually_exclusive_group()
    looking.add_argument(
        "--discovered",
        metavar="NAME",
        help="instead of HOST[:PORT]: the server called NAME on this network (see discover); "
        "its certificate must match the fingerprint it advertises",
    )
    looking.add_argument(
        "--no-discovery",
        action="store_true",
        help="accepted as the other commands take it: without --discovered, connect never "
        "looks for servers on the network",
    )
    _add_trust(connect)
    _add_logging(connect)

    gui = sub.add_parser(
        "gui",
        help="the desktop client (what runs without a COMMAND)",
        description="The desktop client: find or type a server, connect, chat.",
    )
    gui.add_argument(
        "target", metavar="HOST[:PORT]", nargs="?", help="fill in this server and connect at once"
    )
    gui.add_argument(
        "--nick", metavar="NICK", help="your nick (default: the one you used last time)"
    )
    gui.add_argument(
        "--no-discovery",
        action="store_true",
        help="do not look for servers on this network (mDNS); type an address instead",
    )
    _add_trust(gui)
    _add_logging(gui)

    gencert = sub.add_parser(
        "gencert",
        help="make a self-signed server certificate",
        description="Make a self-signed server certificate, or a client certificate and its CA.",
    )
    add_gencert_arguments(gencert)

    history = sub.add_parser(
        "history",
        help="print the room's stored lines (no running server needed)",
        description="Print the newest lines of a server's history (read-only).",
    )
    add_history_arguments(history)

    forget = sub.add_parser(
        "forget",
        help="remove a server's pinned certificate",
        description="Remove a server's pinned certificate, so that the next connection asks.",
    )
    forget.add_argument("target", metavar="HOST[:PORT]", help="the server, as you connected to it")

    discover = sub.add_parser(
        "discover",
        help="list the servers on this network (mDNS)",
        description="List the chatsecure servers on this network (mDNS/DNS-SD).",
    )
    discover.add_argument(
        "--timeout", type=_seconds, metavar="S", help="listen S seconds (default 3; --watch: ever)"
    )
    discover.add_argument("--json", action="store_true", help="print JSON, for scripts")
    discover.add_argument(
        "--watch", action="store_true", help="print servers as they come and go, as JSON lines"
    )
    _add_logging(discover)
    return parser


def _add_discovery(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("discovery (mDNS/DNS-SD)")
    group.add_argument(
        "--no-discovery", action="store_true", help="do not advertise the server on the network"
    )
    group.add_argument(
        "--advertise-ip",
        action="append",
        default=[],
        type=_ip_address,
        metavar="IP",
        help="advertise this address instead of those listened on (repeatable)",
    )


def _ip_address(text: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # (An mDNS record holds the address alone: each client adds the interface it heard
        # the answer on.)
        bare = text.partition("%")[0]
        raise argparse.ArgumentTypeError(
            f"{text!r}: an advertised address has no %interface; give {bare}"
        )
    return str(ip)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def add_gencert_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``chatsecure gencert``, shared with ``tools/gencert.py``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=certs.DEFAULT_CERT_DIR,
        metavar="DIR",
        help="folder (default %(default)s)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=limits.CERT_DAYS,
        metavar="N",
        help="validity in days (default %(default)s)",
    )
    parser.add_argument(
        "--san", action="append", default=[], metavar="NAME_OR_IP", help="extra name (repeatable)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing certificate")
    parser.add_argument(
        "--client",
        metavar="NAME",
        help="make a client certificate for NAME instead, signed by the CA in --ca",
    )
    parser.add_argument(
        "--ca", type=Path, metavar="DIR", help="folder of the client CA (made on first use)"
    )


def configure_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    elif getattr(args, "quiet", False):
        level = logging.WARNING
    # A server's log is read later, by time and source; a client's stderr is read by its
    # user now, beside the other lines it prints there ("chatsecure: ...").
    server = getattr(args, "command", None) == "server"
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        if server
        else "chatsecure: %(message)s",
    )
    if not server and level > logging.DEBUG:
        # asyncio's own warnings ("socket.send() raised exception.", written for each line
        # sent into a connection already gone) say nothing to a user: the client reports
        # the lost connection itself.
        logging.getLogger("asyncio").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chatsecure`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["gui"])  # a desktop shortcut runs plain `chatsecure`
    configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except ChatError as exc:
        print(f"chatsecure: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output went (`chatsecure history | head`)
        from chatsecure.client.terminal import BROKEN_PIPE, silence_stdout

        silence_stdout()
        return BROKEN_PIPE


def cmd_server(args: argparse.Namespace) -> int:
    from chatsecure.server import ChatServer, serve
    from chatsecure.settings import server_config

    # A fatal signal (SIGBUS: the history's memory-mapped -shm file gone from under SQLite,
    # a disk remounted read-only) says so on stderr, in the service's journal, not nothing.
    faulthandler.enable()
    config = server_config(args)
    config.discovery = not args.no_discovery
    config.advertise_ips = args.advertise_ip

    def ready(server: ChatServer) -> None:
        for each in server.listening:
            print(f"chatsecure server {server.config.name!r} listening on {each}", flush=True)
        print(f"certificate: {server.config.cert.absolute()}", flush=True)
        print(f"certificate fingerprint: {server.fingerprint}", flush=True)
        running = server.config
        if running.cluster:
            from chatsecure.history.redis import public_url  # (the cluster extra is there)

            print(
                f"history: in Redis at {public_url(running.cluster)}, room {running.name!r}",
                flush=True,
            )
        elif running.history:
            print(f"history: {running.db_path.absolute()}", flush=True)
        else:
            print("history: off (--history 0): nothing said is stored", flush=True)

    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(serve(config, ready=ready))
    return 0


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``--loop`` asks for; ``auto`` takes uvloop when it is installed."""
    if name == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if name == "uvloop":
            raise ChatError("--loop uvloop needs uvloop: pip install 'chatsecure[fast]'") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _targets(texts: list[str], port_text: str | None) -> list[tuple[str, int]]:
    """The servers ``connect`` was given (``HOST[:PORT]`` each, ``--port`` for those without
    one); ``ChatError`` for a mistyped one."""
    from chatsecure.client.core import parse_target, port_number
    from chatsecure.tls.trust import host_port

    port = limits.DEFAULT_PORT
    if port_text is not None:
        if (given := port_number(port_text)) is None:
            raise ChatError(f"--port must be a number from 1 to 65535, not {port_text!r}")
        port = given
    targets: list[tuple[str, int]] = []
    for text in texts:
        if targets and (meant := port_number(text)) is not None:  # ``connect HOST 7500``
            raise ChatError(
                f"{text!r} is not a host: a port goes after its host, "
                f"{host_port(targets[0][0], meant)} (or --port {text})"
            )
        try:
            targets.append(parse_target(text, port))
        except ValueError as exc:
            raise ChatError(str(exc)) from None
    return targets


def cmd_connect(args: argparse.Namespace) -> int:
    from chatsecure.client.core import ChatClient, Target, dialable
    from chatsecure.client.resume import LastSeen, client_id
    from chatsecure.client.terminal import run, tty_ask
    from chatsecure.settings import read_password
    from chatsecure.tls.trust import KnownServers, TrustPolicy

    advertised = None
    others: tuple[tuple[str, int], ...] = ()
    nick = _nick(args.nick, args.cert)  # (before anything looks on the network)
    if args.port is not None and args.discovered is not None:
        raise ChatError("--port is for a HOST given without one: a discovered server says its own")
    if args.discovered is not None and not args.target:
        from chatsecure.discovery.mdns import find_server, local_networks
        from chatsecure.discovery.records import preferred_addresses

        found = find_server(args.discovered)
        addresses = [a for a in preferred_addresses(found, local_networks()) if dialable(a)]
        if not addresses:  # (the interface its link-local address was heard on is gone)
            raise ChatError(f"{found.name!r} advertises no address this machine can dial now")
        (host, *alternates), port = addresses, found.port
        others = tuple((a, port) for a in alternates)  # (tried when host does not answer)
        advertised = found.fingerprint
    elif not args.target or args.discovered is not None:
        raise ChatError("give either HOST[:PORT] (one or more) or --discovered NAME")
    else:
        (host, port), *rest = _targets(args.target, args.port)
        others = tuple(dict.fromkeys(a for a in rest if a != (host, port)))
    if sys.stdin is None:  # started with its input closed (`<&-`): no input, as /dev/null
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - the process's own
    store = KnownServers()
    expected = certs.normalize_fingerprint(args.fingerprint) if args.fingerprint else None
    policy = TrustPolicy(
        store,
        ask=tty_ask(store) if sys.stdin.isatty() else None,
        accept_new=args.accept_new,
        fingerprint=expected,
    )
    password = read_password(args.password_file) if args.password_file else None
    target = Target(
        host,
        port,
        cafile=args.cafile,
        cert=args.cert,
        key=args.key,
        advertised=advertised,
        others=others,
    )
    client = ChatClient(
        target,
        nick,
        policy,
        password=password,
        client_id=client_id(),
        last_seen=LastSeen(),
        shows=True,
    )
    return run(client, sys.stdin, sys.stdout, sys.stderr)


def cmd_gui(args: argparse.Namespace) -> int:
    from chatsecure.client.state import GuiOptions
    from chatsecure.settings import read_password

    try:
        from chatsecure.gui.app import run
    except ImportError as exc:  # Debian ships Tk for Python separately
        raise ChatError(f"the desktop client needs Tk ({exc}): install python3-tk") from None
    options = GuiOptions(
        target=args.target,
        nick=args.nick,
        discovery=not args.no_discovery,
        cafile=args.cafile,
        fingerprint=certs.normalize_fingerprint(args.fingerprint) if args.fingerprint else None,
        accept_new=args.accept_new,
        cert=args.cert,
        key=args.key,
        password=read_password(args.password_file) if args.password_file else None,
    )
    return run(options)


def _nick(given: str | None, cert: Path | None) -> str:
    """``--nick``, else the name of the client certificate (the server takes it as the nick)."""
    if given is not None:
        return given
    if cert is None:
        raise ChatError("give your nick with --nick NICK")
    name = certs.common_name(certs.load_cert(cert))
    if name is None:
        raise ChatError(f"{cert} has no name (common name): give your nick with --nick NICK")
    return name


def cmd_gencert(args: argparse.Namespace) -> int:
    if args.client is not None or args.ca is not None:
        if args.client is None or args.ca is None:
            raise ChatError("--client NAME and --ca DIR go together")
        try:
            nick = clean_nick(args.client)
        except RemoteProtocolError:
            nick = None
        if nick != args.client:  # (a tab, a newline: the room would show another name)
            raise ChatError(
                f"--client {args.client!r}: the name is the nick in the room, 1 to "
                f"{limits.MAX_NICK} visible characters"
                + (f" (as given, it would be {nick!r})" if nick else "")
            )
        if args.client == "ca":
            raise ChatError("--client ca: that name is the CA's own (ca.crt, ca.key)")
        files = certs.generate_client(args.client, args.ca, days=args.days, force=args.force)
        print(f"wrote {files.cert} and {files.key} (the key mode 0600) for {args.client!r}")
        print(f"give the server --client-ca {args.ca / 'ca.crt'}")
        return 0
    files = certs.generate(args.out, days=args.days, extra_sans=args.san, force=args.force)
    print(f"wrote {files.cert} and {files.key} (the key mode 0600), valid {args.days} days")
    print(f"certificate fingerprint: {certs.cert_fingerprint(files.cert)}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from chatsecure.client.core import parse_target
    from chatsecure.tls.trust import KnownServers, server_key

    try:
        host, port = parse_target(args.target, check=False)  # (a pin is only a name)
    except ValueError as exc:
        raise ChatError(str(exc)) from None
    store = KnownServers()
    if store.remove(host, port):
        print(f"forgot {server_key(host, port)}")
        return 0
    others = store.ports_of(host)
    print(
        f"{server_key(host, port)} was not pinned in {store.path}"
        + (f"; pinned for that host: {', '.join(others)}" if others else ""),
        file=sys.stderr,
    )
    return 1


def cmd_discover(args: argparse.Namespace) -> int:
    from chatsecure.discovery.mdns import browse
    from chatsecure.discovery.records import (
        DISCOVER_TIMEOUT,
        DiscoveryEvent,
        describe_server,
        event_json,
    )

    def watch(event: DiscoveryEvent) -> None:
        print(json.dumps(event_json(event)), flush=True)

    timeout = args.timeout or (None if args.watch else DISCOVER_TIMEOUT)
    servers = browse(timeout, on_event=watch if args.watch else None)
    if args.json and not args.watch:
        print(json.dumps([s.to_json() for s in servers], indent=2))
    elif not args.watch:
        for server in servers:
            print(describe_server(server))
        if not servers:
            print("no chatsecure server found on this network", file=sys.stderr)
    return 0 if servers or args.watch else 1


COMMANDS = {
    "server": cmd_server,
    "connect": cmd_connect,
    "gui": cmd_gui,
    "gencert": cmd_gencert,
    "forget": cmd_forget,
    "history": cmd_history,
    "discover": cmd_discover,
}
