"""Retry policy of the client: which failed attempts are tried again, and after what wait.

Every failed attempt becomes an :class:`AttemptFailed` carrying its verdict; stamina runs the
attempts and asks :func:`retry_hook` whether to go on. Which provider answers are final is decided by
:func:`~dagster_gptimage.errors.is_retryable_answer`; transport failures are judged here by how far
the request got, because only that tells whether it may have been billed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import httpx
import stamina

from dagster_gptimage import _providers as providers
from dagster_gptimage._billing import Tally
from dagster_gptimage.errors import GPTImageError, GPTImageTimeoutError, ProviderError

__all__ = [
    "AttemptFailed",
    "answer_failure",
    "attempts",
    "retry_hook",
    "through_rate_limits",
    "transport_failure",
]

_log = logging.getLogger("dagster_gptimage.client")
_T = TypeVar("_T")

_WAIT_INITIAL_S = 0.5
_WAIT_MAX_S = 8.0
_WAIT_JITTER_S = 1.0

_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
)
"""Transport failures that happen before the request fully reached the server: never billed."""
_FINAL_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)
"""Transport failures that are configuration mistakes: retrying cannot help."""


class AttemptFailed(Exception):
    """One failed attempt and the verdict on retrying it (read by the stamina hook)."""

    def __init__(
        self,
        error: GPTImageError,
        *,
        retry: bool,
        wait_s: float | None = None,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry = retry
        self.wait_s = wait_s
        self.rate_limited = rate_limited

    def __repr__(self) -> str:
        return f"{type(self.error).__name__}({self.error})"


def attempts(
    on: type[Exception] | Callable[[Exception], bool | float],
    count: int | None,
    *,
    wait_jitter: float | None = None,
) -> AsyncIterator[stamina.Attempt]:
    """stamina's retry context with the client's backoff, read at call time (tests shrink it);
    ``wait_jitter`` defaults to the client's."""
    return stamina.retry_context(
        on=on,
        attempts=count,
        timeout=None,
        wait_initial=_WAIT_INITIAL_S,
        wait_max=_WAIT_MAX_S,
        wait_jitter=_WAIT_JITTER_S if wait_jitter is None else wait_jitter,
    )


def retry_hook(tally: Tally, max_attempts: int) -> Callable[[Exception], bool | float]:
    """stamina's ``on``: retry an attempt whose verdict says so, after the wait it names (else
    stamina's backoff), while attempts remain; log each retry. Attempts refused by the rate
    limit (see :func:`through_rate_limits`) do not count against ``max_attempts``."""

    def hook(exc: Exception) -> bool | float:
        if not isinstance(exc, AttemptFailed) or not exc.retry:
            return False
        if tally.attempts - tally.rate_limited >= max_attempts:
            return False
        _log.warning(
            "GPT image request attempt %d/%d failed (%s); retrying %s",
            tally.attempts,
            max_attempts,
            exc.error,
            "with exponential backoff" if exc.wait_s is None else f"in {exc.wait_s:.3g}s",
            extra={
                "gptimage_attempt": tally.attempts,
                "gptimage_wait_s": exc.wait_s,
                "gptimage_error": type(exc.error).__name__,
            },
        )
        return True if exc.wait_s is None else exc.wait_s

    return hook


async def through_rate_limits(
    attempt: Callable[[], Awaitable[_T]],
    tally: Tally,
    *,
    max_wait_s: float,
    on_wait: Callable[[float], None] | None = None,
) -> _T:
    """``attempt()`` again after every rate-limit 429, waiting what the account's governor says,
    while the call's rate-limit waits stay within ``max_wait_s``: a 429 is not a failure to spend
    ``max_retries`` on. Each wait is logged at debug level (the account logs a summary); stamina's
    test mode zeroes these waits like every other backoff."""
    while True:
        try:
            return await attempt()
        except AttemptFailed as failed:
            if not (failed.retry and failed.rate_limited):
                raise
            wait = failed.wait_s or 0.0
            if tally.rate_limit_wait_s + wait > max_wait_s:
                error = failed.error
                error.message = (
                    f"{error.message} — gave up: waiting {wait:.3g}s more for the provider's "
                    f"rate limit would exceed max_rate_limit_wait_s={max_wait_s:g} for this "
                    f"request ({tally.rate_limit_wait_s:.0f}s waited, {tally.rate_limited} "
                    "answer(s) 429)"
                )
                error.args = (error.message,)
                raise AttemptFailed(error, retry=False) from None
            tally.rate_limit_wait_s += wait
            if on_wait is not None:
                on_wait(wait)
            _log.debug(
                "GPT image request refused by the provider's rate limit (%s; 429 #%d of this "
                "request); sending again in %.3gs",
                failed.error,
                tally.rate_limited,
                wait,
                extra={"gptimage_wait_s": wait, "gptimage_error": type(failed.error).__name__},
            )
            if not stamina.is_testing():
                await asyncio.sleep(wait)


def answer_failure(
    error: GPTImageError, headers: Mapping[str, str], *, max_retry_wait_s: float
) -> AttemptFailed:
    """The verdict on a non-2xx answer: the error's own rule, the server's hints, and the wait it
    asks for (not retried when that wait is longer than ``max_retry_wait_s``)."""
    retry = providers.is_retryable_error(error, headers)
    wait = providers.parse_retry_after(headers) if retry else None
    if wait is not None and wait <= 0:
        wait = None
    if wait is not None and wait > max_retry_wait_s:
        error.message = (
            f"{error.message} — not retried: the provider asked to wait {wait:.0f}s, "
            f"more than max_retry_wait_s={max_retry_wait_s:g}"
        )
        error.args = (error.message,)
        retry, wait = False, None
    return AttemptFailed(error, retry=retry, wait_s=wait)


def transport_failure(
    exc: httpx.TransportError,
    tally: Tally,
    estimate: float,
    *,
    sent: bool,
    base_url: str,
    timeout_s: float,
    retry_on_timeout: bool,
) -> AttemptFailed:
    """The verdict on a transport failure. ``sent``: the server may have started generating (a 2xx
    status arrived, or the request left completely and the answer never came), so the attempt may
    be billed and is counted as such."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, _FINAL_TRANSPORT):
        return AttemptFailed(
            ProviderError(f"cannot reach {base_url}: {detail}", code="transport_error"),
            retry=False,
        )
    if isinstance(exc, _NOT_SENT):
        message = f"connection to {base_url} failed before the request was sent: {detail}"
        return AttemptFailed(ProviderError(message, code="connection_error"), retry=True)
    if not sent:
        message = f"connection lost while reading an error response: {detail}"
        return AttemptFailed(ProviderError(message, code="connection_error"), retry=True)
    tally.billed(estimate)
    if isinstance(exc, httpx.ReadTimeout):
        return AttemptFailed(
            GPTImageTimeoutError(
                f"no complete response within timeout_s={timeout_s:g}; the image may "
                "still have been generated and billed"
                + ("" if retry_on_timeout else " (not retried: retry_on_timeout=False)"),
                code="timeout",
            ),
            retry=retry_on_timeout,
        )
    message = f"connection dropped after the request was sent (possibly billed): {detail}"
    return AttemptFailed(ProviderError(message, code="connection_dropped"), retry=True)
