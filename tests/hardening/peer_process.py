"""Programs the hardening tests run as separate processes, so that they can be killed or cut off.

python peer_process.py server CONFIG_JSON
    A server (ServerConfig fields as JSON, discovery off); prints ``port N`` once it listens
    and stops cleanly on SIGTERM. Its memory can be read from /proc.
python peer_process.py client HOST PORT NICK MODE
    ``chat``: join, answer pings, print every frame as a JSON line (``{"type": "eof"}`` last).
    ``dead``: join, print ``joined``, then never read nor write again.
    ``half``: join, send half a frame, print ``half``, then sleep.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from chatsecure.server import ChatServer, serve
from chatsecure.settings import ServerConfig
from chatsecure.testing import RawClient

FOREVER = 600.0
"""How long a ``dead`` or ``half`` client sleeps; the test kills it long before."""


def run_server(config_json: str) -> int:
    fields = json.loads(config_json)
    for key in ("cert", "key", "client_ca"):
        if fields.get(key) is not None:
            fields[key] = Path(fields[key])
    config = ServerConfig(**fields)

    def ready(server: ChatServer) -> None:
        print(f"port {server.port}", flush=True)

    asyncio.run(serve(config, ready=ready))
    return 0


def run_client(host: str, port: int, nick: str, mode: str) -> int:
    client = RawClient(host, port, timeout=10)
    client.join(nick)
    if mode == "dead":
        print("joined", flush=True)
        time.sleep(FOREVER)
    elif mode == "half":
        client.send_raw(b'{"type":"msg","text":"never fini')
        print("half", flush=True)
        time.sleep(FOREVER)
    else:
        print(json.dumps({"type": "joined"}), flush=True)
        while True:
            try:
                frame = client.recv(FOREVER)
            except (EOFError, OSError):
                print(json.dumps({"type": "eof"}), flush=True)
                return 0
            if frame.get("type") == "ping":
                client.send({"type": "pong"})
            print(json.dumps(frame), flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["server"]:
        return run_server(argv[1])
    host, port, nick, mode = argv[1:5]
    return run_client(host, int(port), nick, mode)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
