"""Pillow helpers on bytes: decode-and-verify, preview thumbnails, input-image loading.

Every image that enters (an input the user supplies) or leaves (a provider response) is fully decoded
once: a truncated or corrupt file must fail here, with the field named, not later in a user's dataset.
Pixel counts are checked from the header before decoding so a small file cannot expand into gigabytes
(decompression bomb); Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` is left alone.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError, features

from dagster_gptimage.errors import InvalidImageError, InvalidRequestError, short_repr
from dagster_gptimage.models import InputImage

__all__ = [
    "CONTENT_TYPES",
    "EXTENSIONS",
    "INPUT_FORMATS",
    "MAX_IMAGE_PIXELS",
    "MAX_INPUT_FILE_BYTES",
    "PREVIEW_CONTENT_TYPE",
    "PREVIEW_MAX_BYTES",
    "PREVIEW_MAX_SIDE",
    "ImageInfo",
    "inspect_image",
    "load_input_image",
    "make_preview",
    "make_thumbnail",
    "preview_data_uri",
    "read_size",
    "thumbnail_data_uri",
]

MAX_IMAGE_PIXELS = 2 * 8_294_400
"""Twice the largest gpt-image-2 output (3840x2160): room for inputs, none for bombs."""

MAX_INPUT_FILE_BYTES = 50 * 1024 * 1024
"""The largest input image any provider accepts; bigger files are refused before being read."""

EXTENSIONS: dict[str, str] = {
    "png": "png",
    "jpeg": "jpg",
    "webp": "webp",
    "gif": "gif",
    "avif": "avif",
}
CONTENT_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "avif": "image/avif",
}
INPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")
"""Formats the edits endpoint accepts as input images."""

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif", "AVIF": "avif"}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PREVIEW_FORMAT = "webp" if features.check("webp") else "jpeg"
PREVIEW_CONTENT_TYPE = CONTENT_TYPES[_PREVIEW_FORMAT]
"""The content type of every preview (WebP, JPEG where Pillow lacks WebP)."""

PREVIEW_MAX_SIDE = 128
PREVIEW_MAX_BYTES = 723
"""The largest preview whose ``data:`` URI Markdown (34 characters around the base64 text, 4/3 of
the bytes) stays under the 1,000 characters the Dagster UI shows inline
(``_metadata.INLINE_MARKDOWN_LIMIT``)."""

_PREVIEW_MIN_SIDE = 32
_PREVIEW_QUALITY = 70
_PREVIEW_FIT_TRIES = 3
_ENCODING_OVERHEAD_BYTES = 64
"""Roughly what a tiny WebP or JPEG spends on headers whatever its pixel count."""
_SIZE_EXPONENT_GUESS = 1.4
"""How a photo's encoded size grows with a thumbnail's side (measured on photo-like images: a
side 2.4x smaller takes ~3.3x fewer bytes, not the 5.8x of the pixel count); noise grows as 2."""
_PROBE_WEBP_METHOD = 0
_PROBE_BYTES_RATIO = 0.85
"""A WebP thumbnail's bytes at method 4 over those at method 0, its fastest (0.84-0.85 on
photo-like thumbnails; method 0 takes half the time)."""
_PREVIEW_REDUCING_GAP = 1.0
"""Previews shrink by whole-pixel reduction down to their side before resampling: half the time
of the gallery's 2.0, no visible difference at 128 px and less."""


def _pillow_formats() -> list[str]:
    """The formats we decode that this Pillow build supports (AVIF needs Pillow >= 11.2)."""
    Image.init()
    return [name for name in _PIL_FORMATS if name in Image.OPEN]


