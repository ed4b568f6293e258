"""Prompt rows as data: each row's data version is a hash of what it puts into the request."""

from __future__ import annotations

import hashlib
import json

from dagster_gptimage.prompts import PromptRow

__all__ = ["row_data_version"]


def row_data_version(row: PromptRow, mask_column: str | None = None) -> str:
    """A short, stable hash of the row's prompt, request parameters, revision and mask path.

    Columns that do not reach the request (captions, notes) are left out, so editing them marks
    nothing stale.
    """
    payload = {
        "prompt": row.prompt,
        "params": dict(sorted(row.params.items())),
        "revision": getattr(row, "revision", None),
        "mask": row.extra.get(mask_column) if mask_column else None,
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]
