"""Many clients at once: everyone gets the broadcast."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from chatsecure.testing import RawClient, ServerThread

CLIENTS = 200


def next_msg(client: RawClient) -> dict[str, object]:
    """Skip the join notices of the clients that came later; return the first message."""
    while True:
        frame = client.recv(timeout=10)
        if frame["type"] == "msg":
            return frame
        assert frame["type"] == "join", frame


def test_200_concurrent_clients_all_receive_one_broadcast(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(max_per_ip=0)
    with contextlib.ExitStack() as stack:

        def connect(n: int) -> RawClient:
            client = RawClient(server.host, server.port, timeout=10)
            client.join(f"user{n}")
            return client

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="load") as pool:
            clients = list(pool.map(connect, range(CLIENTS)))
        for client in clients:
            stack.callback(client.close)
        server.wait_online(CLIENTS)
        joined_in = time.monotonic() - started

        sender = stack.enter_context(RawClient(server.host, server.port))
        sender.join("announcer")
        sender.send({"type": "msg", "text": "hello, everyone"})
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="load") as pool:
            frames = list(pool.map(next_msg, clients))
        assert len(frames) == CLIENTS
        for frame in frames:
            assert frame["text"] == "hello, everyone"
            assert frame["from"]["nick"] == "announcer"  # type: ignore[index]
        assert sender.silent(0.1), "the sender does not get its own message"
        assert joined_in < 20
