"""The account's rate limits as token buckets: pure arithmetic on a clock the caller reads.

OpenAI limits image models in images per minute (IPM) and tokens per minute (TPM), with buckets
that refill continuously rather than windows that reset. A request is admitted only when every
bucket holds its cost, and then it takes its cost from all of them; a refused request takes
nothing. Nothing here reads a clock or does I/O, so tests move time by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AccountLimits",
    "Rejection",
    "TokenBucket",
    "format_duration",
    "format_number",
    "retry_after_headers",
]

LimitKind = Literal["images", "tokens"]
_EPSILON = 1e-9
"""Refill arithmetic in floats leaves 0.9999999 where 1 was meant; this much short still counts."""


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*`` and 429 messages (Go's style):
    ``120ms``, ``1s``, ``7.5s``, ``6m0s``, ``1h2m3s``. Rounded up to the millisecond, so waiting
    the stated time is always enough."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    minutes, millis = divmod(millis, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    prefix = f"{hours}h{minutes}m" if hours else f"{minutes}m" if minutes else ""
    return f"{prefix}{secs}s"


def format_number(value: float) -> str:
    """``240`` rather than ``240.0``, and never exponent notation."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def retry_after_headers(wait_s: float) -> tuple[tuple[str, str], ...]:
    """``retry-after`` in whole seconds and ``retry-after-ms``, both rounded up."""
    millis = max(0, math.ceil(wait_s * 1000 - 1e-6))
    return (("retry-after", str(math.ceil(millis / 1000))), ("retry-after-ms", str(millis)))


@dataclass
class TokenBucket:
    """``burst`` tokens at most, refilled at ``per_minute / 60`` a second since ``updated``."""

    per_minute: float
    burst: float
    level: float
    updated: float

    @classmethod
    def full(cls, per_minute: float, burst: float, now: float) -> TokenBucket:
        return cls(per_minute=per_minute, burst=burst, level=burst, updated=now)

    @property
    def rate_per_s(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.burst, self.level + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def cost(self, amount: float) -> float:
        """What ``amount`` takes: a request larger than the burst waits for a full bucket and
        empties it, instead of never being admitted."""
        return min(float(amount), self.burst)

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now); call :meth:`refill` first."""
        missing = self.cost(amount) - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate_per_s

    def take(self, amount: float) -> None:
        self.level = max(0.0, self.level - self.cost(amount))

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level + _EPSILON))

    @property
    def used(self) -> int:
        return max(0, math.ceil(self.burst - self.level - _EPSILON))

    @property
    def reset_s(self) -> float:
        """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
        return max(0.0, self.burst - self.level) / self.rate_per_s


@dataclass(frozen=True)
class Rejection:
    """Why a request was refused, in the terms of OpenAI's 429 message."""

    kind: LimitKind
    per_minute: float
    used: int
    requested: int
    retry_after_s: float


class AccountLimits:
    """The images and tokens buckets of one account (either may be absent)."""

    def __init__(
        self,
        *,
        images_per_minute: float | None,
        images_burst: float | None,
        tokens_per_minute: float | None,
        tokens_burst: float | None,
        now: float,
    ) -> None:
        self.buckets: dict[LimitKind, TokenBucket] = {}
        if images_per_minute is not None:
            burst = images_burst if images_burst is not None else images_per_minute
            self.buckets["images"] = TokenBucket.full(images_per_minute, burst, now)
        if tokens_per_minute is not None:
            burst = tokens_burst if tokens_burst is not None else tokens_per_minute
            self.buckets["tokens"] = TokenBucket.full(tokens_per_minute, burst, now)

    def admit(self, *, images: int, tokens: int, now: float) -> Rejection | None:
        """Take the request's cost from every bucket, or nothing and say how long to wait (the
        longest wait among the buckets that are short)."""
        amounts: dict[LimitKind, int] = {"images": images, "tokens": tokens}
        worst: Rejection | None = None
        for kind, bucket in self.buckets.items():
            bucket.refill(now)
            wait = bucket.wait_for(amounts[kind])
            if wait > 0 and (worst is None or wait > worst.retry_after_s):
                worst = Rejection(kind, bucket.per_minute, bucket.used, amounts[kind], wait)
        if worst is None:
            for kind, bucket in self.buckets.items():
                bucket.take(amounts[kind])
        return worst

    def headers(self, now: float) -> tuple[tuple[str, str], ...]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``: the images bucket is reported
        as ``-requests`` (an image model's request limit is counted in images)."""
        headers: list[tuple[str, str]] = []
        suffixes: tuple[tuple[LimitKind, str], ...] = (("images", "requests"), ("tokens", "tokens"))
        for kind, suffix in suffixes:
            bucket = self.buckets.get(kind)
            if bucket is None:
                continue
            bucket.refill(now)
            headers += [
                (f"x-ratelimit-limit-{suffix}", format_number(bucket.per_minute)),
                (f"x-ratelimit-remaining-{suffix}", str(bucket.remaining)),
                (f"x-ratelimit-reset-{suffix}", format_duration(bucket.reset_s)),
            ]
        return tuple(headers)
