"""Members whose connections are reset while big answers are written to them cost the others
no line, and the server logs no error.

uvloop closes such a socket before the server hears of it (``connection_lost`` comes later); the
cork of the next write to it raised ``ValueError``, which ended the room's write of that loop
iteration for every member after it: lines stored and acknowledged never reached them live.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from chatsecure.testing import RawClient
from tests.helpers import uvloop_server

pytest.importorskip("uvloop")

LINE = "y" * 3990
"""A history answer of 200 such lines is 800 KB: many writes, each corked."""

CUTTERS = 6


def cut_repeatedly(
    port: int, k: int, joined: threading.Barrier, go: threading.Event, stop: float
) -> None:
    """Join (before the listener), then until ``stop``: ask for history three times, reset
    the connection while the answers are being written, and join again."""
    rng = random.Random(k)
    for n in range(100):
        try:
            with RawClient("127.0.0.1", port) as client:
                client.join(f"cut{k}", client=f"cutter{k:03d}x{n:04d}")
                if n == 0:
                    joined.wait(10)
                    go.wait(10)
                time.sleep(rng.uniform(0.0, 0.3))
                client.send_raw(b'{"type":"history","limit":200}\n' * 3)
                time.sleep(rng.uniform(0.0, 0.02))
                linger = struct.pack("ii", 1, 0)
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except (OSError, EOFError, TimeoutError):
            time.sleep(0.05)
        if time.monotonic() > stop:
            return


def test_members_cut_mid_answer_cost_no_other_member_a_line(tmp_path: Path) -> None:
    server = uvloop_server(tmp_path, "--max-per-ip", "64")
    try:
        with RawClient("127.0.0.1", server.port) as sender:
            sender.join("sender", client="sender0000001")
            for n in range(250):  # the history the cutters ask for
                sender.send({"type": "msg", "text": f"{n} {LINE}", "ref": f"h{n}"})
            joined, go = threading.Barrier(CUTTERS + 1), threading.Event()
            stop = time.monotonic() + 8
            cutters = [
                threading.Thread(target=cut_repeatedly, args=(server.port, k, joined, go, stop))
                for k in range(CUTTERS)
            ]
            for cutter in cutters:
                cutter.start()
            joined.wait(10)  # every cutter is before the listener in the room's order
            seqs: list[int] = []
            with RawClient("127.0.0.1", server.port, timeout=10) as listener:
                listener.join("listener", client="listener00001")
                go.set()
                sent = 0
                while time.monotonic() < stop:
                    sender.send({"type": "msg", "text": f"live {sent} {LINE}", "ref": f"l{sent}"})
                    sent += 1
                    time.sleep(0.02)
                    while not listener.silent(0.001):
                        if (frame := listener.recv())["type"] == "msg":
                            seqs.append(frame["seq"])
                for cutter in cutters:
                    cutter.join(10)
                while len(seqs) < sent:
                    try:
                        frame = listener.recv(2)
                    except TimeoutError:
                        break
                    if frame["type"] == "msg":
                        seqs.append(frame["seq"])
    finally:
        _, err = server.stop()
    assert "Traceback" not in err, err[-3000:]
    assert seqs == list(range(seqs[0], seqs[0] + sent)), "a line did not reach the listener"
