"""Benchmark 2: what our code costs per image once its bytes have arrived, and peak memory.

CPU time (``time.process_time``) per image of the path an image takes after the response body
arrives, stage by stage as ``GPTImageClient._attempt`` and the asset's run body
(``dagster_gptimage._backfill``) do it: parse the JSON body, base64-decode, decode the image fully to
verify it and make the preview from the same pixels, hash, write it atomically with its sidecar,
re-verify the stored file
(the ``image_valid`` check of the run), build the partition's metadata and materialization event.
The floor is the least a client that verifies its images must do: ``base64.b64decode``, one full
decode of the pixels and a plain file write (``ratio``); ``ratio_decode_once`` compares with
``base64.b64decode`` and the write alone, the floor of the first measurements.

Peak RSS: a child process runs a real single-run backfill of 16 partitions of 3840x2160 PNGs with
16 requests in flight against the emulator server (separate process, so its memory is not counted),
with a latency long enough for all 16 to be in flight together.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from bench._common import REPO_ROOT, EmulatorServer, Report, quick_main
from bench._images import photo_bytes
from dagster_gptimage import _providers as providers
from dagster_gptimage._checks import DecodedImage, verify_image
from dagster_gptimage._metadata import data_version_tags, partition_metadata, preview_value
from dagster_gptimage.emulator._bodies import usage_json
from dagster_gptimage.fingerprint import request_fingerprint
from dagster_gptimage.images import (
    PREVIEW_MAX_BYTES,
    PREVIEW_MAX_SIDE,
    inspect_image,
    thumbnail_data_uri,
)
from dagster_gptimage.models import GeneratedImage, GenerateRequest, OutputFormat, Usage
from dagster_gptimage.pricing import estimate_usage
from dagster_gptimage.storage import ImageRecord, ImageStore

TARGET_RATIO = 1.25
TARGET_RSS_MB = 600
RSS_RUNS = 3
ASSET_KEY = dg.AssetKey(["bench", "overhead"])

Stages = dict[str, float]


def response_body(data: bytes, request: GenerateRequest) -> bytes:
    """A response body like the API's for one image."""
    payload = {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(data).decode("ascii")}],
        "usage": usage_json(estimate_usage(request)),
    }
    return json.dumps(payload).encode()


class _Clock:
    """Process CPU time per stage."""

    def __init__(self, stages: Stages) -> None:
        self.stages = stages
        self.last = time.process_time()

    def lap(self, stage: str) -> None:
        now = time.process_time()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now


def ours(
    body: bytes, request: GenerateRequest, store: ImageStore, key: str, stages: Stages
) -> None:
    """The path of one image through the client (``_responses``) and the asset's run body
    (``_execute``): the preview is made from the verification decode, the check trusts that
    decode for the bytes it re-reads and re-hashes."""
    clock = _Clock(stages)
    parts = providers.parse_images_answer(body)
    usage = Usage.from_api(parts.body.usage)
    clock.lap("parse_json")
    text = parts.encoded[0]
    assert text
    data = providers.decode_b64(text)
    clock.lap("b64decode")
    info = inspect_image(
        data,
        field="data[0]",
        preview_max_side=PREVIEW_MAX_SIDE,
        preview_max_bytes=PREVIEW_MAX_BYTES,
    )
    image = GeneratedImage(
        data=data, format=info.format, width=info.width, height=info.height, preview=info.preview
    )
    clock.lap("decode_verify_preview")
    fingerprint = request_fingerprint(request, emulated=False)
    clock.lap("fingerprint")
    assert image.preview is not None
    record = ImageRecord(
        fingerprint=fingerprint,
        prompt=request.prompt,
        params=request.params().model_dump(mode="json"),
        model=request.model,
        provider="openai",
        usage=usage.model_dump(mode="json"),
        cost_usd=0.05,
        latency_s=60.0,
        attempts=1,
        possibly_billed_attempts=1,
        request_id="req_bench",
        width=image.width,
        height=image.height,
        decoded=True,
        preview=thumbnail_data_uri(image.preview),
    )
    written = store.write_image(ASSET_KEY, key, image.data, image.format, record)
    clock.lap("sha256_write_sidecar")
    decoded = DecodedImage(written.sha256, image.format, image.width, image.height)
    problems = verify_image(store, written, decoded=decoded)
    assert not problems, problems
    clock.lap("check_reread")
    assert written.preview is not None
    metadata = partition_metadata(written, cached=False, preview=preview_value(written.preview))
    dg.AssetMaterialization(
        asset_key=ASSET_KEY,
        partition=key,
        metadata=metadata,
        tags=data_version_tags(written.sha256, code_version="bench"),
    )
    clock.lap("metadata_event")


