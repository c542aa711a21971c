"""``chatsecure connect``: chat from a terminal, or from a script through a pipe.

On a terminal (stdin and stdout both one), prompt_toolkit keeps the line being typed intact
below the incoming lines, with line editing and history; a line sent waits above it as
``sending: ...`` until the server has stored it, then shows in its place among the others.
Through pipes the client reads and writes plain lines, as scripts expect.

Whatever the mode, the main thread owns the terminal: the trust question is asked there too,
so that Ctrl-C and Ctrl-D reach it and leave at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

from chatsecure.client.core import (
    LEAVE_WAIT_MAX,
    ChatClient,
    ClientEvent,
    Connected,
    Disconnected,
    NotSent,
    Queued,
    Received,
    Reconnecting,
    Sent,
    describe,
    format_message,
    is_help,
    is_quit,
    is_who,
    no_longer_kept,
    safe_text,
    shown_seq,
)
from chatsecure.client.scrollback import COMMAND as OLDER
from chatsecure.client.scrollback import PAGE, Scrollback, older_command
from chatsecure.client.signals import handled
from chatsecure.client.transcript import Roster
from chatsecure.errors import LocalProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.messages import Chat, Join, Leave, Peer
from chatsecure.tls.trust import (
    TRUST_QUESTION,
    KnownServers,
    TrustQuestion,
    host_port,
    new_server_message,
)

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.formatted_text import StyleAndTextTuples

log = logging.getLogger(__name__)

INTERRUPTED = 130
"""Exit code after Ctrl-C, as shells report a SIGINT."""

PROMPT = "> "
"""The input line's prompt on a terminal."""

QUIT_WAIT = 5.0
"""Seconds to wait for the server to close the connection after ``quit``."""

OLDER_WAIT = 10.0
"""Seconds the end of piped input (or its ``quit``) waits for the pages ``/older`` asked for."""

POLL = 0.05
"""Seconds between looks for a trust question while waiting for the connection."""

PENDING_SHOWN = 3
"""Own lines not stored yet that a terminal shows above the input line (the newest ones)."""


# --- the trust question -----------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    question: TrustQuestion
    answer: bool = False
    answered: threading.Event = field(default_factory=threading.Event)


class TerminalAsk:
    """The y/N trust question, put by ``run`` on the main thread.

    The client calls this on one of its worker threads; the question waits there until
    ``run`` asks it (``serve``) or ends (``close``, which answers no to everything).
    """

    def __init__(self, store: KnownServers) -> None:
        self.store = store
        self._pending: queue.Queue[_Pending] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, question: TrustQuestion) -> bool:
        if question.changed:
            return False  # the refusal (changed_message) says it all, once
        pending = _Pending(question)
        with self._lock:
            if self._closed:
                return False
            self._pending.put(pending)
        pending.answered.wait()
        return pending.answer

    def serve(self, stdin: TextIO, stderr: TextIO) -> None:
        """Ask the question waiting, if one is; Ctrl-C (KeyboardInterrupt) goes through."""
        try:
            pending = self._pending.get_nowait()
        except queue.Empty:
            return
        try:
            print(new_server_message(pending.question), file=stderr)
            print(TRUST_QUESTION, end="", file=stderr, flush=True)
            line = stdin.readline()
            if not line:  # Ctrl-D: no answer is no; end the prompt's line
                print(file=stderr, flush=True)
            pending.answer = line.strip().lower() in {"y", "yes"}
        finally:
            pending.answered.set()

    def close(self) -> None:
        """Answer no to the questions waiting and to any that come later."""
        with self._lock:
            self._closed = True
        while True:
            try:
                self._pending.get_nowait().answered.set()
            except queue.Empty:
                return


def tty_ask(store: KnownServers) -> TerminalAsk:
    """A y/N prompt on the terminal, for when stdin is one; ``run`` puts the questions."""
    return TerminalAsk(store)


# --- what the client shows --------------------------------------------------------------


