"""Deterministic, cheap placeholder images for the emulator.

The picture only has to prove lineage (which prompt, which input, which index of ``n``) and
have exactly the requested size and format, so it is a seeded colour gradient with the prompt
written on it. Everything runs in Pillow's C code. PNG is encoded by hand without row filters: the gradient
is built from 256 levels upscaled with NEAREST, so consecutive rows repeat and zlib level 1
finds them cheaply, while Pillow's adaptive row filtering costs more than the whole render.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import textwrap
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps, features

__all__ = ["RenderSpec", "render", "renderable_formats"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT_LINES = 6


@dataclass(frozen=True)
class RenderSpec:
    """What to draw. Equal specs always give byte-identical output."""

    prompt: str
    width: int
    height: int
    output_format: str = "png"
    compression: int | None = None
    transparent: bool = False
    inputs: tuple[bytes, ...] = ()
    mask: bytes | None = None
    index: int = 0


@functools.cache
def renderable_formats() -> frozenset[str]:
    """Formats this Pillow build can write (gif always; webp/avif depend on the build)."""
    found = {"png", "jpeg", "gif"}
    if features.check("webp"):
        found.add("webp")
    if features.check("avif"):
        found.add("avif")
    return frozenset(found)


def render(spec: RenderSpec) -> bytes:
    """Render one image and encode it in ``spec.output_format``."""
    if spec.output_format not in renderable_formats():
        raise ValueError(f"cannot encode {spec.output_format!r} with this Pillow build")
    seed = hashlib.sha256(f"{spec.index}\x00{spec.prompt}".encode()).digest()
    image = _gradient(seed, spec.width, spec.height)
    if spec.inputs:
        image = _blend_input(image, spec.inputs[0], spec.mask, seed)
    text = _text_mask(spec.prompt, spec.index, spec.width, spec.height)
    shadow_offset = max(1, min(spec.width, spec.height) // 400)
    margin = _margin(spec.width, spec.height)
    top = spec.height - margin - text.height if spec.inputs else margin
    origin = (margin, max(0, top))
    image.paste((0, 0, 0), (origin[0] + shadow_offset, origin[1] + shadow_offset), text)
    image.paste((255, 255, 255), origin, text)
    if spec.transparent:
        image = _with_transparency(image, text, origin, shadow_offset)
    return _encode(image, spec.output_format, spec.compression)


def _gradient(seed: bytes, width: int, height: int) -> Image.Image:
    """A three-colour gradient, diagonal by a seeded amount, built at 256px and upscaled."""
    ramp = Image.linear_gradient("L")
    ramp = Image.blend(ramp, ramp.transpose(Image.Transpose.ROTATE_90), seed[9] / 255 * 0.6)
    ramp = ramp.transpose(
        (
            Image.Transpose.FLIP_LEFT_RIGHT,
            Image.Transpose.FLIP_TOP_BOTTOM,
            Image.Transpose.ROTATE_180,
            Image.Transpose.TRANSPOSE,
        )[seed[10] % 4]
    )
    ramp = ramp.resize((width, height), Image.Resampling.NEAREST)
    ramp.putpalette(_palette(seed[0:3], seed[3:6], seed[6:9]))
    return ramp.convert("RGB")


@functools.lru_cache(maxsize=256)
def _palette(first: bytes, middle: bytes, last: bytes) -> list[int]:
    values: list[int] = []
    for level in range(256):
        start, end, t = (
            (first, middle, level / 127.5) if level < 128 else (middle, last, (level - 128) / 127.5)
        )
        values.extend(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
    return values


def _blend_input(base: Image.Image, data: bytes, mask: bytes | None, seed: bytes) -> Image.Image:
    """Edits keep the first input visible under a seeded tint; a mask limits the tint to its
    transparent area, like the real endpoint limits the edit."""
    with Image.open(io.BytesIO(data)) as opened:
        source = opened.convert("RGB").resize(base.size, Image.Resampling.BILINEAR)
    tinted = Image.blend(source, base, 0.35 + seed[11] / 255 * 0.2)
    if mask is None:
        return tinted
    with Image.open(io.BytesIO(mask)) as opened:
        alpha = opened.convert("RGBA").getchannel("A").resize(base.size, Image.Resampling.NEAREST)
    return Image.composite(source, Image.blend(source, base, 0.8), alpha)


def _margin(width: int, height: int) -> int:
    return max(4, min(width, height) // 24)


@functools.lru_cache(maxsize=16)
def _text_mask(prompt: str, index: int, width: int, height: int) -> Image.Image:
    """The wrapped prompt as an "L" mask; cached (a few) because benchmarks repeat requests."""
    size = max(10, min(width, height) // 26)
    font = ImageFont.load_default(size=size)
    usable = width - 2 * _margin(width, height)
    columns = max(8, int(usable / (size * 0.47)))
    lines = textwrap.wrap(" ".join(prompt.split()), columns) or [""]
    if len(lines) > _MAX_TEXT_LINES:
        lines = [
            *lines[: _MAX_TEXT_LINES - 1],
            textwrap.shorten(lines[_MAX_TEXT_LINES - 1] + " …", columns),
        ]
    lines.append(f"#{index + 1} · emulated")
    line_height = int(size * 1.25)
    mask = Image.new("L", (usable, line_height * len(lines)), 0)
    draw = ImageDraw.Draw(mask)
    for row, line in enumerate(lines):
        draw.text((0, row * line_height), line, font=font, fill=255)
    return mask


def _with_transparency(
    image: Image.Image, text: Image.Image, origin: tuple[int, int], shadow_offset: int
) -> Image.Image:
    """An opaque ellipse fading to transparent corners, with the text and its shadow kept opaque."""
    alpha = _vignette().resize(image.size, Image.Resampling.NEAREST)
    alpha.paste(255, (origin[0] + shadow_offset, origin[1] + shadow_offset), text)
    alpha.paste(255, origin, text)
    image.putalpha(alpha)
    return image


@functools.cache
def _vignette() -> Image.Image:
    ramp = ImageOps.invert(Image.radial_gradient("L"))
    return ramp.point([min(255, max(0, (level - 64) * 2)) for level in range(256)])


def _encode(image: Image.Image, output_format: str, compression: int | None) -> bytes:
    if output_format == "png":
        return _encode_png(image)
    quality = 100 if compression is None else compression
    buffer = io.BytesIO()
    if output_format == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    elif output_format == "webp":
        image.save(buffer, "WEBP", quality=quality, method=0)
    elif output_format == "avif":
        image.save(buffer, "AVIF", quality=quality, speed=10)
    elif output_format == "gif":
        palette = Image.Palette.WEB
        image.convert("RGB").convert("P", palette=palette, dither=Image.Dither.NONE).save(
            buffer, "GIF"
        )
    else:
        raise ValueError(f"unsupported output format {output_format!r}")
    return buffer.getvalue()


def _encode_png(image: Image.Image) -> bytes:
    """8-bit RGB/RGBA PNG, filter type 0 on every row, zlib level 1."""
    color_type = {"RGB": 2, "RGBA": 6}[image.mode]
    width, height = image.size
    pixels = memoryview(image.tobytes())
    stride = width * len(image.mode)
    rows = bytearray()
    for row in range(height):
        rows += b"\x00"
        rows += pixels[row * stride : (row + 1) * stride]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows, 1)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + tag
        + payload
        + struct.pack(">I", zlib.crc32(tag + payload))
    )
