"""Helpers shared by the emulator tests (in-process and real server)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from PIL import Image

AUTH = {"Authorization": "Bearer test-key"}
GENERATE = {"model": "gpt-image-2", "prompt": "A cute baby sea otter wearing a beret"}


@cache
def _spec(reference_dir: Path) -> dict[str, Any]:
    return json.loads((reference_dir / "openai-images-openapi.json").read_text())


def schema_validator(reference_dir: Path, name: str) -> jsonschema.Draft202012Validator:
    """A validator for ``#/components/schemas/<name>`` with every component resolvable."""
    spec = _spec(reference_dir)
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def assert_valid(reference_dir: Path, name: str, payload: Mapping[str, Any]) -> None:
    errors = sorted(schema_validator(reference_dir, name).iter_errors(payload), key=str)
    assert not errors, [f"{list(error.absolute_path)}: {error.message}" for error in errors]


def openapi_spec(reference_dir: Path) -> dict[str, Any]:
    return _spec(reference_dir)


def decode_images(payload: Mapping[str, Any]) -> list[Image.Image]:
    images = []
    for item in payload["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        image.load()
        images.append(image)
    return images


def png_bytes(
    size: tuple[int, int] = (1024, 1024), color: tuple[int, ...] = (200, 40, 40), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def mask_bytes(size: tuple[int, int] = (1024, 1024)) -> bytes:
    """Opaque except a transparent left half (where the edit goes)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events
