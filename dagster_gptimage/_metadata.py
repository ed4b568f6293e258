"""What a materialized image partition tells Dagster: metadata, data-version tags, run summary.

Numbers are typed (``MetadataValue.float``/``int``) so that Dagster plots cost and latency over time.
The data-version tags follow the layout Dagster writes for its own outputs
(``dagster/execution/plan/execute_step.py``), so its staleness resolver understands images that were
materialized one partition at a time: an image's data version is its sha256, and an edit records, per
source, the data version it consumed and the storage id of that source's materialization event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from dagster_gptimage import _dagster
from dagster_gptimage.images import (
    PREVIEW_MAX_BYTES,
    PREVIEW_MAX_SIDE,
    make_preview,
    thumbnail_data_uri,
)
from dagster_gptimage.storage import ImageRecord

__all__ = [
    "INLINE_MARKDOWN_LIMIT",
    "LATENCY_DECIMALS",
    "RESERVED_METADATA_KEYS",
    "InputVersion",
    "data_version_tags",
    "partition_metadata",
    "percentile",
    "preview_markdown",
    "preview_value",
    "run_summary",
    "safe_preview",
    "safe_preview_bytes",
]

LATENCY_DECIMALS = 3
"""Latency metadata is shown to the millisecond; sidecars keep the measured value."""

RESERVED_METADATA_KEYS = frozenset(
    {
        "cost_usd",
        "latency_s",
        "attempts",
        "input_tokens",
        "output_tokens",
        "model",
        "provider",
        "size",
        "quality",
        "output_format",
        "width",
        "height",
        "bytes",
        "sha256",
        "cached",
        "prompt",
        "revised_prompt",
        "request_id",
        "path",
        "fingerprint",
        "possibly_billed_attempts",
        "sources",
        "mask",
        "preview",
        "row",
        "original_cost_usd",
        "mode",
        "batch_id",
    }
)
"""Metadata keys this package writes; a prompt-table column with one of these names goes under
``row`` instead of overwriting it."""


@dataclass(frozen=True)
class InputVersion:
    """The version of one upstream image an edit consumed, for Dagster's provenance tags."""

    asset_key: dg.AssetKey
    data_version: str
    storage_id: int | None


INLINE_MARKDOWN_LIMIT = 1000
"""Dagster's UI shows a Markdown metadata value inline only when it has fewer characters than this
(``MetadataEntry.tsx``: ``mdStr.length < 1000``); a longer one hides behind a "[Show Markdown]"
button. Its Markdown sanitizer does allow ``data:`` image sources."""


def preview_markdown(data: bytes, *, max_side: int = PREVIEW_MAX_SIDE) -> dg.MetadataValue:
    """A thumbnail the Dagster UI renders inline: Markdown with a ``data:`` URI image.

    The largest side up to ``max_side`` whose Markdown fits :data:`INLINE_MARKDOWN_LIMIT`
    (:data:`~dagster_gptimage.images.PREVIEW_MAX_BYTES`), so the image shows in the partition view
    without a click; the side is estimated from the first thumbnail's bytes per pixel, not found by
    trial. A thumbnail that fits at no size keeps ``max_side`` (the UI then shows it behind
    "[Show Markdown]"). What the UI renders is verified in a real browser by ``tests/test_ui.py``;
    if it ever changes, only this changes.
    """
    return preview_value(make_preview(data, max_side=max_side, max_bytes=PREVIEW_MAX_BYTES))


def preview_value(preview: bytes | str) -> dg.MetadataValue:
    """The Markdown of a preview made already: its bytes (:func:`~dagster_gptimage.images.make_preview`)
    or its ``data:`` URI (kept in a sidecar)."""
    uri = preview if isinstance(preview, str) else thumbnail_data_uri(preview)
    return dg.MetadataValue.md(f"![preview]({uri})")


def safe_preview(data: bytes) -> dg.MetadataValue | None:
    """The preview, or None when the image cannot be previewed (it is still stored and checked)."""
    try:
        return preview_markdown(data)
    except Exception:
        return None


def safe_preview_bytes(data: bytes) -> bytes | None:
    """The bytes of :func:`preview_markdown`'s thumbnail, or None when the image cannot be
    previewed; for images that arrive without the preview their verification made."""
    try:
        return make_preview(data, max_bytes=PREVIEW_MAX_BYTES)
    except Exception:
        return None


def data_version_tags(
    sha256: str, *, code_version: str, inputs: Sequence[InputVersion] = ()
) -> dict[str, str]:
    """Tags making ``sha256`` the partition's data version, with the provenance of ``inputs``.

    Marked user-provided so that Dagster reports "has a new dependency data version" (it compares
    versions rather than materialization times).
    """
    tags = {
        _dagster.CODE_VERSION_TAG: code_version,
        _dagster.DATA_VERSION_TAG: sha256,
        _dagster.DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
    }
    for source in inputs:
        tags[_dagster.get_input_data_version_tag(source.asset_key)] = source.data_version
        tags[_dagster.get_input_event_pointer_tag(source.asset_key)] = (
            str(source.storage_id) if source.storage_id is not None else _dagster.NULL_EVENT_POINTER
        )
    return tags


