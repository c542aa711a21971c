"""HistoryPacer: turns per address, one answer at a time, within the address's byte budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from chatsecure.pacing import HistoryPacer
from chatsecure.protocol.messages import HistoryRequest


class Asker:
    """A connection as the pacer sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gone = False


class Answers:
    """Answers that take ``seconds`` each and cost ``cost`` bytes; what happened, in order."""

    def __init__(self, seconds: float = 0.02, cost: int = 100) -> None:
        self.seconds = seconds
        self.cost = cost
        self.started: list[tuple[str, str | None, float]] = []
        self.ended: list[float] = []
        self.running = 0
        self.most_at_once = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def answer(self, asker: Asker, request: HistoryRequest) -> int:
        self.started.append((asker.name, request.ref, asyncio.get_running_loop().time()))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(self.seconds)
        self.running -= 1
        self.ended.append(asyncio.get_running_loop().time())
        return self.cost

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def done(self) -> None:
        for _ in range(500):
            if not self.tasks:
                return
            await asyncio.gather(*self.tasks)
        raise AssertionError("the pacer never finished")

    @property
    def order(self) -> list[str]:
        return [f"{name}:{ref}" for name, ref, _ in self.started]


def request(ref: str) -> HistoryRequest:
    return HistoryRequest(None, 200, ref)


def pacer(answers: Answers, **options: Any) -> HistoryPacer[Asker]:
    options.setdefault("rate", 1e9)
    options.setdefault("burst", 1e9)
    return HistoryPacer(answers.answer, answers.spawn, **options)


@pytest.mark.asyncio
async def test_one_connection_is_answered_in_order_one_request_at_a_time() -> None:
    answers = Answers()
    paced = pacer(answers)
    alice = Asker("alice")
    for n in range(3):
        paced.ask(alice, "10.0.0.1", request(str(n)))
    assert paced.waiting(alice) == 3
    await answers.done()
    assert answers.order == ["alice:0", "alice:1", "alice:2"]
    assert answers.most_at_once == 1
    assert paced.waiting(alice) == 0


@pytest.mark.asyncio
async def test_connections_of_one_address_take_turns_and_other_addresses_do_not_wait() -> None:
    answers = Answers()
    paced = pacer(answers)
    many, one, elsewhere = Asker("many"), Asker("one"), Asker("elsewhere")
    for n in range(3):
        paced.ask(many, "10.0.0.1", request(str(n)))
    paced.ask(one, "10.0.0.1", request("0"))
    paced.ask(elsewhere, "10.0.0.2", request("0"))
    await answers.done()
    same = [entry for entry in answers.order if not entry.startswith("elsewhere")]
    assert same == ["many:0", "one:0", "many:1", "many:2"], "one waits for one turn, not all"
    assert answers.most_at_once == 2, "the other address's answer ran meanwhile"
    assert answers.order.index("elsewhere:0") < 2


@pytest.mark.asyncio
async def test_past_the_burst_the_next_answer_waits_until_the_overdraft_is_paid() -> None:
    answers = Answers(seconds=0.0, cost=300)
    paced = pacer(answers, rate=1000, burst=100)
    alice = Asker("alice")
    for n in range(3):
        paced.ask(alice, "10.0.0.1", request(str(n)))
    await answers.done()
    starts = [at for _, _, at in answers.started]
    assert len(starts) == 3, "waited, never refused"
    # The first overdraws by 200 bytes (0.2 s at 1000 B/s); each after it by 300 (0.3 s).
    assert 0.18 <= starts[1] - starts[0] < 0.6
    assert 0.28 <= starts[2] - starts[1] < 0.7


@pytest.mark.asyncio
async def test_the_budget_is_shared_by_every_connection_of_an_address() -> None:
    answers = Answers(seconds=0.0, cost=300)
    paced = pacer(answers, rate=1000, burst=100)
    first, second = Asker("first"), Asker("second")
    paced.ask(first, "2001:db8::/64", request("0"))
    paced.ask(second, "2001:db8::/64", request("0"))
    await answers.done()
    starts = [at for _, _, at in answers.started]
    assert starts[1] - starts[0] >= 0.18, "a new connection brings no new budget"


@pytest.mark.asyncio
async def test_a_connection_gone_while_its_requests_wait_gets_nothing_more_read() -> None:
    answers = Answers(seconds=0.05)
    paced = pacer(answers)
    leaver, stayer = Asker("leaver"), Asker("stayer")
    for n in range(5):
        paced.ask(leaver, "10.0.0.1", request(str(n)))
    paced.ask(stayer, "10.0.0.1", request("0"))
    await asyncio.sleep(0.01)  # the leaver's first answer is under way
    leaver.gone = True
    await answers.done()
    assert answers.order == ["leaver:0", "stayer:0"]
    assert paced.waiting(leaver) == 0, "its requests are forgotten"


@pytest.mark.asyncio
async def test_a_gone_connection_waiting_out_a_debt_does_not_start_its_answer() -> None:
    answers = Answers(seconds=0.0, cost=300)
    paced = pacer(answers, rate=1000, burst=100)
    leaver = Asker("leaver")
    paced.ask(leaver, "10.0.0.1", request("0"))
    paced.ask(leaver, "10.0.0.1", request("1"))
    await asyncio.sleep(0.05)  # the second waits out the first's overdraft (0.2 s)
    leaver.gone = True
    await answers.done()
    assert answers.order == ["leaver:0"]


@pytest.mark.asyncio
async def test_idle_addresses_are_forgotten_and_the_table_stays_bounded() -> None:
    cheap = Answers(seconds=0.0, cost=0)
    paced = pacer(cheap, rate=1000, burst=100)
    for n in range(50):
        paced.ask(Asker(str(n)), f"10.0.0.{n}", request("0"))
        await cheap.done()
    assert paced.addresses <= 2, "budgets full again, nothing waiting: forgotten"
    dear = Answers(seconds=0.0, cost=10_000)  # each address in debt for 10 s
    paced = pacer(dear, rate=1000, burst=100, tracked=10)
    for n in range(50):
        paced.ask(Asker(str(n)), f"10.0.1.{n}", request("0"))
        await dear.done()
    assert 10 <= paced.addresses <= 11, "past ``tracked``, the oldest idle ones go"


@pytest.mark.asyncio
async def test_an_address_held_back_is_logged_once_per_episode_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatsecure.pacing")
    answers = Answers(seconds=0.0, cost=150)
    paced = pacer(answers, rate=2000, burst=100)
    alice = Asker("alice")
    for n in range(5):
        paced.ask(alice, "10.0.0.1", request(str(n)))
    await answers.done()
    held = [r for r in caplog.records if r.name == "chatsecure.pacing"]
    assert len(held) == 1, [r.getMessage() for r in held]
    assert held[0].levelno == logging.DEBUG
    assert "10.0.0.1" in held[0].getMessage()
    paced.ask(alice, "10.0.0.1", request("again"))  # still in debt: a new episode
    await answers.done()
    assert len([r for r in caplog.records if r.name == "chatsecure.pacing"]) == 2
