"""Render the desktop client's screenshots for the README into docs/img/.

Usage: python tools/screenshots.py [--out docs/img] [--loopback]

As root with ``ip`` (iproute2) the tool builds a private network of Linux network namespaces
joined by a bridge: three servers with discovery on, each on a host of its own, alice's desk,
and the hosts of bob, carol and dave. Alice's window runs inside her namespace with discovery
on, so "Servers on this network" shows the servers mDNS found there. Every packet stays inside
those namespaces, and they are deleted at the end, also after an error or Ctrl-C. Without root
or ``ip netns`` (or with ``--loopback``) everything runs on 127.0.0.1 with discovery off, so the
servers list stays empty; the tool says so.

Either way the windows go to a private Xvfb display (``-nolisten tcp``; from inside a namespace
X clients reach it through its socket file, since abstract sockets belong to a network
namespace). Alice's window is a process of its own (this script with ``--window``) that prints
cues (``join bob``, ``say bob ...``) on stdout; this process plays bob, carol and dave with the
terminal client. Needs Xvfb and ImageMagick (``import``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tkinter as tk
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from chatsecure.client.state import GuiOptions, Phase
from chatsecure.gui.app import App
from chatsecure.gui.display import virtual_display
from chatsecure.testing import ServerThread, server_config
from chatsecure.tls import certs
from chatsecure.tls.trust import KnownServers

ROOM = "Physics lab"
"""The server the chat happens on."""
OTHER_SERVERS = ("Library, 2nd floor", "Robotics club")
"""More servers on the network, for the list on the connect view."""
SUBNET = "192.168.1"
"""The private network's /24 (inside the namespaces only, so any prefix is safe)."""
ADDRESSES = {
    ROOM: 10,
    OTHER_SERVERS[0]: 11,
    OTHER_SERVERS[1]: 12,
    "alice": 20,
    "bob": 21,
    "carol": 22,
    "dave": 23,
}
"""Last byte of each host's address."""
PREFIX = "chatsecure-shots"
"""Namespaces are called ``chatsecure-shots-<pid>-<label>``."""
CUE_TIMEOUT = 60.0
"""Seconds to wait for the window's next cue before giving up."""
OTHER_FP = "SHA256:" + "A" * 43
"""A pin that the server's certificate does not match, for the changed-certificate dialog."""

SCRIPT = (
    ("dave", "wrong room, sorry!"),
    ("alice", "hi both! the lab report is due friday"),
    ("bob", "thanks alice, I'll bring the data"),
    ("carol", "same here — see you at 10"),
    ("alice", "great, see you"),
)
"""Who says what, in order (dave leaves right after his line)."""
WHILE_AWAY = (
    ("bob", "the data is on the shared drive"),
    ("carol", "thanks! reading it now"),
)
"""What bob and carol say while alice is away (the window's return shows it)."""

Roots = list[tk.Tk]


# --- alice's window (the --window process) ------------------------------------------------


