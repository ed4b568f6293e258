"""The emulator's own endpoints under ``/_emulator/``: gateway file downloads, stats, and the
controls tests and benchmarks use over HTTP (clock, reset, fault script, configuration).

No authentication: servers only listen on loopback.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from pydantic import ValidationError

from dagster_gptimage.images import CONTENT_TYPES

from ._messages import EmulatorRequest, EmulatorResponse, json_response
from ._wire import ApiError

if TYPE_CHECKING:
    from ._core import Emulator

__all__ = ["control"]

_FILE_ROUTE = re.compile(r"/_emulator/files/(?P<name>[0-9a-f]+\.[a-z]+)")


def control(emulator: Emulator, request: EmulatorRequest, request_id: str) -> EmulatorResponse:
    """Answer a request under ``/_emulator/``; bad bodies are 400s, unknown routes 404s."""
    method = request.method.upper()
    path = request.path.rstrip("/")
    file_match = _FILE_ROUTE.fullmatch(path)
    try:
        if file_match and method in ("GET", "HEAD"):
            return _download(emulator, file_match.group("name"), request_id)
        if path == "/_emulator/stats" and method == "GET":
            return json_response(200, emulator._stats_payload(), request_id)
        if method == "POST" and path in _COMMANDS:
            return json_response(200, _COMMANDS[path](emulator, request.body), request_id)
    except (ValueError, ValidationError) as error:
        return json_response(400, ApiError(400, str(error)).body(), request_id)
    return json_response(
        404, ApiError(404, f"Invalid URL ({method} {request.path})").body(), request_id
    )


def _advance(emulator: Emulator, body: bytes) -> object:
    advance = json.loads(body or b"{}").get("advance", 0)
    if not isinstance(advance, (int, float)) or advance < 0:
        raise ValueError('the body must be {"advance": seconds >= 0}')
    emulator.advance_clock(float(advance))
    return {"advanced_s": advance}


def _reset(emulator: Emulator, body: bytes) -> object:
    emulator.reset()
    return {"ok": True}


def _script(emulator: Emulator, body: bytes) -> object:
    faults = json.loads(body or b"[]")
    if not isinstance(faults, list):
        raise ValueError("the body must be a JSON list of fault kinds")
    emulator.script(faults)
    return {"pending_faults": list(emulator.pending_faults)}


def _configure(emulator: Emulator, body: bytes) -> object:
    changes = json.loads(body or b"{}")
    if not isinstance(changes, dict):
        raise ValueError("the body must be a JSON object of EmulatorConfig fields")
    return emulator.configure(**changes).model_dump(exclude={"api_key"})


_COMMANDS = {
    "/_emulator/clock": _advance,
    "/_emulator/reset": _reset,
    "/_emulator/script": _script,
    "/_emulator/config": _configure,
}


def _download(emulator: Emulator, name: str, request_id: str) -> EmulatorResponse:
    stored = emulator._take_download(name)
    if stored is None:
        return json_response(404, ApiError(404, "File not found or expired.").body(), request_id)
    data, fmt = stored
    config = emulator.config
    media_type = config.file_content_type or CONTENT_TYPES[fmt]
    body = data + b"\0" * config.file_padding_bytes
    return EmulatorResponse(200, (("content-type", media_type), ("x-request-id", request_id)), body)
