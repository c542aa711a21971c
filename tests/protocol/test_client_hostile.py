"""The client's protocol object against a server that lies or repeats itself, without sockets:
what such a server sends must cost the client little, and never cost it the lines of an honest
one."""

from __future__ import annotations

import random
import time
from typing import Any

from chatsecure.protocol.client import ClientSession
from tests.protocol.test_client_session import SERVER, frames, sent, welcome


def limited(ref: str) -> dict[str, Any]:
    return {"type": "error", "code": "rate_limited", "message": "slow", "ref": ref}


def waiting_lines(count: int, *, burst: int = 6) -> tuple[ClientSession, list[str]]:
    """A session joined at t=0 to a server that takes 10 lines a second, ``count`` lines
    given to it: the burst less 2 sent, the rest waiting for the pace."""
    session = ClientSession("alice")
    session.connect()
    sent(session)
    session.receive_data(frames(welcome(server=SERVER | {"msg_rate": 10.0, "msg_burst": burst})))
    refs = [session.send(f"line {n}") for n in range(count)]
    assert len(sent(session)) == burst - 2
    return session, refs


def time_refusals(outbox: int, refusals: int) -> float:
    """Seconds the session takes over ``refusals`` rate_limited errors, each naming one of
    its first lines, sent or waiting, with ``outbox`` lines in its outbox (the best of 3)."""
    best = float("inf")
    for _ in range(3):
        session, refs = waiting_lines(outbox)
        data = frames(*(limited(refs[n % 8]) for n in range(refusals)))
        started = time.perf_counter()
        assert session.receive_data(data, now=1.0) == []
        best = min(best, time.perf_counter() - started)
    return best


def test_a_ref_refused_again_and_again_costs_no_more_with_a_long_outbox() -> None:
    # Each refusal rebuilt the queue from the whole outbox: with 20,000 lines waiting, 500
    # refusals took about 200 times as long as with 50.
    small, large = time_refusals(50, 500), time_refusals(20_000, 500)
    assert large < 5 * small + 0.01, f"{large:.4f} s with a long outbox, {small:.4f} s without"


def test_lines_refused_in_any_order_and_again_go_out_once_each_in_the_outbox_order() -> None:
    session, refs = waiting_lines(40, burst=12)  # 10 sent, 30 waiting
    named = [*refs[:10], *refs[:10], *refs[20:25]] * 3  # sent ones, waiting ones, again
    random.Random(7).shuffle(named)
    assert session.receive_data(frames(*map(limited, named)), now=1.0) == []
    order: list[str] = []
    for step in range(1, 200):
        session.pace(1.0 + step / 9 + 1e-9)
        order += [frame["text"] for frame in sent(session)]
    assert order == [f"line {n}" for n in range(40)]
    assert list(session.outbox) == refs