def partition_metadata(
    record: ImageRecord,
    *,
    cached: bool,
    preview: dg.MetadataValue | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of one partition's materialization, from the sidecar record as written.

    ``cost_usd``, ``latency_s``, ``attempts`` and ``possibly_billed_attempts`` describe this
    materialization: a cache hit cost nothing (``original_cost_usd`` keeps what the image cost when
    it was made). Everything else describes the image (``mode`` and ``batch_id``: how it was
    requested).
    """
    usage = record.usage or {}
    params = record.params or {}
    input_tokens = int(usage.get("input_text_tokens", 0)) + int(usage.get("input_image_tokens", 0))
    output_tokens = int(usage.get("output_image_tokens", 0)) + int(
        usage.get("output_text_tokens", 0)
    )
    # The preview leads so that the UI shows the image above the numbers.
    metadata: dict[str, Any] = {} if preview is None else {"preview": preview}
    metadata |= {
        "cost_usd": dg.MetadataValue.float(0.0 if cached else float(record.cost_usd)),
        "latency_s": dg.MetadataValue.float(
            0.0 if cached else round(record.latency_s, LATENCY_DECIMALS)
        ),
        "attempts": dg.MetadataValue.int(0 if cached else int(record.attempts)),
        "possibly_billed_attempts": dg.MetadataValue.int(
            0 if cached else int(record.possibly_billed_attempts)
        ),
        "input_tokens": dg.MetadataValue.int(input_tokens),
        "output_tokens": dg.MetadataValue.int(output_tokens),
        "model": dg.MetadataValue.text(record.model),
        "provider": dg.MetadataValue.text(record.provider),
        "size": dg.MetadataValue.text(str(params.get("size", "auto"))),
        "quality": dg.MetadataValue.text(str(params.get("quality", "auto"))),
        "output_format": dg.MetadataValue.text(record.format),
        "width": dg.MetadataValue.int(record.width),
        "height": dg.MetadataValue.int(record.height),
        "bytes": dg.MetadataValue.int(record.bytes),
        "sha256": dg.MetadataValue.text(record.sha256),
        "cached": dg.MetadataValue.bool(cached),
        "prompt": dg.MetadataValue.text(record.prompt),
        "request_id": (
            dg.MetadataValue.text(record.request_id)
            if record.request_id
            else dg.MetadataValue.null()
        ),
        "path": dg.MetadataValue.path(record.path),
        "fingerprint": dg.MetadataValue.text(record.fingerprint),
    }
    metadata["mode"] = dg.MetadataValue.text(record.mode or "sync")
    if record.batch_id:
        metadata["batch_id"] = dg.MetadataValue.text(record.batch_id)
    if cached:
        metadata["original_cost_usd"] = dg.MetadataValue.float(float(record.cost_usd))
    if record.revised_prompt:
        metadata["revised_prompt"] = dg.MetadataValue.text(record.revised_prompt)
    if record.sources:
        metadata["sources"] = dg.MetadataValue.json(
            [source.model_dump(mode="json") for source in record.sources]
        )
    if record.mask is not None:
        metadata["mask"] = dg.MetadataValue.json(record.mask.model_dump(mode="json"))
    metadata.update(_row_metadata(extra or {}))
    return metadata


def _row_metadata(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Extra prompt-table columns under their own names; colliding ones together under ``row``."""
    own: dict[str, Any] = {}
    colliding: dict[str, Any] = {}
    for name, value in extra.items():
        target = colliding if name in RESERVED_METADATA_KEYS or name.startswith("dagster/") else own
        target[name] = value
    metadata: dict[str, Any] = {name: _metadata_value(value) for name, value in own.items()}
    if colliding:
        metadata["row"] = dg.MetadataValue.json(colliding)
    return metadata


def _metadata_value(value: Any) -> dg.MetadataValue:
    if value is None:
        return dg.MetadataValue.null()
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    return dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-th percentile (0-100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_summary(
    asset_key: dg.AssetKey,
    *,
    made: int,
    cached: int,
    failed: int,
    cost_usd: float,
    latencies: Sequence[float],
    requests: int = 0,
    possibly_billed: int = 0,
    images_per_minute: float | None = None,
    rate_limits: Any = None,
) -> str:
    """One log line a person can read at a glance at the end of a run.

    ``requests`` counts every request sent, refused ones (moderation, invalid) included;
    ``possibly_billed`` is the part of them that may be on the bill; ``images_per_minute`` is the
    rate the run achieved from its first request to its last image (None: nothing was requested);
    ``rate_limits`` (``answers_429``, ``wait_s``) what the provider's rate limit cost the run.
    """
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    latency = f"latency p50 {p50:.2f} s, p95 {p95:.2f} s" if p50 is not None else "no images made"
    rate = f"; {images_per_minute:.1f} images/min" if images_per_minute is not None else ""
    if rate_limits is not None:
        rate += (
            f"; {rate_limits.answers_429} answers 429 (rate limit), "
            f"{rate_limits.wait_s:.1f} s waited for it"
        )
    return (
        f"{asset_key.to_user_string()}: {made} images made, {cached} cached, {failed} failed; "
        f"{requests} requests sent ({possibly_billed} possibly billed); "
        f"total cost ${cost_usd:.4f}; {latency}{rate}"
    )
