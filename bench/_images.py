"""Photo-like test images with realistic byte sizes.

The emulator's own pictures are smooth gradients that compress to a few dozen KB, while a real
1024x1024 PNG from the API is 1.5-2 MB and a 3840x2160 one over 10 MB. Costs that scale with bytes
(base64, hashing, writing) would look far too small on gradients, so the benchmarks use noise-based
"photos" of the same sizes real images have. They are slow to encode, so each is made once per
machine and kept in the temp directory.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

from PIL import Image

__all__ = ["photo_bytes", "unique_png"]

_CACHE = Path(tempfile.gettempdir()) / "gptimage-bench-images"
_VERSION = "1"
_IHDR_END = 8 + 25


def _photo(width: int, height: int) -> Image.Image:
    """Coloured noise at a few scales plus grain: compresses like a photograph, not a drawing."""
    channels = []
    for channel in range(3):
        layer: Image.Image | None = None
        for octave, weight in ((8, 0.55), (48, 0.25), (256, 0.12)):
            small = Image.effect_noise((octave, max(2, octave * height // width)), 64 + 8 * channel)
            big = small.resize((width, height), Image.Resampling.BICUBIC)
            layer = big if layer is None else Image.blend(layer, big, weight)
        assert layer is not None
        channels.append(Image.blend(layer, Image.effect_noise((width, height), 18), 0.12))
    return Image.merge("RGB", channels)


def photo_bytes(width: int, height: int, fmt: str) -> bytes:
    """A photo-like image encoded as ``fmt`` ("png", "webp", "jpeg"), cached on disk."""
    _CACHE.mkdir(parents=True, exist_ok=True)
    path = _CACHE / f"v{_VERSION}-{width}x{height}.{fmt}"
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    options = {"png": {}, "webp": {"quality": 90}, "jpeg": {"quality": 90}}[fmt]
    _photo(width, height).save(buffer, format=fmt.upper(), **options)
    data = buffer.getvalue()
    tmp = path.with_suffix(f".{fmt}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def unique_png(base: bytes, text: str) -> bytes:
    """``base`` (a PNG) with a ``tEXt`` chunk carrying ``text``: a distinct, valid file per
    request for the cost of a copy, so every partition stores its own bytes."""
    payload = b"Comment\0" + text.encode("latin-1", "replace")[:1000]
    chunk = (
        struct.pack(">I", len(payload))
        + b"tEXt"
        + payload
        + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    )
    return base[:_IHDR_END] + chunk + base[_IHDR_END:]
