"""A TCP relay on loopback whose connections a test can cut, to drop a client for real."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class Proxy:
    """Listens on 127.0.0.1:<ephemeral> and relays each connection to ``upstream``.

    ``drop()`` cuts every relayed connection at once (both ends see a reset or EOF), while
    the listener stays up, so a client that reconnects gets through again. With ``hold``,
    connections are accepted but nothing is relayed until ``release()``: a client waits in
    the middle of connecting for as long as the test likes.
    """

    def __init__(self, upstream: tuple[str, int], *, hold: bool = False) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopping = False
        self._held = hold
        self._waiting: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="test-proxy")

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self.drop()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def drop(self) -> None:
        """Cut every relayed connection now (from any thread)."""
        with self._lock:
            socks = list(self._pairs)
            self._pairs.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def waiting(self) -> int:
        """Connections accepted and held, not relayed yet."""
        return len(self._waiting)

    def hold(self) -> None:
        """Hold every connection from now on, until ``release()`` (from any thread)."""
        self._held = True

    def release(self) -> None:
        """Start relaying the connections held so far, and every later one (from any thread)."""
        self._held = False
        self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(0.5):
                sock = key.fileobj
                if sock is self.listener:
                    self._accept()
                elif sock is self._wake_r:
                    sock.recv(64)
                    if not self._held:
                        waiting, self._waiting = self._waiting, []
                        for client in waiting:
                            self._connect(client)
                elif isinstance(sock, socket.socket):
                    self._relay(sock)
        for client in self._waiting:
            client.close()
        for key in list(self._selector.get_map().values()):
            if key.fileobj not in (self.listener, self._wake_r) and isinstance(
                key.fileobj, socket.socket
            ):
                key.fileobj.close()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        if self._held:
            self._waiting.append(client)  # what it sends waits in the kernel meanwhile
        else:
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        self.accepted += 1
        with self._lock:
            self._pairs[client] = server
            self._pairs[server] = client
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(server, selectors.EVENT_READ)

    def _relay(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        with self._lock:
            other = self._pairs.get(sock)
        if data and other is not None:
            with contextlib.suppress(OSError):
                other.sendall(data)
                return
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._pairs.pop(sock, None)
            if other is not None:
                self._pairs.pop(other, None)
        for each in (sock, other):
            if each is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(each)
            each.close()
