"""TokenBucket, FloodMeter, WarningBudget, ByteBudget: arithmetic on the timestamps passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatsecure.protocol.ratelimit import ByteBudget, FloodMeter, TokenBucket, WarningBudget


def sent_at(bucket: TokenBucket, times: list[float]) -> list[bool]:
    return [bucket.take(t) for t in times]


# --- TokenBucket --------------------------------------------------------------------------


def test_burst_passes_at_once_then_the_next_frame_is_refused() -> None:
    bucket = TokenBucket(rate=5, burst=20, now=0.0)
    assert sent_at(bucket, [0.0] * 21) == [True] * 20 + [False]


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(rate=5, burst=20, now=0.0)
    sent_at(bucket, [0.0] * 20)
    assert not bucket.take(0.19)  # 0.95 of a token
    assert bucket.take(0.2)
    assert not bucket.take(0.2)


def test_saved_tokens_never_exceed_the_burst() -> None:
    bucket = TokenBucket(rate=5, burst=3, now=0.0)
    assert sent_at(bucket, [3600.0] * 4) == [True, True, True, False]


def test_burst_below_one_still_lets_a_frame_through() -> None:
    bucket = TokenBucket(rate=1, burst=0, now=0.0)
    assert sent_at(bucket, [0.0, 0.0, 1.0]) == [True, False, True]


@given(
    rate=st.floats(min_value=0.5, max_value=100),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), max_size=200),
)
def test_frames_passed_never_exceed_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now, passed = 0.0, 0
    for gap in gaps:
        now += gap
        passed += bucket.take(now)
        assert passed <= burst + rate * now + 1e-6


@given(rate=st.floats(min_value=0.5, max_value=50), burst=st.integers(min_value=1, max_value=50))
def test_a_sender_within_the_rate_is_never_refused(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    assert all(bucket.take(i / (0.99 * rate)) for i in range(200))


# --- FloodMeter ---------------------------------------------------------------------------


def refused_frames(rate: float, window: float, send_rate: float, seconds: float) -> float | None:
    """Drive a bucket and a meter with a steady sender; when it would be cut off, or None."""
    bucket = TokenBucket(rate, 1, now=0.0)
    meter = FloodMeter(rate, window, now=0.0)
    for i in range(int(send_rate * seconds)):
        now = i / send_rate
        if not bucket.take(now) and meter.refused(now):
            return now
    return None


@pytest.mark.parametrize("rate", [1.0, 5.0, 20.0])
def test_three_and_a_half_times_the_rate_is_cut_off_within_the_window(rate: float) -> None:
    cut = refused_frames(rate, window=10, send_rate=3.5 * rate, seconds=30)
    assert cut is not None
    assert 5 < cut <= 10, f"cut off after {cut:.1f} s"


@pytest.mark.parametrize("multiple", [1.0, 1.5, 1.9])
def test_under_twice_the_rate_is_never_cut_off(multiple: float) -> None:
    assert refused_frames(5.0, window=10, send_rate=multiple * 5.0, seconds=120) is None


def test_a_burst_that_stops_is_forgiven() -> None:
    meter = FloodMeter(rate=5, window=10, now=0.0)
    assert not any(meter.refused(0.0) for _ in range(50))  # exactly at the limit
    assert not meter.refused(10.0)  # drained since
    assert not any(meter.refused(10.0) for _ in range(49))
    assert meter.refused(10.0)


@given(
    rate=st.floats(min_value=0.5, max_value=50),
    window=st.floats(min_value=0.5, max_value=30),
    gaps=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=300),
)
def test_no_cut_off_before_rate_times_window_refusals(
    rate: float, window: float, gaps: list[float]
) -> None:
    meter = FloodMeter(rate, window, now=0.0)
    now = 0.0
    for count, gap in enumerate(gaps, start=1):
        now += gap
        if meter.refused(now):
            assert count > rate * window
            return


# --- WarningBudget ------------------------------------------------------------------------


def test_at_most_count_warnings_per_period_then_the_dropped_are_counted() -> None:
    budget = WarningBudget(count=3, period=60)
    assert [budget.allow(t) for t in (0, 1, 2)] == [(True, 0)] * 3
    assert [budget.allow(t) for t in (3, 4, 59.9)] == [(False, 0)] * 3
    assert budget.suppressed == 3
    assert budget.allow(60) == (True, 3)
    assert budget.suppressed == 0
    assert budget.allow(61) == (True, 0)


@given(st.lists(st.floats(min_value=0, max_value=10), max_size=500))
def test_warnings_logged_never_exceed_the_budget(gaps: list[float]) -> None:
    budget = WarningBudget(count=20, period=60)
    now, logged, dropped_total = 0.0, [], 0
    for gap in gaps:
        now += gap
        allowed, dropped = budget.allow(now)
        dropped_total += dropped
        if allowed:
            logged.append(now)
    for start in logged:
        assert sum(start <= t < start + 60 for t in logged) <= 40  # two periods may overlap
    assert len(logged) + dropped_total + budget.suppressed == len(gaps)


def test_warning_budget_expires_a_period_after_its_first_warning() -> None:
    budget = WarningBudget(count=1, period=60.0)
    assert budget.expired(0.0)
    budget.allow(100.0)
    assert not budget.expired(159.9)
    assert budget.expired(160.0)


# --- ByteBudget ---------------------------------------------------------------------------


def test_work_starts_at_once_until_the_burst_is_overdrawn_then_waits_for_the_debt() -> None:
    budget = ByteBudget(rate=1000, burst=3000, now=0.0)
    assert budget.wait(0.0) == 0.0
    budget.charge(2000, 0.0)
    assert budget.wait(0.0) == 0.0, "1000 left: the next piece may start"
    budget.charge(3000, 0.0)  # overdrawn by 2000: charged whole, never cut
    assert budget.wait(0.0) == pytest.approx(2.0)
    assert budget.wait(1.5) == pytest.approx(0.5)
    assert budget.wait(2.0) == 0.0


def test_a_budget_is_full_again_only_once_the_whole_burst_is_back() -> None:
    budget = ByteBudget(rate=1000, burst=3000, now=0.0)
    assert budget.full(0.0)
    budget.charge(4000, 0.0)
    assert not budget.full(3.9)
    assert budget.full(4.0)
    assert budget.full(3600.0), "saved up no further than the burst"
    budget.charge(3001, 3600.0)
    assert budget.wait(3600.0) > 0


@given(
    burst=st.integers(min_value=0, max_value=10_000),
    work=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2), st.integers(min_value=0, max_value=5000)),
        max_size=100,
    ),
)
def test_work_started_when_allowed_never_exceeds_burst_plus_rate_times_time_plus_one_piece(
    burst: int, work: list[tuple[float, int]]
) -> None:
    rate = 1000.0
    budget = ByteBudget(rate, burst, now=0.0)
    now, done, largest = 0.0, 0, 0
    for gap, cost in work:
        now += gap
        now += budget.wait(now)  # waits, as the pacer does, then does the work
        budget.charge(cost, now)
        done, largest = done + cost, max(largest, cost)
        assert done <= burst + rate * now + largest + 1e-6


def test_a_budget_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        ByteBudget(rate=0, burst=10, now=0.0)
