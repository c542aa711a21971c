"""The yardstick: a chat server written the naive way, speaking protocol v1 over TLS.

One thread per client; every chat line is encoded once and sent to every other client with a
blocking ``sendall`` while a global lock is held, so one slow reader stalls the whole room.
It has no limits at all. It exists only so that ``tools/bench.py --baseline`` can measure
chatsecure against the design a first attempt would take; never run it for real chat.

    python benchmarks/naive_server.py --port 0 --cert certs/server.crt --key certs/server.key
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import signal
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from chatsecure import __version__
from chatsecure.errors import RemoteProtocolError
from chatsecure.protocol.frames import FrameDecoder
from chatsecure.protocol.messages import (
    Chat,
    Error,
    Hello,
    Join,
    Leave,
    Peer,
    Ping,
    Pong,
    Quit,
    SendMsg,
    ServerInfo,
    Welcome,
    encode,
    parse_client,
)
from chatsecure.tls.context import server_context


class NaiveServer:
    """Accept loop plus one thread per client; the client list is guarded by one lock."""

    def __init__(self, ctx: ssl.SSLContext, listener: socket.socket) -> None:
        self.ctx = ctx
        self.listener = listener
        self.lock = threading.RLock()
        self.clients: dict[str, tuple[ssl.SSLSocket, Peer]] = {}
        self.ids = itertools.count(1)
        self.info = ServerInfo("naive", __version__, 1)

    def serve_forever(self) -> None:
        while True:
            try:
                raw, addr = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self.handle, args=(raw, addr[0]), daemon=True)
            thread.start()

    def broadcast(self, frame: bytes, exclude: str | None) -> None:
        with self.lock:
            for client_id, (sock, _) in list(self.clients.items()):
                if client_id != exclude:
                    with contextlib.suppress(OSError):
                        sock.sendall(frame)

    def handle(self, raw: socket.socket, addr: str) -> None:
        try:
            sock = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        client_id = str(next(self.ids))
        peer: Peer | None = None
        decoder = FrameDecoder(0)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for frame in decoder.feed(data):
                    try:
                        message = parse_client(frame)
                    except RemoteProtocolError as exc:
                        sock.sendall(encode(Error(exc.code, exc.message)))
                        continue
                    if isinstance(message, Hello) and peer is None:
                        peer = Peer(client_id, message.nick, addr)
                        with self.lock:
                            others = tuple(p for _, p in self.clients.values())
                            sock.sendall(encode(Welcome(peer, others, self.info)))
                            self.broadcast(encode(Join(peer)), exclude=None)
                            self.clients[client_id] = (sock, peer)
                    elif isinstance(message, SendMsg) and peer is not None:
                        self.broadcast(encode(Chat(peer, message.text, time.time())), client_id)
                    elif isinstance(message, Ping):
                        sock.sendall(encode(Pong()))
                    elif isinstance(message, Quit):
                        return
        except (OSError, ssl.SSLError):
            return
        finally:
            with self.lock:
                self.clients.pop(client_id, None)
            if peer is not None:
                self.broadcast(encode(Leave(peer, "closed")), exclude=None)
            with contextlib.suppress(OSError):
                sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args(argv)
    ctx = server_context(args.cert, args.key)
    listener = socket.create_server((args.host, args.port), backlog=1024)
    server = NaiveServer(ctx, listener)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    host, port = listener.getsockname()[:2]
    print(f"naive server listening on {host}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