@dataclass(frozen=True)
class ImageInfo:
    """What decoding an image revealed. ``format`` is one of :data:`EXTENSIONS`' keys."""

    format: str
    width: int
    height: int
    mode: str
    has_alpha: bool
    preview: bytes | None = dataclass_field(default=None, repr=False, compare=False)
    """A :data:`PREVIEW_CONTENT_TYPE` thumbnail made from the decoded pixels, when asked for."""

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def _open(data: bytes, field: str) -> Image.Image:
    """Open lazily (header only) and refuse unknown formats and oversized pixel counts."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError(
            f"{field}={short_repr(data)} is not image bytes. Accepted: bytes of a "
            f"{', '.join(_PIL_FORMATS.values())} image",
            field=field,
            value=data,
            accepted="image bytes",
        )
    if not data:
        raise InvalidImageError(
            f"{field} is empty (0 bytes). Accepted: a png, jpeg, webp, gif or avif image",
            field=field,
            value=b"",
            accepted=tuple(_PIL_FORMATS.values()),
        )
    try:
        image = Image.open(io.BytesIO(data), formats=_pillow_formats())
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as error:
        raise InvalidImageError(
            f"{field} ({len(data)} bytes) is not a readable image: {error}. Accepted: a png, "
            "jpeg, webp, gif or avif image",
            field=field,
            value=bytes(data[:16]),
            accepted=tuple(_PIL_FORMATS.values()),
        ) from error
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise InvalidImageError(
            f"{field} declares {width}x{height} = {width * height:,} pixels; refusing to decode it. "
            f"Accepted: at most {MAX_IMAGE_PIXELS:,} pixels",
            field=field,
            value=f"{width}x{height}",
            accepted=f"at most {MAX_IMAGE_PIXELS:,} pixels",
        )
    return image


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def read_size(data: bytes, *, field: str = "image") -> tuple[int, int]:
    """(width, height) from the header alone: cheap, for estimates. Does not verify the pixels."""
    with _open(data, field) as image:
        return image.size


_PNG_END = b"IEND\xaeB`\x82"


def _check_complete(fmt: str, data: bytes) -> None:
    """Pillow decodes a PNG or GIF whose pixel data is complete even when the file's end was cut off
    (the IEND chunk, the GIF trailer): a cut-off download must not pass as a whole image."""
    if fmt == "png" and _PNG_END not in data[-64:]:
        raise OSError("truncated PNG file: no IEND chunk at the end")
    if fmt == "gif" and not bytes(data).rstrip(b"\0").endswith(b";"):
        raise OSError("truncated GIF file: no trailer at the end")


def inspect_image(
    data: bytes,
    *,
    field: str = "image",
    preview_max_side: int | None = None,
    preview_max_bytes: int | None = None,
) -> ImageInfo:
    """Fully decode ``data`` and describe it; raise :class:`InvalidImageError` naming ``field`` for
    anything that is not a complete png/jpeg/webp/gif/avif image within :data:`MAX_IMAGE_PIXELS`.

    With ``preview_max_side``, ``preview`` is also a thumbnail (see :func:`make_preview`) made from
    the pixels just decoded, so an image is decoded once for both; None if it could not be made."""
    image = _open(data, field)
    try:
        fmt = _PIL_FORMATS[str(image.format)]
        image.load()
        _check_complete(fmt, data)
        info = ImageInfo(
            format=fmt,
            width=image.width,
            height=image.height,
            mode=image.mode,
            has_alpha=_has_alpha(image),
        )
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        image.close()
        raise InvalidImageError(
            f"{field} ({len(data)} bytes, {image.format} {image.width}x{image.height}) could not be "
            f"decoded: {error}. Accepted: a complete, uncorrupted image",
            field=field,
            value=bytes(data[:16]),
            accepted="a complete, uncorrupted image",
        ) from error
    if preview_max_side is None:
        image.close()
        return info
    try:
        preview = _loaded_thumbnail(
            image,
            max_side=preview_max_side,
            fmt=_PREVIEW_FORMAT,
            quality=_PREVIEW_QUALITY,
            max_bytes=preview_max_bytes,
            reducing_gap=_PREVIEW_REDUCING_GAP,
        )
    except Exception:
        # A valid image that cannot be previewed is still valid.
        preview = None
    finally:
        image.close()
    return ImageInfo(info.format, info.width, info.height, info.mode, info.has_alpha, preview)


def make_preview(
    data: bytes, *, max_side: int = PREVIEW_MAX_SIDE, max_bytes: int | None = None
) -> bytes:
    """A small thumbnail (WebP, JPEG where Pillow lacks WebP) of a few KB for Dagster metadata.

    With ``max_bytes`` it is shrunk below ``max_side`` until it fits (not below 32 px; a thumbnail
    that fits at no size keeps ``max_side``)."""
    return make_thumbnail(
        data,
        max_side=max_side,
        fmt=_PREVIEW_FORMAT,
        quality=_PREVIEW_QUALITY,
        max_bytes=max_bytes,
        reducing_gap=_PREVIEW_REDUCING_GAP,
    )


def make_thumbnail(
    data: bytes,
    *,
    max_side: int,
    fmt: str = "webp",
    quality: int = 70,
    webp_method: int = 4,
    max_bytes: int | None = None,
    reducing_gap: float = 2.0,
) -> bytes:
    """``data`` decoded once and shrunk to fit ``max_side`` (never enlarged), encoded as ``fmt``
    ("webp" or "jpeg"; JPEG loses alpha, flattened onto white). ``webp_method`` trades encoding
    time for size (0-6; 2 takes half the time of 4 for files ~10 % bigger). ``max_bytes``: see
    :func:`make_preview`; ``reducing_gap``: Pillow's ``thumbnail`` (smaller is faster, coarser).

    Fast on 4K inputs: JPEG decodes at reduced scale via ``draft`` and other formats shrink with
    ``reduce`` before the final resampling (``reducing_gap``)."""
    if fmt not in ("webp", "jpeg"):
        raise ValueError(f"thumbnail format {fmt!r}: use 'webp' or 'jpeg'")
    source = _open(data, "image")
    try:
        if source.format == "JPEG":
            source.draft("RGB", (max_side, max_side))
        source.load()
        return _loaded_thumbnail(
            source,
            max_side=max_side,
            fmt=fmt,
            quality=quality,
            webp_method=webp_method,
            max_bytes=max_bytes,
            reducing_gap=reducing_gap,
        )
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidImageError(
            f"image ({len(data)} bytes) could not be decoded for a thumbnail: {error}",
            field="image",
            value=bytes(data[:16]),
            accepted="a complete, uncorrupted image",
        ) from error
    finally:
        source.close()


def _loaded_thumbnail(
    source: Image.Image,
    *,
    max_side: int,
    fmt: str,
    quality: int,
    webp_method: int = 4,
    max_bytes: int | None = None,
    reducing_gap: float = 2.0,
) -> bytes:
    """The thumbnail of an image whose pixels are loaded; ``source`` is shrunk in place (its
    full-size bitmap is freed at once)."""
    # In place: without it, exif_transpose returns a full-size copy even when nothing turns.
    ImageOps.exif_transpose(source, in_place=True)
    source.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    image = _thumbnail_mode(source, fmt)
    if max_bytes is None:
        return _encode(image, fmt, quality, webp_method)
    # The full side is tried at WebP's fastest method: most photos do not fit at it, and then the
    # encoding only tells how far to shrink.
    fast = fmt == "webp" and webp_method > _PROBE_WEBP_METHOD
    probe = _encode(image, fmt, quality, _PROBE_WEBP_METHOD if fast else webp_method)
    if len(probe) <= max_bytes:
        return probe
    size = len(probe) * _PROBE_BYTES_RATIO if fast else len(probe)
    if size <= max_bytes:
        encoded = _encode(image, fmt, quality, webp_method)
        if len(encoded) <= max_bytes:
            return encoded
    return _shrunk_to_fit(image, probe, size, max_bytes, fmt, quality, webp_method)


def _encode(image: Image.Image, fmt: str, quality: int, webp_method: int) -> bytes:
    out = io.BytesIO()
    save_args: dict[str, Any] = {"quality": quality}
    if fmt == "webp":
        save_args["method"] = webp_method
    else:
        save_args["optimize"] = True
    image.save(out, format=fmt.upper(), **save_args)
    return out.getvalue()


def _shrunk_to_fit(
    image: Image.Image,
    encoded: bytes,
    encoded_size: float,
    max_bytes: int,
    fmt: str,
    quality: int,
    webp_method: int,
) -> bytes:
    """The side that fits ``max_bytes``, estimated rather than found by trying every side: the
    encoded size (headers aside; ``encoded_size`` at full side, ``encoded`` being returned when no
    side fits) is taken to grow as the side to the power ``exponent``, first guessed, then
    measured from the last two encodings. Usually one more encode."""
    room = max(0.92 * max_bytes - _ENCODING_OVERHEAD_BYTES, 1.0)
    side, size = max(image.size), max(encoded_size - _ENCODING_OVERHEAD_BYTES, 1.0)
    exponent = _SIZE_EXPONENT_GUESS
    for _ in range(_PREVIEW_FIT_TRIES):
        target = min(int(side * (room / size) ** (1 / exponent)), side - 1)
        if target < _PREVIEW_MIN_SIDE:
            if side <= _PREVIEW_MIN_SIDE:
                break
            target = _PREVIEW_MIN_SIDE
        resized = image.resize(_fit_within(image.size, target), Image.Resampling.LANCZOS)
        candidate = _encode(resized, fmt, quality, webp_method)
        if len(candidate) <= max_bytes:
            return candidate
        smaller = max(len(candidate) - _ENCODING_OVERHEAD_BYTES, 1)
        if smaller < size:
            exponent = min(max(math.log(size / smaller) / math.log(side / target), 0.5), 3.0)
        side, size = target, smaller
    return encoded


def _fit_within(size: tuple[int, int], side: int) -> tuple[int, int]:
    width, height = size
    scale = side / max(width, height)
    return max(round(width * scale), 1), max(round(height * scale), 1)


def _thumbnail_mode(image: Image.Image, fmt: str) -> Image.Image:
    if fmt == "webp":
        mode = "RGBA" if _has_alpha(image) else "RGB"
        return image if image.mode == mode else image.convert(mode)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def preview_data_uri(data: bytes, *, max_side: int = PREVIEW_MAX_SIDE) -> str:
    """``data:`` URI of :func:`make_preview`, ready for a Markdown ``![](...)`` in Dagster metadata."""
    return thumbnail_data_uri(make_preview(data, max_side=max_side))


def thumbnail_data_uri(preview: bytes) -> str:
    """``data:`` URI of a preview's bytes (:data:`PREVIEW_CONTENT_TYPE`), without decoding them."""
    return f"data:{PREVIEW_CONTENT_TYPE};base64,{base64.b64encode(preview).decode()}"


