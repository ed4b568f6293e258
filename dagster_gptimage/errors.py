"""Exception hierarchy.

Every error carries what an operator needs to act on it (HTTP status, provider code, the offending
parameter, the provider's request id) and what the failed call may have cost, because a failure that
was possibly billed must still be counted. No error ever receives an API key, so none can leak one.

Errors are picklable with all their attributes: Dagster ships exceptions between processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "FINAL_REASONS",
    "AuthenticationError",
    "DefinitionError",
    "GPTImageError",
    "GPTImageTimeoutError",
    "InvalidImageError",
    "InvalidRequestError",
    "ModerationBlockedError",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitError",
    "failure_reason",
    "is_retryable_answer",
    "short_repr",
]

_REPR_LIMIT = 80


def short_repr(value: Any, limit: int = _REPR_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, so a 32,000-character prompt or a 50 MB image
    cannot flood an error message, a log line or the Dagster UI."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    if len(text) > limit:
        keep = max(limit - 15, 10)
        text = f"{text[:keep]}…[{len(text)} chars]"
    return text


class DefinitionError(ValueError):
    """An asset or sensor factory refused its arguments: raised when the definitions load, before
    any request.

    ``field`` names the argument to change (``"prompt"``, ``"mask_column"``, ``"sources"`` …) and
    ``fix`` says how, so a declarative face (the YAML component) can point at its own field.
    """

    def __init__(self, message: str, *, field: str, fix: str) -> None:
        super().__init__(message)
        self.field = field
        self.fix = fix

    def __reduce__(self) -> tuple[Any, ...]:
        return (_definition_error, (str(self), self.field, self.fix))


def _definition_error(message: str, field: str, fix: str) -> DefinitionError:
    return DefinitionError(message, field=field, fix=fix)


class GPTImageError(Exception):
    """Base of every error raised by dagster-gptimage.

    Attributes: ``message``, ``status_code`` (HTTP status, None for local errors), ``code`` (provider
    error code), ``param`` (the request field the provider blamed), ``request_id``, ``provider``,
    ``attempts`` (HTTP attempts made, 0 if none), ``possibly_billed_attempts`` and ``cost_usd`` (the
    estimated spend of those attempts: a failure can still cost money), ``rate_limited_attempts``
    (of the attempts, those refused with a rate-limit 429: never billed) and ``rate_limit_wait_s``
    (time the call waited for the provider's rate limit).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        provider: str | None = None,
        attempts: int = 0,
        possibly_billed_attempts: int = 0,
        cost_usd: float = 0.0,
        rate_limited_attempts: int = 0,
        rate_limit_wait_s: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.request_id = request_id
        self.provider = provider
        self.attempts = attempts
        self.possibly_billed_attempts = possibly_billed_attempts
        self.cost_usd = cost_usd
        self.rate_limited_attempts = rate_limited_attempts
        self.rate_limit_wait_s = rate_limit_wait_s

    def _details(self) -> list[str]:
        details = []
        if self.status_code is not None:
            details.append(f"status={self.status_code}")
        if self.code:
            details.append(f"code={self.code}")
        if self.param:
            details.append(f"param={self.param}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        return details

    def __str__(self) -> str:
        details = self._details()
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's default pickling replays only ``args`` through ``__init__``; the
        # keyword-only attributes travel in the state dict instead.
        return (_rebuild, (type(self), self.message), dict(self.__dict__))


def _rebuild(cls: type[GPTImageError], message: str) -> GPTImageError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


class InvalidRequestError(GPTImageError):
    """The request cannot succeed as written: refused locally before any request, or a 400/404/422.

    ``field`` names the offending request field, ``value`` holds the refused value and ``accepted``
    describes what would be accepted (text, or a sequence of allowed values). For a provider's 400,
    ``field`` defaults to the ``param`` the provider blamed.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        accepted: str | Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.field = field if field is not None else self.param
        self.value = value
        self.accepted = accepted


class ModerationBlockedError(GPTImageError):
    """The provider's safety system refused the prompt or an input image. Final: never retried."""


class AuthenticationError(GPTImageError):
    """401/403: missing, wrong or unauthorized credentials."""


class QuotaExceededError(GPTImageError):
    """429 ``insufficient_quota`` or a gateway's 402: no money left, retrying cannot help."""


class RateLimitError(GPTImageError):
    """429 rate limit: the provider asked to wait longer than ``max_retry_wait_s``, or the call
    waited ``max_rate_limit_wait_s`` in all for the account's rate limit."""


class ProviderError(GPTImageError):
    """5xx, connection failure or an unusable response, after every retry."""


class GPTImageTimeoutError(GPTImageError):
    """The provider did not answer in time. The image may still have been generated and billed."""


class InvalidImageError(InvalidRequestError):
    """Bytes that are not a usable image: an input the caller supplied, or a provider response."""


# --- classification: the one place that says what a failure means ------------------------------

FINAL_REASONS = frozenset({"moderation", "invalid", "budget", "source"})
"""Partition-failure reasons that a retry of the run cannot change (``budget`` and ``source`` are
the backfill's own: the run's budget refused the request, a source image changed or vanished)."""

_ALWAYS_FINAL = (ModerationBlockedError, AuthenticationError, QuotaExceededError)
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


def failure_reason(error: BaseException) -> str:
    """The short reason a partition failed, as reported per partition and counted per run."""
    if isinstance(error, ModerationBlockedError):
        return "moderation"
    if isinstance(error, InvalidRequestError):
        return "invalid"
    if isinstance(error, AuthenticationError):
        return "authentication"
    if isinstance(error, QuotaExceededError):
        return "quota"
    if isinstance(error, RateLimitError):
        return "rate limit"
    if isinstance(error, GPTImageTimeoutError):
        return "timeout"
    return "provider error"


def is_retryable_answer(error: GPTImageError, server_hint: bool | None = None) -> bool:
    """Whether a provider's non-2xx answer, mapped to ``error``, is worth another attempt.

    Moderation, credentials and exhausted quota are final whatever the server hints: a retry
    cannot change their outcome. Otherwise the server's own verdict (``x-should-retry``, as
    ``server_hint``) overrides the status-based rule.
    """
    if isinstance(error, _ALWAYS_FINAL):
        return False
    if server_hint is not None:
        return server_hint
    status = error.status_code or 0
    return status in _RETRYABLE_STATUSES or status >= 500
