"""``python -m bench._rss_child``: one real backfill in a fresh process, reporting its peak RSS.

Run by ``bench.overhead`` so that the peak resident memory is that of a process
doing just this: importing Dagster and the package, one single-run backfill of a few large images
in flight together, nothing else. Prints one JSON line.
"""

# No ``from __future__ import annotations`` needed here: no Dagster definitions read annotations.
import argparse
import json
import os
import resource
import time
from pathlib import Path

import dagster as dg

from bench._common import materialize_range
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore


def _peak_mb() -> float:
    """This process's peak resident memory. Linux: ``VmHWM`` of the process's own address space;
    not ``ru_maxrss``, which after a (v)fork + exec also counts the parent's resident memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    """Resident memory now (Linux /proc; the peak so far elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return _peak_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._rss_child")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    root = Path(args.dir)
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    table = PromptTable.from_records(
        [
            {"key": f"k{i:03d}", "prompt": f"A harbour at night, study {i}"}
            for i in range(args.partitions)
        ]
    )
    asset = image_generation_asset(name="bench_rss", prompts=table, size=args.size)
    resources = {
        "gptimage": GPTImageResource(
            provider="emulator",
            base_url=args.base_url,
            max_concurrency=args.concurrency,
            max_retries=0,
        ),
        "image_store": ImageStore(base_url=str(root / "store")),
    }
    with dg.DagsterInstance.from_config(str(home)) as instance:
        before = _current_mb()
        started = time.perf_counter()
        result = materialize_range(asset, resources, instance, table.keys)
        wall = time.perf_counter() - started
        done = len(instance.get_materialized_partitions(asset.key))
    if not result.success or done != args.partitions:
        raise SystemExit(f"backfill failed: success={result.success}, {done} materialized")
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": _peak_mb(), "wall_s": wall}))


if __name__ == "__main__":
    main()
