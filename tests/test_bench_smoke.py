"""``python -m bench --quick`` runs end to end and reports every figure (values sane, not timed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"^\s+(?P<name>[a-z0-9_.]+) = (?P<value>-?[0-9.,]+)", re.MULTILINE)


@pytest.mark.slow
def test_quick_benchmarks_report_every_figure() -> None:
    if not (REPO_ROOT / "bench" / "__main__.py").is_file():
        pytest.skip("bench/ is not part of this checkout")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = {m["name"]: float(m["value"].replace(",", "")) for m in FIGURE.finditer(done.stdout)}

    for name in ("backfill_n8_c4", "backfill_n16_c8"):
        partitions = figures[f"{name}.partitions"]
        assert figures[f"{name}.requests"] == partitions
        assert figures[f"{name}.ideal_s"] > 0
        assert figures[f"{name}.ratio"] >= 0.9  # nothing finishes faster than its latency
        assert figures[f"{name}.run_cpu_per_image_ms"] > 0
    assert figures["naive_n8.sample_partitions"] == 2
    assert figures["naive_n8.wall_s_extrapolated"] > 0
    assert figures["dagster_floor_n16.cpu_per_partition_ms"] > 0

    for fmt in ("png", "webp"):
        name = f"overhead_1024x1024_{fmt}"
        assert figures[f"{name}.bytes"] > 10_000
        assert figures[f"{name}.ratio"] > 1  # our path includes the floor's work
        assert figures[f"{name}.ratio_decode_once"] > 1
    assert 50 < figures["rss_quick.peak_rss_mb"] < 8192
    assert figures["rss_quick.requests"] == figures["rss_quick.images"]

    assert figures["cache_n10.requests"] == 0
    assert figures["cache_n10.cached_materializations"] == 10
    assert figures["ratelimit_quick.materialized"] <= 12
    assert figures["ratelimit_quick.billed_images"] >= figures["ratelimit_quick.materialized"]
    assert 0 <= figures["ratelimit_quick.share_429"] <= 100
    assert figures["batch_stream_quick.lines_read"] == 6
    assert figures["batch_stream_quick.downloads"] == 2  # one broken, one resumed
    assert 50 < figures["batch_stream_quick.peak_rss_mb"] < 8192
    assert figures["gallery_n50.images"] == figures["gallery_n50.new_thumbnails"] == 50
    assert figures["gallery_n50.build_decodes"] == 50
    assert figures["gallery_n50.rebuild_decodes"] == 0
    assert figures["gallery_n50.rebuild_10_new_decodes"] == 10
    assert 0 < figures["gallery_n50.page_kb"] < figures["gallery_n50.first_screen_kb"]
    assert "targets missed:" in done.stdout
    assert "cpu_model:" in done.stdout
