"""One rate-limit governor per provider account, shared by every request of the process.

The provider enforces its limit per account (organization and key), not per client or event loop,
so the :class:`~dagster_gptimage._ratelimit.RateGovernor` that paces requests is shared by every
client of the process that talks to the same account: the key is the base URL and a hash of the
API key (an injected transport or in-process emulator is its own account). The registry holds
governors weakly: one lives as long as a client uses it, and a process that drops all its clients
learns the limit again from the next answers. Several processes share nothing: each learns from
the provider's answers, which describe the same shared bucket to all of them.

Waiting is polled across threads and event loops (one client may be used from several), with a
lock around the pure governor; a warning says when requests wait, at most once per
:data:`LOG_EVERY_S` per account, with what happened since the last one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dagster_gptimage._ratelimit import RateGovernor, RateLimitStats

__all__ = ["LOG_EVERY_S", "AccountLimiter", "Ticket", "account_limiter"]

_log = logging.getLogger("dagster_gptimage.client")
LOG_EVERY_S = 30.0
NOTABLE_WAIT_S = 1.0
"""Shorter pacing waits are not worth a log line (429s always are, aggregated)."""
_registry: weakref.WeakValueDictionary[Any, AccountLimiter] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


@dataclass
class Ticket:
    """A request sent under the governor: when, and how many images."""

    sent_at: float
    images: int


class AccountLimiter:
    """The thread-safe, awaitable face of one account's :class:`RateGovernor`."""

    def __init__(
        self, label: str, *, clock: Callable[[], float] = time.monotonic, log_every_s: float = 30.0
    ) -> None:
        self.label = label
        self._clock = clock
        self._lock = threading.Lock()
        self._governor = RateGovernor(clock=clock)
        self._log_every_s = log_every_s
        self._logged_at = -float("inf")
        self._since_log_429 = 0
        self._since_log_wait_s = 0.0
        self._since_log_longest_s = 0.0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def acquire(self, images: int, *, budget_s: float, exempt_pause: int = -1) -> float:
        """Wait until the governor lets a request of ``images`` go, then mark it sent; returns the
        time waited. Raises :class:`TimeoutError` (unsent) when that would take over
        ``budget_s``."""
        started = self._clock()
        while True:
            with self._lock:
                wait = self._governor.delay(images, exempt_pause=exempt_pause)
                waited = self._clock() - started
                if wait <= 0:
                    self._governor.start(images)
                    self._governor.waited(waited)
                    break
                if waited + wait > budget_s:
                    self._governor.waited(waited)
                    raise TimeoutError(waited + wait)
                if wait >= NOTABLE_WAIT_S:
                    self._note_wait(wait, "pacing to the account's rate limit")
                loop = asyncio.get_running_loop()
                woken: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, woken))
            try:
                await asyncio.wait_for(woken, timeout=min(wait, 1.0))
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    if (loop, woken) in self._waiters:
                        self._waiters.remove((loop, woken))
        return waited

    def _wake_all(self) -> None:
        """A request finished: waiters blocked on requests in flight look again (lock held)."""
        waiters, self._waiters = self._waiters, []
        for loop, woken in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, woken)

    def answered(self, ticket: Ticket, headers: Mapping[str, str]) -> None:
        with self._lock:
            self._governor.answered(headers, sent_at=ticket.sent_at)
            self._wake_all()

    def refused(
        self, ticket: Ticket, headers: Mapping[str, str], retry_after_s: float | None
    ) -> tuple[int, float]:
        """A rate-limit 429: the pause it starts and the refused request's own wait."""
        with self._lock:
            pause, wait = self._governor.refused(headers, retry_after_s, sent_at=ticket.sent_at)
            self._wake_all()
            self._since_log_429 += 1
            self._note_wait(wait, "the provider answered 429 (rate limit)")
            return pause, wait

    def waited_after_429(self, seconds: float) -> None:
        with self._lock:
            self._governor.waited(seconds)

    def abandoned(self, ticket: Ticket) -> None:
        with self._lock:
            self._governor.abandoned(sent_at=ticket.sent_at)
            self._wake_all()

    def ticket(self, images: int) -> Ticket:
        return Ticket(sent_at=self._clock(), images=images)

    def stats(self) -> RateLimitStats:
        with self._lock:
            return self._governor.stats()

    def _note_wait(self, wait: float, why: str) -> None:
        """Count a wait; log a summary at most once per ``log_every_s`` (lock held)."""
        self._since_log_wait_s += wait
        self._since_log_longest_s = max(self._since_log_longest_s, wait)
        now = self._clock()
        if now - self._logged_at < self._log_every_s:
            return
        stats = self._governor.stats()
        limit = (
            f"limit {stats.limit_per_minute:g} images/min"
            if stats.limit_per_minute is not None
            else "limit not reported"
        )
        pace = (
            f", pacing this process at {stats.pace_per_minute:.3g} images/min"
            if stats.pace_per_minute is not None
            else ""
        )
        _log.warning(
            "waiting up to %.3gs for the provider's rate limit (%s): %s; %s, %d answer(s) 429 "
            "since the last such line (%d in all)%s",
            self._since_log_longest_s,
            self.label,
            why,
            limit,
            self._since_log_429,
            stats.answers_429,
            pace,
            extra={
                "gptimage_rate_limit_wait_s": self._since_log_longest_s,
                "gptimage_rate_limit_429": self._since_log_429,
            },
        )
        self._logged_at = now
        self._since_log_429 = 0
        self._since_log_wait_s = 0.0
        self._since_log_longest_s = 0.0


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def account_limiter(base_url: str, api_key: str | None, local: object | None) -> AccountLimiter:
    """The process's limiter for an account: ``local`` (an injected transport or an in-process
    emulator) is an account of its own; otherwise the base URL and a hash of the key name it."""
    digest = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
    key: Any = (base_url, digest) if local is None else (base_url, id(local), local)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = AccountLimiter(base_url, log_every_s=LOG_EVERY_S)
        return limiter
