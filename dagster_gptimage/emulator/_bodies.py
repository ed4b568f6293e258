"""Success answers: the images rendered for a call and the ImagesResponse (or event stream) that
carries them, with the usage the real API would report."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from dagster_gptimage.models import EditRequest
from dagster_gptimage.pricing import estimate_usage

from ._render import RenderSpec, render
from ._wire import Call

if TYPE_CHECKING:
    from dagster_gptimage.models import Usage

__all__ = ["generate", "render_cached", "success_body", "usage_json"]

_SCHEMA_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
_SCHEMA_FORMATS = frozenset({"png", "webp", "jpeg"})
_B64_DATA_MARKER = "\x00b64-data\x00"
"""Stands in for ``data`` while the rest of a response is JSON-encoded: base64 needs no escaping,
and letting ``json.dumps`` scan megabytes of it for characters to escape took longer than encoding
the image, on the server's event loop."""
_RENDER_CACHE: OrderedDict[RenderSpec, bytes] = OrderedDict()
_RENDER_CACHE_LOCK = threading.Lock()
_RENDER_CACHE_SIZE = 8


def render_specs(call: Call) -> list[RenderSpec]:
    request = call.request
    edit = request if isinstance(request, EditRequest) else None
    inputs = (edit.images[0].data,) if edit else ()
    mask = edit.mask.data if edit and edit.mask else None
    return [
        RenderSpec(
            prompt=request.prompt,
            width=call.width,
            height=call.height,
            output_format=request.output_format,
            compression=request.output_compression,
            transparent=call.background == "transparent",
            inputs=inputs,
            mask=mask,
            index=index,
        )
        for index in range(request.n)
    ]


def render_cached(spec: RenderSpec) -> bytes:
    """Batches often repeat a prompt across lines; rendering is deterministic, so reuse it."""
    with _RENDER_CACHE_LOCK:
        cached = _RENDER_CACHE.get(spec)
        if cached is not None:
            _RENDER_CACHE.move_to_end(spec)
            return cached
    image = render(spec)
    with _RENDER_CACHE_LOCK:
        _RENDER_CACHE[spec] = image
        while len(_RENDER_CACHE) > _RENDER_CACHE_SIZE:
            _RENDER_CACHE.popitem(last=False)
    return image


async def generate(call: Call, latency: float) -> list[bytes]:
    """Render every image in worker threads while the latency elapses, so rendering is hidden
    inside the latency instead of adding to it."""
    specs = render_specs(call)
    images: list[bytes] = [b""] * len(specs)

    async def render_one(index: int) -> None:
        images[index] = await anyio.to_thread.run_sync(render, specs[index])

    async with anyio.create_task_group() as group:
        for index in range(len(specs)):
            group.start_soon(render_one, index)
        await anyio.sleep(latency)
    return images


def success_body(
    call: Call, images: Sequence[bytes], store: Callable[[bytes, str], str]
) -> tuple[bytes, str]:
    """The body and media type of a served call; ``store`` keeps an image (data, format) and
    returns its download URL, for ``response_format="url"``."""
    request = call.request
    fmt = request.output_format
    size = f"{call.width}x{call.height}"
    usage = estimate_usage(call.concrete_request)
    if call.stream:
        return _stream_body(call, images, size), "text/event-stream"
    encoded: list[str] = []
    data: Any
    if call.response_format == "url":
        data = [{"url": store(image, fmt)} for image in images]
    else:
        encoded = [base64.b64encode(image).decode("ascii") for image in images]
        data = _B64_DATA_MARKER
    payload: dict[str, Any] = {
        "created": int(time.time()),
        "data": data,
        "background": call.background,
    }
    if fmt in _SCHEMA_FORMATS:
        payload["output_format"] = fmt
    payload["quality"] = call.quality
    if size in _SCHEMA_SIZES:
        payload["size"] = size
    payload["usage"] = usage_json(usage)
    text = json.dumps(payload, separators=(",", ":"))
    if encoded:
        items = ",".join(f'{{"b64_json":"{item}"}}' for item in encoded)
        text = text.replace(json.dumps(_B64_DATA_MARKER), f"[{items}]", 1)
    return text.encode(), "application/json"


def _stream_body(call: Call, images: Sequence[bytes], size: str) -> bytes:
    """Server-sent events like the real stream; partial images repeat the final image."""
    prefix = "image_edit" if call.endpoint == "edits" else "image_generation"
    single = estimate_usage(call.concrete_request.model_copy(update={"n": 1}))
    common = {
        "created_at": int(time.time()),
        "size": size if size in _SCHEMA_SIZES else "auto",
        "quality": call.quality,
        "background": call.background,
        "output_format": call.request.output_format,
    }
    chunks: list[str] = []
    for image in images:
        encoded = base64.b64encode(image).decode("ascii")
        for index in range(call.partial_images):
            event = {
                "type": f"{prefix}.partial_image",
                "b64_json": encoded,
                **common,
                "partial_image_index": index,
            }
            chunks.append(_sse(event))
        event = {
            "type": f"{prefix}.completed",
            "b64_json": encoded,
            **common,
            "usage": usage_json(single),
        }
        chunks.append(_sse(event))
    return "".join(chunks).encode()


def _sse(event: Mapping[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def usage_json(usage: Usage) -> dict[str, Any]:
    """``usage`` as the API writes it (what :meth:`Usage.from_api` reads back)."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_tokens_details": {
            "text_tokens": usage.input_text_tokens,
            "image_tokens": usage.input_image_tokens,
        },
        "output_tokens_details": {
            "image_tokens": usage.output_image_tokens,
            "text_tokens": usage.output_text_tokens,
        },
    }
