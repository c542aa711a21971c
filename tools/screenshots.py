"""Render the desktop client's screenshots for the README into docs/img/.

Usage: python tools/screenshots.py [--out docs/img]

Everything runs on a private Xvfb display against a server on 127.0.0.1 with discovery off
(nothing goes on the network): the connect view, the first-contact trust dialog, a changed
certificate warning, and a chat with three people. Needs Xvfb and ImageMagick (``import``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chatsecure.client.state import GuiOptions
from chatsecure.gui.app import App
from chatsecure.gui.display import virtual_display
from chatsecure.testing import RawClient, ServerThread, server_config
from chatsecure.tls import certs
from chatsecure.tls.trust import KnownServers

Roots = list[tk.Tk]


def pump(roots: Roots, until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Run the Tk event loops of ``roots`` until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise SystemExit("screenshots: timed out waiting for the GUI")
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
    subprocess.run(["import", "-window", window, str(path)], check=True)
    print(f"wrote {path}")


def widget(root: tk.Misc, path: str) -> Any:  # noqa: ANN401 - whatever widget lives there
    return root.nametowidget(path)


def type_into(root: tk.Misc, path: str, text: str) -> None:
    entry = widget(root, path)
    entry.delete(0, "end")
    entry.insert(0, text)


def say(root: tk.Misc, text: str) -> None:
    type_into(root, "chat.bottom.message", text)
    widget(root, "chat.bottom.send").invoke()


@contextmanager
def client(nick: str, roots: Roots, geometry: str) -> Iterator[tuple[tk.Tk, App]]:
    root = tk.Tk(className="chatsecure")
    app = App(root, GuiOptions(nick=nick, discovery=False))
    root.geometry(geometry)
    roots.append(root)
    try:
        yield root, app
    finally:
        app.close()
        roots.remove(root)


def connect(root: tk.Tk, port: int) -> None:
    type_into(root, "connect.form.host", "127.0.0.1")
    type_into(root, "connect.form.port", str(port))
    widget(root, "connect.form.buttons.connect").invoke()


def joined(app: App) -> Callable[[], bool]:
    return lambda: app.controller.model.phase.name == "CHAT"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    if shutil.which("import") is None:
        print("screenshots: ImageMagick's `import` is missing", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, virtual_display(1280, 900) as display:
        os.environ["DISPLAY"] = display
        os.environ["CHATSECURE_HOME"] = str(Path(tmp) / "home")
        cert_dir = Path(tmp) / "certs"
        certs.generate(cert_dir)
        config = server_config(cert_dir, name="Physics lab")
        with ServerThread(config) as server:
            render(server, args.out, Path(tmp))
    return 0


def render(server: ServerThread, out: Path, tmp: Path) -> None:
    roots: Roots = []
    with client("alice", roots, "900x600+0+0") as (alice, alice_app):
        type_into(alice, "connect.form.host", "127.0.0.1")
        type_into(alice, "connect.form.port", str(server.port))
        settle(roots)
        shoot(alice, out / "connect.png")

        widget(alice, "connect.form.buttons.connect").invoke()
        pump(roots, lambda: "trust" in alice.children)
        dialog = widget(alice, "trust")
        settle(roots)
        shoot(dialog, out / "trust-new.png")
        widget(alice, "trust.buttons.accept").invoke()
        pump(roots, joined(alice_app))

        with (
            client("bob", roots, "900x600+0+0") as (bob, bob_app),
            client("carol", roots, "900x600+0+0") as (carol, carol_app),
        ):
            connect(bob, server.port)
            pump(roots, joined(bob_app))
            connect(carol, server.port)
            pump(roots, joined(carol_app))
            with RawClient("127.0.0.1", server.port) as dave:
                dave.join("dave")
                dave.send({"type": "msg", "text": "wrong room, sorry!"})
                settle(roots, 0.2)
                dave.send({"type": "quit"})
                settle(roots, 0.2)
            say(alice, "hi both! the lab report is due friday")
            settle(roots, 0.2)
            say(bob, "thanks alice, I'll bring the data")
            settle(roots, 0.2)
            say(carol, "same here — see you at 10")
            settle(roots, 0.2)
            say(alice, "great, see you")
            settle(roots, 0.5)
            alice.lift()
            settle(roots)
            shoot(alice, out / "chat.png")
        say(alice, "quit")
        settle(roots)

    # A changed certificate: pin something else for the server and connect again.
    store = KnownServers()
    store.pin("127.0.0.1", server.port, "SHA256:" + "A" * 43)
    with client("alice", roots, "900x600+0+0") as (alice, alice_app):
        connect(alice, server.port)
        pump(roots, lambda: "trust" in alice.children)
        dialog = widget(alice, "trust")
        settle(roots)
        shoot(dialog, out / "trust-changed.png")
        widget(alice, "trust.buttons.cancel").invoke()
        pump(roots, lambda: alice_app.controller.model.phase.name == "CONNECT")


if __name__ == "__main__":
    raise SystemExit(main())