def floor(body_b64: str, path: Path, stages: Stages, *, decode: bool) -> None:
    """base64-decode and write; with ``decode``, one full decode of the pixels between (what any
    client that verifies its images must do)."""
    clock = _Clock(stages)
    data = base64.b64decode(body_b64)
    if decode:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    with open(path, "wb") as f:
        f.write(data)
    clock.lap("floor")


ROUNDS = 5
"""The variants take turns, a few iterations each, over this many rounds: on a shared machine the
CPU's speed drifts, and each round's ratio compares variants measured moments apart."""


def _timed(function: Callable[[int], None], indexes: range) -> float:
    started = time.process_time()
    for index in indexes:
        function(index)
    return time.process_time() - started


def measure_overhead(
    report: Report, *, width: int, height: int, fmt: OutputFormat, iterations: int
) -> None:
    label = f"overhead_{width}x{height}_{fmt}"
    data = photo_bytes(width, height, fmt)
    request = GenerateRequest(
        prompt="A lighthouse at dusk, watercolour", size=f"{width}x{height}", output_format=fmt
    )
    body = response_body(data, request)
    b64 = base64.b64encode(data).decode("ascii")
    variants = ("floor", "floor_decode", "ours")
    rounds = max(1, min(ROUNDS, iterations))
    per_round = max(1, iterations // rounds)
    totals = dict.fromkeys(variants, 0.0)
    round_ratios: list[float] = []
    stages: Stages = {}
    with tempfile.TemporaryDirectory(prefix="gptimage-bench-overhead-") as tmp:
        store = ImageStore(base_url=str(Path(tmp) / "store"))
        floor_dir = Path(tmp) / "floor"
        floor_dir.mkdir()

        def one(variant: str, index: int) -> None:
            key = f"{variant}{index + 1}"
            if variant == "ours":
                ours(body, request, store, key, stages)
            else:
                floor(b64, floor_dir / f"{key}.{fmt}", {}, decode=variant != "floor")

        for variant in variants:
            one(variant, -1)  # warm up
        stages.clear()
        for round_index in range(rounds):
            indexes = range(round_index * per_round, (round_index + 1) * per_round)
            spent = {v: _timed(lambda i, v=v: one(v, i), indexes) for v in variants}
            for variant in variants:
                totals[variant] += spent[variant]
            round_ratios.append(spent["ours"] / spent["floor_decode"])
    count = rounds * per_round
    results = {variant: total / count for variant, total in totals.items()}
    total = sum(stages.values())
    breakdown = ", ".join(
        f"{name} {100 * value / total:.0f}%"
        for name, value in sorted(stages.items(), key=lambda item: -item[1])
    )
    report.note(f"{label} CPU by stage: {breakdown}")
    ratio = statistics.median(round_ratios)
    targeted = fmt == "png"
    report.add(f"{label}.bytes", len(data))
    report.add(f"{label}.floor_cpu_ms", results["floor"] * 1000, "ms", note="b64decode + write")
    report.add(
        f"{label}.floor_decode_cpu_ms",
        results["floor_decode"] * 1000,
        "ms",
        note="b64decode + one full decode + write",
    )
    report.add(f"{label}.ours_cpu_ms", results["ours"] * 1000, "ms")
    report.add(
        f"{label}.ratio",
        ratio,
        target=f"≤ {TARGET_RATIO}" if targeted else "",
        met=ratio <= TARGET_RATIO + 1e-9 if targeted else None,
        note=(
            f"vs b64decode + one full decode + write; median of {rounds} rounds in which the "
            f"variants take turns ({min(round_ratios):.3f}-{max(round_ratios):.3f})"
        ),
    )
    report.add(
        f"{label}.ratio_decode_once",
        results["ours"] / results["floor"],
        note="vs b64decode + write alone (the floor before): the image is now decoded once",
    )


def _rss_child(
    base_url: str, *, size: str, n: int, concurrency: int, env: dict[str, str] | None = None
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gptimage-bench-rss-") as tmp:
        command = [
            sys.executable,
            "-m",
            "bench._rss_child",
            "--base-url",
            base_url,
            "--size",
            size,
            "--partitions",
            str(n),
            "--concurrency",
            str(concurrency),
            "--dir",
            tmp,
        ]
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, **(env or {})},
        )
    if done.returncode != 0:
        raise RuntimeError(f"the RSS child failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_rss(report: Report, *, quick: bool) -> None:
    """Peak RSS of a child process running a real backfill with 16 4K images in flight, with
    glibc's default allocator settings and with large blocks always returned to the system."""
    width, height = (1024, 1024) if quick else (3840, 2160)
    n = concurrency = 2 if quick else 16
    label = "rss_16x4k" if not quick else "rss_quick"
    size = f"{width}x{height}"
    photo_bytes(width, height, "png")
    runs = 1 if quick else RSS_RUNS
    with EmulatorServer(args=["--no-auth", "--latency", "2"]) as server:
        default = [
            _rss_child(server.base_url, size=size, n=n, concurrency=concurrency)
            for _ in range(runs)
        ]
        requests = server.stats()["requests"]
        tuned = []
        if not quick and sys.platform.startswith("linux"):
            tuned = [
                _rss_child(
                    server.base_url,
                    size=size,
                    n=n,
                    concurrency=concurrency,
                    env={"MALLOC_MMAP_THRESHOLD_": "131072"},
                )
                for _ in range(runs)
            ]
    figures = sorted(default, key=lambda f: f["peak_rss_mb"])[len(default) // 2]
    report.add(f"{label}.images", n, note=f"{size} PNG, {concurrency} in flight")
    report.add(f"{label}.requests", requests, note=f"{runs} runs of {n}")
    report.add(f"{label}.rss_before_run_mb", figures["rss_before_mb"], "MB")
    peaks = sorted(f["peak_rss_mb"] for f in default)
    report.add(
        f"{label}.peak_rss_mb",
        figures["peak_rss_mb"],
        "MB",
        target=f"≤ {TARGET_RSS_MB} MB" if not quick else "",
        met=figures["peak_rss_mb"] <= TARGET_RSS_MB if not quick else None,
        note=f"median of {runs}; all: {', '.join(f'{p:.0f}' for p in peaks)}",
    )
    if tuned:
        tuned_peaks = sorted(f["peak_rss_mb"] for f in tuned)
        report.add(
            f"{label}.peak_rss_mb_mmap_threshold",
            tuned_peaks[len(tuned_peaks) // 2],
            "MB",
            note=(
                "median, same runs with MALLOC_MMAP_THRESHOLD_=131072 (freed large blocks go back "
                f"to the OS); all: {', '.join(f'{p:.0f}' for p in tuned_peaks)}"
            ),
        )
    report.add(
        f"{label}.run_wall_s",
        figures["wall_s"],
        "s",
        note="one latency (2 s) + processing: the requests overlapped",
    )


def run(*, quick: bool = False) -> Report:
    report = Report("Per-image overhead and peak memory (benchmark 2)")
    report.note(
        "CPU = time.process_time of this process, per image, averaged over the iterations (the "
        "variants take turns in rounds; a ratio is the median of the rounds' ratios); "
        "photo-like images with realistic byte sizes (bench/_images.py); local disk store"
    )
    cases: list[tuple[int, int, OutputFormat, int]] = (
        [(1024, 1024, "png", 2), (1024, 1024, "webp", 2)]
        if quick
        else [
            (1024, 1024, "png", 40),
            (1024, 1024, "webp", 40),
            (3840, 2160, "png", 10),
            (3840, 2160, "webp", 10),
        ]
    )
    for width, height, fmt, iterations in cases:
        measure_overhead(report, width=width, height=height, fmt=fmt, iterations=iterations)
    measure_rss(report, quick=quick)
    return report


def main(argv: Any = None) -> None:
    quick_main("python -m bench.overhead", run, argv)


if __name__ == "__main__":
    main()
