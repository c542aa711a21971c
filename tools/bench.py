"""Load generator for chatsecure: real TLS clients speaking protocol v2 (or IRC), one process.

    python tools/bench.py fanout --clients 50 --senders 5 --messages 2000 --baseline --runs 3
    python tools/bench.py fanout --history both --against-tree ../old-checkout --runs 3
    python tools/bench.py paced --clients 1000 --rate 0.2 --duration 30
    python tools/bench.py hold --clients 10000
    python tools/bench.py store --durability both       # acked lines/s, 2 senders
    python tools/bench.py replay --messages 10000       # a client that missed them resumes

Each run starts the server under test as a subprocess on 127.0.0.1 with an ephemeral port
(limits off, no discovery), drives it, stops it, and prints a table row and one JSON line.
``--baseline`` runs the same workload against ``benchmarks/naive_server.py`` in the same
invocation, ``--against ngircd`` (or ``inspircd``) against that IRC server, ``--against-tree
DIR`` against the chatsecure server of another checkout, ``--history both`` against this one
with and without its room log; the summary gives medians and ratios.

Every client names itself (``client`` in hello) and every line it sends (``ref``), as a v2
client does, so a v2 server acknowledges each line; a v1 server ignores both fields.

The generator must stay cheap per delivery or it becomes what is measured: receivers only
count complete lines (``bytearray.count`` on one shared receive buffer, no copy, no parse);
only a few "probe" receivers look for the timestamps that a sample of messages carry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chatsecure.tls import certs  # noqa: E402
from chatsecure.tls.context import client_context  # noqa: E402

HOST = "127.0.0.1"
TEXT_LEN = 64
"""Benchmark messages are 64-character texts."""
MARK = b"=t"
"""Opens the send time in a sampled message text (``END`` closes it); nowhere else in a line."""
END = b"="
ACK = b'{"type":"ack"'
"""How every ``ack`` frame starts (the server encodes it with this key order)."""
NICK = b'"nick":'
MSG_SEQ = b'{"type":"msg","seq":'
PEERS_FRAME = b'{"type":"peers"'
"""How a ``peers`` frame (more of the room, right after a v2 welcome) starts."""
"""How a stored line starts (v2): the seq follows."""
"""In every peer a chatsecure server names (welcome, peers, join, joins): counts presence."""
RECV_BUFFER = 256 * 1024
PROBES = 16
"""Receivers that look for timestamps; the others only count lines."""
START_TIMEOUT = 30.0
"""Seconds a server subprocess has to print where it listens."""
COUNT_BATCH = 16 * 1024
"""Bytes a counting (non-probe) receiver lets the kernel gather before it reads them."""
CONNECT_CONCURRENCY = 200
"""TLS handshakes in flight at once while clients connect."""
IRC_CHANNEL = b"#bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# One receive buffer for every connection: the loop is single-threaded and each chunk is
# consumed in buffer_updated before the next read, so sharing it costs nothing and saves
# a quarter megabyte per connection.
_SHARED = bytearray(RECV_BUFFER)
_SHARED_VIEW = memoryview(_SHARED)


def stamped_text(now: float) -> bytes:
    """A 64-character text carrying its send time for the probes."""
    return (MARK + f"{now:.6f}".encode() + END).ljust(TEXT_LEN, b"x")


PLAIN_TEXT = b"y" * TEXT_LEN


# --- dialects -------------------------------------------------------------------------------


class Dialect:
    """How a client joins and sends a line: protocol v1 here, IRC in ``IrcDialect``."""

    name = "chatsecure"

    def hello(self, nick: str, client_id: str, since: int | None = None) -> bytes:
        frame = b'{"type":"hello","nick":"' + nick.encode() + b'","client":"' + client_id.encode()
        return frame + (b'"}\n' if since is None else b'","since":%d}\n' % since)

    def msg(self, text: bytes, ref: bytes) -> bytes:
        return b'{"type":"msg","text":"' + text + b'","ref":"' + ref + b'"}\n'

    def after(self, head: bytes) -> bytes | None:
        """What a client sends once ``head`` shows it registered, before its welcome (if any)."""
        return None

    def welcomed(self, head: bytes) -> bool | None:
        """True once ``head`` (everything received so far) holds the welcome; False if refused."""
        line, sep, _ = head.partition(b"\n")
        if not sep:
            return None
        return b'"type":"welcome"' in line

    def roster_entries(self, clients: int) -> int | None:
        """Peers named to the whole room once ``clients`` are in (None: unknown).

        Each client is named to itself (``you``) and to each other client once, in a welcome,
        a ``peers`` or a ``join``/``joins`` frame, however the server groups them.
        """
        return clients * clients


class IrcDialect(Dialect):
    """Just enough IRC to join one channel and talk in it."""

    name = "irc"

    def hello(self, nick: str, client_id: str, since: int | None = None) -> bytes:
        n = nick.encode()
        join = b"JOIN " + IRC_CHANNEL + b"\r\n"
        return b"NICK " + n + b"\r\nUSER " + n + b" 0 * :" + n + b"\r\n" + join

    def msg(self, text: bytes, ref: bytes) -> bytes:
        return b"PRIVMSG " + IRC_CHANNEL + b" :" + text + b"\r\n"

    def welcomed(self, head: bytes) -> bool | None:
        # The command is the second word of a line from the server: 366 ends the NAMES list
        # that follows our JOIN; ERROR, 433 (nick in use) or 465 (banned) mean no.
        for line in head.splitlines()[:-1] if not head.endswith(b"\n") else head.splitlines():
            words = line.split(b" ", 2)
            if words[0] == b"ERROR":
                return False
            if len(words) > 1 and words[1] in (b"433", b"465"):
                return False
            if len(words) > 1 and words[1] == b"366":
                return True
        return None

    def roster_entries(self, clients: int) -> int | None:
        return None


class LateJoinIrcDialect(IrcDialect):
    """IRC for a server that refuses JOIN before registration is done (InspIRCd: 451)."""

    def hello(self, nick: str, client_id: str, since: int | None = None) -> bytes:
        n = nick.encode()
        return b"NICK " + n + b"\r\nUSER " + n + b" 0 * :" + n + b"\r\n"

    def after(self, head: bytes) -> bytes | None:
        """What to send once ``head`` holds the welcome (001): the JOIN."""
        return b"JOIN " + IRC_CHANNEL + b"\r\n" if b" 001 " in head else None


# --- one client -----------------------------------------------------------------------------


class Client(asyncio.BufferedProtocol):
    """A benchmark client: counts complete lines; a probe also records latencies.

    A sender also counts the ``ack``s it gets (``count_acks``); a resuming client (``since``)
    finishes once it has every line the welcome announced.
    """

    def __init__(
        self, bench: Bench, nick: str, *, greet: bool = True, since: int | None = None
    ) -> None:
        self.bench = bench
        self.nick = nick
        self.node = 0
        """Which of the bench's ports (the nodes of a cluster) this client connects to."""
        self.client_id = f"bench-{nick}-{bench.token}"
        self.since = since
        self.greets = greet
        self.transport: asyncio.Transport | None = None
        self.lines = 0
        self.target = -1
        self.probe = False
        self.head = b""
        self.welcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.welcome_line = b""
        self.reached: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        """Resolves with the ``perf_counter`` at which ``target`` was reached."""
        self.lost_connection = False
        self.count_acks = False
        self.window = 0
        """Most unacknowledged lines this sender lets out (0: no limit)."""
        self.acks = 0
        self.sent = 0
        self._ack_tail = b""
        self.nicks = 0
        """Peers named to this client so far (while the bench counts presence)."""
        self.peers_frames = 0
        """``peers`` frames this client got (while the bench counts presence): its welcome's."""
        self._peers_tail = b""
        self.last_seq = since or 0
        """The newest ``seq`` of a line this client got (while the bench tracks them)."""
        self._seq_tail = b""
        self._nick_tail = b""
        self._registered = False
        self._acked: asyncio.Future[None] | None = None
        self._tail = b""
        self._writable: asyncio.Future[None] | None = None

    @property
    def v2(self) -> bool:
        """True if the welcome came from a protocol v2 server (it says the room's ``seq``)."""
        return b'"seq":' in self.welcome_line

    def msg(self, text: bytes) -> bytes:
        """One ``msg`` frame with the next ``ref`` of this client (a v2 server acks it)."""
        self.sent += 1
        return self.bench.dialect.msg(text, b"%x" % self.sent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        if self.greets:
            self.greet()

    def greet(self) -> None:
        """Send hello (or NICK/USER/JOIN); ``welcome`` resolves when the server answers."""
        self.send(self.bench.dialect.hello(self.nick, self.client_id, self.since))

    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if not self.welcome.done():
            self._before_welcome(bytes(_SHARED_VIEW[:nbytes]))
            return
        self.lines += _SHARED.count(b"\n", 0, nbytes)
        if self.bench.counting_nicks:
            found, self._nick_tail = count_shared(NICK, nbytes, self._nick_tail)
            self.nicks += found
            found, self._peers_tail = count_shared(PEERS_FRAME, nbytes, self._peers_tail)
            self.peers_frames += found
        if self.count_acks:
            self._count_acks(nbytes)
        if self.bench.tracking_seq:
            self._track_seq(bytes(_SHARED_VIEW[:nbytes]))
        if self.probe:
            self._scan(bytes(_SHARED_VIEW[:nbytes]))
        if self.lines >= self.target >= 0:
            self._reached()

    def _reached(self) -> None:
        self.target = -1
        if not self.reached.done():
            self.reached.set_result(time.perf_counter())
        self.bench.receiver_done()

    def _track_seq(self, data: bytes) -> None:
        data = self._seq_tail + data
        self._seq_tail = data[data.rfind(b"\n") + 1 :]
        self.last_seq = max(self.last_seq, last_msg_seq(data))

    def _count_acks(self, nbytes: int) -> None:
        found, self._ack_tail = count_shared(ACK, nbytes, self._ack_tail)
        self.acks += found
        if self._acked is not None and not self._acked.done():
            self._acked.set_result(None)

    async def within_window(self, window: int) -> None:
        """Wait until fewer than ``window`` of this client's lines are unacknowledged."""
        while self.sent - self.acks >= window and not self.lost_connection:
            self._acked = asyncio.get_running_loop().create_future()
            await self._acked

    def _before_welcome(self, data: bytes) -> None:
        self.head += data
        if not self._registered and (more := self.bench.dialect.after(self.head)) is not None:
            self._registered = True
            self.send(more)
        ok = self.bench.dialect.welcomed(self.head)
        if ok is None:
            return
        self.welcome.set_result(ok)
        if not ok:
            return  # keep what the server said, for the error message
        if self.bench.dialect.name == "chatsecure":
            if self.bench.counting_nicks:
                self.nicks += self.head.count(NICK)
                self._nick_tail = self.head[-(len(NICK) - 1) :]
                self.peers_frames += self.head.count(PEERS_FRAME)
                self._peers_tail = self.head[-(len(PEERS_FRAME) - 1) :]
            welcome, _, rest = self.head.partition(b"\n")
            self.welcome_line = without_peers(welcome)
            self.lines += rest.count(b"\n")
            if self.bench.tracking_seq:
                self._track_seq(rest)
            if self.since is not None:
                self.target = welcome_count(self.welcome_line, b"replay")
                if self.lines >= self.target:
                    self._reached()
        self.head = b""

    def _scan(self, data: bytes) -> None:
        now = time.perf_counter()
        data = self._tail + data if self._tail else data
        end = data.rfind(b"\n") + 1
        self._tail = data[end:]
        pos = data.find(MARK, 0, end)
        latencies = self.bench.latencies
        while pos >= 0:
            close = data.find(END, pos + len(MARK), end)
            if close < 0:
                break
            with contextlib.suppress(ValueError):
                latencies.append(now - float(data[pos + len(MARK) : close]))
            pos = data.find(MARK, close + 1, end)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_connection = True
        if not self.welcome.done():
            self.welcome.set_result(False)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._acked is not None and not self._acked.done():
            self._acked.set_result(None)
        self.bench.connection_lost(self)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def writable(self) -> None:
        """Wait while the transport's buffer is over its high-water mark."""
        if self._writable is not None:
            await self._writable

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def read_at_least(self, nbytes: int) -> None:
        """Wake this client only once ``nbytes`` are waiting (SO_RCVLOWAT); 1 undoes it."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def without_peers(welcome: bytes) -> bytes:
    """A welcome line with its ``peers`` list emptied: the fields the bench reads, not the
    500 peers (24 KiB) that 50,000 clients would otherwise keep in the generators."""
    start = welcome.find(b'"peers":[')
    end = welcome.find(b'],"peers_total":')
    if start < 0 or end < start:
        return welcome  # v1: no peers_total, and a small room in a test
    return welcome[: start + len(b'"peers":[')] + welcome[end:]


def count_shared(pattern: bytes, nbytes: int, tail: bytes) -> tuple[int, bytes]:
    """``pattern`` in the shared buffer's first ``nbytes``, with the one that straddles the
    previous read (``tail``: its last bytes); return the count and the new tail."""
    keep = len(pattern) - 1
    found = _SHARED.count(pattern, 0, nbytes)
    if tail:
        # Too short to hold a whole pattern on either side: any match here straddles the two.
        found += (tail + bytes(_SHARED_VIEW[: min(keep, nbytes)])).count(pattern)
    return found, (tail + bytes(_SHARED_VIEW[max(0, nbytes - keep) : nbytes]))[-keep:]


def last_msg_seq(data: bytes) -> int:
    """The ``seq`` of the last complete stored line in ``data`` (0 if none)."""
    pos = data.rfind(MSG_SEQ, 0, data.rfind(b"\n") + 1)
    if pos < 0:
        return 0
    rest = data[pos + len(MSG_SEQ) : pos + len(MSG_SEQ) + 20]
    digits = rest[: len(rest) - len(rest.lstrip(b"0123456789"))]
    return int(digits or b"0")


def welcome_count(welcome: bytes, key: bytes) -> int:
    """The integer field ``key`` of a welcome frame (0 if absent: a v1 server)."""
    _, found, rest = welcome.partition(b'"' + key + b'":')
    if not found:
        return 0
    digits = rest[: len(rest) - len(rest.lstrip(b"0123456789"))]
    return int(digits or b"0")


# --- servers under test ---------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ServerUnderTest:
    """A server subprocess: how to start it and how to see that it listens."""

    label: str
    dialect: Dialect
    argv: Callable[[Path], list[str]]
    ready_marker: str | None
    """A line on stdout that says where it listens; None: poll ``port`` instead."""
    env: dict[str, str] = field(default_factory=dict)
    v2: bool = False
    """It acknowledges lines (protocol v2): the ``store`` workload needs that."""
    keeps_log: bool = False
    """It stores lines and replays them to a returning client: ``replay`` needs that."""
    compare_to: list[str] = field(default_factory=list)
    """Labels of the servers the summary gives this one's ratio to (when they ran)."""
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    log: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, workdir: Path) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.proc = subprocess.Popen(
            self.argv(workdir),
            stdout=subprocess.PIPE if self.ready_marker else self.log,
            stderr=self.log,
            text=True,
            env=env,
            cwd=workdir,
        )
        deadline = time.monotonic() + START_TIMEOUT
        if self.ready_marker is None:
            if _wait_for_port(self.port, deadline):
                return
            self.stop()
            raise RuntimeError(f"{self.label} did not listen within {START_TIMEOUT:.0f} s")
        stdout = self.proc.stdout
        if stdout is None:  # pragma: no cover - stdout=PIPE above
            raise RuntimeError("no stdout")
        while time.monotonic() < deadline:
            line = _readline(stdout, deadline - time.monotonic())
            if line is None:
                break
            if self.ready_marker in line:
                self.port = int(line.split(f"{HOST}:")[1].split()[0].rstrip(")"))
                return
        self.stop()
        self.log_tail()
        raise RuntimeError(f"{self.label} did not start within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def log_text(self) -> str:
        """Everything the server wrote to stderr (and stdout, if not watched)."""
        if self.log is None:
            return ""
        self.log.seek(0)
        text: str = self.log.read()
        return text

    def log_tail(self) -> str:
        return self.log_text()[-4000:]


def _wait_for_port(port: int, deadline: float) -> bool:
    """True once something accepts TCP connections on HOST:``port`` (polled until deadline)."""
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
        except OSError:
            time.sleep(0.05)
        else:
            return True
    return False


def _readline(stream: IO[str], timeout: float) -> str | None:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(max(timeout, 0)):
            return None
    line: str = stream.readline()
    return line or None


def server_flags(tree: Path = ROOT) -> set[str]:
    """The options the ``chatsecure server`` of checkout ``tree`` knows (they grow over time)."""
    out = subprocess.run(
        [sys.executable, "-m", "chatsecure", "server", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        timeout=30,
        check=True,
    ).stdout
    return {word.rstrip(",") for word in out.split() if word.startswith("--")}


def tree_name(tree: Path) -> str:
    """A short name for a checkout: its commit if it is a git work tree (``+changes`` when a
    tracked file differs from it), else its folder."""
    commit = _git(tree, "rev-parse", "--short", "HEAD")
    if not commit:
        return tree.name
    changed = _git(tree, "status", "--porcelain", "--untracked-files=no")
    return f"{commit}+changes" if changed else commit


def tree_names(trees: Sequence[Path]) -> list[str]:
    """``tree_name`` of each tree, with its folder's name after it where two would share one:
    each tree's runs must stay apart in the summary."""
    names = [tree_name(tree) for tree in trees]
    return [
        f"{name}:{tree.name}" if names.count(name) > 1 else name
        for name, tree in zip(names, trees, strict=True)
    ]


def _git(tree: Path, *args: str) -> str:
    """What ``git -C tree args`` printed, stripped; empty if it failed."""
    done = subprocess.run(
        ["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


LIMIT_FLAGS = (
    "--max-sessions",
    "--max-per-ip",
    "--msg-rate",
    "--msg-burst",
    "--idle-timeout",
    "--handshake-timeout",
    "--hello-timeout",
    "--max-frame",
    "--max-text",
    "--send-buffer-limit",
)


@dataclass(frozen=True, slots=True)
class LogOptions:
    """How a chatsecure server under test keeps its room log."""

    history: bool = True
    """Store every line (``--db`` a fresh file per run); False: ``--history 0``."""
    durability: str = "normal"
    keep: int | None = None
    """``--history N`` (lines kept), if not the server's default."""
    replay_max: int | None = None
    """``--replay-max N``, if not the server's default."""
    db_dir: Path | None = None
    """Where the databases go (default: the run's temporary folder)."""


def chatsecure_base(loop: str) -> str:
    return "chatsecure" if loop == "asyncio" else f"chatsecure+{loop}"


def chatsecure_server(
    loop: str,
    flags: set[str],
    log: LogOptions | None = None,
    *,
    tree: Path = ROOT,
    label: str | None = None,
    extra: Callable[[], list[str]] | None = None,
) -> ServerUnderTest:
    """``chatsecure server`` of checkout ``tree``, every limit off, with ``log`` for its history."""
    log = log or LogOptions()
    label = label or chatsecure_base(loop)
    v2 = "--history" in flags
    keeps_log = v2 and log.history

    def argv(workdir: Path) -> list[str]:
        cmd = [sys.executable, "-m", "chatsecure", "server", "--host", HOST, "--port", "0"]
        cmd += ["--name", "bench", "--cert", "server.crt", "--key", "server.key", "-q"]
        cmd += [arg for flag in LIMIT_FLAGS if flag in flags for arg in (flag, "0")]
        if "--no-discovery" in flags:
            cmd.append("--no-discovery")
        if "--loop" in flags:
            cmd += ["--loop", loop]
        if extra is not None:
            return cmd + extra()  # a node of a cluster: its log is in Redis
        if v2 and not log.history:
            cmd += ["--history", "0"]
        elif keeps_log:
            cmd += ["--db", str(fresh_db(log.db_dir or workdir, label))]
            if "--durability" in flags:
                cmd += ["--durability", log.durability]
            if log.keep is not None:
                cmd += ["--history", str(log.keep)]
            if log.replay_max is not None and "--replay-max" in flags:
                cmd += ["--replay-max", str(log.replay_max)]
        return cmd

    env = {"PYTHONPATH": str(tree)}
    return ServerUnderTest(
        label, Dialect(), argv, "listening on", env=env, v2=v2, keeps_log=keeps_log
    )


def fresh_db(folder: Path, label: str) -> Path:
    """A database path for one run of ``label``: nothing left of the previous run's file."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"bench-{label.replace('+', '-').replace('@', '-')}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


REDIS_SERVER = shutil.which("redis-server")


class ClusterUnderTest(ServerUnderTest):
    """K ``chatsecure server --cluster`` nodes on one private redis-server (loopback).

    The bench's clients are split across the nodes (client i on node i % K); the server CPU
    reported is the sum of every node's and Redis's. Redis keeps an append-only file synced
    every second (``appendfsync everysec``), the setting docs/security.md recommends.
    """

    def __init__(
        self, loop: str, flags: set[str], nodes: int, tree: Path = ROOT, name: str = ""
    ) -> None:
        """``name``: another tree's name in labels (``OtherTree.name``); empty for this one."""
        self.nodes = [
            chatsecure_server(loop, flags, tree=tree, label=f"node{i}", extra=self._node_args)
            for i in range(nodes)
        ]
        first = self.nodes[0]
        label = f"{chatsecure_base(loop)}-cluster{nodes}"
        if name:
            label += f"@{name}"
        super().__init__(label, first.dialect, first.argv, None)
        self.v2 = True
        self.keeps_log = True
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_port = 0
        self.room = "bench"

    def _node_args(self) -> list[str]:
        url = f"redis://{HOST}:{self.redis_port}/0"
        return ["--cluster", url, "--name", self.room, "--history", "10000"]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        pids = [node.pid for node in self.nodes if node.pid is not None]
        return pids + ([self.redis.pid] if self.redis is not None else [])

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    def start(self, workdir: Path) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(
                "--cluster needs redis-server (Debian: apt-get install redis-server)"
            )
        self.room = f"bench-{os.urandom(4).hex()}"  # every run a room of its own
        folder = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
        self.redis_port = _free_port()
        self.redis = subprocess.Popen(
            [
                REDIS_SERVER, "--port", str(self.redis_port), "--bind", HOST, "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(folder),
                "--logfile", str(folder / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if not _wait_for_port(self.redis_port, time.monotonic() + START_TIMEOUT):
            self.stop()
            raise RuntimeError("redis-server did not start")
        try:
            for node in self.nodes:
                node.start(workdir)
        except RuntimeError:
            self.stop()
            raise
        self.port = self.nodes[0].port

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(5)
            self.redis = None

    def log_text(self) -> str:
        return "".join(f"--- {n.label}\n{n.log_text()}" for n in self.nodes)


def naive_server() -> ServerUnderTest:
    def argv(workdir: Path) -> list[str]:
        script = ROOT / "benchmarks" / "naive_server.py"
        return [sys.executable, str(script), "--cert", "server.crt", "--key", "server.key"]

    return ServerUnderTest("naive", Dialect(), argv, "listening on")


def ngircd_server() -> ServerUnderTest:
    """ngIRCd (C) with TLS and its flood penalties off, from ``benchmarks/ngircd.conf``."""
    binary = shutil.which("ngircd") or "/usr/sbin/ngircd"
    if not Path(binary).exists():
        raise SystemExit("ngircd is not installed (apt-get install ngircd)")
    return irc_server(
        "ngircd",
        IrcDialect(),
        lambda conf: [binary, "--nodaemon", "--config", str(conf)],
        plain_port=lambda workdir: _free_port(),
    )


def inspircd_server() -> ServerUnderTest | None:
    """InspIRCd (C++) with TLS and its flood limits off, from ``benchmarks/inspircd.conf``;
    None (with a message) when it is not installed."""
    binary = shutil.which("inspircd") or "/usr/sbin/inspircd"
    if not Path(binary).exists():
        print("skipping inspircd: not installed (apt-get install inspircd)", file=sys.stderr)
        return None
    root = ["--runasroot"] if os.geteuid() == 0 else []
    return irc_server(
        "inspircd",
        LateJoinIrcDialect(),
        lambda conf: [binary, "--nofork", "--config", str(conf), *root],
        workdir=lambda workdir: workdir,
    )


def irc_server(
    name: str,
    dialect: Dialect,
    command: Callable[[Path], list[str]],
    **fields: Callable[[Path], object],
) -> ServerUnderTest:
    """An IRC server run from ``benchmarks/NAME.conf``, filled in for a free port and the
    bench's certificate (and ``fields``, each made from the run's folder) at every start."""
    server = ServerUnderTest(name, dialect, lambda workdir: [], None)

    def argv(workdir: Path) -> list[str]:
        server.port = _free_port()
        template = (ROOT / "benchmarks" / f"{name}.conf").read_text()
        conf = workdir / f"{name}.conf"
        conf.write_text(
            template.format(
                host=HOST,
                port=server.port,
                cert=workdir / "server.crt",
                key=workdir / "server.key",
                **{key: make(workdir) for key, make in fields.items()},
            )
        )
        return command(conf)

    server.argv = argv
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --- the workloads --------------------------------------------------------------------------


@dataclass
class Result:
    """One run of one workload against one server; printed as a table row and a JSON line."""

    workload: str
    server: str
    run: int
    clients: int
    senders: int = 0
    messages: int = 0
    deliveries: int = 0
    seconds: float = 0.0
    deliveries_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    lost: int = 0
    server_cpu_s: float | None = None
    server_us_per_delivery: float | None = None
    """Server CPU microseconds per delivery (fanout, paced) or per acked line (store)."""
    gen_cpu_s: float = 0.0
    gen_loop: str = "asyncio"
    rate: float | None = None
    duration: float | None = None
    handshakes_per_s: float | None = None
    join_s: float | None = None
    joins_per_s: float | None = None
    """``hold``: clients per second from the first hello until everyone knows everyone."""
    cpu_ms_per_join: float | None = None
    """``hold``: server CPU milliseconds per join over the same span (TLS not included)."""
    rss_per_conn_kib: float | None = None
    tls_rss_per_conn_kib: float | None = None
    server_rss_mib: float | None = None
    procs: int = 1
    """``hold --procs``: generator processes, each from its own loopback address."""
    roster_min: int | None = None
    """``hold``: the fewest peers (itself included) any client was told of; must be C."""
    roster_max: int | None = None
    welcome_frames: int | None = None
    """``hold``: the longest welcome, in frames (the welcome and the ``peers`` after it)."""
    gen_rss_mib: float | None = None
    """``hold --procs``: the generators' peak RSS, summed."""
    acks: int | None = None
    """``ack``s the senders received (None: the server sends none, protocol v1)."""
    acked_per_s: float | None = None
    replayed: int | None = None
    """Lines each resuming client got after its welcome (``replay``)."""
    resume_ms: float | None = None
    """Median time from a resuming client's hello to its last replayed line."""
    resume_max_ms: float | None = None
    error: str | None = None


class Bench:
    """The shared state of one run: the clients, the latency samples, the finish line."""

    def __init__(
        self,
        dialect: Dialect,
        host: str,
        port: int,
        *,
        acks: bool | None = None,
        ports: Sequence[int] = (),
    ) -> None:
        self.dialect = dialect
        self._acks = acks
        self.host = host
        self.port = port
        self.ports = list(ports) or [port]
        """The nodes of a cluster: client ``i`` connects to ``ports[i % K]``."""
        self.clients: list[Client] = []
        self.latencies: list[float] = []
        self.pending_receivers = 0
        self.all_received: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost_connections = 0
        self.measuring = False
        self.counting_nicks = dialect.roster_entries(1) is not None
        self.tracking_seq = False
        """Each client keeps the ``seq`` of the newest stored line it got (``restart``)."""
        """Count the peers named to each client, until ``settle`` has seen them all."""
        self.token = os.urandom(4).hex()
        """Makes this run's client ids its own."""
        self.source: str | None = None
        """The loopback address this generator's sockets leave from (None: the kernel's)."""
        self.rcvbuf = 0
        """SO_RCVBUF of each client socket (0: the kernel's): ``--gen-rcvbuf``."""
        self.room: int | None = None
        """Clients in the room in all (``--procs``: every generator's); None: this one's."""
        self._ctx = client_context()

    @property
    def acks(self) -> bool:
        """The server acknowledges lines: known for a server we started, else from its welcome.

        (The naive baseline sends a v2 welcome, since it borrows our encoder, but no acks.)
        """
        if self._acks is not None:
            return self._acks
        return bool(self.clients) and all(c.v2 for c in self.clients)

    def receiver_done(self) -> None:
        self.pending_receivers -= 1
        if self.pending_receivers <= 0 and not self.all_received.done():
            self.all_received.set_result(None)

    def connection_lost(self, client: Client) -> None:
        if self.measuring:
            self.lost_connections += 1
            if not self.all_received.done():
                self.all_received.set_result(None)

    async def connect(
        self,
        count: int,
        timeout: float,
        *,
        greet: bool = True,
        concurrency: int = CONNECT_CONCURRENCY,
        first: int = 0,
    ) -> float:
        """Connect ``count`` clients (and welcome them if ``greet``); return the seconds taken.

        Their nicks are ``b{first}``, ``b{first + 1}`` and so on.
        """
        gate = asyncio.Semaphore(concurrency)
        start = time.perf_counter()

        async def one(i: int) -> None:
            async with gate:
                client = Client(self, f"b{i}", greet=greet)
                client.node = i % len(self.ports)
                self.clients.append(client)
                await self.open(client)
                if greet and not await client.welcome:
                    raise RuntimeError(f"client {client.nick} was refused: {client.head[:200]!r}")

        await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(first, first + count))), timeout
        )
        return time.perf_counter() - start

    async def open(self, client: Client) -> None:
        """Make ``client``'s TLS connection to the server."""
        loop = asyncio.get_running_loop()
        port = self.ports[client.node % len(self.ports)]
        local = None if self.source is None else (self.source, 0)
        transport, _ = await loop.create_connection(
            lambda: client, self.host, port, ssl=self._ctx, server_hostname=None, local_addr=local
        )
        if self.rcvbuf:
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)

    async def greet_in_waves(self, wave: int, timeout: float) -> float:
        """Send hello from every client, ``wave`` at a time; return the seconds until welcomed."""
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        for first in range(0, len(self.clients), wave):
            batch = self.clients[first : first + wave]
            for client in batch:
                client.greet()
            remaining = max(0.1, deadline - time.monotonic())
            answers = await asyncio.wait_for(asyncio.gather(*(c.welcome for c in batch)), remaining)
            if not all(answers):
                refused = next(c for c, ok in zip(batch, answers, strict=True) if not ok)
                raise RuntimeError(
                    f"{refused.nick} was refused (connection lost: {refused.lost_connection}):"
                    f" {refused.head[-300:]!r}"
                )
        return time.perf_counter() - start

    async def settle(self, timeout: float) -> None:
        """Wait until every client knows everyone (or nothing arrives for a while)."""
        # A cluster's presence spans its nodes: every client is told of everyone there too.
        expected = self.dialect.roster_entries(len(self.clients))
        if expected is not None and self.room is not None:
            expected = len(self.clients) * self.room
        deadline = time.monotonic() + timeout
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            total = sum(c.nicks if expected is not None else c.lines for c in self.clients)
            if expected is not None and total >= expected:
                self.counting_nicks = False
                return
            if total != last:
                last, quiet_since = total, time.monotonic()
            elif expected is None and time.monotonic() - quiet_since > 0.5:
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"join notices did not settle in {timeout:.0f} s")

    def expect(self, per_client: Sequence[int]) -> None:
        """Arm the finish line: client i is done once it has ``per_client[i]`` more lines."""
        self.pending_receivers = 0
        for client, more in zip(self.clients, per_client, strict=True):
            if more > 0:
                client.target = client.lines + more
                self.pending_receivers += 1
        self.measuring = True
        if self.pending_receivers == 0:
            self.all_received.set_result(None)

    def missing(self) -> int:
        return sum(max(0, c.target - c.lines) for c in self.clients if c.target >= 0)

    def batch_reads(self, on: bool) -> None:
        """Let receivers that only count lines read in big batches, or undo that.

        The kernel holds a non-probe receiver's bytes until ``COUNT_BATCH`` of them are waiting,
        so the generator makes one read() where it would make dozens: the server's writes and
        the probes' latencies are the same, the generator's CPU is a fraction.
        """
        for client in self.clients:
            # A sender that waits for its acks must see each one at once.
            if not client.probe and not client.window:
                client.read_at_least(COUNT_BATCH if on else 1)

    def choose_probes(self, skip: int) -> None:
        """Make ``PROBES`` receivers spread evenly over the join order (after ``skip``).

        A server writes to its clients one after another, so the first ones to join hear
        first: probes taken from one end of the room would flatter (or blacken) the latency.
        """
        receivers = self.clients[skip:]
        step = max(1, len(receivers) // PROBES)
        for client in receivers[step - 1 :: step][:PROBES]:
            client.probe = True

    def close(self) -> None:
        self.measuring = False
        for client in self.clients:
            client.close()


def percentiles(samples: list[float]) -> tuple[float | None, float | None, float | None]:
    if not samples:
        return None, None, None
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return at(0.5), at(0.99), round(ordered[-1] * 1000, 2)


async def fanout(
    bench: Bench, result: Result, senders: int, messages: int, window: int = 0
) -> None:
    """S senders each send M messages as fast as the server takes them.

    A sender is done once it has every other sender's lines and, from a v2 server, an ``ack``
    for each of its own; a receiver once it has everyone's lines.
    """
    n = result.clients
    await bench.connect(n, timeout=60 + n / 20)
    await bench.settle(timeout=60)
    bench.choose_probes(skip=senders)
    total = senders * messages
    acks = messages if bench.acks else 0
    bench.expect([total - (messages - acks if i < senders else 0) for i in range(n)])
    result.senders, result.messages = senders, messages
    result.deliveries = total * (n - 1)
    for client in bench.clients[:senders]:
        client.count_acks = bench.acks
        client.window = window if bench.acks else 0
    sending = [send_as_fast(c, messages) for c in bench.clients[:senders]]
    await measure(bench, result, sending, 60 + total / 1000)


BATCH = 20
"""Messages per write of a fast sender; the last one of each carries its send time."""


async def send_as_fast(client: Client, messages: int) -> None:
    """Send ``messages`` lines as fast as the server takes them (TCP flow control).

    With a ``window`` (and a server that acks), at most that many lines are unacknowledged.
    """
    client.count_acks = client.bench.acks
    for start in range(0, messages, BATCH):
        if client.window:
            await client.within_window(client.window)
        size = min(BATCH, messages - start)
        frames = [client.msg(PLAIN_TEXT) for _ in range(size - 1)]
        frames.append(client.msg(stamped_text(time.perf_counter())))
        client.send(b"".join(frames))
        await client.writable()


async def store(bench: Bench, result: Result, messages: int) -> None:
    """Every client sends M lines as fast as the server acknowledges them; nobody else is in.

    Acked lines per second is what the room log takes: each iteration's lines are one commit.
    """
    n = result.clients
    await bench.connect(n, timeout=60 + n / 20)
    await bench.settle(timeout=60)
    if not bench.acks:
        raise RuntimeError("the server sends no acks (protocol v1): nothing to measure")
    total = n * messages
    # Each sender gets an ack for each of its lines and the others' lines.
    bench.expect([total] * n)
    result.senders, result.messages = n, messages
    result.deliveries = total * (n - 1)
    await measure(
        bench, result, [send_as_fast(c, messages) for c in bench.clients], 60 + total / 500
    )
    result.acked_per_s = round((result.acks or 0) / result.seconds)
    if result.server_cpu_s is not None and result.acks:
        result.server_us_per_delivery = round(result.server_cpu_s * 1e6 / result.acks, 2)


RESUME_TIMEOUT = 60.0
"""Seconds a resuming client has for its welcome and replay."""


async def replay(bench: Bench, result: Result, messages: int, resumes: int) -> None:
    """Store M lines, then let clients that saw none of them (``since: 0``) resume, one by one.

    Each resume is timed from the hello to the last replayed line (the TLS handshake comes
    before, untimed): the welcome and the replay that follows it, straight from the room's
    in-memory tail.
    """
    await store(bench, result, messages)
    if result.error:
        return
    times: list[float] = []
    for i in range(resumes):
        client = Client(bench, f"r{i}", greet=False, since=0)
        await asyncio.wait_for(bench.open(client), RESUME_TIMEOUT)
        start = time.perf_counter()
        client.greet()
        if not await asyncio.wait_for(client.welcome, RESUME_TIMEOUT):
            raise RuntimeError(f"the resuming client was refused: {client.head[:200]!r}")
        done = await asyncio.wait_for(client.reached, RESUME_TIMEOUT)
        times.append(done - start)
        result.replayed = welcome_count(client.welcome_line, b"replay")
        skipped = welcome_count(client.welcome_line, b"skipped")
        client.close()
        if result.replayed + skipped != messages or skipped:
            result.error = f"replayed {result.replayed} of {messages} lines ({skipped} skipped)"
            return
    result.resume_ms = round(statistics.median(times) * 1000, 1)
    result.resume_max_ms = round(max(times) * 1000, 1)


async def paced(bench: Bench, result: Result, rate: float, duration: float) -> None:
    """Every client sends ``rate`` messages per second for ``duration`` seconds, evenly spread."""
    n = result.clients
    await bench.connect(n, timeout=60 + n / 20)
    await bench.settle(timeout=60)
    bench.choose_probes(skip=0)
    per_client = max(1, round(rate * duration))
    total = per_client * n
    acks = per_client if bench.acks else 0  # counted as lines, not one by one: cheaper
    bench.expect([total - per_client + acks] * n)
    interval = 1 / rate
    # Client i sends at offset + k * interval, the offsets spread over one interval.
    schedule = sorted(
        ((i / n) * interval + k * interval, i) for i in range(n) for k in range(per_client)
    )

    async def send_all() -> None:
        start = time.perf_counter()
        pos = 0
        while pos < len(schedule):
            now = time.perf_counter() - start
            while pos < len(schedule) and schedule[pos][0] <= now:
                client = bench.clients[schedule[pos][1]]
                client.send(client.msg(stamped_text(time.perf_counter())))
                pos += 1
            if pos < len(schedule):
                await asyncio.sleep(min(0.002, max(0.0, schedule[pos][0] - now)))

    result.messages, result.rate, result.duration = per_client, rate, duration
    result.deliveries = total * (n - 1)
    await measure(bench, result, [send_all()], duration + 60)


async def measure(bench: Bench, result: Result, senders: list[Any], timeout: float) -> None:
    server_cpu = cpu_reader(result)
    cpu0, gen0 = server_cpu(), self_cpu_seconds()
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(s) for s in senders]
    bench.batch_reads(on=True)
    # Once everything is sent, the last bytes must not wait for a batch to fill.
    asyncio.gather(*tasks, return_exceptions=True).add_done_callback(
        lambda _: bench.batch_reads(on=False)
    )
    try:
        await asyncio.wait_for(asyncio.shield(bench.all_received), timeout)
    except TimeoutError:
        result.error = f"not everything arrived within {timeout:.0f} s"
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu1 = server_cpu()
    result.gen_cpu_s = round(self_cpu_seconds() - gen0, 3)
    result.server_cpu_s = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3)
    if result.server_cpu_s is not None and result.deliveries:
        result.server_us_per_delivery = round(result.server_cpu_s * 1e6 / result.deliveries, 3)
    if any(c.count_acks for c in bench.clients):
        result.acks = sum(c.acks for c in bench.clients)
    result.lost = bench.missing()
    if bench.lost_connections:
        result.error = f"{bench.lost_connections} connections lost"
    result.seconds = round(elapsed, 4)
    result.deliveries_per_s = round((result.deliveries - result.lost) / elapsed)
    result.p50_ms, result.p99_ms, result.max_ms = percentiles(bench.latencies)


_SERVER_PID: int | None = None
_SERVER: ServerUnderTest | None = None
"""The server under test (``restart`` restarts it)."""
_WORKDIR = Path()
_SERVER_PIDS: list[int] = []
"""Every process of a cluster under test (its nodes and Redis): server CPU is their sum."""


def cpu_reader(result: Result) -> Callable[[], float | None]:
    pids = _SERVER_PIDS or ([] if _SERVER_PID is None else [_SERVER_PID])

    def read() -> float | None:
        if not pids:
            return None
        with contextlib.suppress(OSError):
            return sum(proc_cpu_seconds(pid) for pid in pids)
        return None

    return read


HOLD_WAVE = 500
"""Clients that send hello together in ``hold``: each wave's joins reach the room as one write."""


async def hold(bench: Bench, result: Result, storm: int = 0, talk: float = 0.0) -> None:
    """Connect C idle clients, then welcome them; report handshakes/s and RSS per connection.

    The TLS handshakes come first, all of them, so that handshakes/s measures TLS; then the
    clients say hello in waves. Every join is announced to everyone already there, so C
    clients cost C*(C-1)/2 join notices: the waves let the server batch them.

    With ``storm`` K, clients instead connect and say hello at once, K at a time (a client
    that is welcomed makes room for the next): a join storm, as after a server restart. Then
    joins/s and CPU per join include each client's TLS handshake.

    With ``talk`` R (and a storm), ``PROBES`` + 1 clients are in the room before the storm
    begins, and one of them says R lines a second until everyone knows everyone: the others
    time each line (p50, p99, max; ``lost`` counts lines a probe never got).
    """
    pid = _SERVER_PID

    def rss() -> int:
        return proc_rss_bytes(pid) if pid is not None else 0

    rss0 = rss()
    cpu = cpu_reader(result)
    cpu0, gen0 = cpu(), self_cpu_seconds()
    n = result.clients
    if storm:
        early = PROBES + 1 if talk else 0
        if early:
            await bench.connect(early, 60)
            await bench.settle(timeout=60)
            bench.counting_nicks = True
            for client in bench.clients[1:]:
                client.probe = True
            talking = asyncio.ensure_future(talk_until_cancelled(bench.clients[0], talk))
            rss0, cpu0, gen0 = rss(), cpu(), self_cpu_seconds()
        start = time.perf_counter()
        joined = await bench.connect(n - early, 300 + n / 20, concurrency=storm, first=early)
        result.join_s = round(joined, 3)
        await bench.settle(timeout=300)
        cpu1 = cpu()
        if early:
            talking.cancel()
            result.messages = await talking
            await asyncio.sleep(1.0)
            result.lost = result.messages * PROBES - len(bench.latencies)
            result.p50_ms, result.p99_ms, result.max_ms = percentiles(bench.latencies)
        result.seconds = round(time.perf_counter() - start, 3)
        if not talk:
            check_roster(result, roster(bench))
        joins = n - early
        result.joins_per_s = round(joins / result.seconds, 1)
        result.gen_cpu_s = round(self_cpu_seconds() - gen0, 3)
        if cpu0 is not None and cpu1 is not None:
            result.server_cpu_s = round(cpu1 - cpu0, 3)
            result.cpu_ms_per_join = round(result.server_cpu_s * 1000 / joins, 3)
        await asyncio.sleep(0.5)
        if pid is not None:
            result.server_rss_mib = round(rss() / 2**20, 1)
            result.rss_per_conn_kib = round((rss() - rss0) / joins / 1024, 2)
        return
    seconds = await bench.connect(n, timeout=120 + n / 50, greet=False)
    result.seconds = round(seconds, 3)
    result.handshakes_per_s = round(n / seconds, 1)
    await asyncio.sleep(0.5)
    rss_tls = rss()
    cpu_tls, start = cpu(), time.perf_counter()
    result.join_s = round(await bench.greet_in_waves(HOLD_WAVE, timeout=300 + n / 20), 3)
    await bench.settle(timeout=300)
    cpu1 = cpu()
    check_roster(result, roster(bench))
    # Joins are done when everyone knows everyone: the last join notice is part of the cost.
    result.joins_per_s = round(n / (time.perf_counter() - start), 1)
    if cpu_tls is not None and cpu1 is not None:
        result.cpu_ms_per_join = round((cpu1 - cpu_tls) * 1000 / n, 3)
    result.gen_cpu_s = round(self_cpu_seconds() - gen0, 3)
    result.server_cpu_s = None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3)
    await asyncio.sleep(0.5)
    if pid is not None:
        rss1 = rss()
        result.server_rss_mib = round(rss1 / 2**20, 1)
        result.rss_per_conn_kib = round((rss1 - rss0) / n / 1024, 2)
        result.tls_rss_per_conn_kib = round((rss_tls - rss0) / n / 1024, 2)


