"""Rate limiting as plain arithmetic on timestamps the caller passes in. Pure, no clock reads."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; each frame takes one."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._tokens = self._burst
        self._last = now

    @property
    def rate(self) -> float:
        return self._rate

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the frame is over the limit."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until ``take`` would succeed (0: now)."""
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        return max(0.0, (1.0 - tokens) / self._rate)

    def drain(self, now: float) -> None:
        """Spend every token: the other side says we went too fast."""
        self._tokens, self._last = 0.0, now


class FloodMeter:
    """Tells a client that keeps flooding from one that had a burst.

    Each refused frame adds one; the level drains at ``rate`` per second. A client refused at
    more than twice the rate (sending about three times the rate) rises by ``rate`` a second
    and crosses ``rate * window`` after ``window`` seconds; one sending at up to twice the rate
    never does.
    """

    __slots__ = ("_last", "_level", "_limit", "_rate")

    def __init__(self, rate: float, window: float, now: float) -> None:
        self._rate = rate
        self._limit = rate * window
        self._level = 0.0
        self._last = now

    def refused(self, now: float) -> bool:
        """Count one refused frame; True when the client should be disconnected."""
        self._level = max(0.0, self._level - (now - self._last) * self._rate) + 1.0
        self._last = now
        return self._level > self._limit


class WarningBudget:
    """At most ``count`` warnings per ``period`` seconds, so an attacker cannot fill the disk."""

    __slots__ = ("_count", "_period", "_sent", "_start", "suppressed")

    def __init__(self, count: int = 20, period: float = 60.0) -> None:
        self._count = count
        self._period = period
        self._start = float("-inf")
        self._sent = 0
        self.suppressed = 0

    def allow(self, now: float) -> tuple[bool, int]:
        """Whether to log one more warning now, and how many were dropped before it."""
        if now - self._start >= self._period:
            self._start, self._sent = now, 0
        if self._sent >= self._count:
            self.suppressed += 1
            return False, 0
        self._sent += 1
        dropped, self.suppressed = self.suppressed, 0
        return True, dropped

    def expired(self, now: float) -> bool:
        """Whether the period of the last warning has ended (the budget is full again)."""
        return now - self._start >= self._period


class ByteBudget:
    """``rate`` bytes of work per second, at most ``burst`` saved up; charged after the work.

    The cost of some work (a ``history`` answer) is known only once it is done, so it is
    charged then, and the balance may fall below zero: that debt is paid back at ``rate``
    before the next piece of work may start (``wait``). Whoever starts work only when
    ``wait`` says 0, one piece at a time, gets at most ``burst + rate * t`` in ``t`` seconds,
    plus the one piece that overdraws.
    """

    __slots__ = ("_burst", "_last", "_level", "_rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, not {rate}")
        self._rate = rate
        self._burst = max(burst, 0.0)
        self._level = self._burst
        self._last = now

    def _refill(self, now: float) -> float:
        return min(self._burst, self._level + max(0.0, now - self._last) * self._rate)

    def wait(self, now: float) -> float:
        """Seconds until the debt is paid and work may start (0: now)."""
        return max(0.0, -self._refill(now) / self._rate)

    def charge(self, cost: float, now: float) -> None:
        """Take ``cost`` for work done (the balance may go below zero)."""
        self._level = self._refill(now) - cost
        self._last = now

    def full(self, now: float) -> bool:
        """Whether the whole burst is saved up again: as good as a new budget."""
        return self._refill(now) >= self._burst