def load_input_image(
    source: bytes | str | os.PathLike[str] | InputImage, *, field: str
) -> InputImage:
    """An :class:`InputImage` from bytes or a local file path, decoded and verified.

    The filename keeps the file's stem but takes the extension of the decoded format, and the content
    type is the decoded one, so a mislabelled file is sent truthfully. Files above
    :data:`MAX_INPUT_FILE_BYTES` are refused before being read.
    """
    if isinstance(source, InputImage):
        data, stem = source.data, Path(source.filename).stem or field
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data, stem = bytes(source), _safe_stem(field)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(source, field)
        stem = _safe_stem(Path(os.fspath(source)).stem or field)
    else:
        raise InvalidRequestError(
            f"{field}={short_repr(source)} is not an image. Accepted: bytes, a local file path "
            "or an InputImage",
            field=field,
            value=source,
            accepted="bytes, a local file path or an InputImage",
        )
    info = inspect_image(data, field=field)
    if info.format not in INPUT_FORMATS:
        raise InvalidImageError(
            f"{field} is a {info.format} image. Accepted: {', '.join(INPUT_FORMATS)}",
            field=field,
            value=info.format,
            accepted=INPUT_FORMATS,
        )
    return InputImage(
        data=data, filename=f"{stem}.{info.extension}", content_type=info.content_type
    )


def _safe_stem(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return cleaned[:100] or "image"


def _read_file(source: str | os.PathLike[str], field: str) -> bytes:
    path = Path(os.fspath(source))
    text = str(source)
    if "://" in text:
        raise InvalidRequestError(
            f"{field}={short_repr(text)} looks like a URL. Accepted: bytes or a local file path "
            "(download the image first)",
            field=field,
            value=text,
            accepted="bytes or a local file path",
        )
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_FILE_BYTES:
            raise InvalidRequestError(
                f"{field}={short_repr(text)} is {size:,} bytes. Accepted: at most "
                f"{MAX_INPUT_FILE_BYTES:,} bytes",
                field=field,
                value=text,
                accepted=f"at most {MAX_INPUT_FILE_BYTES:,} bytes",
            )
        return path.read_bytes()
    except OSError as error:
        raise InvalidRequestError(
            f"{field}={short_repr(text)} cannot be read: {error.strerror or error}. Accepted: "
            "bytes or the path of a readable local image file",
            field=field,
            value=text,
            accepted="bytes or a readable local file path",
        ) from error
