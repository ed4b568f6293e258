"""The emulator's HTTP messages: requests and responses as the adapters see them, routes, headers.

Kept apart from :mod:`._core` so the adapters and the answer builders share one vocabulary without
depending on the emulator's state.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._config import Profile
from ._wire import ApiError, Endpoint

__all__ = [
    "IN_PROCESS_BASE_URL",
    "IN_PROCESS_ORIGIN",
    "EmulatorRequest",
    "EmulatorResponse",
    "error_response",
    "json_response",
    "response_headers",
    "route",
]

IN_PROCESS_ORIGIN = "http://emulator.localhost"
IN_PROCESS_BASE_URL = f"{IN_PROCESS_ORIGIN}/v1"

_OPENAI_ROUTE = re.compile(r"(?:/openai)?(?:/v1)?/images/(?P<endpoint>generations|edits)")
_AZURE_ROUTE = re.compile(
    r"/openai/deployments/(?P<deployment>[^/]+)/images/(?P<endpoint>generations|edits)"
)
_UNLIMITED_HEADERS = [
    ("x-ratelimit-limit-requests", "250"),
    ("x-ratelimit-remaining-requests", "249"),
    ("x-ratelimit-reset-requests", "240ms"),
]
"""What the OpenAI profile reports when no account limit is configured (a generous tier)."""


@dataclass(frozen=True)
class EmulatorRequest:
    """An HTTP request as the adapters see it. ``headers`` keys are matched case-insensitively;
    ``origin`` (scheme://host[:port]) is where the emulator's own download URLs point."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)
    origin: str = IN_PROCESS_ORIGIN


@dataclass(frozen=True)
class EmulatorResponse:
    """What to send back. ``fault`` asks the adapter to break the transport instead:
    "reset" drops the connection before any response byte, "truncate" sends the headers with the
    full Content-Length and then only part of ``body``."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    fault: Literal["reset", "truncate"] | None = None
    chunks: Iterator[bytes] | None = field(default=None, repr=False)
    """Streamed content (large files) instead of ``body``; with a fault it ends early, and the
    adapter then breaks the connection as ``fault`` says."""
    length: int | None = None
    """Content-Length of streamed content."""

    @property
    def content_length(self) -> int:
        return (
            self.length if self.chunks is not None and self.length is not None else len(self.body)
        )

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


def route(profile: Profile, method: str, path: str) -> tuple[Endpoint, str | None] | None:
    """The image endpoint (and Azure deployment) a request is for, or None (a 404)."""
    pattern = _AZURE_ROUTE if profile == "azure" else _OPENAI_ROUTE
    match = pattern.fullmatch(path.rstrip("/") or "/")
    if match is None or method.upper() != "POST":
        return None
    endpoint: Endpoint = "edits" if match.group("endpoint") == "edits" else "generations"
    return endpoint, match.groupdict().get("deployment")


def response_headers(
    profile: Profile,
    request_id: str,
    started: float,
    media_type: str,
    limits: Sequence[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """The headers of an API answer as the profile's provider sends them."""
    headers = [
        ("content-type", media_type),
        ("x-request-id", request_id),
        ("openai-processing-ms", str(round((time.monotonic() - started) * 1000))),
    ]
    if profile == "openai":
        headers.append(("openai-version", "2020-10-01"))
        if not any(key == "x-ratelimit-limit-requests" for key, _ in limits):
            headers += _UNLIMITED_HEADERS
    headers += limits
    if profile == "azure":
        headers.append(("apim-request-id", request_id))
    else:
        headers += [
            ("x-lumenfall-request-id", request_id),
            ("x-lumenfall-provider", "emulator"),
        ]
    return tuple(headers)


def error_response(
    error: ApiError, headers: Callable[[str], tuple[tuple[str, str], ...]]
) -> EmulatorResponse:
    """``error`` as an answer; ``headers`` gives the answer's headers for a media type."""
    if error.raw_body is not None:
        media_type, body = error.raw_body
    else:
        media_type, body = "application/json", json.dumps(error.body()).encode()
    return EmulatorResponse(error.status, headers(media_type) + error.headers, body)


def json_response(status: int, payload: Any, request_id: str) -> EmulatorResponse:
    headers = (("content-type", "application/json"), ("x-request-id", request_id))
    return EmulatorResponse(status, headers, json.dumps(payload).encode())
