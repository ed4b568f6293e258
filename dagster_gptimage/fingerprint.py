"""Request fingerprints: the cache key deciding whether a stored image already answers a request.

Two requests share a fingerprint only if every input the provider sees is equal: each parameter,
the prompt, the bytes and order of input images, the mask. Whether the image came from the emulator
is part of the key too, so an emulated image can never be served as if a real model had made it.
A prompt row's ``revision`` joins the key when it has one: bumping it regenerates that row's image
although nothing the provider sees changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dagster_gptimage.models import REQUEST_FIELDS, EditRequest, ImageRequest

__all__ = ["FINGERPRINT_VERSION", "request_fingerprint"]

FINGERPRINT_VERSION = "1"
"""Bump when the canonical form changes, so that old cache entries stop matching."""


def _canonical(request: ImageRequest, *, emulated: bool, revision: str | None) -> dict[str, Any]:
    edit = isinstance(request, EditRequest)
    document: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "kind": "edit" if edit else "generate",
        "params": request.model_dump(mode="json", include=set(REQUEST_FIELDS)),
        "prompt": request.prompt,
        "emulated": bool(emulated),
    }
    if isinstance(request, EditRequest):
        document["images"] = [image.sha256 for image in request.images]
        document["mask"] = request.mask.sha256 if request.mask is not None else None
    if revision is not None:
        # Absent rather than null when there is none: fingerprints of existing caches stay valid.
        document["revision"] = revision
    return document


def request_fingerprint(
    request: ImageRequest, *, emulated: bool, revision: str | None = None
) -> str:
    """sha256 hex of the canonical JSON (sorted keys, compact separators) of ``request``.

    ``revision`` (a prompt row's ``PromptRow.revision``) makes the fingerprint differ from every
    other revision's; None gives the fingerprint the request had before revisions existed.
    """
    text = json.dumps(
        _canonical(request, emulated=emulated, revision=revision),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()
