"""Progress lines of a long run: a person watching a 1,000-partition backfill at the provider's
rate limit sees, every ``PROGRESS_INTERVAL_S``, how far it is, how fast it goes, what it has spent,
when it should end and how long it has waited on the rate limit.

Pure logic with an injectable clock; the run body (``_backfill``) asks :meth:`Progress.due` whenever
its step thread wakes (an outcome arrived, or the queue's regular poll), so no timer thread ever
competes with the step thread's event writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "PROGRESS_INTERVAL_S",
    "Progress",
    "RateLimitWaits",
    "client_rate_limits",
    "format_duration",
    "since",
]

PROGRESS_INTERVAL_S = 30.0
"""At least this often a run with requests in flight logs a progress line."""


@dataclass(frozen=True)
class RateLimitWaits:
    """What the provider's rate limit has cost the run so far."""

    answers_429: int
    wait_s: float


def client_rate_limits(client: object) -> RateLimitWaits | None:
    """The client's rate-limit counters (429 answers, seconds spent waiting for the limit) for
    this process's requests to its account, or None for a client that keeps none."""
    stats = getattr(client, "rate_limit_stats", None)
    if stats is None:
        return None
    current = stats()
    return RateLimitWaits(answers_429=current.answers_429, wait_s=current.wait_s)


def since(start: RateLimitWaits | None, now: RateLimitWaits | None) -> RateLimitWaits | None:
    """The counters accrued since ``start`` (a run's share of the process's counters)."""
    if now is None:
        return None
    if start is None:
        return now
    return RateLimitWaits(
        answers_429=now.answers_429 - start.answers_429, wait_s=max(now.wait_s - start.wait_s, 0.0)
    )


def format_duration(seconds: float) -> str:
    whole = max(round(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


class Progress:
    """The progress of one run's requests, from the moment they start.

    ``total`` partitions in the run, ``cached`` of them served from the store and ``failed_before``
    failed before sending; the rest, ``to_request``, are what the rate and the ETA are about.
    """

    def __init__(
        self,
        name: str,
        *,
        total: int,
        cached: int,
        failed_before: int,
        to_request: int,
        rate_limits: Callable[[], RateLimitWaits | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float | None = None,
    ) -> None:
        self.name = name
        self.total = total
        self.cached = cached
        self.failed_before = failed_before
        self.to_request = to_request
        self.rate_limits = rate_limits
        self.clock = clock
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.started = clock()
        self._last = self.started

    def elapsed_s(self) -> float:
        return max(self.clock() - self.started, 0.0)

    def due(self) -> bool:
        """True at most once per interval: the caller logs :meth:`line` then."""
        now = self.clock()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True

    def images_per_minute(self, made: int) -> float | None:
        elapsed = self.elapsed_s()
        return made * 60.0 / elapsed if elapsed > 0 else None

    def eta_s(self, made: int, failed: int) -> float | None:
        """Seconds until every requested partition is finished at the rate so far."""
        finished = made + max(failed - self.failed_before, 0)
        remaining = self.to_request - finished
        elapsed = self.elapsed_s()
        if remaining <= 0:
            return 0.0
        if finished == 0 or elapsed <= 0:
            return None
        return remaining * elapsed / finished

    def line(self, *, made: int, failed: int, spent_usd: float, requests: int) -> str:
        """One line: done/total, cached, failed, images/min, spend, ETA, rate-limit waits."""
        done = made + self.cached + failed
        rate = self.images_per_minute(made)
        eta = self.eta_s(made, failed)
        waits = self.rate_limits()
        waited = (
            f"rate-limit waits: {waits.answers_429} answers 429, "
            f"{format_duration(waits.wait_s)} waited"
            if waits is not None
            else "rate-limit waits: not reported by the client"
        )
        return (
            f"{self.name}: progress {done}/{self.total} partitions ({made} made, {self.cached} "
            f"cached, {failed} failed); {rate or 0.0:.1f} images/min; spent ${spent_usd:.4f}; "
            f"ETA {format_duration(eta) if eta is not None else 'unknown'}; "
            f"{requests} requests sent; {waited}; {format_duration(self.elapsed_s())} elapsed"
        )
