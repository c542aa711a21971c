"""A TLS server on loopback whose every frame the test writes: a room of any size, and texts
no honest server sends (a line of a million characters, a nick as long as a paragraph)."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chatsecure.protocol import limits
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.tls.context import server_context


def peer(n: int, nick: str | None = None, addr: str = "127.0.0.1") -> dict[str, str]:
    """Peer ``n`` of a scripted room (``you`` is peer 1)."""
    return {"id": str(n), "nick": f"p{n:06d}" if nick is None else nick, "addr": addr}


def chat(text: str, seq: int, who: dict[str, str] | None = None) -> dict[str, Any]:
    """A stored chat line from ``who`` (peer 2 by default)."""
    return {"type": "msg", "from": who or peer(2), "text": text, "ts": 1.7e9, "seq": seq}


class ScriptedServer:
    """Listens on 127.0.0.1:<ephemeral>; welcomes each client as ``you`` into a room of
    ``peers`` (in frames of ``PEERS_CHUNK``, as a real server does), answers its pings,
    acknowledges its lines, and sends whatever the test ``push``-es. Use as a context manager.
    """

    def __init__(
        self,
        cert_dir: Path,
        *,
        you: dict[str, str] | None = None,
        peers: Iterable[dict[str, str]] = (),
        name: str = "scripted",
    ) -> None:
        self.you = you or peer(1, "alice")
        self.peers = list(peers)
        self.name = name
        self._ctx = server_context(cert_dir / "server.crt", cert_dir / "server.key")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._out: queue.Queue[tuple[bytes, int]] = queue.Queue()
        self._stop = threading.Event()
        self.welcomed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted-server")

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def push(self, *frames: dict[str, Any]) -> None:
        """Send ``frames`` to the client (from any thread), in one write."""
        data = b"".join(json.dumps(frame).encode() + b"\n" for frame in frames)
        self._out.put((data, max((int(frame.get("seq", 0)) for frame in frames), default=0)))

    def _welcome(self) -> bytes:
        chunk = limits.PEERS_CHUNK
        first, rest = self.peers[:chunk], self.peers[chunk:]
        welcome = {
            "type": "welcome",
            "you": self.you,
            "peers": first,
            "peers_total": len(self.peers),
            "server": {"name": self.name, "version": "scripted", "protocol": 2},
            "seq": 0,
            "replay": 0,
        }
        frames = [welcome] + [
            {"type": "peers", "peers": rest[at : at + chunk]} for at in range(0, len(rest), chunk)
        ]
        return b"".join(json.dumps(frame).encode() + b"\n" for frame in frames)

    def _run(self) -> None:
        # One client at a time is all these tests need; the next one is served after it.
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError, ssl.SSLError), raw:
                raw.settimeout(5)
                with self._ctx.wrap_socket(raw, server_side=True) as conn:
                    self._serve(conn)

    def _serve(self, conn: ssl.SSLSocket) -> None:
        decoder = FrameDecoder(0)
        conn.settimeout(0.02)  # reads wake up to send what was pushed, and to see stop
        hello = False
        newest = 0  # the newest seq sent: an ack stores the line after it
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                data = None
            if data == b"":
                return
            for frame in (json.loads(f) for f in decoder.feed(data or b"")):
                kind = frame.get("type")
                if kind == "hello" and not hello:
                    hello = True
                    _send(conn, self._welcome())
                    self.welcomed.set()
                elif kind == "ping":
                    conn.sendall(b'{"type":"pong"}\n')
                elif kind == "msg" and isinstance(frame.get("ref"), str):
                    newest += 1
                    ack = {"type": "ack", "ref": frame["ref"], "seq": newest, "ts": 1.7e9}
                    conn.sendall(json.dumps(ack).encode() + b"\n")
                elif kind == "quit":
                    return
            while hello:
                try:
                    out, seq = self._out.get_nowait()
                except queue.Empty:
                    break
                _send(conn, out)
                newest = max(newest, seq)


def _send(conn: ssl.SSLSocket, data: bytes) -> None:
    """Write all of ``data``: a big write waits while the client reads."""
    conn.settimeout(30)
    try:
        conn.sendall(data)
    finally:
        conn.settimeout(0.02)