def roster(bench: Bench) -> tuple[int, int, int] | None:
    """The fewest and most peers any client was told of, and the most frames a welcome took;
    None for a server whose rosters are not counted (IRC: NAMES replies are not parsed)."""
    if bench.dialect.roster_entries(1) is None:
        return None
    nicks = [c.nicks for c in bench.clients]
    frames = max((c.peers_frames for c in bench.clients), default=0)
    return min(nicks, default=0), max(nicks, default=0), 1 + frames


def check_roster(result: Result, found: tuple[int, int, int] | None) -> None:
    """Record what ``roster`` found; an error unless every client knows exactly everyone."""
    if found is None:
        return
    low, high, frames = found
    result.roster_min, result.roster_max, result.welcome_frames = low, high, frames
    if (low, high) != (result.clients, result.clients):
        result.error = f"rosters of {low} to {high} peers, not {result.clients} each"


# --- hold from several processes ------------------------------------------------------------

MAX_PROCS = 200
"""Generator processes at most: each takes one source address from 127.0.0.2 on."""


def share(clients: int, procs: int, index: int) -> tuple[int, int]:
    """The first client (nick number) and the number of clients of generator ``index``."""
    first = clients * index // procs
    return first, clients * (index + 1) // procs - first


def source_address(index: int) -> str:
    """Generator ``index``'s loopback source address: one source address has only about
    28,000 ephemeral ports toward one server port (``ip_local_port_range``)."""
    return f"127.0.0.{index + 2}"


