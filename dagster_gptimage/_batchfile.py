"""Batch API files, with no I/O: input JSONL lines from requests, and outcomes from result lines.

A line's ``custom_id`` carries the request fingerprint and the partition key, so a result maps back
to its partition even after the process that submitted the batch is gone, and a result whose
fingerprint no longer matches the partition's current request can be told apart (its prompt or
parameters changed since). Keys of any content and length are safe: short keys travel inline,
base64url-encoded; long ones as their sha256, which :func:`custom_id_index` resolves from the keys
the caller knows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dagster_gptimage._providers import (
    ImagesBody,
    ProviderSettings,
    decode_b64,
    edit_json_body,
    error_from_response,
    generation_body,
)
from dagster_gptimage.errors import (
    GPTImageError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
)
from dagster_gptimage.models import EditRequest, ImageRequest, Usage
from dagster_gptimage.pricing import ModelPrices, cost_of_usage

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_LINES",
    "BatchEndpoint",
    "BatchFile",
    "BatchItem",
    "CustomId",
    "FailureReason",
    "LineFailure",
    "LineResult",
    "LineSuccess",
    "batch_endpoint",
    "batch_files",
    "batch_line",
    "custom_id_index",
    "decode_custom_id",
    "encode_custom_id",
    "parse_result_line",
]

BATCH_MAX_LINES = 50_000
BATCH_MAX_BYTES = 200 * 1024 * 1024
"""OpenAI's limits per input file (requests, bytes)."""

BatchEndpoint = Literal["/v1/images/generations", "/v1/images/edits"]
FailureReason = Literal["moderation", "invalid", "provider error", "expired", "cancelled"]

_CUSTOM_ID_VERSION = "g1"
_MAX_INLINE_KEY = 400
"""Longest base64url key kept inline: custom ids stay well under 512 characters."""


@dataclass(frozen=True)
class CustomId:
    """A decoded ``custom_id``. ``partition_key`` is None when the key was too long to travel
    inline: match ``key_sha256`` against the known keys (:func:`custom_id_index` does)."""

    fingerprint: str
    key_sha256: str
    partition_key: str | None


def _key_sha256(partition_key: str) -> str:
    return hashlib.sha256(partition_key.encode("utf-8", "surrogatepass")).hexdigest()


def encode_custom_id(partition_key: str, fingerprint: str) -> str:
    """``g1-<fingerprint>-k<base64url key>`` or, for long keys, ``g1-<fingerprint>-h<sha256>``."""
    if not fingerprint or "-" in fingerprint:
        raise ValueError(f"fingerprint {fingerprint!r} must be a non-empty string without '-'")
    raw = partition_key.encode("utf-8", "surrogatepass")
    inline = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    if len(inline) <= _MAX_INLINE_KEY:
        return f"{_CUSTOM_ID_VERSION}-{fingerprint}-k{inline}"
    return f"{_CUSTOM_ID_VERSION}-{fingerprint}-h{_key_sha256(partition_key)}"


