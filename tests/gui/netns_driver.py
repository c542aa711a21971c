"""Two desktop clients with discovery ON, run by the netns test inside a namespace it made.

Never run this in the host's own network namespace: it browses with mDNS. The test starts it
with ``ip netns exec`` and reads its progress lines; it exits 0 when every check held.

alice picks the server from "Servers on this network", bob types its address; they chat, bob
quits; then the test stops the server, and alice's list must drop it (the test times that).
"""

from __future__ import annotations

import argparse
import sys
import tkinter as tk
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatsecure.client.state import GuiOptions, Phase
from chatsecure.gui.app import App
from tests.gui.conftest import Gui


def say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the server's IP address")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True, help="the name the server advertises")
    parser.add_argument("--fingerprint", required=True)
    args = parser.parse_args()
    everyone: list[Gui] = []

    def open_gui(**options: object) -> Gui:
        root = tk.Tk(className="chatsecure")
        app = App(root, replace(GuiOptions(), **options))  # type: ignore[arg-type]
        gui = Gui(root, app, everyone)
        everyone.append(gui)
        return gui

    alice = open_gui(nick="alice")  # discovery on: the default
    bob = open_gui(nick="bob", discovery=False)
    try:
        run(args, alice, bob)
    finally:
        for gui in everyone:
            gui.app.close()
    return 0


def run(args: argparse.Namespace, alice: Gui, bob: Gui) -> None:
    tree = alice.w("connect.servers.list")
    assert "Looking for servers" in alice.w("connect.servers.hint").cget("text")

    # The server shows up in alice's list, with its address and fingerprint.
    alice.pump(lambda: len(tree.get_children()) > 0, timeout=15)
    (key,) = tree.get_children()
    name, address, short_fp = tree.item(key, "values")
    assert name == args.name, name
    assert address == f"{args.server}:{args.port}", address
    assert args.fingerprint.startswith(short_fp.rstrip("…")), short_fp
    say(f"listed: {name} at {address} ({short_fp})")

    # Selecting it fills the fields; Enter in the list connects.
    alice.type("connect.form.host", "")
    tree.selection_set(key)
    alice.pump(lambda: alice.w("connect.form.host").get() == args.server)
    assert alice.w("connect.form.port").get() == str(args.port)
    tree.focus(key)
    alice.press_enter(tree)
    alice.pump(lambda: alice.dialog() is not None)
    note = alice.w("trust.body.advertised").cget("text")
    assert "matches the fingerprint the server announced" in note, note
    assert alice.w("trust.body.fingerprint").get() == args.fingerprint
    alice.click("trust.buttons.accept")
    alice.pump(lambda: alice.phase is Phase.CHAT)
    me = alice.users()[0]
    say(f"alice joined from the list as {me}")

    # bob types the address (same trust store: the server is known now).
    bob.connect(args.server, args.port)
    bob.pump(lambda: bob.phase is Phase.CHAT)
    assert bob.dialog() is None
    alice.pump(lambda: len(alice.users()) == 2)
    bob_row = alice.users()[1]
    assert bob_row.startswith("bob ("), bob_row
    say(f"alice sees {bob_row}")

    alice.say("hello from the list")
    bob.pump(lambda: any(ln.endswith(": hello from the list") for ln in bob.transcript_lines()))
    line = next(ln for ln in bob.transcript_lines() if ln.endswith(": hello from the list"))
    assert me.split("  —")[0] in line, (me, line)  # nick and IP, as the server saw them
    bob.say("hi alice")
    alice.pump(lambda: any(ln.endswith(": hi alice") for ln in alice.transcript_lines()))
    say(f"bob saw: {line}")

    bob.say("quit")  # (once "hi alice" is stored)
    bob.pump(lambda: bob.view() == "connect")
    alice.pump(lambda: len(alice.users()) == 1)
    say("bob left")

    # The server goes away: alice's list drops it and her window tries to reconnect.
    say("ready for server stop")
    alice.pump(lambda: len(tree.get_children()) == 0, timeout=15)
    say("removed from the list")
    # A shutdown is a drop like any other: the window tries to reconnect, and Leave stops it.
    alice.pump(lambda: alice.phase is Phase.RECONNECTING)
    assert "The server is shutting down." in alice.transcript()
    alice.click("chat.top.leave")
    assert alice.view() == "connect"
    say("alice is back at the connect view")


if __name__ == "__main__":
    raise SystemExit(main())
