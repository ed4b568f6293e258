"""Benchmark 3: re-materializing partitions whose images are already stored.

A first single-run backfill stores N images (emulator server, no latency); the same backfill run
again must send no request at all (emulator stats) and should finish well within a minute for
1,000 partitions on this 2-core machine: each partition is a sidecar read, an image read and hash,
the preview kept in the sidecar, the ``image_valid`` check (trusting the decode made when the
image was stored) and one Dagster materialization event. Compared with Dagster's own floor for
the same partitions measured in the same run (``bench.backfill.measure_floor``).
"""

# No ``from __future__ import annotations``: consistent with the other Dagster-facing modules.
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

from bench._common import (
    EmulatorServer,
    Report,
    dagster_home,
    materialize_range,
    quick_main,
    run_materializations,
)
from bench._images import photo_bytes
from bench.backfill import SIZE, measure_floor, prompt_table
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

TARGET_WALL_S = 60.0
TARGET_VS_FLOOR = 1.3


def _cached_flags(instance: dg.DagsterInstance, run_id: str) -> list[bool]:
    return [
        bool(materialization.metadata["cached"].value)
        for materialization in run_materializations(instance, run_id)
    ]


def run(*, quick: bool = False) -> Report:
    report = Report("Cache: re-materializing stored partitions (benchmark 3)")
    n, concurrency = (10, 8) if quick else (1000, 32)
    label = f"cache_n{n}"
    report.note(
        f"first run stores {n} images ({SIZE} photo-like PNG) from the emulator server without "
        "latency; the second run is the same single-run backfill on the same instance and store"
    )
    photo_bytes(1024, 1024, "png")
    with (
        EmulatorServer(args=["--no-auth"]) as server,
        dagster_home() as (_home, instance),
        tempfile.TemporaryDirectory(prefix="gptimage-bench-cache-") as store,
    ):
        table = prompt_table(n)
        asset = image_generation_asset(name="bench_cache", prompts=table, size=SIZE)
        resources: dict[str, Any] = {
            "gptimage": GPTImageResource(
                provider="emulator",
                base_url=server.base_url,
                max_concurrency=concurrency,
                max_retries=0,
            ),
            "image_store": ImageStore(base_url=str(Path(store) / "images")),
        }

        def backfill() -> tuple[dg.ExecuteInProcessResult, float]:
            started = time.perf_counter()
            result = materialize_range(asset, resources, instance, table.keys)
            return result, time.perf_counter() - started

        first, first_wall = backfill()
        stored = server.stats()["requests"]
        if not first.success or stored != n:
            raise RuntimeError(f"the first backfill failed ({stored} requests for {n})")
        server.reset()
        second, wall = backfill()
        requests = server.stats()["requests"]
        flags = _cached_flags(instance, second.run_id)
        if not second.success:
            raise RuntimeError("the cached backfill failed")
        floor_wall = measure_floor(instance, n=n, report=report, label=f"dagster_floor_n{n}")
    report.add(f"{label}.first_run_wall_s", first_wall, "s", note=f"{n} images generated")
    report.add(f"{label}.partitions", n)
    report.add(f"{label}.requests", requests, target="0", met=requests == 0)
    report.add(f"{label}.cached_materializations", sum(flags), note="metadata cached=true")
    report.add(
        f"{label}.wall_s",
        wall,
        "s",
        target=f"≤ {TARGET_WALL_S:.0f} s" if not quick else "",
        met=(wall <= TARGET_WALL_S) if not quick else None,
    )
    report.add(f"{label}.per_partition_ms", wall / n * 1000, "ms")
    report.add(
        f"{label}.vs_dagster_floor",
        wall / floor_wall,
        "x",
        target=f"≤ {TARGET_VS_FLOOR}" if not quick else "",
        met=(wall / floor_wall <= TARGET_VS_FLOOR) if not quick else None,
        note="the cached run's wall time / the same partitions' events without image work",
    )
    return report


def main(argv: Any = None) -> None:
    quick_main("python -m bench.cache", run, argv)


if __name__ == "__main__":
    main()
