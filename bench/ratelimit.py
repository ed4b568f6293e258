"""Benchmark 4: throughput at the provider's rate limit (issue 9).

Several processes, each a real single-run backfill on its own SQLite DagsterInstance
(``bench._backfill_child``), share one emulator server whose account is limited in images per
minute, as separate deployments sharing one OpenAI organization would. The emulator's bucket
starts full with ``burst`` images; after that nobody can go faster than the limit, so what is
measured is how close the clients get to it, and at what cost in refused requests:

- partitions materialized / total (a partition whose retries ran out is lost for this run);
- achieved images per minute after the initial burst, from the times the server admitted the
  billed images (``stats.recorded[].received_at``), against the limit;
- the share of answers that were 429 (``stats.rate_limited`` plus injected 429s, over requests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import REPO_ROOT, EmulatorServer, Report

TARGET_SHARE_429 = 0.02
TARGET_THROUGHPUT = 0.95
"""Achieved images per minute after the burst, as a fraction of the limit."""


@dataclass(frozen=True)
class Case:
    label: str
    images_per_minute: float
    burst: int
    partitions: int
    """Per process."""
    processes: int = 3
    latency_s: float = 1.0
    concurrency: int = 8
    """Each process's ``max_concurrency`` (the resource's default)."""
    timeout_s: float = 360.0
    """Processes still running then are stopped; their stored partitions still count."""

    @property
    def total(self) -> int:
        return self.partitions * self.processes


CASES = (
    Case("ratelimit_ipm240", images_per_minute=240, burst=20, partitions=60),
    # The low tier over the length (18 minutes each): with the emulator's default bucket
    # (a minute's worth), and with a bucket of two (a limit enforced over 12 s windows).
    Case("ratelimit_ipm10_b10", images_per_minute=10, burst=10, partitions=60, timeout_s=1500),
    Case("ratelimit_ipm10_b2", images_per_minute=10, burst=2, partitions=60, timeout_s=1500),
    # The short low-tier case of the earlier rounds (bench/RESULTS.md 4-4d), for comparison:
    # three blind first requests against two images make 1 of about 31 answers a 429 already.
    Case("ratelimit_ipm10", images_per_minute=10, burst=2, partitions=10),
)
QUICK_CASES = (
    Case(
        "ratelimit_quick",
        images_per_minute=600,
        burst=5,
        partitions=4,
        latency_s=0.1,
        timeout_s=120,
    ),
)


def achieved_per_minute(admitted: Sequence[float], burst: int) -> float | None:
    """Images per minute between the first image after the burst and the last one (``admitted``:
    one admission time per billed image); None when too few came after the burst."""
    times = sorted(admitted)
    if len(times) < burst + 2:
        return None
    span = times[-1] - times[burst]
    return (len(times) - 1 - burst) / span * 60 if span > 0 else None


def add_limit_figures(
    report: Report, label: str, *, share_429: float, achieved: float | None, limit: float
) -> None:
    """The share of 429 answers and the images per minute achieved after the burst, judged by the
    issue's targets (this benchmark and bench/production.py)."""
    report.add(
        f"{label}.share_429",
        share_429 * 100,
        "%",
        note="of all answers",
        target=f"≤ {TARGET_SHARE_429:.0%}",
        met=share_429 <= TARGET_SHARE_429,
    )
    if achieved is None:
        report.add(f"{label}.achieved_per_minute", "n/a", note="too few images after the burst")
        return
    report.add(f"{label}.achieved_per_minute", achieved, note="admitted after the initial burst")
    ratio = achieved / limit
    report.add(
        f"{label}.achieved_vs_limit",
        ratio,
        target=f"≥ {TARGET_THROUGHPUT:.2f}",
        met=ratio >= TARGET_THROUGHPUT,
    )


def _launch(case: Case, base_url: str, index: int, root: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "bench._backfill_child",
        "--base-url",
        base_url,
        "--partitions",
        str(case.partitions),
        "--concurrency",
        str(case.concurrency),
        "--prefix",
        f"w{index}p",
        "--dir",
        str(root / f"process{index}"),
    ]
    (root / f"process{index}").mkdir(parents=True)
    with (root / f"process{index}" / "stderr.txt").open("w") as stderr:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def _start_together(processes: Sequence[subprocess.Popen[str]]) -> None:
    """Wait until every child has imported Dagster and opened its instance, then let all go."""
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a backfill process did not get ready: {line!r}")
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def _collect(
    processes: Sequence[subprocess.Popen[str]], root: Path, deadline: float
) -> tuple[list[str], list[float], list[float]]:
    """Each child's outcome ("ok", "failed run", "exit N" or "stopped" past the deadline), and
    the wall-clock times its run started and ended."""
    outcomes: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    for index, process in enumerate(processes):
        try:
            out, _ = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
            outcomes.append("stopped")
            ends.append(time.time())
            continue
        if process.returncode != 0:
            err = (root / f"process{index}" / "stderr.txt").read_text()
            print(f"  child failed:\n{err[-2000:]}", flush=True)
            outcomes.append(f"exit {process.returncode}")
            ends.append(time.time())
            continue
        result = json.loads(out.strip().splitlines()[-1])
        outcomes.append("ok" if result["success"] else "failed run")
        starts.append(result["started"])
        ends.append(result["ended"])
    return outcomes, starts, ends