def decode_custom_id(custom_id: str) -> CustomId:
    """The parts of a custom id made by :func:`encode_custom_id`; ``ValueError`` for any other."""
    version, _, rest = custom_id.partition("-")
    fingerprint, _, key_part = rest.partition("-")
    if version != _CUSTOM_ID_VERSION or not fingerprint or not key_part:
        raise ValueError(f"custom_id {custom_id!r} was not made by dagster-gptimage")
    mode, payload = key_part[0], key_part[1:]
    if mode == "h" and len(payload) == 64:
        return CustomId(fingerprint, payload, None)
    if mode != "k":
        raise ValueError(f"custom_id {custom_id!r} has an unknown key encoding")
    try:
        padded = payload + "=" * (-len(payload) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        key = raw.decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise ValueError(f"custom_id {custom_id!r} has a damaged partition key") from None
    return CustomId(fingerprint, _key_sha256(key), key)


@dataclass(frozen=True)
class BatchItem:
    """One request to send in a batch, for one partition."""

    partition_key: str
    request: ImageRequest
    fingerprint: str

    @property
    def custom_id(self) -> str:
        return encode_custom_id(self.partition_key, self.fingerprint)


def custom_id_index(items: Iterable[BatchItem]) -> dict[str, BatchItem]:
    """custom_id → item, to map result lines back (works for hashed long keys too)."""
    index: dict[str, BatchItem] = {}
    for item in items:
        custom_id = item.custom_id
        if custom_id in index:
            raise ValueError(
                f"partition {item.partition_key!r} appears twice with the same request"
            )
        index[custom_id] = item
    return index


def batch_endpoint(request: ImageRequest) -> BatchEndpoint:
    return "/v1/images/edits" if isinstance(request, EditRequest) else "/v1/images/generations"


def batch_line(item: BatchItem, settings: ProviderSettings) -> bytes:
    """One JSONL input line (with its newline). Only OpenAI (and the emulator) have this API."""
    if settings.provider not in ("openai", "emulator"):
        raise ValueError(
            f"the Batch API is OpenAI's: provider={settings.provider!r} cannot run batches"
        )
    request = item.request
    if isinstance(request, EditRequest):
        body = edit_json_body(request, settings)
    else:
        body = generation_body(request, settings)
    line = {
        "custom_id": item.custom_id,
        "method": "POST",
        "url": batch_endpoint(request),
        "body": body,
    }
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


@dataclass
class BatchFile:
    """One input file: lines for a single endpoint, within the line and byte limits."""

    endpoint: BatchEndpoint
    chunks: list[bytes] = field(default_factory=list, repr=False)
    custom_ids: list[str] = field(default_factory=list, repr=False)
    size: int = 0

    @property
    def lines(self) -> int:
        return len(self.custom_ids)

    @property
    def content(self) -> bytes:
        return b"".join(self.chunks)

    def __repr__(self) -> str:
        return f"BatchFile(endpoint={self.endpoint!r}, lines={self.lines}, size={self.size})"


def batch_files(
    items: Iterable[BatchItem],
    settings: ProviderSettings,
    *,
    max_lines: int = BATCH_MAX_LINES,
    max_bytes: int = BATCH_MAX_BYTES,
) -> Iterator[BatchFile]:
    """Input files for ``items``, one endpoint each, split before ``max_lines`` or ``max_bytes``.

    Lazy: a file is yielded as soon as it is full, so at most one file per endpoint is held in
    memory while the caller uploads. A single line above ``max_bytes`` is a ``ValueError``.
    """
    open_files: dict[BatchEndpoint, BatchFile] = {}
    seen: set[str] = set()
    for item in items:
        line = batch_line(item, settings)
        custom_id = item.custom_id
        if custom_id in seen:
            raise ValueError(
                f"partition {item.partition_key!r} appears twice with the same request"
            )
        seen.add(custom_id)
        if len(line) > max_bytes:
            raise ValueError(
                f"the request of partition {item.partition_key!r} is {len(line)} bytes as a batch "
                f"line, more than an input file may hold ({max_bytes})"
            )
        endpoint = batch_endpoint(item.request)
        current = open_files.get(endpoint)
        if current is not None and current.size + len(line) > max_bytes:
            yield open_files.pop(endpoint)
            current = None
        if current is None:
            current = open_files[endpoint] = BatchFile(endpoint)
        current.chunks.append(line)
        current.custom_ids.append(custom_id)
        current.size += len(line)
        if current.lines >= max_lines:
            yield open_files.pop(endpoint)
    yield from open_files.values()


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineSuccess:
    """A line that produced images (billed, at the batch rate)."""

    custom_id: str
    images_b64: tuple[str, ...] = field(repr=False)
    usage: Usage
    request_id: str | None
    body: ImagesBody = field(repr=False)

    ok: Literal[True] = True

    def images(self) -> list[bytes]:
        """The decoded image bytes (decode on demand: results may be read in bulk)."""
        return [decode_b64(item) for item in self.images_b64]

    def cost(self, prices: ModelPrices) -> float:
        """USD for this line at the batch rate of ``prices``."""
        return cost_of_usage(self.usage, prices, batch=True)


@dataclass(frozen=True)
class LineFailure:
    """A line that gave no image. Only "provider error", "expired" and "cancelled" may succeed
    when sent again. ``billed`` is True only for a 200 whose body was unusable: error answers and
    lines that never ran are not charged."""

    custom_id: str
    reason: FailureReason
    error: GPTImageError
    request_id: str | None = None
    billed: bool = False

    ok: Literal[False] = False

    @property
    def retryable(self) -> bool:
        return self.reason in ("provider error", "expired", "cancelled")


LineResult = LineSuccess | LineFailure


def parse_result_line(line: bytes | str) -> LineResult:
    """Interpret one line of a batch's output or error file; ``ValueError`` if it is not one."""
    try:
        raw = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"batch result line is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("custom_id"), str):
        raise ValueError("batch result line has no custom_id")
    custom_id: str = raw["custom_id"]
    response = raw.get("response")
    if not isinstance(response, Mapping):
        return _not_run(custom_id, raw.get("error"))
    status = response.get("status_code")
    request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
    body = response.get("body")
    if isinstance(status, int) and 200 <= status < 300:
        return _success(custom_id, body, request_id)
    encoded = json.dumps(body).encode() if body is not None else b""
    headers = {"x-request-id": request_id} if request_id else {}
    error = error_from_response(
        status if isinstance(status, int) else 500, headers, encoded, "openai"
    )
    return LineFailure(custom_id, _reason(error), error, request_id)


def _reason(error: GPTImageError) -> FailureReason:
    if isinstance(error, ModerationBlockedError):
        return "moderation"
    if isinstance(error, InvalidRequestError):
        return "invalid"
    return "provider error"


def _not_run(custom_id: str, error: Any) -> LineFailure:
    details = error if isinstance(error, Mapping) else {}
    code = str(details.get("code") or "batch_error")
    message = str(details.get("message") or "the batch did not run this request")
    reason: FailureReason = (
        "expired"
        if code == "batch_expired"
        else "cancelled"
        if code == "batch_cancelled"
        else "provider error"
    )
    return LineFailure(custom_id, reason, ProviderError(message, code=code, provider="openai"))


def _success(custom_id: str, body: Any, request_id: str | None) -> LineResult:
    try:
        parsed = ImagesBody.model_validate(body)
    except Exception as exc:
        parsed = None
        problem = f"the body does not look like an images response: {exc}"
    else:
        images = tuple(datum.b64_json for datum in parsed.data if datum.b64_json)
        if images and len(images) == len(parsed.data):
            usage = Usage.from_api(parsed.usage if isinstance(parsed.usage, Mapping) else None)
            return LineSuccess(custom_id, images, usage, request_id, parsed)
        problem = "the body has no base64 images in 'data'"
    error = ProviderError(
        f"batch line {custom_id!r} succeeded but {problem}",
        code="invalid_batch_output",
        request_id=request_id,
        provider="openai",
    )
    return LineFailure(custom_id, "provider error", error, request_id, billed=True)
