"""The Batch API's rules as pure functions: input-file checks, the status timeline, object shapes.

Nothing here touches HTTP, disk or the clock: :mod:`._batch_service` feeds in bytes and times and
turns the results into responses. A batch's status is a function of time (created, cancelled or not,
refused or not), so it can be recomputed at every poll instead of being advanced by a worker, and a
client that is killed and comes back finds the batch where the clock has taken it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._wire import ApiError

__all__ = [
    "BATCH_ENDPOINTS",
    "BatchStatus",
    "InputLine",
    "LineOutcome",
    "Timeline",
    "batch_json",
    "draw",
    "endpoint_errors",
    "error_line",
    "list_json",
    "not_run_line",
    "output_line",
    "parse_input_file",
]

BATCH_ENDPOINTS: Mapping[str, Literal["generations", "edits"]] = {
    "/v1/images/generations": "generations",
    "/v1/images/edits": "edits",
}
BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
_VALIDATING = 0.1
_FINALIZING = 0.1


@dataclass(frozen=True)
class InputLine:
    """One request of an input file: where it is in the file, so it can be re-read when run."""

    number: int
    custom_id: str
    url: str
    offset: int
    length: int


@dataclass(frozen=True)
class LineOutcome:
    """What running a line gives: ``status`` 200 with ``images`` billed, or an error answer."""

    status: int
    images: int = 0
    error: ApiError | None = None
    usage: tuple[int, int] = (0, 0)
    """(input, output) tokens of a success."""


def _line_error(number: int, message: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid file format for Batch API. Line {number}: {message}",
        param="file",
        code="invalid_file_format",
    )


def parse_input_file(data: bytes, *, max_lines: int, max_bytes: int) -> list[InputLine]:
    """Check an uploaded batch input file line by line; raise the 400 the upload gets."""
    if len(data) > max_bytes:
        raise ApiError(
            400,
            f"File is too large ({len(data)} bytes): batch input files may have at most "
            f"{max_bytes} bytes.",
            param="file",
            code="file_too_large",
        )
    lines: list[InputLine] = []
    seen: set[str] = set()
    offset = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        length = len(raw)
        start, offset = offset, offset + length + 1
        if not raw.strip():
            continue
        if len(lines) == max_lines:
            raise ApiError(
                400,
                f"File has more than {max_lines} requests: batch input files may hold at most "
                f"{max_lines}.",
                param="file",
                code="too_many_requests",
            )
        line = _check_line(raw, number, seen)
        lines.append(InputLine(number, line["custom_id"], line["url"], start, length))
    if not lines:
        raise _line_error(1, "the file has no requests.")
    return lines


def _check_line(raw: bytes, number: int, seen: set[str]) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _line_error(number, "this line is not parseable as valid JSON.") from None
    if not isinstance(line, dict):
        raise _line_error(number, "each line must be a JSON object.")
    unknown = sorted(set(line) - {"custom_id", "method", "url", "body"})
    if unknown:
        raise _line_error(number, f"unknown fields {unknown}.")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _line_error(number, "'custom_id' must be a non-empty string.")
    if custom_id in seen:
        raise _line_error(number, f"the custom_id {custom_id!r} is used more than once.")
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise _line_error(number, "'method' must be 'POST'.")
    if line.get("url") not in BATCH_ENDPOINTS:
        raise _line_error(
            number, f"'url' must be one of {', '.join(BATCH_ENDPOINTS)}, not {line.get('url')!r}."
        )
    if not isinstance(line.get("body"), dict):
        raise _line_error(number, "'body' must be a JSON object (the request body).")
    return line


def endpoint_errors(lines: Sequence[InputLine], endpoint: str) -> list[dict[str, Any]]:
    """``errors.data`` of a batch refused because lines address another endpoint than its own."""
    return [
        {
            "code": "invalid_url",
            "message": f"The URL provided for this request does not match the batch endpoint "
            f"{endpoint}.",
            "param": "url",
            "line": line.number,
        }
        for line in lines
        if line.url != endpoint
    ][:1000]


def draw(seed: int | None, submission: int, custom_id: str) -> float:
    """A uniform draw in [0, 1) that depends only on its arguments (stable across polls)."""
    digest = hashlib.sha256(f"{seed}\x00{submission}\x00{custom_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Timeline:
    """When a batch changes status: 10 % of ``completion_s`` validating, 80 % in progress (lines
    done at an even pace), 10 % finalizing; expiry ``window_s`` after creation; cancelling takes
    as long as finalizing."""

    created_at: float
    completion_s: float
    window_s: float
    refused: bool = False
    cancelled_at: float | None = None

    @property
    def in_progress_at(self) -> float:
        return self.created_at + self.completion_s * _VALIDATING

    @property
    def finalizing_at(self) -> float:
        return self.created_at + self.completion_s * (1 - _FINALIZING)

    @property
    def completed_at(self) -> float:
        return self.created_at + self.completion_s

    @property
    def expires_at(self) -> float:
        return self.created_at + self.window_s

    @property
    def cancel_done_at(self) -> float | None:
        if self.cancelled_at is None:
            return None
        return self.cancelled_at + self.completion_s * _FINALIZING

    def progress(self, now: float) -> float:
        """Fraction of lines run by ``now`` (frozen at cancellation and at expiry)."""
        if self.refused or now <= self.created_at:
            return 0.0
        stop = min(now, self.expires_at)
        if self.cancelled_at is not None:
            stop = min(stop, self.cancelled_at)
        running = self.finalizing_at - self.in_progress_at
        if running <= 0:
            return 1.0 if stop >= self.in_progress_at else 0.0
        return min(max((stop - self.in_progress_at) / running, 0.0), 1.0)

    def done(self, total: int, now: float) -> int:
        return math.floor(total * self.progress(now) + 1e-9)

    def status(self, now: float) -> BatchStatus:
        """At creation a batch is always "validating", as the API answers the create call."""
        if now <= self.created_at:
            return "validating"
        if self.refused:
            return "validating" if now < self.in_progress_at else "failed"
        finished = self.completed_at if self.completed_at < self.expires_at else None
        cancel_done = self.cancel_done_at
        if self.cancelled_at is not None and cancel_done is not None:
            if finished is not None and finished <= self.cancelled_at:
                return "completed"
            return "cancelling" if now <= self.cancelled_at or now < cancel_done else "cancelled"
        if finished is None and now >= self.expires_at:
            return "expired"
        if now < self.in_progress_at:
            return "validating"
        if now < self.finalizing_at:
            return "in_progress"
        return "finalizing" if now < self.completed_at else "completed"

    def stamps(self, now: float) -> dict[str, int | None]:
        """The ``*_at`` fields of the batch object, as reached by ``now``."""
        status = self.status(now)

        def at(moment: float | None, reached: bool) -> int | None:
            return int(moment) if moment is not None and reached else None

        ran = not self.refused and status not in ("validating",)
        return {
            "in_progress_at": at(self.in_progress_at, ran and now >= self.in_progress_at),
            "finalizing_at": at(
                self.finalizing_at, status in ("finalizing", "completed") and not self.refused
            ),
            "completed_at": at(self.completed_at, status == "completed"),
            "failed_at": at(self.in_progress_at, status == "failed"),
            "expired_at": at(self.expires_at, status == "expired"),
            "cancelling_at": at(self.cancelled_at, status in ("cancelling", "cancelled")),
            "cancelled_at": at(self.cancel_done_at, status == "cancelled"),
        }


def batch_json(
    *,
    batch_id: str,
    endpoint: str,
    input_file_id: str,
    model: str | None,
    metadata: Mapping[str, str] | None,
    timeline: Timeline,
    now: float,
    counts: Mapping[str, int],
    errors: Sequence[Mapping[str, Any]],
    files: Mapping[str, str | None],
    usage: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``Batch`` object as the API shows it at ``now``. Fields without a value yet are left
    out (the schema types them as non-nullable), except ``metadata``."""
    shown = {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "model": model,
        "errors": {"object": "list", "data": list(errors)} if errors else None,
        "input_file_id": input_file_id,
        "completion_window": "24h",
        "status": timeline.status(now),
        "output_file_id": files.get("output"),
        "error_file_id": files.get("error"),
        "created_at": int(timeline.created_at),
        "expires_at": int(timeline.expires_at),
        **timeline.stamps(now),
        "request_counts": dict(counts),
        "usage": dict(usage) if usage is not None else None,
    }
    return {
        **{key: value for key, value in shown.items() if value is not None},
        "metadata": dict(metadata) if metadata is not None else None,
    }


def list_json(objects: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(objects),
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }


def output_line(line_id: str, custom_id: str, request_id: str, body: bytes) -> bytes:
    """A success line; ``body`` (an ImagesResponse, megabytes of base64) is spliced in as is."""
    head = json.dumps({"id": line_id, "custom_id": custom_id}, separators=(",", ":"))[:-1]
    rid = json.dumps(request_id)
    return (
        f'{head},"response":{{"status_code":200,"request_id":{rid},"body":'.encode()
        + body
        + b'},"error":null}\n'
    )


def error_line(line_id: str, custom_id: str, request_id: str, error: ApiError) -> bytes:
    """A line that got an HTTP error answer (moderation, invalid parameter, server error)."""
    payload = {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": error.status, "request_id": request_id, "body": error.body()},
        "error": None,
    }
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def not_run_line(line_id: str, custom_id: str, reason: Literal["expired", "cancelled"]) -> bytes:
    """A line the batch never ran, because it expired or was cancelled first."""
    message = (
        "This request could not be executed before the completion window expired."
        if reason == "expired"
        else "This request was not executed because the batch was cancelled."
    )
    payload = {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": f"batch_{reason}", "message": message},
    }
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"
