"""Trust questions in the desktop client: the words of the dialog, and the bridge that carries
a question from the network thread to the Tk thread and the answer back."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from chatsecure.client.doorbell import RingingQueue
from chatsecure.tls.trust import TrustQuestion, server_key, trusted_elsewhere

TRUST_ANSWER_TIMEOUT = 600.0
"""Seconds the network thread waits for the user to answer a trust dialog before giving up."""


@dataclass(frozen=True, slots=True)
class TrustPrompt:
    """The words and buttons of a trust dialog."""

    title: str
    heading: str
    body: str
    fingerprint: str
    pinned: str | None
    advertised_note: str | None
    danger: bool
    accept: str
    cancel: str
    confirm: str | None
    """A checkbox the user must tick before ``accept`` is enabled (changed certificates)."""


def trust_prompt(question: TrustQuestion) -> TrustPrompt:
    """What the dialog for ``question`` says."""
    name = server_key(question.host, question.port)
    note = None
    if question.advertised is not None:
        if question.advertised == question.fingerprint:
            note = "✔ It matches the fingerprint the server announced on this network."
        else:
            note = "✘ It does NOT match the fingerprint the server announced on this network."
    if question.changed:
        return TrustPrompt(
            title="Certificate changed",
            heading=f"WARNING: the certificate of {name} has changed!",
            body=(
                "Someone may be intercepting this connection, or the server made a new "
                "certificate. Do not connect unless the server's owner tells you the new "
                "fingerprint below is genuine."
            ),
            fingerprint=question.fingerprint,
            pinned=question.pinned,
            advertised_note=note,
            danger=True,
            accept="Replace pin and connect",
            cancel="Don't connect",
            confirm="I checked the new fingerprint with the server's owner",
        )
    return TrustPrompt(
        title="New server",
        heading=f"First connection to {name}",
        body=(
            "This server is not known yet. "
            + (f"{trusted_elsewhere(question)} " if question.known_as else "")
            + "Compare its certificate fingerprint with the one the server printed when it "
            "started (ask its owner). If they match, trust it: it will be remembered, and you "
            "will be warned if it ever changes."
        ),
        fingerprint=question.fingerprint,
        pinned=None,
        advertised_note=note,
        danger=False,
        accept="Trust",
        cancel="Cancel",
        confirm=None,
    )


class PendingQuestion:
    """A trust question waiting for the user; answered once, from any thread."""

    def __init__(self, question: TrustQuestion) -> None:
        self.question = question
        self.prompt = trust_prompt(question)
        self._answered = threading.Event()
        self._answer = False

    def answer(self, yes: bool) -> None:
        if not self._answered.is_set():
            self._answer = yes
            self._answered.set()

    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    def wait(self, timeout: float) -> bool:
        """The answer; False if none came in ``timeout`` seconds."""
        return self._answer if self._answered.wait(timeout) else False


class TrustBridge:
    """Carries trust questions from the network thread to the Tk thread and answers back.

    ``ask`` is the ``TrustPolicy.ask`` of one client: it runs on a worker thread of the
    network loop (``run_in_executor``), queues the question and blocks until the front end
    answers (or ``close`` answers no).
    """

    def __init__(
        self, timeout: float = TRUST_ANSWER_TIMEOUT, *, ring: Callable[[], None] | None = None
    ) -> None:
        """``ring``: called when a question is queued (see ``Controller``)."""
        self.questions: queue.Queue[PendingQuestion] = (
            RingingQueue(ring) if ring is not None else queue.Queue()
        )
        self.timeout = timeout
        self._lock = threading.Lock()
        self._open: list[PendingQuestion] = []
        self._closed = False

    def ask(self, question: TrustQuestion) -> bool:
        pending = PendingQuestion(question)
        with self._lock:
            if self._closed:
                return False
            self._open.append(pending)
        self.questions.put(pending)
        try:
            return pending.wait(self.timeout)
        finally:
            with self._lock:
                self._open.remove(pending)

    def next(self) -> PendingQuestion | None:
        """The next question not yet answered, if any (front-end thread)."""
        while True:
            try:
                pending = self.questions.get_nowait()
            except queue.Empty:
                return None
            if not pending.answered:
                return pending

    def close(self) -> None:
        """Answer no to every open question and refuse later ones."""
        with self._lock:
            self._closed = True
            waiting = list(self._open)
        for pending in waiting:
            pending.answer(False)