def pump(roots: Roots, until: Callable[[], object], timeout: float = 10.0) -> None:
    """Run the Tk event loops of ``roots`` until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: timed out waiting for the GUI ({until})")
        for root in roots:
            root.update()
        time.sleep(0.01)


def settle(roots: Roots, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    pump(roots, lambda: time.monotonic() > end)


def shoot(root: tk.Misc, path: Path) -> None:
    """Capture one toplevel (window frame included) as a PNG."""
    root.update_idletasks()
    window = root.winfo_toplevel().wm_frame()
    subprocess.run(["import", "-window", window, str(path)], check=True, timeout=30)
    cue("wrote", str(path))


def widget(root: tk.Misc, path: str) -> Any:  # noqa: ANN401 - whatever widget lives there
    return root.nametowidget(path)


def type_into(root: tk.Misc, path: str, text: str) -> None:
    entry = widget(root, path)
    entry.delete(0, "end")
    entry.insert(0, text)


def cue(*words: str) -> None:
    """Tell the director (the parent process) what to do or what happened."""
    print(" ".join(words), flush=True)


@contextlib.contextmanager
def window(nick: str, roots: Roots, *, discovery: bool) -> Iterator[tuple[tk.Tk, App]]:
    root = tk.Tk(className="chatsecure")
    app = App(root, GuiOptions(nick=nick, discovery=discovery))
    root.geometry("900x600+0+0")
    roots.append(root)
    try:
        yield root, app
    finally:
        app.close()
        roots.remove(root)


def in_phase(app: App, phase: Phase) -> Callable[[], bool]:
    return lambda: app.controller.model.phase is phase


def window_main(args: argparse.Namespace) -> int:
    """Alice's side: the connect view, trust dialogs, a chat and a return to it, cueing the
    others."""
    roots: Roots = []
    with window("alice", roots, discovery=args.pick is not None) as (alice, app):
        if args.pick is not None:
            pick_from_list(alice, roots, args.pick, args.servers)
        else:
            host, _, port = args.connect.rpartition(":")
            type_into(alice, "connect.form.host", host)
            type_into(alice, "connect.form.port", port)
        settle(roots)
        shoot(alice, args.out / "connect.png")
        where = (widget(alice, "connect.form.host").get(), widget(alice, "connect.form.port").get())

        widget(alice, "connect.form.buttons.connect").invoke()
        pump(roots, lambda: "trust" in alice.children)
        settle(roots)
        shoot(widget(alice, "trust"), args.out / "trust-new.png")
        widget(alice, "trust.buttons.accept").invoke()
        pump(roots, in_phase(app, Phase.CHAT))
        chat(alice, roots)
        settle(roots, 0.5)
        shoot(alice, args.out / "chat.png")
        say(alice, "quit")
        pump(roots, in_phase(app, Phase.CONNECT))
        away(alice, app, roots)
        shoot(alice, args.out / "return.png")
        say(alice, "quit")
        cue("quit", "bob")
        cue("quit", "carol")

    # A changed certificate: pin something else for the server and connect again.
    KnownServers().pin(where[0], int(where[1]), OTHER_FP)
    with window("alice", roots, discovery=False) as (alice, app):
        type_into(alice, "connect.form.host", where[0])
        type_into(alice, "connect.form.port", where[1])
        widget(alice, "connect.form.buttons.connect").invoke()
        pump(roots, lambda: "trust" in alice.children)
        settle(roots)
        shoot(widget(alice, "trust"), args.out / "trust-changed.png")
        widget(alice, "trust.buttons.cancel").invoke()
        pump(roots, in_phase(app, Phase.CONNECT))
    cue("done")
    return 0


def pick_from_list(alice: tk.Tk, roots: Roots, name: str, expected: int) -> None:
    """Wait until discovery has listed every server; select ``name``."""
    tree = widget(alice, "connect.servers.list")
    pump(roots, lambda: len(tree.get_children()) >= expected, timeout=30)
    key = next(k for k in tree.get_children() if tree.item(k, "values")[0] == name)
    tree.selection_set(key)
    tree.focus(key)
    pump(roots, lambda: widget(alice, "connect.form.host").get() != "")


def chat(alice: tk.Tk, roots: Roots) -> None:
    """Bob and carol join; dave drops in by mistake; then the four lines of the chat."""
    users = widget(alice, "chat.body.side.users")
    transcript = widget(alice, "chat.body.log.transcript")

    def here(nick: str) -> Callable[[], bool]:
        return lambda: any(row.startswith(f"{nick} (") for row in users.get(0, "end"))

    def heard(text: str) -> Callable[[], bool]:
        return lambda: f": {text}\n" in transcript.get("1.0", "end")

    for nick in ("bob", "carol", "dave"):
        cue("join", nick)
        pump(roots, here(nick), timeout=20)
    for nick, text in SCRIPT:
        if nick == "alice":
            say(alice, text)
        else:
            cue("say", nick, text)
        pump(roots, heard(text))
        if nick == "dave":
            cue("quit", "dave")
            pump(roots, lambda: not here("dave")())
    alice.lift()


def away(alice: tk.Tk, app: App, roots: Roots) -> None:
    """Alice has left; bob and carol talk; she comes back to what they said."""
    for nick, text in WHILE_AWAY:
        cue("say", nick, text)
    settle(roots, 1.5)  # (their lines are stored in milliseconds)
    widget(alice, "connect.form.buttons.connect").invoke()
    pump(roots, in_phase(app, Phase.CHAT))
    transcript = widget(alice, "chat.body.log.transcript")
    pump(roots, lambda: f": {WHILE_AWAY[-1][1]}\n" in transcript.get("1.0", "end"))
    settle(roots, 0.5)


def say(root: tk.Misc, text: str) -> None:
    type_into(root, "chat.bottom.message", text)
    widget(root, "chat.bottom.send").invoke()


# --- processes that print lines -----------------------------------------------------------


class Process:
    """A child process whose stdout lines are read on a thread, so that waits can time out."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], *, stdin: bool = False) -> None:
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str | None] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.err.append)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, put: Callable[[str | None], None]) -> None:
        assert stream is not None  # noqa: S101 - opened as a pipe above
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def next_line(self, timeout: float) -> str | None:
        """The next line of stdout; None at its end. Raises ``TimeoutError``."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.argv[-3:]} said nothing for {timeout:.0f} s") from None

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise SystemExit(f"screenshots: {self.argv[-3:]} ended:\n{self.stderr()}")
            if (match := re.search(pattern, line)) is not None:
                return match

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None  # noqa: S101 - only called for stdin=True
        try:
            self.popen.stdin.write(line + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise SystemExit(f"screenshots: {self.argv[-5:]} is gone:\n{self.stderr()}") from None

    def stderr(self) -> str:
        return "\n".join(line for line in self.err if line is not None)[-4000:]

    def stop(self, timeout: float = 5.0) -> None:
        """End it: end of input for a client, SIGTERM for a server, SIGKILL if it lingers."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)


