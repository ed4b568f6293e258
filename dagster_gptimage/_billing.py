"""The tally of one logical call: attempts, attempts that may have been billed, and their cost.

Money is real: an attempt that may have been billed (the image was possibly generated even though
it never arrived usable) is counted and priced before it is retried, and the final result or
error reports the sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dagster_gptimage.errors import GPTImageError

__all__ = ["Tally"]


@dataclass
class Tally:
    """What one logical call has done so far, across its attempts.

    ``unconfirmed_cost_usd`` are estimates (no usage was reported); ``confirmed_cost_usd`` comes
    from usage the provider reported for an attempt that still failed afterwards.
    """

    attempts: int = 0
    billed_failures: int = 0
    unconfirmed_cost_usd: float = 0.0
    confirmed_cost_usd: float = 0.0
    started: float | None = None
    request_id: str | None = None
    rate_limited: int = 0
    """Attempts the provider refused with a rate-limit 429 (never billed, not retries)."""
    rate_limit_wait_s: float = 0.0
    """Time spent waiting for the rate limit, before sending and after 429s."""
    pause: int = -1
    """The account pause this call's last 429 started (it waits that one out itself)."""

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def start_attempt(self) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.attempts += 1

    def billed(self, estimate: float) -> None:
        """An attempt failed after the provider may have generated, and billed, its image."""
        self.billed_failures += 1
        self.unconfirmed_cost_usd += estimate

    def billed_priced(self, cost: float, unconfirmed: float) -> None:
        """An attempt the provider answered (``cost``, of which ``unconfirmed`` is an estimate)
        failed afterwards, e.g. its image URL could not be downloaded."""
        self.billed_failures += 1
        self.confirmed_cost_usd += cost - unconfirmed
        self.unconfirmed_cost_usd += unconfirmed

    @property
    def cost_usd(self) -> float:
        return self.unconfirmed_cost_usd + self.confirmed_cost_usd

    def charge(self, error: GPTImageError, provider: str) -> GPTImageError:
        """``error`` as the call's final error: it carries the call's attempts and cost."""
        error.provider = error.provider or provider
        error.request_id = error.request_id or self.request_id
        error.attempts = self.attempts
        error.possibly_billed_attempts = self.billed_failures
        error.cost_usd = self.cost_usd
        error.rate_limited_attempts = self.rate_limited
        error.rate_limit_wait_s = self.rate_limit_wait_s
        return error