class OwnLines:
    """On a terminal, the lines you type: pending just above the input line until the server
    has stored them, then printed in their place among the others, as they show.

    The printer thread changes it and the prompt reads it (``prompt``), hence the lock."""

    def __init__(self, me: Peer) -> None:
        self.me = me
        """Who we are in the room (the nick may change from one connection to the next)."""
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()

    def queued(self, ref: str, text: str) -> None:
        with self._lock:
            self._pending[ref] = text

    def done(self, ref: str | None) -> None:
        """Line ``ref`` is stored, or never will be: it is not pending any more."""
        with self._lock:
            self._pending.pop(ref or "", None)

    def line(self, text: str, ts: float) -> str:
        """Our stored line as the transcript shows everybody's."""
        return format_message(Chat(self.me, text, ts)) or ""

    def prompt(self) -> StyleAndTextTuples:
        """The input line's prompt (prompt_toolkit's formatted text), under the pending lines."""
        with self._lock:
            waiting = list(self._pending.values())
        shown = waiting[-PENDING_SHOWN:]
        parts: StyleAndTextTuples = []
        if len(waiting) > len(shown):
            parts.append(("class:pending", f"  (and {len(waiting) - len(shown)} more before)\n"))
        parts += [("class:pending", f"  sending: {safe_text(text)}\n") for text in shown]
        parts.append(("", PROMPT))
        return parts


@dataclass(frozen=True, slots=True)
class _Screen:
    stdout: TextIO
    stderr: TextIO
    where: str
    """The server's address, to name it in a failure to connect."""
    scrollback: Scrollback
    """What ``/older`` prints next."""
    several: bool = False
    """Whether the client was given several addresses: then each connection names its own."""
    own: OwnLines | None = None
    """On a terminal, the lines typed; through pipes they are not shown."""
    redraw: Callable[[], object] = lambda: None
    """Draw the input line again (its prompt shows the pending lines)."""
    printing: threading.Lock = field(default_factory=threading.Lock)
    """Held while a line is printed: the printer's thread and the input's both print."""
    undelivered: list[str] = field(default_factory=list)
    """Own lines named on stderr as not stored (or not confirmed): the exit code says so."""
    password: bool = False
    """Whether a room password was given (else a refusal for one says how to give it)."""
    roster: Roster = field(default_factory=Roster)
    """Who is in the room, as the welcome, joins and leaves say (``/who``)."""


def _report(event: ClientEvent, screen: _Screen, *, joined: bool = True) -> None:
    """Show one client event; ``joined`` is False until the server has let us in."""
    out, err = screen.stdout, screen.stderr
    match event:
        case Connected(welcome=welcome, tls_version=version, fingerprint=fp):
            screen.roster.reset(welcome.you, welcome.peers)
            at = f" at {host_port(event.host, event.port)}" if screen.several else ""
            print(
                f"connected to '{safe_text(welcome.server.name)}' as "
                f"{safe_text(welcome.you.nick)}{at} ({version}, {fp})\n"
                f"online: {_online(welcome.peers)}",
                file=out,
                flush=True,
            )
            if screen.own is not None:
                screen.own.me = welcome.you
            if event.resumed or event.resent:
                print(resume_notice(event), file=out, flush=True)
            elif welcome.replay:  # a newcomer: these lines were said before it came
                said = "line" if welcome.replay == 1 else f"{welcome.replay} lines"
                print(f"* earlier in the room, the last {said}:", file=out, flush=True)
        case Received(message=Chat(), older=True):
            pass  # printed with the rest of its page (``/older``)
        case Received(message=message):
            if isinstance(message, Join):
                screen.roster.join(message.peer)
            elif isinstance(message, Leave):
                screen.roster.leave(message.peer)
            line = format_message(message)
            if line is not None:
                print(line, file=out, flush=True)
        case Queued(ref=ref, text=text) if screen.own is not None:
            screen.own.queued(ref, text)
            screen.redraw()
        case Sent(ref=ref, text=text, ts=ts) if screen.own is not None:
            screen.own.done(ref)
            print(screen.own.line(text, ts), file=out, flush=True)
        case Reconnecting(attempt=attempt, delay=delay, reason=reason):
            screen.roster.reset(None)  # (until the next welcome says who is there)
            print(f"connection lost ({reason}); retry {attempt} in {delay:.0f} s", file=err)
        case NotSent(text=text, ref=ref, why=why):
            screen.undelivered.append(text)
            if screen.own is not None:
                screen.own.done(ref)
                screen.redraw()
            print(f"chatsecure: {why}: {_named(text)}", file=err)
        case Disconnected(reason=reason, error=True, code=code) if not joined:
            said = _not_connected(reason, screen.where)
            if code == ErrorCode.AUTH_FAILED and not screen.password:
                said += "; give the room's password with --password-file FILE"
            print(f"chatsecure: {said}", file=err, flush=True)
        case Disconnected(reason=reason, error=True):
            print(f"chatsecure: {reason}", file=err, flush=True)
        case Disconnected(reason=reason):
            print(f"disconnected: {reason}", file=out, flush=True)
    page = screen.scrollback.feed(event)
    if page:  # in one write: a line the user's command prints meanwhile goes around it
        print("\n".join(page), file=out, flush=True)


