"""The account's live rate limits: the buckets of :mod:`._ratelimit`, on the emulator's clock,
rebuilt (full) when the limits change; shared by every client of one emulator."""

from __future__ import annotations

import threading
from collections.abc import Callable

from dagster_gptimage.pricing import estimate_usage

from ._config import RATE_LIMIT_FIELDS, EmulatorConfig
from ._ratelimit import AccountLimits, Rejection
from ._wire import Call

__all__ = ["Account"]


class Account:
    """Thread-safe; without configured limits it admits everything and reports no headers."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._limits = self._build(config)

    def _build(self, config: EmulatorConfig) -> AccountLimits | None:
        if config.images_per_minute is None and config.tokens_per_minute is None:
            return None
        return AccountLimits(
            images_per_minute=config.images_per_minute,
            images_burst=config.images_burst,
            tokens_per_minute=config.tokens_per_minute,
            tokens_burst=config.tokens_burst,
            now=self._clock(),
        )

    def refill(self, config: EmulatorConfig) -> None:
        """Full buckets for ``config``'s limits."""
        limits = self._build(config)
        with self._lock:
            self._limits = limits

    def reconfigure(self, previous: EmulatorConfig, config: EmulatorConfig) -> None:
        """Refill only when a limit changed, so other settings keep the buckets' state."""
        if any(getattr(previous, name) != getattr(config, name) for name in RATE_LIMIT_FIELDS):
            self.refill(config)

    def admit(self, call: Call) -> Rejection | None:
        """Take the request's images and output tokens from the buckets, or refuse it."""
        if self._limits is None:
            return None
        tokens = estimate_usage(call.concrete_request).output_image_tokens
        with self._lock:
            if self._limits is None:
                return None
            return self._limits.admit(images=call.request.n, tokens=tokens, now=self._clock())

    def headers(self) -> tuple[tuple[str, str], ...]:
        with self._lock:
            return () if self._limits is None else self._limits.headers(self._clock())