def _materialized(root: Path, index: int) -> int:
    """Partitions the child stored, read from its own instance (also after it was stopped)."""
    import dagster as dg

    from bench._backfill_child import ASSET_NAME

    home = root / f"process{index}" / "dagster_home"
    if not (home / "dagster.yaml").is_file():
        return 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return len(instance.get_materialized_partitions(dg.AssetKey(ASSET_NAME)))


def _report(
    report: Report,
    case: Case,
    stats: Mapping[str, Any],
    materialized: Sequence[int],
    outcomes: Sequence[str],
    wall_s: float,
) -> None:
    label = case.label
    done = sum(materialized)
    admitted = [
        record["received_at"]
        for record in stats["recorded"]
        if record["billed"]
        for _ in range(max(1, record["images"]))
    ]
    achieved = achieved_per_minute(admitted, case.burst)
    requests = stats["requests"]
    refused = stats["rate_limited"] + stats["faults"].get("429", 0)
    share = refused / requests if requests else 0.0
    ideal = max(0, case.total - case.burst) / case.images_per_minute * 60 + case.latency_s
    report.add(
        f"{label}.images_per_minute_limit", case.images_per_minute, note=f"burst {case.burst}"
    )
    report.add(
        f"{label}.processes",
        case.processes,
        note=f"{case.partitions} partitions each, max_concurrency {case.concurrency}, "
        f"latency {case.latency_s:g} s",
    )
    report.add(
        f"{label}.materialized",
        done,
        note=f"of {case.total}; per process {'/'.join(map(str, materialized))}; "
        f"runs: {', '.join(outcomes)}",
        target=f"= {case.total}",
        met=done == case.total,
    )
    report.add(f"{label}.requests", requests)
    report.add(f"{label}.billed_images", stats["billed_images"])
    report.add(
        f"{label}.billed_not_stored",
        stats["billed_images"] - done,
        note="images paid for beyond one per stored partition",
    )
    report.add(f"{label}.answers_429", refused)
    add_limit_figures(
        report, label, share_429=share, achieved=achieved, limit=case.images_per_minute
    )
    report.add(
        f"{label}.stored_per_minute",
        done / wall_s * 60 if wall_s > 0 else 0.0,
        note="partitions stored per minute of wall time, burst included",
    )
    report.add(f"{label}.wall_s", wall_s, "s", note="runs released together, to the last run's end")
    report.add(f"{label}.ideal_s", ideal, "s", note="(total - burst) / limit + latency")


def measure(case: Case, report: Report) -> None:
    args = [
        "--no-auth",
        "--latency",
        str(case.latency_s),
        "--images-per-minute",
        str(case.images_per_minute),
        "--images-burst",
        str(case.burst),
        "--max-recorded",
        "100000",
    ]
    with (
        EmulatorServer(args=args) as server,
        tempfile.TemporaryDirectory(prefix="gptimage-bench-ratelimit-") as tmp,
    ):
        root = Path(tmp)
        processes = [_launch(case, server.base_url, i, root) for i in range(case.processes)]
        _start_together(processes)
        released = time.time()
        outcomes, starts, ends = _collect(processes, root, time.monotonic() + case.timeout_s)
        wall = max(ends) - min([released, *starts])
        stats = server.stats()
        materialized = [_materialized(root, i) for i in range(case.processes)]
    _report(report, case, stats, materialized, outcomes, wall)


def run(*, quick: bool = False) -> Report:
    report = Report("Throughput at the provider's rate limit (benchmark 4)")
    report.note(
        "emulator: one bench._server process limited in images per minute (token bucket, "
        "starts full with the burst); clients: separate processes, each one single-run backfill "
        "(dg.materialize, range tags) on its own SQLite DAGSTER_HOME, GPTImageResource defaults "
        "apart from base_url; 1024x1024 PNG"
    )
    for case in QUICK_CASES if quick else CASES:
        measure(case, report)
    return report


def main(argv: Any = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=[case.label for case in CASES], action="append")
    args = parser.parse_args(argv)
    if args.quick:
        run(quick=True)
        return
    report = Report("Throughput at the provider's rate limit (benchmark 4)")
    for case in CASES:
        if not args.only or case.label in args.only:
            measure(case, report)


if __name__ == "__main__":
    main()
