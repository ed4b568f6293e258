"""Each image is decoded once: the preview comes from the verification decode, and a cache hit
whose sidecar says its image was decoded when stored is served without decoding it again."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _assets_support import (
    SMALL,
    check_evaluations,
    emulator_resources,
    materializations,
    materialize_range,
    value,
)
from PIL import Image

from dagster_gptimage import _checks, _metadata, _plan, images
from dagster_gptimage._metadata import INLINE_MARKDOWN_LIMIT, preview_value
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.images import PREVIEW_MAX_BYTES, inspect_image, make_preview
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageStore


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _noise(size: tuple[int, int], seed: int = 7) -> bytes:
    width, height = size
    raw = random.Random(seed).randbytes(width * height * 3)
    return _png(Image.frombytes("RGB", size, raw))


class _Loads:
    """Counts full decodes: every ``Image.load`` of an image still at its file's size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[tuple[int, int]] = []
        original: Callable[..., Any] = Image.Image.load
        loads = self

        def load(image: Image.Image) -> Any:
            if getattr(image, "fp", None) is not None and image.size[0] > 256:
                loads.sizes.append(image.size)
            return original(image)

        monkeypatch.setattr(Image.Image, "load", load)


def test_the_verification_decode_makes_the_preview(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _noise((1024, 768))
    loads = _Loads(monkeypatch)

    info = inspect_image(data, preview_max_side=128, preview_max_bytes=PREVIEW_MAX_BYTES)

    assert (info.format, info.width, info.height) == ("png", 1024, 768)
    assert loads.sizes == [(1024, 768)]
    assert info.preview is not None
    assert len(info.preview) <= PREVIEW_MAX_BYTES
    with Image.open(io.BytesIO(info.preview)) as thumb:
        assert 32 <= max(thumb.size) < 128
        assert abs(thumb.width / thumb.height - 1024 / 768) < 0.1
    assert "preview" not in repr(info)
    assert inspect_image(data).preview is None


def test_preview_side_is_estimated_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A detailed image needs a smaller preview: one encode at the full side, then the side that
    fits from its bytes per pixel, not one encode per candidate side."""
    encodes: list[tuple[int, int]] = []
    original = images._encode

    def counted(image: Image.Image, *args: Any) -> bytes:
        encodes.append(image.size)
        return original(image, *args)

    monkeypatch.setattr(images, "_encode", counted)
    preview = make_preview(_noise((1024, 1024), seed=3), max_bytes=PREVIEW_MAX_BYTES)

    assert len(preview) <= PREVIEW_MAX_BYTES
    assert encodes[0] == (128, 128)
    assert 2 <= len(encodes) <= 3, encodes
    markdown = preview_value(preview).value
    assert len(markdown) < INLINE_MARKDOWN_LIMIT


def test_preview_budget_is_the_largest_that_renders_inline() -> None:
    fits = preview_value(b"\0" * PREVIEW_MAX_BYTES).value
    too_big = preview_value(b"\0" * (PREVIEW_MAX_BYTES + 1)).value
    assert len(fits) < INLINE_MARKDOWN_LIMIT <= len(too_big)


def test_a_smooth_image_keeps_the_full_preview_side() -> None:
    ramp = Image.linear_gradient("L").resize((1024, 1024))
    data = _png(Image.merge("RGB", (ramp, ramp.rotate(90), Image.new("L", ramp.size, 128))))
    info = inspect_image(data, preview_max_side=128, preview_max_bytes=PREVIEW_MAX_BYTES)
    assert info.preview is not None
    with Image.open(io.BytesIO(info.preview)) as thumb:
        assert max(thumb.size) == 128


def _table(n: int) -> PromptTable:
    return PromptTable.from_records(
        [{"key": f"p{i}", "prompt": f"a quiet harbour, study {i}"} for i in range(n)]
    )


def test_a_run_decodes_each_new_image_once_and_each_cache_hit_never(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = image_generation_asset(name="once", prompts=_table(3), size=SMALL)
    resources, emulator = emulator_resources(tmp_path)
    loads = _Loads(monkeypatch)

    first = materialize_range([asset], resources, "p0", "p2", instance=instance)

    assert first.success
    assert emulator.stats.requests == 3
    assert len(loads.sizes) == 3, loads.sizes  # the client's verification, nothing else
    store = ImageStore(base_url=str(tmp_path))
    made = materializations(instance, asset.key)
    for key, mat in made.items():
        record = store.read_record(asset.key, key)
        assert record is not None
        assert record.decoded
        assert record.preview is not None
        assert record.preview.startswith("data:image/")
        assert value(mat.metadata, "preview") == f"![preview]({record.preview})"
        assert "preview" not in repr(record)

    loads.sizes.clear()
    second = materialize_range([asset], resources, "p0", "p2", instance=instance)

    assert second.success
    assert emulator.stats.requests == 3
    assert loads.sizes == []
    cached = materializations(instance, asset.key, run_id=second.run_id)
    for key, mat in cached.items():
        assert value(mat.metadata, "cached") is True
        assert value(mat.metadata, "preview") == value(made[key].metadata, "preview")
    [evaluation] = check_evaluations(second)
    assert evaluation.passed


def test_a_cache_hit_without_the_decoded_mark_is_decoded_as_before(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sidecars written before the mark existed (or by other code) get the full check."""
    asset = image_generation_asset(name="older", prompts=_table(1), size=SMALL)
    resources, _ = emulator_resources(tmp_path)
    assert materialize_range([asset], resources, "p0", "p0", instance=instance).success
    store = ImageStore(base_url=str(tmp_path))
    record = store.read_record(asset.key, "p0")
    assert record is not None
    sidecar = Path(store.sidecar_path(asset.key, "p0"))
    older = record.model_copy(update={"decoded": False, "preview": None})
    sidecar.write_text(older.model_dump_json(exclude={"decoded", "preview"}))
    inspected: list[str] = []
    original = _checks.inspect_image

    def counted(data: bytes, **kwargs: Any) -> Any:
        inspected.append(kwargs.get("field", ""))
        return original(data, **kwargs)

    monkeypatch.setattr(_checks, "inspect_image", counted)
    previews: list[int] = []
    monkeypatch.setattr(
        _plan,
        "safe_preview",
        lambda data: previews.append(len(data)) or _metadata.safe_preview(data),
    )

    result = materialize_range([asset], resources, "p0", "p0", instance=instance)

    assert result.success
    assert inspected == ["stored image"]
    assert len(previews) == 1
    mat = materializations(instance, asset.key, run_id=result.run_id)["p0"]
    assert value(mat.metadata, "cached") is True
    assert str(value(mat.metadata, "preview")).startswith("![preview](data:image/")


def test_the_check_of_a_just_decoded_image_hashes_the_file_and_still_catches_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(base_url=str(tmp_path))
    data = _noise((300, 200))
    info = inspect_image(data)
    record = store.write_image(
        "a",
        "k",
        data,
        "png",
        _checks_record(width=info.width, height=info.height),
    )
    decoded = _checks.DecodedImage(record.sha256, "png", 300, 200)
    whole_reads: list[str] = []
    original = ImageStore.stored_image

    def counted(self: ImageStore, rec: Any) -> Any:
        whole_reads.append(rec.partition_key)
        return original(self, rec)

    monkeypatch.setattr(ImageStore, "stored_image", counted)

    assert _checks.verify_image(store, record, decoded=decoded) == []
    assert whole_reads == []

    Path(record.path).write_bytes(data[:-10])
    problems = _checks.verify_image(store, record, decoded=decoded)
    assert whole_reads == ["k"]
    assert any("does not match the sidecar" in p for p in problems), problems
    assert any("does not decode" in p for p in problems), problems


def _checks_record(*, width: int, height: int) -> Any:
    from dagster_gptimage.storage import ImageRecord

    return ImageRecord(
        fingerprint="f" * 64,
        prompt="p",
        params={"size": f"{width}x{height}", "output_format": "png"},
        model="gpt-image-2",
        provider="emulator",
        width=width,
        height=height,
    )


def test_the_full_side_is_tried_at_webps_fastest_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first encoding of a detailed image only measures it: method 0; what is kept is
    encoded at the preview's own method."""
    if images.PREVIEW_CONTENT_TYPE != "image/webp":
        pytest.skip("this Pillow has no WebP: previews are JPEG")
    encodes: list[tuple[tuple[int, int], int]] = []
    original = images._encode

    def counted(image: Image.Image, fmt: str, quality: int, webp_method: int) -> bytes:
        encodes.append((image.size, webp_method))
        return original(image, fmt, quality, webp_method)

    monkeypatch.setattr(images, "_encode", counted)
    preview = make_preview(_noise((1024, 1024), seed=3), max_bytes=PREVIEW_MAX_BYTES)

    assert len(preview) <= PREVIEW_MAX_BYTES
    assert encodes[0] == ((128, 128), 0)
    assert all(method == 4 and max(size) < 128 for size, method in encodes[1:]), encodes
    with Image.open(io.BytesIO(preview)) as thumb:
        assert max(thumb.size) == max(encodes[-1][0])