ONLINE_NAMED = 10
"""People the line "online: ..." names on connecting (the rest are counted): ``/who`` names
them all."""


def _online(peers: Sequence[Peer]) -> str:
    """The others in the room, as the line "online: ..." names them."""
    if not peers:
        return "nobody else yet"
    names = ", ".join(describe(peer) for peer in peers[:ONLINE_NAMED])
    if len(peers) > ONLINE_NAMED:
        names += f" and {len(peers) - ONLINE_NAMED} more (/who names everyone)"
    return names


def _who(roster: Roster) -> str:
    """What ``/who`` prints: everyone in the room, you first, then the others by nick."""
    peers = roster.peers()
    if not peers:
        return "* not in the room now"
    return f"* {len(peers)} here, you first: {', '.join(describe(peer) for peer in peers)}"


NAMED_LENGTH = 200
"""Characters of a line that was not sent that stderr shows: enough to tell which it was."""


def _named(text: str) -> str:
    """``text`` as stderr names a line not sent: a long one (a paste, too long for the server)
    by its start, not a screenful of it again."""
    if len(text) <= NAMED_LENGTH:
        return safe_text(text)
    return f"{safe_text(text[:NAMED_LENGTH])}… ({len(text)} characters)"


def _not_connected(reason: str, where: str) -> str:
    """Why the client never got in, naming the server once (a trust refusal names it itself,
    a failure at each of several addresses names each)."""
    if all(address.lower() in reason.lower() for address in where.split(", ")):
        return reason
    return f"cannot connect to {where}: {reason}"


# --- the session ------------------------------------------------------------------------


LEAVE_ON = ("SIGTERM", "SIGHUP")
"""Signals that leave as Ctrl-C does: a ``kill``, the terminal window closed, a logout."""


@dataclass(slots=True)
class _Leaving:
    """The ``LEAVE_ON`` signals that came, and whether the chat has begun."""

    came: list[int] = field(default_factory=list)
    chatting: bool = False


@contextlib.contextmanager
def _leaving_on_signals(client: ChatClient) -> Iterator[_Leaving]:
    """While in, a ``LEAVE_ON`` signal leaves as Ctrl-C does: quit at once (naming the lines
    not sent) and remember where we were. In the chat the client is told to quit and the chat
    ends when it has; before (connecting, the trust question) the signal raises
    ``KeyboardInterrupt`` there, as Ctrl-C does, since nothing else would wake that wait."""
    leaving = _Leaving()

    def leave(signum: int, _frame: object) -> None:
        leaving.came.append(signum)
        if not leaving.chatting:
            raise KeyboardInterrupt
        client.quit(at_once=True)  # thread-safe; no exception in the middle of a wait

    with handled(LEAVE_ON, leave):
        yield leaving


