"""``python -m example_project.demo``: materialize the whole example, then say where the images are
and what they cost.

It does what a user would do in the Dagster UI, on a persistent instance (``$DAGSTER_HOME``, default
``<project>/.dagster_home``) so that ``dagster dev`` shows the same runs afterwards:

1. one single-run backfill per partitioned group of assets (the whole partition range in one run,
   as ``BackfillPolicy.single_run()`` launches it), generation and edits together;
2. for a dynamic prompt table, one tick of its sensor (adds the table's keys as partitions), then
   the same kind of backfill over every partition;
3. one run of the unpartitioned assets (manifest, dataset export and the review gallery).

A second run finds every image in the store with the same request fingerprint: nothing is sent and
nothing is paid. The offline emulator makes placeholder images unless the real API is asked for
explicitly (``make demo REAL=1``, i.e. ``GPTIMAGE_PROVIDER=openai``); then the pre-flight cost
estimate is printed before the first request.
"""

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from dagster_gptimage import estimate_asset_cost
from example_project.resources import project_root, provider, store_url

_DAGSTER_YAML = """\
# Written by `python -m example_project.demo`.
telemetry:
  enabled: false
"""


@dataclass
class AssetTotals:
    """What the demo's runs recorded for one asset."""

    images: int = 0
    cached: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    latencies: list[float] = field(default_factory=list)
    folder: str = ""
    failed: bool = False
    rows: int | None = None
    """Rows of a manifest or dataset (not images made)."""


def prepare_home() -> Path:
    """``$DAGSTER_HOME`` (created, with telemetry off), defaulting to ``<project>/.dagster_home``."""
    home = Path(os.environ.get("DAGSTER_HOME") or project_root() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DAGSTER_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _groups(
    graph: Any, keys: Iterable[dg.AssetKey]
) -> tuple[list[list[dg.AssetKey]], list[dg.AssetKey]]:
    """Partitioned assets grouped by partitions definition (one backfill each), and the rest."""
    by_partitions: dict[Any, list[dg.AssetKey]] = defaultdict(list)
    unpartitioned: list[dg.AssetKey] = []
    for key in keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        if node.partitions_def is None:
            unpartitioned.append(key)
        else:
            by_partitions[node.partitions_def].append(key)
    return list(by_partitions.values()), unpartitioned


def _tick_sensors(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """Evaluate every sensor once, as the daemon would, and add the partitions they request."""
    lines = []
    for sensor in defs.sensors or []:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        result = sensor(context)
        if isinstance(result, dg.SensorResult):
            added = 0
            for request in result.dynamic_partitions_requests or []:
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    instance.add_dynamic_partitions(
                        request.partitions_def_name, list(request.partition_keys)
                    )
                    added += len(request.partition_keys)
            lines.append(f"sensor {sensor.name}: added {added} new partitions")
        else:
            reason = getattr(result, "skip_message", None) or "nothing new"
            lines.append(f"sensor {sensor.name}: {reason}")
    return lines


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    keys: Sequence[dg.AssetKey],
    tags: Mapping[str, str] | None = None,
    *,
    log_level: str,
) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance,
        asset_selection=list(keys),
        tags=dict(tags or {}),
        raise_on_error=False,
    )


def _record(
    totals: dict[dg.AssetKey, AssetTotals],
    result: dg.ExecuteInProcessResult,
    galleries: list[str],
) -> None:
    for event in result.all_events:
        if not event.is_step_materialization:
            continue
        materialization = event.step_materialization_data.materialization
        meta = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
        entry = totals.setdefault(materialization.asset_key, AssetTotals())
        path = str(meta.get("path", "") or meta.get("gallery", "") or "")
        if "gallery" in meta:
            galleries.append(path)
        if "cached" not in meta:
            entry.folder = path
            rows = meta.get("dagster/row_count")
            entry.rows = int(rows) if isinstance(rows, (int, float)) else entry.rows
            continue
        entry.images += 1
        if meta.get("cached"):
            entry.cached += 1
        else:
            entry.requests += int(meta.get("attempts", 0) or 0)
            entry.latencies.append(float(meta.get("latency_s", 0.0) or 0.0))
        entry.cost_usd += float(meta.get("cost_usd", 0.0) or 0.0)
        entry.folder = path.rsplit("/", 1)[0] if "/" in path else path
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                for key in _keys_of_step(result, event.step_key):
                    totals.setdefault(key, AssetTotals()).failed = True


def _keys_of_step(result: dg.ExecuteInProcessResult, step_key: str | None) -> list[dg.AssetKey]:
    if step_key is None:
        return []
    layer = result.job_def.asset_layer
    return [key for key in layer.executable_asset_keys if key.to_python_identifier() in step_key]


