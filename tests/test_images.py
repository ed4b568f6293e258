from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, features

from dagster_gptimage.errors import InvalidImageError, InvalidRequestError
from dagster_gptimage.images import (
    CONTENT_TYPES,
    EXTENSIONS,
    MAX_IMAGE_PIXELS,
    inspect_image,
    load_input_image,
    make_preview,
    preview_data_uri,
    read_size,
)
from dagster_gptimage.models import InputImage


def _encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def _noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Incompressible content, so truncation really cuts pixel data."""
    return Image.frombytes(
        mode, (width, height), random.Random(0).randbytes(width * height * len(mode))
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width``x``height`` with a tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("fmt", "name", "mode", "alpha"),
    [
        ("PNG", "png", "RGB", False),
        ("PNG", "png", "RGBA", True),
        ("JPEG", "jpeg", "RGB", False),
        ("WEBP", "webp", "RGBA", True),
        ("GIF", "gif", "P", False),
    ],
)
def test_inspect_image_formats(fmt: str, name: str, mode: str, alpha: bool) -> None:
    source = Image.new("RGBA" if alpha else "RGB", (40, 30), (1, 2, 3, 0) if alpha else (1, 2, 3))
    if mode == "P":
        source = source.convert("P")
    info = inspect_image(_encode(source, fmt))
    assert info.format == name
    assert (info.width, info.height) == (40, 30)
    assert info.has_alpha is alpha
    assert info.content_type == CONTENT_TYPES[name]
    assert info.extension == EXTENSIONS[name]


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_inspect_avif() -> None:
    info = inspect_image(_encode(Image.new("RGB", (32, 16)), "AVIF"))
    assert (info.format, info.width, info.height) == ("avif", 32, 16)


def test_tables() -> None:
    assert EXTENSIONS["jpeg"] == "jpg"
    assert CONTENT_TYPES["webp"] == "image/webp"
    assert set(EXTENSIONS) == set(CONTENT_TYPES) == {"png", "jpeg", "webp", "gif", "avif"}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_image_is_refused_naming_the_field(fmt: str) -> None:
    data = _encode(_noise(256, 256), fmt, **({"quality": 95} if fmt != "PNG" else {}))
    with pytest.raises(InvalidImageError) as info:
        inspect_image(data[: len(data) // 2], field="images[2]")
    assert info.value.field == "images[2]"
    assert "images[2]" in str(info.value)


@pytest.mark.parametrize("data", [b"", b"hello, world", b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidImageError) as info:
        inspect_image(data, field="mask")
    assert info.value.field == "mask"
    assert info.value.accepted


def test_unsupported_format_is_refused() -> None:
    with pytest.raises(InvalidImageError):
        inspect_image(_encode(Image.new("RGB", (8, 8)), "BMP"))


def test_non_bytes_are_refused() -> None:
    with pytest.raises(InvalidImageError):
        inspect_image("not bytes")  # type: ignore[arg-type]


def test_decompression_bomb_is_refused_before_decoding() -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 16
    bomb = _png_header_only(side, side)
    assert len(bomb) < 200
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidImageError, match="refusing to decode") as info:
        inspect_image(bomb, field="images[0]")
    assert info.value.field == "images[0]"
    assert before == Image.MAX_IMAGE_PIXELS, "Pillow's global limit is left alone"
    with pytest.raises(InvalidImageError):
        make_preview(bomb)


def test_4k_images_are_within_the_pixel_limit() -> None:
    assert MAX_IMAGE_PIXELS >= 3840 * 2160
    info = inspect_image(_encode(Image.new("RGB", (3840, 2160)), "PNG", compress_level=1))
    assert (info.width, info.height) == (3840, 2160)


def test_read_size_reads_only_the_header() -> None:
    assert read_size(_png_header_only(300, 200)) == (300, 200)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_only_raise_invalid_image(data: bytes) -> None:
    field = None
    try:
        inspect_image(data)
    except InvalidImageError as error:
        field = error.field
    assert field in (None, "image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_every_truncation_is_caught(fmt: str) -> None:
    data = _encode(_noise(32, 32), fmt)
    near_end = range(max(len(data) - 40, 1), len(data))
    for cut in sorted({*range(1, len(data), 97), *near_end}):
        with pytest.raises(InvalidImageError):
            inspect_image(data[:cut])
    assert inspect_image(data).width == 32


# --- previews --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB")])
def test_preview_is_small(fmt: str, mode: str) -> None:
    data = _encode(_noise(1536, 1024, mode), fmt)
    preview = make_preview(data)
    assert len(preview) < 16_000
    with Image.open(io.BytesIO(preview)) as thumb:
        assert max(thumb.size) == 128
        assert thumb.size == (128, 85)
        assert thumb.format in ("WEBP", "JPEG")


def test_preview_respects_max_side_and_small_images() -> None:
    small = _encode(Image.new("RGB", (50, 20), (255, 0, 0)), "PNG")
    with Image.open(io.BytesIO(make_preview(small))) as thumb:
        assert thumb.size == (50, 20)
    tall = _encode(Image.new("RGB", (300, 900)), "JPEG")
    with Image.open(io.BytesIO(make_preview(tall, max_side=64))) as thumb:
        assert thumb.size == (21, 64)


def test_preview_of_a_corrupt_image_fails_cleanly() -> None:
    with pytest.raises(InvalidImageError):
        make_preview(b"garbage")


def test_preview_data_uri() -> None:
    uri = preview_data_uri(_encode(Image.new("RGB", (256, 256)), "PNG"))
    assert uri.startswith(("data:image/webp;base64,", "data:image/jpeg;base64,"))
    assert len(uri) < 10_000


# --- input images ----------------------------------------------------------------------------------


def test_load_input_image_from_bytes() -> None:
    data = _encode(Image.new("RGB", (20, 20)), "JPEG")
    image = load_input_image(data, field="images[0]")
    assert isinstance(image, InputImage)
    assert image.data == data
    assert image.content_type == "image/jpeg"
    assert image.filename.endswith(".jpg")


def test_load_input_image_from_path_fixes_a_wrong_extension(tmp_path: Path) -> None:
    path = tmp_path / "photo of me.png"
    path.write_bytes(_encode(Image.new("RGB", (20, 20)), "WEBP"))
    for source in (path, str(path)):
        image = load_input_image(source, field="images[0]")
        assert image.filename == "photo_of_me.webp"
        assert image.content_type == "image/webp"


def test_load_input_image_accepts_input_images() -> None:
    data = _encode(Image.new("RGB", (20, 20)), "PNG")
    original = InputImage(data=data, filename="x.png", content_type="image/png")
    assert load_input_image(original, field="mask") == original


def test_load_input_image_refuses_gif_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="gif") as info:
        load_input_image(_encode(Image.new("RGB", (8, 8)), "GIF"), field="images[1]")
    assert info.value.field == "images[1]"
    with pytest.raises(InvalidImageError):
        load_input_image(b"nope", field="images[0]")


def test_load_input_image_refuses_missing_files_and_urls(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="cannot be read") as info:
        load_input_image(tmp_path / "missing.png", field="images[0]")
    assert info.value.field == "images[0]"
    with pytest.raises(InvalidRequestError, match="URL"):
        load_input_image("https://example.com/cat.png", field="images[0]")
    with pytest.raises(InvalidRequestError):
        load_input_image(12, field="images[0]")  # type: ignore[arg-type]


def test_load_input_image_refuses_huge_files_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.truncate(50 * 2**20 + 1)
    with pytest.raises(InvalidRequestError, match="52,428,801 bytes"):
        load_input_image(path, field="images[0]")