def run(client: ChatClient, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Chat until ``quit``, end of input, Ctrl-C or the server goes; return the exit code
    (128 + the signal's number after a SIGTERM or SIGHUP, as a shell reports it)."""
    with _leaving_on_signals(client) as leaving:
        try:
            code = _run(client, stdin, stdout, stderr, leaving)
        except BrokenPipeError:  # `chatsecure connect ... | head`: the reader went
            silence_stdout()
            code = BROKEN_PIPE
        except KeyboardInterrupt:  # Ctrl-C or a signal, between the places that expect one
            code = INTERRUPTED
        finally:
            client.close()  # however it ended, the room hears us leave
    return 128 + leaving.came[0] if leaving.came else code


def _run(
    client: ChatClient, stdin: TextIO, stdout: TextIO, stderr: TextIO, leaving: _Leaving
) -> int:
    if isinstance(stdin, io.TextIOWrapper):
        # A byte that is not UTF-8 in a piped file becomes U+FFFD instead of ending the input.
        stdin.reconfigure(errors="replace")
    for stream in (stdout, stderr):
        _escaping(stream)
    addresses = client.target.addresses
    where = ", ".join(host_port(host, port) for host, port in addresses)
    screen = _Screen(
        stdout,
        stderr,
        where,
        Scrollback(client.request_history),
        several=len(addresses) > 1,
        password=client.password is not None,
    )
    asker = client.policy.ask if isinstance(client.policy.ask, TerminalAsk) else None
    client.start()
    first: ClientEvent | None = None
    try:
        first = _first_event(client, asker, stdin, stderr)
    except KeyboardInterrupt:
        pass
    finally:
        if asker is not None:
            asker.close()  # no question may wait for an answer nobody will give
    if first is None:  # Ctrl-C while connecting, or at the trust question
        print(file=stderr, flush=True)
        client.close()
        return INTERRUPTED
    _report(first, screen, joined=False)
    if not isinstance(first, Connected):
        client.close()
        return 1
    leaving.chatting = True
    if stdin.isatty() and stdout.isatty():
        code = _chat_on_terminal(client, screen, first.welcome.you)
    else:
        code = _chat_through_pipes(client, stdin, screen)
    client.close()
    return code


def _escaping(stream: TextIO) -> None:
    """Show a character ``stream`` cannot encode as an escape (``\\U0001f642``, as
    ``safe_text`` escapes) instead of dying on it.

    An output in latin-1 or ASCII (``PYTHONIOENCODING``, a redirect on Windows in cp1252)
    cannot carry an emoji; Python's default for stdout, ``strict``, raised at the first chat
    line with one and the client ended. (stderr escapes already; a handler chosen by the user,
    ``replace`` say, is kept. On a terminal, prompt_toolkit writes through its own encoder,
    which replaces.)"""
    if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
        stream.reconfigure(errors="backslashreplace")


def _first_event(
    client: ChatClient, asker: TerminalAsk | None, stdin: TextIO, stderr: TextIO
) -> ClientEvent:
    """Wait for the connection (or its failure), asking the trust question if it comes."""
    if asker is None:
        return client.events.get()
    while True:
        try:
            return client.events.get(timeout=POLL)
        except queue.Empty:
            asker.serve(stdin, stderr)


NOT_DELIVERED = 3
"""Exit code of a client that left as asked, but with own lines the server did not confirm:
a script's ``printf 'build finished\n' | chatsecure connect ...`` can tell."""

BROKEN_PIPE = 141
"""Exit code when the reader of our output went (128 + SIGPIPE, as shells report it)."""


def silence_stdout() -> None:
    """After a ``BrokenPipeError``: nothing more can reach the reader, and Python's own flush
    at exit must not fail with a traceback either."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _printer(client: ChatClient, screen: _Screen, on_end: Callable[[int], object]) -> None:
    """Show events until the last one (``Disconnected``), then call ``on_end(exit_code)``."""
    while True:
        event = client.events.get()
        try:
            with screen.printing:
                _report(event, screen)
        except BrokenPipeError:  # `chatsecure connect ... | head`: the reader went
            silence_stdout()
            on_end(BROKEN_PIPE)
            return
        except Exception:  # a bug here must not leave the client waiting for ever
            # (Its kind only: a chat line's text is never logged above DEBUG.)
            log.exception("could not show a %s event", type(event).__name__)
            on_end(1)
            return
        if shown_seq(event):
            client.shown()
        if isinstance(event, Disconnected):
            on_end(1 if event.error else NOT_DELIVERED if screen.undelivered else 0)
            return


def _start_printer(client: ChatClient, screen: _Screen, on_end: Callable[[int], object]) -> None:
    threading.Thread(
        target=_printer, args=(client, screen, on_end), name="chatsecure-printer", daemon=True
    ).start()


def _chat_through_pipes(client: ChatClient, stdin: TextIO, screen: _Screen) -> int:
    ended = threading.Event()
    codes: list[int] = []

    def end(code: int) -> None:
        codes.append(code)
        ended.set()

    _start_printer(client, screen, end)
    threading.Thread(
        target=_pump_input,
        args=(client, stdin, screen, ended),
        name="chatsecure-stdin",
        daemon=True,
    ).start()
    try:
        ended.wait()
    except KeyboardInterrupt:
        client.quit(at_once=True)
        ended.wait(QUIT_WAIT)
        return INTERRUPTED
    return codes[0]


def _pump_input(client: ChatClient, stdin: TextIO, screen: _Screen, ended: threading.Event) -> None:
    # A script's input, or a person's at a terminal whose output goes through a pipe (`| tee`):
    # its end (or `quit`) waits for the lines to be stored, through a reconnect; a person's
    # leaves at once while the connection is down, as on a terminal.
    script = not stdin.isatty()
    end_of_input = False
    try:
        for line in stdin:
            text = line.rstrip("\r\n")
            if ended.is_set():
                return
            if is_quit(text):
                end_of_input = script  # a script's last line: its lines are to be stored
                break
            _say(client, text, screen)
        else:
            end_of_input = script
    except (OSError, ValueError) as exc:  # a read error, or undecodable input
        with screen.printing:
            print(f"chatsecure: cannot read the input: {exc}", file=screen.stderr, flush=True)
    finally:
        # A script's end (or its `quit`) leaves once every line is stored (after a reconnect,
        # if need be); a person's, or input that cannot be read, leaves at once. Either prints
        # what `/older` is loading first.
        screen.scrollback.settled(OLDER_WAIT)
        if end_of_input:
            client.finish()
        else:
            client.quit()


HELP = f"""\
* quit, /quit    leave the room (so do Ctrl-D, and the end of piped input)
* {OLDER} [N]     print N earlier lines ({PAGE} if no N): missed ones first, then older ones
* /who           name everyone in the room
* /help          these commands (they are not sent; any other line is)"""
"""What ``/help`` prints."""


def _say(client: ChatClient, text: str, screen: _Screen) -> None:
    """A typed line: a command (``/older``, ``/who``, ``/help``), or a chat line to send."""
    if is_help(text) or is_who(text):
        with screen.printing:  # (also the roster's lock: events change it holding this)
            print(HELP if is_help(text) else _who(screen.roster), file=screen.stdout, flush=True)
        return
    older = older_command(text)
    if older is None:
        _send(client, text, screen)
        return
    said = older if isinstance(older, str) else screen.scrollback.ask(older)
    if said is not None:
        with screen.printing:
            print(said, file=screen.stdout, flush=True)


def _send(client: ChatClient, text: str, screen: _Screen) -> None:
    try:
        client.send(text)
    except LocalProtocolError as exc:  # too long for a frame: named, and counted as undelivered
        screen.undelivered.append(text)
        with screen.printing:
            print(f"chatsecure: {exc.message}", file=screen.stderr, flush=True)


def _chat_on_terminal(client: ChatClient, screen: _Screen, me: Peer) -> int:
    """The line being typed stays whole below incoming lines (prompt_toolkit). A line sent
    leaves the input line, waits above it while pending, then shows in its place."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout
    from prompt_toolkit.styles import Style

    own = OwnLines(me)
    session: PromptSession[str] = PromptSession(
        own.prompt,
        erase_when_done=True,
        style=Style.from_dict({"pending": "italic fg:ansibrightblack"}),
    )
    terminal = sys.stderr
    with patch_stdout():
        # What the printer writes, and what is logged, goes above the input line, which is
        # then drawn again: sys.stdout and sys.stderr are prompt_toolkit's proxies here.
        screen = replace(
            screen, stdout=sys.stdout, stderr=sys.stderr, own=own, redraw=_redrawer(session)
        )
        with _logging_to(sys.stderr, instead_of=terminal):
            try:
                return asyncio.run(_chat_async(client, session, screen))
            except KeyboardInterrupt:  # a SIGINT from outside, not the Ctrl-C key
                client.quit(at_once=True)
                return INTERRUPTED


def _redrawer(session: PromptSession[str]) -> Callable[[], None]:
    """Draw the input line again, from the printer's thread; nothing between two prompts
    (prompt_toolkit can fail there: "no running event loop")."""

    def redraw() -> None:
        with contextlib.suppress(RuntimeError):
            session.app.invalidate()

    return redraw


@contextlib.contextmanager
def _logging_to(stream: TextIO, *, instead_of: TextIO) -> Iterator[None]:
    """Log records go to ``stream`` (above the input line) instead of straight to the terminal."""
    moved = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is instead_of
    ]
    for handler in moved:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler in moved:
            handler.setStream(instead_of)


async def _chat_async(client: ChatClient, session: PromptSession[str], screen: _Screen) -> int:
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[int] = loop.create_future()

    def end(code: int) -> None:  # on the printer's thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(ended.set_result, code)

    # Ctrl-C is a key while a prompt reads (raw mode), and a SIGINT between two prompts (the
    # terminal back in cooked mode for a moment): this handler, for the whole chat, takes it
    # then. (prompt_toolkit's own, which it sets and removes around each prompt, would lose
    # one that came as a prompt ended: "Application is not running".)
    interrupted: asyncio.Future[int] = loop.create_future()

    def interrupt() -> None:
        if not interrupted.done():
            interrupted.set_result(INTERRUPTED)

    loop.add_signal_handler(signal.SIGINT, interrupt)
    _start_printer(client, screen, end)
    left: int | None = None  # the exit code the user asked for, by Ctrl-C or Ctrl-D
    try:
        while left is None and not ended.done():
            prompt = asyncio.ensure_future(_typed(session))
            either: list[asyncio.Future[Any]] = [prompt, ended, interrupted]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not prompt.done():  # the server went, or Ctrl-C came, while the user typed
                prompt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prompt
                left = interrupted.result() if interrupted.done() else None
                break
            typed = prompt.result()
            if isinstance(typed, int):
                left = typed
            elif is_quit(typed):
                left = 0
            else:
                _say(client, typed, screen)
            if interrupted.done():
                left = INTERRUPTED
        # Nothing to do if the connection is gone already. `quit` and Ctrl-D let the lines
        # held back by the pace go out first; Ctrl-C does not, even once `quit` waits.
        # The client ends within LEAVE_WAIT_MAX, having named every line not stored: the
        # printer shows them all before the end.
        at_once = left == INTERRUPTED
        client.quit(at_once=at_once)
        waiting = [ended] if at_once else [ended, interrupted]
        await asyncio.wait(waiting, timeout=LEAVE_WAIT_MAX, return_when=asyncio.FIRST_COMPLETED)
        if not at_once and interrupted.done() and not ended.done():
            left = INTERRUPTED
            client.quit(at_once=True)
            await asyncio.wait([ended], timeout=LEAVE_WAIT_MAX)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if left == INTERRUPTED:
        return INTERRUPTED
    return ended.result() if ended.done() else 1


async def _typed(session: PromptSession[str]) -> str | int:
    """The next line typed, or the exit code that Ctrl-C (130) or Ctrl-D (0) asks for."""
    try:
        return await session.prompt_async(handle_sigint=False)  # (see _chat_async)
    except KeyboardInterrupt:  # caught here: out of a task it would stop the event loop
        return INTERRUPTED
    except EOFError:
        return 0


def resume_notice(event: Connected) -> str:
    """What a return to the room restored: ``3 missed messages restored``."""
    missed, skipped = event.missed, event.welcome.skipped
    gone = no_longer_kept(event)
    said = f"{missed} missed message{'' if missed == 1 else 's'}" if missed else "nothing missed"
    if gone:
        said += f", {gone} of them no longer kept by the server"
    if missed and skipped:
        rest = " of the rest" if gone else ""
        shown = (
            f"none{rest} are shown"
            if skipped >= missed - gone
            else f"the oldest {skipped}{rest} are not shown"
        )
        said += f" ({shown}: {OLDER} shows them)"
    elif missed and not gone:
        said += " restored"
    if event.resent:  # (typed while away, or sent and not confirmed)
        lines = "line" if event.resent == 1 else f"{event.resent} lines"
        said += f"; sending your waiting {lines}"
    return f"* back in the room: {said}"