# --- where the servers and people run ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Room:
    host: str
    port: int
    fingerprint: str


class Stage:
    """Runs the servers, the window and the people; stops all of them on ``close``."""

    def __init__(self, tmp: Path, display: str) -> None:
        self.tmp = tmp
        self.processes: list[Process] = []
        self.env = {
            **os.environ,
            "DISPLAY": display,
            "CHATSECURE_HOME": str(tmp / "home"),
            "PYTHONUTF8": "1",
        }

    def command(self, label: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on the host called ``label``."""
        return list(argv)

    def start(self, label: str, argv: Sequence[str], *, stdin: bool = False) -> Process:
        env = {**self.env, "CHATSECURE_HOME": str(self.tmp / f"home-{label}")}
        if label == "alice":
            env["CHATSECURE_HOME"] = self.env["CHATSECURE_HOME"]
        process = Process(self.command(label, argv), env, stdin=stdin)
        self.processes.append(process)
        return process

    def setup(self) -> None:
        """Make what the servers and people need (close() undoes it, also half done)."""

    def room(self) -> Room:
        raise NotImplementedError

    def window_args(self, room: Room) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


class Loopback(Stage):
    """Everything on 127.0.0.1 with discovery off: the servers list stays empty."""

    def __init__(self, tmp: Path, display: str) -> None:
        super().__init__(tmp, display)
        self._server: ServerThread | None = None

    def room(self) -> Room:
        certs.generate(self.tmp / "certs")
        self._server = ServerThread(server_config(self.tmp / "certs", name=ROOM)).start()
        return Room("127.0.0.1", self._server.port, self._server.fingerprint)

    def window_args(self, room: Room) -> list[str]:
        return ["--connect", f"{room.host}:{room.port}"]

    def close(self) -> None:
        super().close()
        if self._server is not None:
            self._server.stop()


class Namespaces(Stage):
    """A bridge, and a network namespace per host on it; discovery on."""

    def __init__(self, tmp: Path, display: str) -> None:
        super().__init__(tmp, display)
        self.prefix = f"{PREFIX}-{os.getpid()}"
        self.made: list[str] = []

    def setup(self) -> None:
        remove_stale_namespaces()
        switch = self._namespace("switch")
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for n, (label, last) in enumerate(ADDRESSES.items()):
            self._plug(switch, n, label, f"{SUBNET}.{last}/24")

    def _name(self, label: str) -> str:
        return f"{self.prefix}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}"

    def _namespace(self, label: str) -> str:
        name = self._name(label)
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def _plug(self, switch: str, n: int, label: str, address: str) -> None:
        """A host on the bridge: a veth pair, the address, a route for multicast."""
        name = self._namespace(label)
        # IPv4 only: the screenshots then show the addresses people type.
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        ip("-n", switch, "link", "add", f"p{n}", "type", "veth", "peer", "name", "eth0",
           "netns", name)  # fmt: skip
        ip("-n", switch, "link", "set", f"p{n}", "master", "br0", "up")
        ip("-n", name, "addr", "add", address, "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def command(self, label: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self._name(label), *argv]

    def room(self) -> Room:
        found: dict[str, str] = {}
        servers = {name: self._server(name) for name in (ROOM, *OTHER_SERVERS)}
        for name, process in servers.items():
            found[name] = process.expect(r"certificate fingerprint: (\S+)").group(1)
        return Room(f"{SUBNET}.{ADDRESSES[ROOM]}", 7467, found[ROOM])

    def _server(self, name: str) -> Process:
        cert_dir = self.tmp / f"certs-{self._name(name)}"
        certs.generate(cert_dir)
        argv = [sys.executable, "-m", "chatsecure", "server", "--name", name, "--port", "7467"]
        argv += ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
        return self.start(name, argv)

    def window_args(self, room: Room) -> list[str]:
        return ["--pick", ROOM, "--servers", str(1 + len(OTHER_SERVERS))]

    def close(self) -> None:
        try:
            super().close()
        finally:
            failed = [n for n in reversed(self.made) if ip("netns", "delete", n, check=False)]
            self.made.clear()
            if failed:
                raise SystemExit(f"screenshots: could not delete namespaces {failed}")


def ip(*args: str, check: bool = True) -> int:
    """Run ``ip`` with ``args``; its exit status (raise on failure when ``check``)."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and result.returncode != 0:
        raise SystemExit(f"screenshots: ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.returncode


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` does not work here ({probe.stderr.strip()})"
    return None


def remove_stale_namespaces() -> None:
    """Delete namespaces of earlier runs that were killed before they could clean up.

    Their processes (servers, clients) are killed first: a namespace lives on while any
    process is in it.
    """
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for match in re.finditer(rf"^({PREFIX}-(\d+)-\S+)", listing.stdout, re.MULTILINE):
        name, owner = match.group(1), match.group(2)
        if Path(f"/proc/{owner}").exists():
            continue  # another run of this tool, still going
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10, check=False
        )
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "delete", name, check=False)


# --- the director -----------------------------------------------------------------------


def direct(stage: Stage, out: Path) -> None:
    """Start the window and follow its cues until it is done."""
    room = stage.room()
    argv = [sys.executable, str(Path(__file__).resolve()), "--window", "--out", str(out)]
    alice = stage.start("alice", [*argv, *stage.window_args(room)])
    people: dict[str, Process] = {}
    while True:
        line = alice.next_line(CUE_TIMEOUT)
        if line is None:
            raise SystemExit(f"screenshots: the window ended early:\n{alice.stderr()}")
        verb, _, rest = line.partition(" ")
        nick, _, text = rest.partition(" ")
        if verb == "wrote":
            print(line, flush=True)
        elif verb == "join":
            connect = [sys.executable, "-m", "chatsecure", "connect", f"{room.host}:{room.port}"]
            connect += ["--nick", nick, "--fingerprint", room.fingerprint]
            people[nick] = stage.start(nick, connect, stdin=True)
        elif verb == "say":
            people[nick].send(text)
        elif verb == "quit":
            people[nick].send("quit")
        elif verb == "done":
            break
    if alice.popen.wait(15) != 0:
        raise SystemExit(f"screenshots: the window failed:\n{alice.stderr()}")


def x_socket(display: str) -> Path:
    """The socket file of an X display: how X clients in another network namespace reach it."""
    return Path("/tmp/.X11-unix") / f"X{display.lstrip(':').split('.')[0]}"  # noqa: S108


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that the namespaces are deleted."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument(
        "--loopback", action="store_true", help="no namespaces: 127.0.0.1 and discovery off"
    )
    parser.add_argument("--window", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pick", help=argparse.SUPPRESS)
    parser.add_argument("--servers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--connect", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.window:
        return window_main(args)
    if shutil.which("import") is None:
        print("screenshots: ImageMagick's `import` is missing", file=sys.stderr)
        return 1
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    why_not = "--loopback" if args.loopback else namespaces_unavailable()
    if why_not is not None:
        print(
            f"screenshots: {why_not}: running on 127.0.0.1 with discovery off, so the list of "
            "servers on the connect view will be empty (run as root with `ip` to fill it)",
            file=sys.stderr,
        )
    stop_on_sigterm()
    try:
        render(args.out, why_not is None)
    except KeyboardInterrupt:
        print("screenshots: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    return 0


def render(out: Path, namespaces: bool) -> None:
    """Make the pictures in ``out``, in namespaces or on loopback; clean up in any case."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        virtual_display(1280, 900) as display,
        contextlib.ExitStack() as stack,
    ):
        if namespaces and not x_socket(display).is_socket():
            raise SystemExit(f"screenshots: no socket file for display {display}")
        stage = (Namespaces if namespaces else Loopback)(Path(tmp), display)
        stack.callback(stage.close)
        stage.setup()
        direct(stage, out)


if __name__ == "__main__":
    raise SystemExit(main())