def _table(totals: Mapping[dg.AssetKey, AssetTotals]) -> str:
    header = ("asset", "images", "cached", "requests", "cost", "p50 latency", "where")
    rows = []
    for key in sorted(totals, key=lambda k: k.to_user_string()):
        t = totals[key]
        p50 = f"{statistics.median(t.latencies):.2f} s" if t.latencies else "-"
        rows.append(
            (
                key.to_user_string() + (" (FAILED)" if t.failed else ""),
                str(t.images) if t.images else (f"{t.rows} rows" if t.rows is not None else "-"),
                str(t.cached) if t.images else "-",
                str(t.requests),
                f"${t.cost_usd:.4f}",
                p50,
                t.folder,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def preflight_line(defs: dg.Definitions) -> str:
    """The pre-flight estimate of every image of the example, before any request."""
    graph = defs.resolve_asset_graph()
    assets = [graph.assets_def_for_key(key) for key in graph.executable_asset_keys]
    estimate = estimate_asset_cost(assets)
    return (
        f"Pre-flight estimate: {estimate.images} images, at most ${estimate.cost_usd:.4f} "
        "(images already stored by the same request cost nothing)"
    )


def run(*, log_level: str = "INFO") -> int:
    """Materialize everything; print the table; return the exit code (1 if a run failed)."""
    home = prepare_home()
    from example_project.definitions import defs as load_defs

    started = time.monotonic()
    defs = load_defs()
    chosen = provider()
    print(
        f"dagster-gptimage example: provider {chosen}"
        + (
            " (REAL=1: real images, real cost)"
            if chosen == "openai"
            else " (offline emulator, placeholder images, nothing is paid)"
        )
    )
    if chosen == "emulator" and os.environ.get("OPENAI_API_KEY"):
        print("OPENAI_API_KEY is set but not used: run `make demo REAL=1` to use the real API.")
    if chosen == "openai":
        print(preflight_line(defs))
    print(f"Dagster instance: {home}")
    print(f"Image store:      {store_url()}")
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    totals: dict[dg.AssetKey, AssetTotals] = {}
    galleries: list[str] = []
    ok = True
    with dg.DagsterInstance.get() as instance:
        for note in _tick_sensors(defs, instance):
            print(note)
        partitioned, unpartitioned = _groups(graph, graph.toposorted_asset_keys)
        for keys in partitioned:
            partitions_def = graph.get(keys[0]).partitions_def
            partition_keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance)
            if not partition_keys:
                continue
            names = ", ".join(k.to_user_string() for k in keys)
            print(f"backfill {names}: partitions {partition_keys[0]}...{partition_keys[-1]}")
            result = _execute(
                job,
                instance,
                keys,
                {
                    ASSET_PARTITION_RANGE_START_TAG: partition_keys[0],
                    ASSET_PARTITION_RANGE_END_TAG: partition_keys[-1],
                },
                log_level=log_level,
            )
            ok = ok and result.success
            _record(totals, result, galleries)
        if unpartitioned:
            print(f"run {', '.join(k.to_user_string() for k in unpartitioned)}")
            result = _execute(job, instance, unpartitioned, log_level=log_level)
            ok = ok and result.success
            _record(totals, result, galleries)
    print()
    print(_table(totals))
    images = sum(t.images for t in totals.values())
    cached = sum(t.cached for t in totals.values())
    requests = sum(t.requests for t in totals.values())
    cost = sum(t.cost_usd for t in totals.values())
    print()
    print(
        f"Total: {images} images, {cached} cached, {requests} requests, ${cost:.4f} "
        f"in {time.monotonic() - started:.1f} s"
    )
    if chosen == "emulator" and cost:
        print(
            "(Costs are what the OpenAI API would charge for these images; the emulator is free.)"
        )
    if images and cached == images and requests == 0:
        print("Everything was cached: 0 requests, $0.00 (same prompts, same parameters).")
    if not ok:
        print("Some runs failed: see the messages above, or the runs in `make dev`.")
        return 1
    print(f"Images and their sidecar JSON: {store_url()}")
    for gallery in galleries:
        print(f"Gallery (open it in a browser to review every image): {gallery}")
    print(
        "Runs, cost and latency per partition, previews: `make dev`, or "
        f"DAGSTER_HOME={home} dagster dev -w workspace.yaml (from the repository root)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m example_project.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Dagster's console log level during the runs (default: WARNING).",
    )
    args = parser.parse_args(argv)
    return run(log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