def tell(**event: object) -> None:
    """A generator process's report to the bench that started it: one JSON line on stdout."""
    print(json.dumps(event), flush=True)


async def hold_worker(args: argparse.Namespace, host: str, port: int) -> None:
    """Generator ``--worker I`` of ``hold --procs P``: its share of the room, on cue.

    It makes its TLS handshakes (unless ``--storm``) and says ``ready``; on ``go`` (stdin)
    its clients say hello, in waves or as a storm, as ``hold`` does in one process, split
    over the generators; once each of them knows all C clients it says ``settled``, and
    closes them on the next line or end of stdin.
    """
    ports = [int(p) for p in args.ports.split(",")] if args.ports else []
    bench = Bench(Dialect(), host, port, ports=ports)
    bench.source, bench.room = source_address(args.worker), args.clients
    bench.rcvbuf = args.gen_rcvbuf
    first, count = share(args.clients, args.procs, args.worker)
    timeout = 300 + args.clients / 20
    gen0 = self_cpu_seconds()
    try:
        tls_s = None
        if not args.storm:
            tls_s = await bench.connect(count, timeout, greet=False, first=first)
        tell(event="ready", tls_s=tls_s)
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            return
        if args.storm:
            storm = max(1, args.storm // args.procs)
            join_s = await bench.connect(count, timeout, concurrency=storm, first=first)
        else:
            join_s = await bench.greet_in_waves(max(1, HOLD_WAVE // args.procs), timeout)
        await bench.settle(timeout)
        low, high, frames = roster(bench) or (None, None, None)
        total = max(welcome_count(c.welcome_line, b"peers_total") for c in bench.clients)
        tell(
            event="settled",
            join_s=join_s,
            roster_min=low,
            roster_max=high,
            welcome_frames=frames,
            peers_total=total,
            lost=sum(c.lost_connection for c in bench.clients),
            gen_cpu_s=self_cpu_seconds() - gen0,
            rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
        await asyncio.to_thread(sys.stdin.readline)
    except (RuntimeError, OSError, ssl.SSLError, TimeoutError) as exc:
        tell(event="error", error=f"{type(exc).__name__}: {exc}")
    finally:
        bench.close()
        await asyncio.sleep(0.05)


class Generators:
    """The ``--procs`` generator processes of one ``hold`` run, and their JSON lines."""

    def __init__(
        self, args: argparse.Namespace, host: str, port: int, ports: Sequence[int]
    ) -> None:
        script = str(Path(__file__).resolve())
        nodes = ["--ports", ",".join(map(str, ports))] if ports else []
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable, script, "hold", "--attach", f"{host}:{port}",
                    "--worker", str(i), "--procs", str(args.procs), "-n", str(args.clients),
                    "--storm", str(args.storm), "--gen-loop", args.gen_loop, "--no-discovery",
                    "--gen-rcvbuf", str(args.gen_rcvbuf), *nodes,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(args.procs)
        ]  # fmt: skip

    def gather(self, event: str, timeout: float) -> list[dict[str, Any]]:
        """Each generator's next report, which must be ``event``, within ``timeout`` seconds.

        Whichever generator speaks first is read first: one that fails stops the run at once.
        """
        deadline = time.monotonic() + timeout
        reports: dict[int, dict[str, Any]] = {}
        with selectors.DefaultSelector() as sel:
            for i, proc in enumerate(self.procs):
                if proc.stdout is not None:
                    sel.register(proc.stdout, selectors.EVENT_READ, i)
            while len(reports) < len(self.procs):
                ready = sel.select(max(0.0, deadline - time.monotonic()))
                if not ready:
                    raise RuntimeError(
                        f"generators {sorted(set(range(len(self.procs))) - set(reports))}"
                        f" did not say {event!r} within {timeout:.0f} s"
                    )
                for key, _ in ready:
                    i, line = key.data, cast(IO[str], key.fileobj).readline()
                    report: dict[str, Any] = json.loads(line) if line else {"error": "it quit"}
                    if report.get("event") != event:
                        raise RuntimeError(f"generator {i}: {report.get('error', report)}")
                    reports[i] = report
                    sel.unregister(key.fileobj)
        return [reports[i] for i in range(len(self.procs))]

    def say(self, word: str) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(word + "\n")
                    proc.stdin.flush()

    def stop(self) -> None:
        """Let every generator close its clients and leave; kill those that do not in 30 s."""
        for proc in self.procs:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def hold_procs(
    args: argparse.Namespace, result: Result, host: str, port: int, ports: Sequence[int] = ()
) -> None:
    """``hold`` with ``--procs P``: P generator processes share the room (``hold_worker``).

    The figures are ``hold``'s, summed over the generators: handshakes/s over the slowest
    generator's handshakes, joins/s from ``go`` until every generator's clients know all C,
    server CPU and RSS read here (a cluster's: every node's and Redis's), generator CPU summed.
    """
    pid, n = _SERVER_PID, result.clients
    pids = _SERVER_PIDS or ([] if pid is None else [pid])
    cpu = cpu_reader(result)

    def rss() -> int:
        return sum(proc_rss_bytes(p) for p in pids)

    result.procs = args.procs
    rss0 = rss()
    generators = Generators(args, host, port, ports)
    try:
        ready = generators.gather("ready", 120 + n / 50)
        if not args.storm:
            result.seconds = round(max(r["tls_s"] for r in ready), 3)
            result.handshakes_per_s = round(n / result.seconds, 1)
        time.sleep(0.5)
        rss_tls, cpu0, start = rss(), cpu(), time.perf_counter()
        generators.say("go")
        settled = generators.gather("settled", 300 + n / 20 + 60)
        cpu1, elapsed = cpu(), time.perf_counter() - start
        result.join_s = round(max(r["join_s"] for r in settled), 3)
        if args.storm:
            result.seconds = round(elapsed, 3)
        result.joins_per_s = round(n / elapsed, 1)
        if cpu0 is not None and cpu1 is not None:
            result.server_cpu_s = round(cpu1 - cpu0, 3)
            result.cpu_ms_per_join = round(result.server_cpu_s * 1000 / n, 3)
        time.sleep(0.5)
        if pid is not None:
            rss1 = rss()
            result.server_rss_mib = round(rss1 / 2**20, 1)
            result.rss_per_conn_kib = round((rss1 - rss0) / n / 1024, 2)
            if not args.storm:
                result.tls_rss_per_conn_kib = round((rss_tls - rss0) / n / 1024, 2)
        result.gen_cpu_s = round(sum(r["gen_cpu_s"] for r in settled), 3)
        result.gen_rss_mib = round(sum(r["rss_mib"] for r in settled), 1)
        if all(r["roster_min"] is not None for r in settled):
            low = min(r["roster_min"] for r in settled)
            high = max(r["roster_max"] for r in settled)
            check_roster(result, (low, high, max(r["welcome_frames"] for r in settled)))
        lost = sum(r["lost"] for r in settled)
        if lost:
            result.error = f"{lost} connections lost"
        if max(r["peers_total"] for r in settled) != n - 1:
            result.error = f"no welcome had peers_total {n - 1}"
    finally:
        generators.stop()


RESTART_LINES = 20
"""Lines said before the restart: half seen by everyone, half stored just before it."""


async def restart(bench: Bench, result: Result, storm: int = 0) -> None:
    """C clients in the room; the server restarted (same ``--db``, same port); all come back.

    Every client then reconnects at once (``storm`` handshakes in flight, default
    ``CONNECT_CONCURRENCY``) with ``since``: the seq of the newest line it got. Half the lines
    are said just before the restart, stored but maybe not delivered. ``seconds`` runs from
    the new server listening until every client is welcomed, has every line (its newest seq
    is the room's) and knows every other client; ``join_s`` until every client is welcomed.
    """
    server = _SERVER
    if server is None or not server.keeps_log:
        raise RuntimeError("restart needs a server the bench starts, with its room log")
    n, workdir = result.clients, _WORKDIR
    bench.tracking_seq = True
    await bench.connect(n, 300 + n / 20, concurrency=storm or CONNECT_CONCURRENCY)
    await bench.settle(timeout=300)
    sender = bench.clients[0]
    sender.count_acks = True
    base = welcome_count(bench.clients[-1].welcome_line, b"seq")
    half = RESTART_LINES // 2
    for _ in range(half):
        sender.send(sender.msg(PLAIN_TEXT))
    seen = base + half
    await _until(lambda: all(c.last_seq >= seen for c in bench.clients[1:]), 60, "lines")
    for _ in range(RESTART_LINES - half):
        sender.send(sender.msg(PLAIN_TEXT))
    await _until(lambda: sender.acks >= RESTART_LINES, 60, "acks")
    final = base + RESTART_LINES
    sender.last_seq = final
    # The same command again: the same database (argv() would make a fresh one) and port.
    if server.proc is None:
        raise RuntimeError("the server is not running")
    cmd = [str(arg) for arg in cast(list[Any], server.proc.args)]
    cmd[cmd.index("--port") + 1] = str(server.port)
    server.stop()
    server.argv = lambda _workdir: cmd
    server.start(workdir)
    global _SERVER_PID
    _SERVER_PID = server.pid
    cpu = cpu_reader(result)
    cpu0, start, gen0 = cpu(), time.perf_counter(), self_cpu_seconds()
    old, bench.clients = bench.clients, []
    bench.counting_nicks = True
    gate = asyncio.Semaphore(storm or CONNECT_CONCURRENCY)

    async def back(client: Client) -> None:
        async with gate:
            again = Client(bench, client.nick, since=client.last_seq)
            again.node = client.node
            bench.clients.append(again)
            await bench.open(again)
            if not await again.welcome:
                raise RuntimeError(f"{again.nick} was refused: {again.head[:200]!r}")

    await asyncio.wait_for(asyncio.gather(*(back(c) for c in old)), 300)
    result.join_s = round(time.perf_counter() - start, 3)
    await _until(lambda: all(c.last_seq >= final for c in bench.clients), 300, "replays")
    await bench.settle(timeout=300)
    cpu1 = cpu()
    result.seconds = round(time.perf_counter() - start, 3)
    # On a machine where server and generator share the cores, both count against the time.
    result.gen_cpu_s = round(self_cpu_seconds() - gen0, 3)
    result.joins_per_s = round(n / result.seconds, 1)
    result.messages, result.replayed = RESTART_LINES, RESTART_LINES - half
    result.lost = sum(final - c.last_seq for c in bench.clients if c.last_seq < final)
    skipped = sum(welcome_count(c.welcome_line, b"skipped") for c in bench.clients)
    if skipped:
        result.error = f"{skipped} lines skipped in replays"
    if cpu0 is not None and cpu1 is not None:
        result.server_cpu_s = round(cpu1 - cpu0, 3)
        result.cpu_ms_per_join = round(result.server_cpu_s * 1000 / n, 3)


async def _until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not arrive within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def talk_until_cancelled(client: Client, rate: float) -> int:
    """Say ``rate`` stamped lines a second, evenly spaced, until cancelled; return how many."""
    said, start = 0, time.perf_counter()
    try:
        while True:
            client.send(client.msg(stamped_text(time.perf_counter())))
            said += 1
            await asyncio.sleep(max(0.0, start + said / rate - time.perf_counter()))
    except asyncio.CancelledError:
        return said


# --- running --------------------------------------------------------------------------------


def raise_nofile(need: int) -> int:
    """Raise the soft open-file limit towards ``need`` (up to the hard limit); return it.

    With CAP_SYS_RESOURCE (root, unless a container dropped it), raise the hard limit too
    if it is below ``need`` (up to ``fs.nr_open``): the server under test and the generators
    are started from here and inherit both limits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        with contextlib.suppress(OSError, ValueError):
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, min(need, ceiling)))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(need, soft)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        print(f"warning: open-file limit {want} is below the {need} needed", file=sys.stderr)
    return int(want)


def run_one(
    args: argparse.Namespace, server: ServerUnderTest | None, run: int, workdir: Path
) -> Result:
    global _SERVER_PID, _SERVER_PIDS, _SERVER, _WORKDIR
    label = server.label if server is not None else "attached"
    result = Result(args.workload, label, run, args.clients, gen_loop=args.gen_loop)
    ports: list[int] = []
    if server is not None:
        server.start(workdir)
        host, port = HOST, server.port
        _SERVER_PID, _SERVER, _WORKDIR = server.pid, server, workdir
        if isinstance(server, ClusterUnderTest):
            ports, _SERVER_PIDS = server.ports, server.pids
        dialect = server.dialect
    else:
        host, _, port_text = args.attach.rpartition(":")
        port = int(port_text)
        _SERVER_PID = args.server_pid
        dialect = IrcDialect() if args.irc else Dialect()
    try:
        acks = server.v2 if server is not None else None
        if args.procs > 1:
            hold_procs(args, result, host, port, ports)
        else:
            asyncio_run(drive(args, result, dialect, host, port, acks, ports), args.gen_loop)
    except (RuntimeError, OSError, ssl.SSLError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        _SERVER_PID, _SERVER_PIDS, _SERVER = None, [], None
        if server is not None:
            server.stop()
    if args.logs and server is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        (args.logs / f"{server.label}-{args.workload}-{run}.log").write_text(server.log_text())
    if result.error and server is not None:
        tail = server.log_tail().strip()
        if tail:
            print(f"--- {server.label} log ---\n{tail}", file=sys.stderr)
    return result


async def drive(
    args: argparse.Namespace,
    result: Result,
    dialect: Dialect,
    host: str,
    port: int,
    acks: bool | None = None,
    ports: Sequence[int] = (),
) -> None:
    bench = Bench(dialect, host, port, acks=acks, ports=ports)
    try:
        if args.workload == "fanout":
            await fanout(bench, result, args.senders, args.messages, args.window)
        elif args.workload == "paced":
            await paced(bench, result, args.rate, args.duration)
        elif args.workload == "store":
            await store(bench, result, args.messages)
        elif args.workload == "replay":
            await replay(bench, result, args.messages, args.resumes)
        elif args.workload == "restart":
            await restart(bench, result, args.storm)
        else:
            await hold(bench, result, args.storm, args.talk)
    finally:
        bench.close()
        await asyncio.sleep(0.05)


def asyncio_run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


COLUMNS = (
    ("server", "{:<26}"),
    ("run", "{:>3}"),
    ("clients", "{:>7}"),
    ("deliveries_per_s", "{:>12}"),
    ("p50_ms", "{:>8}"),
    ("p99_ms", "{:>8}"),
    ("max_ms", "{:>8}"),
    ("lost", "{:>6}"),
    ("seconds", "{:>8}"),
    ("server_cpu_s", "{:>8}"),
    ("server_us_per_delivery", "{:>8}"),
    ("gen_cpu_s", "{:>8}"),
)
STORE_COLUMNS = (
    ("server", "{:<26}"),
    ("run", "{:>3}"),
    ("clients", "{:>7}"),
    ("acked_per_s", "{:>9}"),
    ("acks", "{:>7}"),
    ("lost", "{:>6}"),
    ("seconds", "{:>8}"),
    ("server_cpu_s", "{:>8}"),
    ("server_us_per_delivery", "{:>8}"),
    ("gen_cpu_s", "{:>8}"),
)
REPLAY_COLUMNS = (
    ("server", "{:<26}"),
    ("run", "{:>3}"),
    ("messages", "{:>8}"),
    ("acked_per_s", "{:>9}"),
    ("replayed", "{:>8}"),
    ("resume_ms", "{:>9}"),
    ("resume_max_ms", "{:>9}"),
    ("server_cpu_s", "{:>8}"),
)
HOLD_COLUMNS = (
    ("server", "{:<26}"),
    ("run", "{:>3}"),
    ("clients", "{:>7}"),
    ("procs", "{:>5}"),
    ("roster_min", "{:>7}"),
    ("welcome_frames", "{:>6}"),
    ("handshakes_per_s", "{:>10}"),
    ("rss_per_conn_kib", "{:>9}"),
    ("tls_rss_per_conn_kib", "{:>9}"),
    ("server_rss_mib", "{:>9}"),
    ("seconds", "{:>8}"),
    ("join_s", "{:>8}"),
    ("joins_per_s", "{:>8}"),
    ("cpu_ms_per_join", "{:>8}"),
    ("server_cpu_s", "{:>8}"),
    ("gen_cpu_s", "{:>8}"),
    ("p50_ms", "{:>8}"),
    ("p99_ms", "{:>8}"),
)
RESTART_COLUMNS = (
    ("server", "{:<26}"),
    ("run", "{:>3}"),
    ("clients", "{:>7}"),
    ("join_s", "{:>8}"),
    ("seconds", "{:>8}"),
    ("joins_per_s", "{:>8}"),
    ("cpu_ms_per_join", "{:>8}"),
    ("replayed", "{:>8}"),
    ("lost", "{:>6}"),
    ("server_cpu_s", "{:>8}"),
    ("gen_cpu_s", "{:>8}"),
)
SHORT = {
    "joins_per_s": "joins/s",
    "cpu_ms_per_join": "ms/join",
    "deliveries_per_s": "deliv/s",
    "server_cpu_s": "srv_cpu",
    "gen_cpu_s": "gen_cpu",
    "handshakes_per_s": "hs/s",
    "rss_per_conn_kib": "KiB/conn",
    "tls_rss_per_conn_kib": "KiB/TLS",
    "server_rss_mib": "RSS MiB",
    "server_us_per_delivery": "srv_us/d",
    "acked_per_s": "acked/s",
    "resume_max_ms": "max_ms",
    "roster_min": "roster",
    "welcome_frames": "frames",
}


def columns(workload: str) -> tuple[tuple[str, str], ...]:
    by_workload = {
        "hold": HOLD_COLUMNS,
        "restart": RESTART_COLUMNS,
        "store": STORE_COLUMNS,
        "replay": REPLAY_COLUMNS,
    }
    return by_workload.get(workload, COLUMNS)


SUMMARY_KEY = {
    "hold": "handshakes_per_s",
    "restart": "seconds",
    "store": "acked_per_s",
    "replay": "resume_ms",
}
"""The figure a workload's summary compares (``deliveries_per_s`` if not here)."""


def header(workload: str) -> str:
    cols = columns(workload)
    return " ".join(fmt.replace(":", ":").format(SHORT.get(k, k)) for k, fmt in cols)


def row(result: Result) -> str:
    cells = []
    for key, fmt in columns(result.workload):
        value = getattr(result, key)
        cells.append(fmt.format("-" if value is None else value))
    line = " ".join(cells)
    return f"{line}  ERROR: {result.error}" if result.error else line


def summary(
    results: list[Result],
    references: Sequence[str],
    compare: dict[str, list[str]] | None = None,
) -> list[str]:
    """Medians per server, and each server's ratio to the reference servers that ran.

    ``compare`` adds ratios per server: the chatsecure server with its log against the same
    server without it, or against another checkout's, each on the same event loop.
    """
    workload = results[0].workload if results else "fanout"
    key = SUMMARY_KEY.get(workload, "deliveries_per_s")
    by_server: dict[str, list[Result]] = {}
    for r in results:
        by_server.setdefault(r.server, []).append(r)
    # A run that failed counts in no median; the line says how many failed.
    medians = {
        s: statistics.median([getattr(r, key) or 0 for r in rs if not r.error] or [0])
        for s, rs in by_server.items()
    }
    width = max([18, *(len(s) for s in by_server)])
    lines = []
    for server, rs in by_server.items():
        ok = [r for r in rs if not r.error]
        figure = (
            f"{medians[server]:,.1f}"
            if key in ("resume_ms", "seconds")
            else f"{medians[server]:,.0f}"
        )
        text = f"{server:<{width}} median {key} {figure} over {len(ok)} run(s)"
        if len(ok) < len(rs):
            text += f" ({len(rs) - len(ok)} failed)"
        rs = ok or rs
        text += _summary_details(rs)
        for reference in [*references, *(compare or {}).get(server, [])]:
            base = medians.get(reference)
            if base and server != reference:
                text += f", {medians[server] / base:.2f}x {reference}"
                text += _paired(rs, by_server[reference], key)
        lines.append(text)
    return lines


def _paired(rs: list[Result], references: list[Result], key: str) -> str:
    """The ratios of the runs of one round (the two servers ran one after the other, on the
    machine as it was then): their median and range, steadier than the ratio of the medians
    on a host whose speed drifts from one minute to the next."""
    base = {r.run: getattr(r, key) for r in references if not r.error}
    ratios = sorted(
        getattr(r, key) / base[r.run]
        for r in rs
        if base.get(r.run) and not r.error and getattr(r, key) is not None
    )
    if len(ratios) < 2:
        return ""
    return f" (per round: median {statistics.median(ratios):.2f}, {ratios[0]:.2f}-{ratios[-1]:.2f})"


def _summary_details(rs: list[Result]) -> str:
    """The medians that go with a workload's main figure."""
    text = ""
    if rs[0].workload == "hold":
        kib = statistics.median([r.rss_per_conn_kib or 0 for r in rs])
        joins = statistics.median([r.joins_per_s or 0 for r in rs])
        ms = [r.cpu_ms_per_join for r in rs if r.cpu_ms_per_join is not None]
        per_join = f", server CPU {statistics.median(ms):.3f} ms/join" if ms else ""
        return f", median RSS/conn {kib:.1f} KiB, {joins:,.0f} joins/s{per_join}"
    if rs[0].workload == "restart":
        back = statistics.median([r.join_s or 0 for r in rs])
        return f" (all welcomed in {back:.1f} s), lost {sum(r.lost for r in rs)}"
    if rs[0].workload == "replay":
        return f", max {max(r.resume_max_ms or 0 for r in rs)} ms, replayed {rs[0].replayed}"
    cpu = [r.server_us_per_delivery for r in rs if r.server_us_per_delivery is not None]
    if cpu:
        per = "acked line" if rs[0].workload == "store" else "delivery"
        text += f", server CPU {statistics.median(cpu):.3f} us/{per}"
    p99 = [r.p99_ms for r in rs if r.p99_ms is not None]
    if p99:
        text += f", median p99 {statistics.median(p99):.1f} ms"
    if rs[0].workload != "store":
        text += f", median p50 {statistics.median([r.p50_ms or 0 for r in rs]):.1f} ms"
    return text + f", lost {sum(r.lost for r in rs)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="chatsecure load generator (see docs/performance.md)"
    )
    parser.add_argument(
        "workload", choices=["fanout", "paced", "hold", "store", "replay", "restart"]
    )
    parser.add_argument("-n", "--clients", type=int, default=None)
    parser.add_argument("-s", "--senders", type=int, default=5, help="fanout: senders")
    parser.add_argument(
        "-m",
        "--messages",
        type=int,
        default=None,
        help="fanout, store: per sender (default 2000); replay: lines stored (default 10000)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        metavar="W",
        help="fanout: a sender waits while W of its lines are unacked (default 0: never)",
    )
    parser.add_argument(
        "--resumes", type=int, default=3, help="replay: clients that resume, one by one"
    )
    parser.add_argument(
        "--storm",
        type=int,
        default=0,
        metavar="K",
        help="hold: clients connect and say hello at once, K at a time (a join storm)",
    )
    parser.add_argument(
        "--talk",
        type=float,
        default=0.0,
        metavar="R",
        help="hold --storm: a member says R lines/s during the storm; latency at 16 others",
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=1,
        metavar="P",
        help="hold: P generator processes share the clients, each from its own source "
        "address (127.0.0.2, 127.0.0.3, ...): rooms bigger than one address's ports",
    )
    parser.add_argument(
        "--gen-rcvbuf",
        type=int,
        default=0,
        metavar="BYTES",
        help="hold --procs: SO_RCVBUF of each generator socket (default: the kernel's); "
        "16384 keeps the generators' memory down in rooms of tens of thousands",
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.2, help="paced: msgs/s per client")
    parser.add_argument("--duration", type=float, default=30.0, help="paced: seconds")
    parser.add_argument("--runs", type=int, default=1, help="runs per server (median shown)")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop", "both"],
        default="both" if _have_uvloop() else "asyncio",
        help="event loop of the chatsecure server (default: both when uvloop is installed)",
    )
    parser.add_argument(
        "--gen-loop",
        choices=["asyncio", "uvloop"],
        default="uvloop" if _have_uvloop() else "asyncio",
        help="event loop of this generator",
    )
    parser.add_argument(
        "--history",
        choices=["on", "off", "both"],
        default="on",
        help="chatsecure with its room log (a fresh --db per run), without (--history 0), or both",
    )
    parser.add_argument(
        "--durability",
        choices=["normal", "full", "both"],
        default="normal",
        help="the room log's --durability (both: a server for each)",
    )
    parser.add_argument(
        "--db-dir", type=Path, metavar="DIR", help="put the room logs in DIR (default: a temp dir)"
    )
    parser.add_argument(
        "--against-tree",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="also run the chatsecure server of the checkout in DIR (e.g. an older commit)",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="K",
        help="also run K nodes on one private redis-server, clients split across them "
        "(ratios against the single server in the same run)",
    )
    parser.add_argument("--baseline", action="store_true", help="also run the naive server")
    parser.add_argument("--against", action="append", choices=["ngircd", "inspircd"], default=[])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SERVER",
        help="run only these servers (chatsecure, chatsecure+uvloop, naive, ngircd, inspircd)",
    )
    parser.add_argument("--attach", metavar="HOST:PORT", help="drive a running server instead")
    parser.add_argument("--server-pid", type=int, help="with --attach: its pid, for CPU/RSS")
    parser.add_argument("--irc", action="store_true", help="with --attach: speak IRC")
    parser.add_argument("--no-discovery", action="store_true", help="accepted; always so")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON lines")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep each server's log in DIR")
    return parser


