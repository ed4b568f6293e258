"""What the emulator counts and records: per-request records (credentials redacted) and totals."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs

from ._messages import EmulatorRequest
from ._wire import RawBody

__all__ = ["EmulatorStats", "RecordedFile", "RecordedRequest", "new_record", "query_of"]

_REDACTED_HEADERS = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "proxy-authorization",
        "cookie",
        "ocp-apim-subscription-key",
    }
)


@dataclass(frozen=True)
class RecordedFile:
    """An uploaded file, by fingerprint only."""

    field: str
    filename: str | None
    content_type: str | None
    sha256: str
    size: int


@dataclass
class RecordedRequest:
    """One API request as received (credentials redacted) and how it was answered.

    ``outcome`` is "ok", "error" (an HTTP error answer), a transport fault ("reset", "truncate"),
    or "cancelled" (the client gave up first: in-process timeouts, server disconnects).
    ``received_at`` is wall-clock time (``time.time()``), to measure achieved rates."""

    request_id: str
    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    headers: dict[str, str]
    fields: dict[str, Any] = field(default_factory=dict)
    files: list[RecordedFile] = field(default_factory=list)
    status: int | None = None
    fault: str | None = None
    billed: bool = False
    images: int = 0
    outcome: str | None = None
    rate_limited: bool = False
    received_at: float = 0.0

    def record_body(self, raw: RawBody) -> None:
        """Keep the decoded fields and the uploads' fingerprints."""
        self.fields = dict(raw.fields)
        self.files = [
            RecordedFile(f.field, f.filename, f.content_type, f.sha256, len(f.data))
            for f in raw.files
        ]


@dataclass
class EmulatorStats:
    """Counters since creation or the last ``Emulator.reset()``.

    ``requests`` counts image API requests (generations, edits and unroutable API calls);
    ``rate_limited`` those refused with 429 by the account limits (``images_per_minute``...; not
    billed, not in ``faults``, which counts injected faults); ``file_downloads`` counts gateway URL
    downloads; control endpoints are not counted. Files and Batches API calls are counted apart, in
    ``batch_calls`` (by operation, e.g. ``"batches.create"``), and batch lines billed (at the batch
    rate) in ``batch_lines_billed`` and ``batch_images_billed``, never in ``billed_requests``.
    """

    requests: int = 0
    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    billed_requests: int = 0
    billed_images: int = 0
    rate_limited: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    file_downloads: int = 0
    recorded: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=500))
    batch_calls: Counter[str] = field(default_factory=Counter)
    batch_lines_billed: int = 0
    batch_images_billed: int = 0

    @property
    def last(self) -> RecordedRequest | None:
        return self.recorded[-1] if self.recorded else None

    @property
    def sync_requests(self) -> int:
        """Requests that reached the synchronous image endpoints (any outcome)."""
        return self.requests_by_endpoint["generations"] + self.requests_by_endpoint["edits"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "billed_requests": self.billed_requests,
            "billed_images": self.billed_images,
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
            "file_downloads": self.file_downloads,
            "sync_requests": self.sync_requests,
            "batch_calls": dict(self.batch_calls),
            "batch_lines_billed": self.batch_lines_billed,
            "batch_images_billed": self.batch_images_billed,
            "recorded": [asdict(item) for item in self.recorded],
        }


def query_of(request: EmulatorRequest) -> dict[str, str]:
    """The query parameters, the last value of each."""
    return {key: values[-1] for key, values in parse_qs(request.query).items()}


def new_record(request: EmulatorRequest, request_id: str, endpoint: str) -> RecordedRequest:
    """The record of a routed request, received now, with credential headers redacted."""
    headers = {
        key.lower(): ("<redacted>" if key.lower() in _REDACTED_HEADERS else value)
        for key, value in request.headers.items()
    }
    return RecordedRequest(
        request_id=request_id,
        method=request.method.upper(),
        path=request.path,
        endpoint=endpoint,
        query=query_of(request),
        headers=headers,
        received_at=time.time(),
    )
