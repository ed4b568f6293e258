from __future__ import annotations

import pickle
from typing import Any

import pytest

from dagster_gptimage.errors import (
    FINAL_REASONS,
    AuthenticationError,
    GPTImageError,
    GPTImageTimeoutError,
    InvalidImageError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    failure_reason,
    is_retryable_answer,
    short_repr,
)

ALL_ERRORS = [
    GPTImageError,
    InvalidRequestError,
    ModerationBlockedError,
    AuthenticationError,
    QuotaExceededError,
    RateLimitError,
    ProviderError,
    GPTImageTimeoutError,
    InvalidImageError,
]

BASE_KWARGS: dict[str, Any] = {
    "status_code": 429,
    "code": "rate_limit_exceeded",
    "param": "size",
    "request_id": "req_123",
    "provider": "openai",
    "attempts": 5,
    "possibly_billed_attempts": 2,
    "cost_usd": 0.42,
}


def test_str_lists_status_code_param_and_request_id() -> None:
    error = GPTImageError("Too many requests", **BASE_KWARGS)
    assert str(error) == (
        "Too many requests (status=429, code=rate_limit_exceeded, param=size, request_id=req_123)"
    )


def test_str_is_the_bare_message_without_details() -> None:
    assert str(ProviderError("boom")) == "boom"
    assert str(ProviderError("boom", status_code=502)) == "boom (status=502)"


def test_defaults() -> None:
    error = GPTImageError("x")
    assert error.message == "x"
    assert error.status_code is None
    assert error.code is None
    assert error.param is None
    assert error.request_id is None
    assert error.provider is None
    assert error.attempts == 0
    assert error.possibly_billed_attempts == 0
    assert error.cost_usd == 0.0
    assert error.args == ("x",)


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_is_a_gptimage_error(cls: type[GPTImageError]) -> None:
    assert issubclass(cls, GPTImageError)
    assert issubclass(cls, Exception)


def test_invalid_image_is_an_invalid_request() -> None:
    assert issubclass(InvalidImageError, InvalidRequestError)
    assert not issubclass(ModerationBlockedError, InvalidRequestError)


def test_invalid_request_attributes() -> None:
    error = InvalidRequestError(
        "size='1000x1000' is not accepted",
        field="size",
        value="1000x1000",
        accepted=("auto", "1024x1024"),
        status_code=None,
    )
    assert error.field == "size"
    assert error.value == "1000x1000"
    assert error.accepted == ("auto", "1024x1024")
    assert str(error) == "size='1000x1000' is not accepted"


def test_invalid_request_field_defaults_to_provider_param() -> None:
    error = InvalidRequestError("Invalid size", status_code=400, param="size", code="invalid_value")
    assert error.field == "size"
    assert "param=size" in str(error)
    assert "status=400" in str(error)


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_pickle_round_trip_keeps_every_attribute(cls: type[GPTImageError]) -> None:
    extra: dict[str, Any] = (
        {"field": "prompt", "value": "a cat", "accepted": "a non-empty string"}
        if issubclass(cls, InvalidRequestError)
        else {}
    )
    error = cls("something failed", **BASE_KWARGS, **extra)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls
    assert str(clone) == str(error)
    assert clone.args == error.args
    for name, value in {**BASE_KWARGS, **extra, "message": "something failed"}.items():
        assert getattr(clone, name) == value, name


def test_pickle_keeps_attributes_set_after_construction() -> None:
    error = ProviderError("x", attempts=1)
    error.cost_usd = 1.5
    clone = pickle.loads(pickle.dumps(error))
    assert clone.cost_usd == 1.5
    assert clone.attempts == 1


def test_repr_names_the_class() -> None:
    assert repr(RateLimitError("slow down", status_code=429)) == (
        "RateLimitError('slow down (status=429)')"
    )


def test_short_repr_truncates_long_values() -> None:
    text = short_repr("x" * 10_000)
    assert len(text) <= 100
    assert text.startswith("'xxx")
    assert "10002 chars" in text


def test_short_repr_keeps_short_values_exact() -> None:
    assert short_repr("1000x1000") == "'1000x1000'"
    assert short_repr(None) == "None"
    assert short_repr(12) == "12"


def test_short_repr_never_dumps_bytes() -> None:
    assert short_repr(b"\x89PNG" * 1000) == "<4000 bytes>"


def test_short_repr_survives_broken_repr() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert short_repr(Broken()) == "<unrepresentable Broken>"


# --- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "final"),
    [
        (ModerationBlockedError("m"), "moderation", True),
        (InvalidRequestError("i"), "invalid", True),
        (InvalidImageError("i"), "invalid", True),
        (AuthenticationError("a"), "authentication", False),
        (QuotaExceededError("q"), "quota", False),
        (RateLimitError("r"), "rate limit", False),
        (GPTImageTimeoutError("t"), "timeout", False),
        (ProviderError("p"), "provider error", False),
        (GPTImageError("g"), "provider error", False),
        (RuntimeError("x"), "provider error", False),
    ],
)
def test_failure_reason(error: BaseException, reason: str, final: bool) -> None:
    assert failure_reason(error) == reason
    assert (failure_reason(error) in FINAL_REASONS) is final


@pytest.mark.parametrize(
    ("error", "hint", "retryable"),
    [
        (ModerationBlockedError("m", status_code=400), True, False),
        (AuthenticationError("a", status_code=401), True, False),
        (QuotaExceededError("q", status_code=429), None, False),
        (RateLimitError("r", status_code=429), None, True),
        (ProviderError("p", status_code=503), None, True),
        (ProviderError("p", status_code=503), False, False),
        (InvalidRequestError("i", status_code=400), None, False),
        (InvalidRequestError("i", status_code=400), True, True),
        (ProviderError("p", status_code=409), None, True),
    ],
)
def test_is_retryable_answer(error: GPTImageError, hint: bool | None, retryable: bool) -> None:
    assert is_retryable_answer(error, hint) is retryable
