"""Injected faults: which one a request meets (scripted, else drawn), its latency, and the error
answers of faults and moderation, as each profile's provider words them."""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Iterable

from ._config import FAULT_KINDS, EmulatorConfig, Profile
from ._ratelimit import Rejection, format_duration, format_number, retry_after_headers
from ._wire import ApiError

__all__ = ["FaultPlan", "moderation_error", "server_error", "throttle_error"]

_LOGNORMAL_Z95 = 1.6448536269514722
_ORGANIZATION = "org-emulator"
_CLOUDFLARE_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class FaultPlan:
    """The fault script and the random draws (faults, latency) of one emulator; thread-safe."""

    def __init__(self, seed: int | None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._script: deque[str] = deque()

    @property
    def pending(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._script)

    def extend(self, kinds: Iterable[str]) -> None:
        """Queue ``kinds`` (validated against :data:`FAULT_KINDS`) after the pending ones."""
        kinds = [str(kind) for kind in kinds]
        unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; accepted: {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._script.extend(kinds)

    def reseed(self, seed: int | None, *, clear: bool = False) -> None:
        """Restart the random draws; ``clear`` also drops the pending scripted faults."""
        with self._lock:
            if clear:
                self._script.clear()
            self._rng = random.Random(seed)

    def draw(self, config: EmulatorConfig) -> tuple[str, float]:
        """The next request's fault (the next scripted one, else drawn from the configured rates)
        and its latency."""
        with self._lock:
            if self._script:
                fault = self._script.popleft()
            else:
                fault = "ok"
                point = self._rng.random()
                for kind, rate in config.fault_rates():
                    if point < rate:
                        fault = (
                            self._rng.choice(("500", "502", "503"))
                            if kind == "server_error"
                            else kind
                        )
                        break
                    point -= rate
            if config.latency_distribution == "lognormal":
                mu = math.log(config.latency_p50_s)
                sigma = max(math.log(config.latency_p95_s) - mu, 0.0) / _LOGNORMAL_Z95
                latency = math.exp(self._rng.gauss(mu, sigma)) * config.latency_scale
            else:
                latency = config.latency_s
        return fault, latency


def throttle_error(
    config: EmulatorConfig, kind: str, rejection: Rejection | None = None, model: str = ""
) -> ApiError:
    """A 429 (gateway quota: 402); ``rejection`` says which account limit refused the request,
    else it is an injected fault waiting ``retry_after_s``."""
    profile = config.profile
    if kind == "insufficient_quota":
        return _quota_error(profile)
    if rejection is not None:
        wait = rejection.retry_after_s
        headers = retry_after_headers(wait)
    else:
        wait = config.retry_after_s
        headers = (
            ("retry-after", str(math.ceil(wait))),
            ("retry-after-ms", str(round(wait * 1000))),
        )
    if profile == "azure":
        return ApiError(
            429,
            "Requests to the Images_Generations_Create Operation have exceeded call rate limit of "
            f"your current pricing tier. Please retry after {math.ceil(wait)} seconds.",
            type=None,
            code="429",
            headers=headers,
        )
    if rejection is None:
        return ApiError(
            429,
            "Rate limit reached for images per minute (IPM): Limit 5, Used 5, Requested 1. "
            f"Please try again in {wait:g}s.",
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    unit = "images per min (IPM)" if rejection.kind == "images" else "tokens per min (TPM)"
    return ApiError(
        429,
        f"Rate limit reached for {model} in organization {_ORGANIZATION} on {unit}: "
        f"Limit {format_number(rejection.per_minute)}, Used {rejection.used}, "
        f"Requested {rejection.requested}. Please try again in {format_duration(wait)}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        type="requests" if rejection.kind == "images" else "tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


def _quota_error(profile: Profile) -> ApiError:
    if profile == "gateway":
        return ApiError(
            402,
            "Insufficient balance: top up your account to continue.",
            type="payment_required",
            code="INSUFFICIENT_BALANCE",
        )
    return ApiError(
        429,
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def server_error(profile: Profile, kind: str) -> ApiError:
    """A 500, 502 or 503 as the profile's provider (or the CDN in front of it) sends it."""
    if kind == "502":
        if profile == "gateway":
            return ApiError(
                502,
                "All providers failed to serve the request.",
                type="server_error",
                code="ALL_PROVIDERS_EXHAUSTED",
            )
        return ApiError(502, "Bad Gateway", type=None, raw_body=("text/html", _CLOUDFLARE_502))
    if kind == "503":
        return ApiError(
            503,
            "The engine is currently overloaded, please try again later.",
            type="server_error",
        )
    return ApiError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
    )


def moderation_error(profile: Profile) -> ApiError:
    if profile == "azure":
        return ApiError(
            400,
            "Your request was rejected as a result of our safety system. Your prompt may contain "
            "text that is not allowed by our safety system.",
            type=None,
            param="prompt",
            code="contentFilter",
            extra={"inner_error": {"code": "ResponsibleAIPolicyViolation"}},
        )
    return ApiError(
        400,
        "Your request was rejected by the safety system. If you believe this is an error, "
        "contact us at help.openai.com and include the request ID.",
        type="image_generation_user_error",
        code="moderation_blocked",
        extra={"moderation_details": {"categories": ["emulated"]}},
    )
