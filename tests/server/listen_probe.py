"""Listen as ``chatsecure server --host HOST --port 0`` would, and try each socket's port.

Run in a namespace of the test's (``python -m tests.server.listen_probe HOST``); prints JSON,
one object per socket: how the server shows it, its port, what it advertises for, and which of
127.0.0.1 and ::1 connect. ``HOST`` ``v6only`` is an IPv6-only socket on ``::`` instead
(what ``--host ::`` made before, and still makes where the system has no dual stack).
"""

from __future__ import annotations

import json
import socket
import sys

from chatsecure.server import Listening, listen_sockets


def reaches(port: int) -> dict[str, bool]:
    answers = {}
    for ip in ("127.0.0.1", "::1"):
        try:
            socket.create_connection((ip, port), timeout=2).close()
        except OSError:
            answers[ip] = False
        else:
            answers[ip] = True
    return answers


def main(host: str) -> None:
    if host == "v6only":
        sockets = [socket.create_server(("::", 0), family=socket.AF_INET6)]
    else:
        sockets = listen_sockets(host, 0)
    found = []
    for sock in sockets:  # (each tried while all listen)
        listening = Listening.of(sock)
        found.append(
            {
                "shown": str(listening),
                "port": listening.port,
                "hosts": list(listening.hosts),
                "reaches": reaches(listening.port),
            }
        )
    for sock in sockets:
        sock.close()
    print(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1])