DEFAULT_CLIENTS = {
    "fanout": 50,
    "paced": 1000,
    "hold": 10000,
    "store": 2,
    "replay": 1,
    "restart": 10000,
}
DEFAULT_MESSAGES = {"replay": 10000}
"""``--messages`` where it is not 2000."""


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class OtherTree:
    """A checkout given with ``--against-tree``."""

    path: Path
    flags: set[str]
    """The options its server knows (``server_flags``)."""
    name: str
    """Its name in labels (``tree_names``)."""


def other_trees(paths: Sequence[Path]) -> list[OtherTree]:
    """Each ``--against-tree`` checkout, looked at once (its server's options, its commit)."""
    resolved = [path.resolve() for path in paths]
    names = tree_names(resolved)
    return [
        OtherTree(path, server_flags(path), name)
        for path, name in zip(resolved, names, strict=True)
    ]


def chatsecure_servers(
    args: argparse.Namespace, flags: set[str], trees: list[OtherTree]
) -> list[ServerUnderTest]:
    """This checkout's server (``flags``: its options) per event loop, with and without its
    log, and those of the other ``trees``."""
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    if "--loop" not in flags:
        loops = loops[:1]
    histories = {"on": [True], "off": [False], "both": [True, False]}[args.history]
    durabilities = ["normal", "full"] if args.durability == "both" else [args.durability]
    keep = replay_max = None
    if args.workload == "replay":
        keep = replay_max = max(args.messages, 10000)
    servers = []
    for loop in loops:
        base = chatsecure_base(loop)
        nolog, others = f"{base}-nolog", [f"{base}@{tree.name}" for tree in trees]
        for history in histories:
            for durability in durabilities if history else ["normal"]:
                log = LogOptions(history, durability, keep, replay_max, args.db_dir)
                label = base if history else nolog
                if history and durability != durabilities[0]:
                    label = f"{base}-{durability}"
                server = chatsecure_server(loop, flags, log, label=label)
                if label == base:
                    server.compare_to = [nolog, *others]
                elif history:
                    server.compare_to = [base]
                servers.append(server)
        # Another tree keeps its log like this one's first (a replay needs its --replay-max).
        log = LogOptions(True, durabilities[0], keep, replay_max, args.db_dir)
        for tree, label in zip(trees, others, strict=True):
            servers.append(chatsecure_server(loop, tree.flags, log, tree=tree.path, label=label))
    return servers


