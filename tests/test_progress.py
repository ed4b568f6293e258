"""Progress lines of long runs and the achieved rate in the run summary."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import SMALL, emulator_resources, materialize_range

from dagster_gptimage import _progress
from dagster_gptimage._metadata import run_summary
from dagster_gptimage._progress import Progress, RateLimitWaits, format_duration
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.prompts import PromptTable


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_is_due_once_per_interval() -> None:
    clock = _Clock()
    progress = Progress(
        "a", total=10, cached=0, failed_before=0, to_request=10, clock=clock, interval_s=30
    )
    assert not progress.due()
    clock.now += 29.9
    assert not progress.due()
    clock.now += 0.1
    assert progress.due()
    assert not progress.due()
    clock.now += 30
    assert progress.due()


def test_the_line_reports_done_rate_spend_eta_and_rate_limit_waits() -> None:
    clock = _Clock()
    progress = Progress(
        "lighthouses",
        total=1000,
        cached=100,
        failed_before=2,
        to_request=890,
        rate_limits=lambda: RateLimitWaits(answers_429=7, wait_s=95.0),
        clock=clock,
    )
    clock.now += 120.0  # 2 minutes: 90 made, 3 failed (1 of them while requesting)

    line = progress.line(made=90, failed=3, spent_usd=3.8125, requests=97)

    assert line.startswith(
        "lighthouses: progress 193/1000 partitions (90 made, 100 cached, 3 failed)"
    )
    assert "45.0 images/min" in line
    assert "spent $3.8125" in line
    # 91 of 890 requested partitions finished in 120 s: 799 left take 799 * 120 / 91 s.
    assert f"ETA {format_duration(799 * 120 / 91)}" in line
    assert format_duration(799 * 120 / 91) == "17m 34s"
    assert "97 requests sent" in line
    assert "rate-limit waits: 7 answers 429, 1m 35s waited" in line
    assert line.endswith("2m 00s elapsed")


def test_the_line_says_what_it_does_not_know_yet() -> None:
    clock = _Clock()
    progress = Progress("a", total=5, cached=0, failed_before=0, to_request=5, clock=clock)
    clock.now += 31
    line = progress.line(made=0, failed=0, spent_usd=0.0, requests=5)
    assert "0/5 partitions" in line
    assert "0.0 images/min" in line
    assert "ETA unknown" in line
    assert "rate-limit waits: not reported by the client" in line


def test_the_summary_adds_the_achieved_rate() -> None:
    key = dg.AssetKey("a")
    with_rate = run_summary(
        key, made=3, cached=0, failed=0, cost_usd=0.1, latencies=[1.0], images_per_minute=42.25
    )
    assert with_rate.endswith("; 42.2 images/min") or with_rate.endswith("; 42.3 images/min")
    without = run_summary(key, made=0, cached=3, failed=0, cost_usd=0.0, latencies=[])
    assert "images/min" not in without


def test_a_long_run_logs_progress_lines(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_progress, "PROGRESS_INTERVAL_S", 0.2)
    table = PromptTable.from_records(
        [{"key": f"p{i}", "prompt": f"a lighthouse, study {i}"} for i in range(4)]
    )
    asset = image_generation_asset(name="slow", prompts=table, size=SMALL)
    resources, _ = emulator_resources(tmp_path, max_concurrency=1, latency_s=0.4)

    result = materialize_range([asset], resources, "p0", "p3", instance=instance)

    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    lines = [m for m in messages if "slow: progress" in m]
    assert len(lines) >= 3, messages
    pattern = re.compile(
        r"slow: progress (\d)/4 partitions \((\d) made, 0 cached, 0 failed\); "
        r"[\d.]+ images/min; spent \$[\d.]+; ETA (?:unknown|\S+); (\d) requests sent; "
        r"rate-limit waits: 0 answers 429, \S+ waited; \S+ elapsed"
    )
    matches = [pattern.fullmatch(line) for line in lines]
    assert all(matches), lines
    done = [int(m.group(1)) for m in matches if m]
    assert done == sorted(done)
    assert done[-1] >= 2
    [summary] = [m for m in messages if "images made" in m]
    assert re.search(
        r"slow: 4 images made, .*; [\d.]+ images/min; 0 answers 429 \(rate limit\), "
        r"[\d.]+ s waited for it$",
        summary,
    ), summary


def test_the_summary_counts_what_the_rate_limit_cost_the_run(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    table = PromptTable.from_records(
        [{"key": f"r{i}", "prompt": f"a harbor, study {i}"} for i in range(4)]
    )
    asset = image_generation_asset(name="limited", prompts=table, size=SMALL)
    resources, emulator = emulator_resources(
        tmp_path,
        max_concurrency=4,
        latency_s=0.0,
        emulator_options={"images_per_minute": 120, "images_burst": 1},
    )
    result = materialize_range([asset], resources, "r0", "r3", instance=instance)
    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    [summary] = [m for m in messages if "images made" in m]
    found = re.search(r"; (\d+) answers 429 \(rate limit\), ([\d.]+) s waited for it$", summary)
    assert found, summary
    assert int(found.group(1)) == emulator.stats.rate_limited
    assert float(found.group(2)) > 0, "four images at 2 per second, burst 1: someone waited"
