"""``chatsecure connect``: chat from a terminal, or from a script through a pipe."""

from __future__ import annotations

import io
import sys
import threading
from typing import TextIO

from chatsecure.client.core import (
    ChatClient,
    ClientEvent,
    Connected,
    Disconnected,
    NotSent,
    Received,
    Reconnecting,
    describe,
    format_message,
    is_quit,
    safe_text,
)
from chatsecure.errors import LocalProtocolError
from chatsecure.protocol.messages import Chat
from chatsecure.tls.trust import Ask, KnownServers, TrustQuestion, changed_message


def tty_ask(store: KnownServers) -> Ask:
    """A y/N prompt on the terminal, for when stdin is one."""

    def ask(question: TrustQuestion) -> bool:
        if question.changed:
            print(changed_message(question, store), file=sys.stderr)
            return False
        print(
            f"The server {question.host}:{question.port} is not known yet.\n"
            f"Its certificate fingerprint is {question.fingerprint}\n"
            "Compare it with the fingerprint the server printed when it started.",
            file=sys.stderr,
        )
        answer = input("Trust this server and remember it? [y/N] ")
        return answer.strip().lower() in {"y", "yes"}

    return ask


def run(client: ChatClient, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Chat until ``quit``, end of input or the server goes; return the exit code."""
    if isinstance(stdin, io.TextIOWrapper):
        # A byte that is not UTF-8 in a piped file becomes U+FFFD instead of ending the input.
        stdin.reconfigure(errors="replace")
    client.start()
    first = client.events.get()
    if not isinstance(first, Connected):
        _report(first, stdout, stderr)
        client.close()
        return 1
    _report(first, stdout, stderr)
    done = threading.Event()
    result: list[int] = []

    def printer() -> None:
        while True:
            event = client.events.get()
            _report(event, stdout, stderr)
            if isinstance(event, Disconnected):
                result.append(1 if event.error else 0)
                done.set()
                return

    threading.Thread(target=printer, name="chatsecure-printer", daemon=True).start()
    reader = threading.Thread(
        target=_pump_input, args=(client, stdin, done), name="chatsecure-stdin", daemon=True
    )
    reader.start()
    done.wait()
    client.close()
    return result[0] if result else 0


def _pump_input(client: ChatClient, stdin: TextIO, done: threading.Event) -> None:
    try:
        for line in stdin:
            text = line.rstrip("\r\n")
            if done.is_set():
                return
            if is_quit(text):
                done.set()
                break
            try:
                client.send(text)
            except LocalProtocolError as exc:
                print(f"chatsecure: {exc.message}", file=sys.stderr, flush=True)
    except (OSError, ValueError) as exc:  # a read error, or undecodable input
        print(f"chatsecure: cannot read the input: {exc}", file=sys.stderr, flush=True)
    finally:
        # End of input leaves once every line is stored (after a reconnect, if need be);
        # `quit` typed, or input that cannot be read, leaves at once.
        if done.is_set():
            client.quit()
        else:
            client.finish()


def _report(event: ClientEvent, stdout: TextIO, stderr: TextIO) -> None:
    match event:
        case Connected(welcome=welcome, tls_version=version, fingerprint=fp):
            names = ", ".join(describe(p) for p in welcome.peers) or "nobody else yet"
            print(
                f"connected to {safe_text(welcome.server.name)!r} as "
                f"{safe_text(welcome.you.nick)} ({version}, {fp})\nonline: {names}",
                file=stdout,
                flush=True,
            )
            if event.resumed:
                print(resume_notice(event), file=stdout, flush=True)
        case Received(message=Chat(), older=True):
            pass  # the terminal never asks for older lines
        case Received(message=message):
            line = format_message(message)
            if line is not None:
                print(line, file=stdout, flush=True)
        case Reconnecting(attempt=attempt, delay=delay, reason=reason):
            print(f"connection lost ({reason}); retry {attempt} in {delay:.0f} s", file=stderr)
        case NotSent(text=text):
            print(
                f"chatsecure: not sent (the server never stored it): {safe_text(text)}", file=stderr
            )
        case Disconnected(reason=reason, error=True):
            print(f"chatsecure: {reason}", file=stderr, flush=True)
        case Disconnected(reason=reason):
            print(f"disconnected: {reason}", file=stdout, flush=True)


def resume_notice(event: Connected) -> str:
    """What a return to the room restored: ``3 missed messages restored``."""
    missed, skipped = event.missed, event.welcome.skipped
    said = f"{missed} missed message{'' if missed == 1 else 's'}" if missed else "nothing missed"
    if missed and skipped:
        said += f" (the oldest {skipped} are not shown)"
    elif missed:
        said += " restored"
    if event.resent:
        said += f"; {event.resent} of your lines sent again"
    return f"* back in the room: {said}"