def servers_to_run(args: argparse.Namespace) -> list[ServerUnderTest | None]:
    """The servers under test, in the order odd runs visit them, even runs the other way round
    (None: ``--attach``)."""
    if args.attach:
        return [None]
    flags, trees = server_flags(), other_trees(args.against_tree)
    servers = chatsecure_servers(args, flags, trees)
    if args.cluster:
        loop = "asyncio" if args.loop == "both" else args.loop
        cluster = ClusterUnderTest(loop, flags, args.cluster)
        older = [  # an older tree's cluster, if it has one
            ClusterUnderTest(loop, tree.flags, args.cluster, tree.path, tree.name)
            for tree in trees
            if "--cluster" in tree.flags
        ]
        cluster.compare_to = [s.label for s in servers if s.label == chatsecure_base(loop)]
        cluster.compare_to += [o.label for o in older]
        servers += [cluster, *older]
    if args.baseline:
        servers.append(naive_server())
    if "ngircd" in args.against or "ngircd" in args.only:
        servers.append(ngircd_server())
    if "inspircd" in args.against or "inspircd" in args.only:
        inspircd = inspircd_server()
        if inspircd is not None:
            servers.append(inspircd)
    if "naive" in args.only and not args.baseline:
        servers.append(naive_server())
    if args.only:
        servers = [s for s in servers if s.label in args.only]
    need = {"store": "acks (protocol v2)", "replay": "a room log", "restart": "a room log"}.get(
        args.workload
    )
    if need is not None:
        able = [s for s in servers if (s.v2 if args.workload == "store" else s.keeps_log)]
        for server in servers:
            if server not in able:
                print(f"skipping {server.label}: {args.workload} needs {need}", file=sys.stderr)
        servers = able
    return list(servers)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (``timeout``, a watchdog) unwinds like Ctrl-C: the server and generators stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.clients is None:
        args.clients = DEFAULT_CLIENTS[args.workload]
    if args.messages is None:
        args.messages = DEFAULT_MESSAGES.get(args.workload, 2000)
    if args.workload == "fanout" and not 0 < args.senders <= args.clients:
        raise SystemExit("--senders must be between 1 and --clients")
    if args.window < 0 or 0 < args.window < BATCH:
        raise SystemExit(f"--window must be 0 or at least {BATCH} (lines per write)")
    if args.workload == "replay" and args.clients != 1:
        raise SystemExit("replay has one writer: leave out --clients")
    if not 1 <= args.procs <= MAX_PROCS:
        raise SystemExit(f"--procs must be between 1 and {MAX_PROCS}")
    if args.procs > 1 and (args.workload != "hold" or args.talk):
        raise SystemExit("--procs goes with hold (without --talk) only")
    if args.procs > 1 and args.attach and not args.attach.startswith("127."):
        raise SystemExit("--procs needs a server on loopback: its generators leave from 127.0.0.x")
    if args.worker is not None:
        host, _, port = args.attach.rpartition(":")
        raise_nofile(share(args.clients, args.procs, args.worker)[1] + 256)
        asyncio_run(hold_worker(args, host, int(port)), args.gen_loop)
        return 0
    limit = raise_nofile(args.clients + 256)
    # A server (a node of a cluster: its share) needs a descriptor per client: past its limit,
    # accept() fails and the generators would wait for handshakes that never come.
    per_server = -(-args.clients // max(1, args.cluster)) + 256
    if args.procs > 1 and limit < per_server:
        raise SystemExit(
            f"the server may open {limit} files, too few for {args.clients} clients; raising"
            " the hard limit (ulimit -Hn) needs CAP_SYS_RESOURCE"
        )
    servers = servers_to_run(args)
    if not servers:
        raise SystemExit("no server to run")
    compare = {s.label: s.compare_to for s in servers if s is not None and s.compare_to}
    results: list[Result] = []
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="chatsecure-bench-") as tmp:
        workdir = Path(tmp)
        certs.generate(workdir, extra_sans=[HOST])
        if not args.json_only:
            print(header(args.workload), file=out, flush=True)
        for run in range(1, args.runs + 1):
            # Every other round in the other order: the first server of a round tends to be
            # the slower one on a busy host, and that must not favour one side.
            for server in servers if run % 2 else servers[::-1]:
                result = run_one(args, server, run, workdir)
                results.append(result)
                if not args.json_only:
                    print(row(result), file=out, flush=True)
                print(json.dumps(asdict(result)), file=out, flush=True)
    if not args.json_only:
        for line in summary(results, ("naive", "ngircd", "inspircd"), compare):
            print(line, file=out)
    return 1 if any(r.error or r.lost for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
