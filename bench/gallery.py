"""Benchmark 4: the review gallery of 5,000 images.

Synthetic images (512x384 photo-like PNGs, each with its own bytes) and their sidecars are written
straight into a local store, no API: 4,000 generations and 1,000 edits of them. Then
``build_gallery`` runs three times: the first build (one thumbnail per image), a rebuild with
nothing new (must decode nothing) and a rebuild after 10 new images. The build is compared with
the floor every gallery has to pay: reading and decoding every image once.

Page weight before scrolling is the page itself (data inlined once) plus the thumbnails of the
first chunk of cards the page renders: an upper bound, since the browser loads lazily only the
thumbnails near the viewport.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

import dagster_gptimage.gallery as gallery_module
from bench._common import Report
from bench._images import unique_png
from dagster_gptimage._gallery_page import CHUNK
from dagster_gptimage.storage import ImageRecord, ImageStore, SourceImage

TARGET_PAGE_BYTES = 2 * 1024 * 1024
SIZE = (512, 384)
_SUBJECTS = (
    "speckled stoneware mug",
    "cognac leather backpack",
    "black steel desk lamp",
    "chunky knit wool scarf",
    "clear glass teapot",
    "oak cutting board",
    "coral running shoe",
    "charcoal wireless speaker",
)
_SCENES = (
    "studio product photo on a seamless light-grey background, soft diffused light",
    "on a sunlit oak kitchen counter with a softly blurred background",
    "flat lay on linen, overhead view, natural window light",
    "on a concrete plinth, dramatic side light, deep shadows",
)


def _bases(count: int) -> list[bytes]:
    """A few distinct photo-like PNGs; every stored image is one of them with its own text chunk."""
    bases = []
    for index in range(count):
        noise = Image.effect_noise((SIZE[0] // 8, SIZE[1] // 8), 40 + 5 * index)
        tint = Image.new("RGB", SIZE, ((index * 53) % 256, (index * 97) % 256, (index * 31) % 256))
        picture = Image.blend(
            tint, noise.resize(SIZE, Image.Resampling.BICUBIC).convert("RGB"), 0.5
        )
        out = io.BytesIO()
        picture.save(out, "PNG")
        bases.append(out.getvalue())
    return bases


def _write(root: Path, asset: str, key: str, data: bytes, **fields: Any) -> ImageRecord:
    folder = root / asset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.png"
    path.write_bytes(data)
    record = ImageRecord(
        asset_key=[asset],
        partition_key=key,
        path=str(path),
        format="png",
        width=SIZE[0],
        height=SIZE[1],
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        fingerprint=hashlib.sha256(key.encode()).hexdigest(),
        model="gpt-image-2",
        provider="emulator",
        params={"size": "1024x768", "quality": "low"},
        latency_s=40 + random.random() * 40,
        **fields,
    )
    (folder / f"{key}.json").write_text(record.model_dump_json(indent=2))
    return record


def _fill(root: Path, n: int) -> int:
    """``n`` images: 80 % generations, 20 % edits of the first ones. Returns total bytes."""
    rng = random.Random(4)
    bases = _bases(16)
    edits = n // 5
    total = 0
    generated: list[ImageRecord] = []
    for i in range(n - edits):
        prompt = f"A {rng.choice(_SUBJECTS)}, {rng.choice(_SCENES)}, variation {i}"
        data = unique_png(bases[i % len(bases)], f"gen {i}")
        record = _write(root, "catalog", f"item-{i:05d}", data, prompt=prompt, cost_usd=0.0052)
        generated.append(record)
        total += len(data)
    for i in range(edits):
        source = generated[i]
        data = unique_png(bases[(i + 7) % len(bases)], f"edit {i}")
        parent = SourceImage(
            asset_key=source.asset_key,
            partition_key=source.partition_key,
            path=source.path,
            sha256=source.sha256,
        )
        _write(
            root,
            "catalog_lifestyle",
            source.partition_key,
            data,
            prompt="Place this exact product on a sunlit oak kitchen counter",
            cost_usd=0.0106,
            sources=[parent],
        )
        total += len(data)
    return total


def _decode_all(root: Path) -> float:
    """Seconds to read and fully decode every stored image once: the floor of any thumbnailer."""
    started = time.perf_counter()
    for path in sorted(root.glob("*/*.png")):
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    return time.perf_counter() - started


def _counting_decodes() -> tuple[list[int], Any]:
    calls: list[int] = []
    real = gallery_module.make_thumbnail

    def counting(data: bytes, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(data, **kwargs)

    gallery_module.make_thumbnail = counting
    return calls, real


def _first_screen_bytes(page_url: str) -> tuple[int, int]:
    """(page bytes, page + thumbnails of the first rendered chunk)."""
    page = Path(page_url)
    text = page.read_text(encoding="utf-8")
    start = text.index('id="gallery-data">') + len('id="gallery-data">')
    data = json.loads(text[start : text.index("</script>", start)])
    sha = data["fields"].index("sha256")
    thumbs = [
        page.parent / "thumbs" / f"{item[sha]}.{data['thumb_ext']}"
        for item in data["items"][:CHUNK]
    ]
    page_bytes = page.stat().st_size
    return page_bytes, page_bytes + sum(p.stat().st_size for p in thumbs if p.exists())


def run(*, quick: bool = False) -> Report:
    n = 50 if quick else 5000
    report = Report(f"Gallery: {n:,} images (benchmark 4)")
    label = f"gallery_n{n}"
    report.note(
        f"{n} synthetic {SIZE[0]}x{SIZE[1]} PNGs with sidecars in a local store (80 % "
        "generations, 20 % edits), thumbnails 256 px WebP, 4 threads"
    )
    with tempfile.TemporaryDirectory(prefix="gptimage-bench-gallery-") as tmp:
        root = Path(tmp) / "store"
        total = _fill(root, n)
        report.add(f"{label}.images", n)
        report.add(f"{label}.image_mb", total / 1e6, "MB")
        store = ImageStore(base_url=str(root))
        out = str(root / "gallery")
        keys = ["catalog", "catalog_lifestyle"]
        decode_s = _decode_all(root)
        report.add(f"{label}.decode_all_s", decode_s, "s", note="read + decode every image once")
        calls, real = _counting_decodes()
        try:
            started = time.perf_counter()
            first = gallery_module.build_gallery(store, keys, out)
            build_s = time.perf_counter() - started
            report.add(f"{label}.build_s", build_s, "s")
            report.add(f"{label}.build_vs_decode_all", build_s / decode_s, "x")
            report.add(f"{label}.new_thumbnails", first.new_thumbnails)
            report.add(f"{label}.build_decodes", len(calls), target=f"<= {n}", met=len(calls) <= n)
            calls.clear()
            started = time.perf_counter()
            second = gallery_module.build_gallery(store, keys, out)
            rebuild_s = time.perf_counter() - started
            report.add(f"{label}.rebuild_s", rebuild_s, "s", note="nothing new")
            report.add(f"{label}.rebuild_decodes", len(calls), target="0", met=not calls)
            report.add(f"{label}.rebuild_cached_thumbnails", second.cached_thumbnails)
            calls.clear()
            base = _bases(1)[0]
            for i in range(10):
                _write(root, "catalog", f"new-{i}", unique_png(base, f"new {i}"), prompt="new")
            started = time.perf_counter()
            gallery_module.build_gallery(store, keys, out)
            report.add(f"{label}.rebuild_10_new_s", time.perf_counter() - started, "s")
            report.add(
                f"{label}.rebuild_10_new_decodes", len(calls), target="10", met=len(calls) == 10
            )
        finally:
            gallery_module.make_thumbnail = real
        page_bytes, first_screen = _first_screen_bytes(first.url)
        report.add(f"{label}.page_kb", page_bytes / 1024, "KB")
        report.add(
            f"{label}.first_screen_kb",
            first_screen / 1024,
            "KB",
            target="< 2,048 KB",
            met=first_screen < TARGET_PAGE_BYTES,
            note=f"page + thumbnails of the first {CHUNK} cards",
        )
    return report
