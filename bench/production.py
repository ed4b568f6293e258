"""Benchmark 7: throughput at the provider's rate limit, scaled out on Dagster's production parts.

Everything real, on loopback: a Dagster instance on a PostgreSQL server (``dagster-postgres``),
``dagster dev`` (webserver + daemon) with the ``QueuedRunCoordinator`` and the run, tag and pool
limits of the ``dagster.yaml`` shown in ``docs/production.md`` (read from that page, so the docs
show what ran), images on SeaweedFS S3, and the emulator as a server whose account is limited in
images per minute. One backfill over every partition, launched through GraphQL
(``launchPartitionBackfill``, as the UI does), is split by ``max_partitions_per_run`` into runs
that the queue starts a few at a time; each run's process has its own client, so the runs share
the account's limit only through the provider's answers (429s and ``x-ratelimit-*`` headers).

Reported: partitions materialized, the backfill's status, the most runs seen in progress at once
(from the run records' start and end times) against the limit, images billed against partitions,
the share of 429 answers, images per minute admitted after the burst against the limit, wall time.
``tests/test_production.py`` runs a smaller case with assertions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from bench._common import REPO_ROOT, EmulatorServer, Report
from bench._services import PostgresServer, S3Server, postgres_server, seaweedfs_server
from bench.ratelimit import achieved_per_minute, add_limit_figures

DOC = REPO_ROOT / "docs" / "production.md"
ASSET = "scenes"
LOCATION = "production"
ACCOUNT_TAG = "gptimage/account"
"""The run tag the docs' ``dagster.yaml`` limits per value: runs sharing one provider account."""
POOL = "gptimage"
_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _load_ui() -> ModuleType:
    if "ui_screenshots" in sys.modules:
        return sys.modules["ui_screenshots"]
    spec = importlib.util.spec_from_file_location(
        "ui_screenshots", REPO_ROOT / "scripts" / "ui_screenshots.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ui_screenshots"] = module
    spec.loader.exec_module(module)
    return module


ui = _load_ui()


# --- the deployment's configuration, from the docs ----------------------------------------------

_DAGSTER_YAML_BLOCK = re.compile(
    r"<!-- docs-test: skip [^>]*tests/test_production\.py[^>]*-->\s*\n```yaml\n(?P<body>.*?)\n```",
    re.DOTALL,
)


def production_dagster_yaml() -> str:
    """The ``dagster.yaml`` of ``docs/production.md`` (the block whose skip reason names
    ``tests/test_production.py``): the instance these runs use."""
    found = _DAGSTER_YAML_BLOCK.search(DOC.read_text(encoding="utf-8"))
    if found is None:
        raise LookupError(f"{DOC}: no dagster.yaml block marked for tests/test_production.py")
    return found["body"] + "\n"


@dataclass(frozen=True)
class Limits:
    """The limits of a ``dagster.yaml`` that bound this backfill's runs and steps."""

    max_concurrent_runs: int
    account_runs: int | None
    pool_default: int | None

    @property
    def runs(self) -> int:
        return min(x for x in (self.max_concurrent_runs, self.account_runs) if x is not None)

    @classmethod
    def of(cls, dagster_yaml: str) -> Limits:
        config = yaml.safe_load(dagster_yaml)
        concurrency = config.get("concurrency") or {}
        runs = concurrency.get("runs") or {}
        account = [
            limit["limit"]
            for limit in runs.get("tag_concurrency_limits") or []
            if limit["key"] == ACCOUNT_TAG
        ]
        return cls(
            max_concurrent_runs=int(runs.get("max_concurrent_runs", 10)),
            account_runs=account[0] if account else None,
            pool_default=(concurrency.get("pools") or {}).get("default_limit"),
        )


# --- the project ---------------------------------------------------------------------------------

_DEFS = '''
"""One partitioned image asset, split into runs of {per_run}; images on S3, limits in the pool."""
import dagster as dg
from dagster_gptimage import GPTImageResource, ImageStore, PromptTable, image_generation_asset

prompts = PromptTable.from_records(
    [{{"key": f"p{{i:04d}}", "prompt": f"A lighthouse on a cliff at dusk, study {{i}}"}}
     for i in range({partitions})]
)
{asset} = image_generation_asset(
    name={asset!r}, prompts=prompts, size="1024x1024", quality="low", output_format="jpeg",
    max_partitions_per_run={per_run}, pool={pool!r},
)
defs = dg.Definitions(
    assets=[{asset}],
    resources={{
        "gptimage": GPTImageResource(
            provider="emulator",
            base_url=dg.EnvVar("GPTIMAGE_BASE_URL"),
            max_concurrency=8,
            max_retries={max_retries},
        ),
        "image_store": ImageStore(
            base_url=dg.EnvVar("GPTIMAGE_STORE_URL"),
            storage_options={{
                "key": dg.EnvVar("AWS_ACCESS_KEY_ID"),
                "secret": dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
                "endpoint_url": dg.EnvVar("GPTIMAGE_S3_ENDPOINT"),
            }},
        ),
    }},
)
'''


@dataclass(frozen=True)
class Scenario:
    label: str
    partitions: int = 60
    per_run: int = 10
    images_per_minute: float = 120
    burst: int = 10
    latency_s: float = 0.05
    timeout_s: float = 300.0
    """For the backfill, from launch to a final status."""
    max_retries: int = 30
    """The resource's: today's client retries each 429 after its retry-after, within this budget."""

    @property
    def keys(self) -> list[str]:
        return [f"p{i:04d}" for i in range(self.partitions)]

    @property
    def ideal_s(self) -> float:
        """The limit's floor: the images beyond the burst at the limit's rate, plus one latency."""
        return max(0, self.partitions - self.burst) / self.images_per_minute * 60 + self.latency_s


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str
    start: float | None
    end: float | None


@dataclass
class Outcome:
    scenario: Scenario
    limits: Limits
    backfill_status: str
    runs: list[RunRecord]
    materialized: set[str]
    failed: set[str]
    stored: set[str]
    """Object names under the asset's S3 prefix."""
    sidecars: dict[str, dict[str, Any]]
    stats: dict[str, Any]
    postgres_runs: int
    """Rows of the ``runs`` table in PostgreSQL: the instance really stored its runs there."""
    wall_s: float
    bucket_prefix: str
    launched_at: float = 0.0
    """Wall-clock time (``time.time()``) the backfill was launched."""
    log_tail: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def peak_runs(self) -> int:
        return peak_concurrency([(r.start, r.end) for r in self.runs if r.start is not None])

    @property
    def runs_span_s(self) -> float:
        """From the first run's start to the last run's end."""
        starts = [r.start for r in self.runs if r.start is not None]
        ends = [r.end for r in self.runs if r.end is not None]
        return max(ends) - min(starts) if starts and ends else 0.0

    @property
    def median_run_s(self) -> float:
        durations = sorted(
            r.end - r.start for r in self.runs if r.start is not None and r.end is not None
        )
        return durations[len(durations) // 2] if durations else 0.0

    @property
    def share_429(self) -> float:
        requests = self.stats["requests"]
        refused = self.stats["rate_limited"] + self.stats["faults"].get("429", 0)
        return refused / requests if requests else 0.0

    @property
    def achieved_per_minute(self) -> float | None:
        admitted = [
            record["received_at"]
            for record in self.stats["recorded"]
            if record["billed"]
            for _ in range(max(1, record["images"]))
        ]
        return achieved_per_minute(admitted, self.scenario.burst)


def peak_concurrency(intervals: Sequence[tuple[float | None, float | None]]) -> int:
    """The most intervals open at once (an interval without an end is still open)."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        if start is None:
            continue
        events.append((start, 1))
        events.append((end if end is not None else float("inf"), -1))
    peak = current = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # ends before starts at a tie
        current += step
        peak = max(peak, current)
    return peak


@dataclass(frozen=True)
class Project:
    root: Path
    workspace: Path
    home: Path


def write_project(root: Path, scenario: Scenario, dagster_yaml: str) -> Project:
    defs = root / "defs.py"
    defs.write_text(
        textwrap.dedent(_DEFS).format(
            partitions=scenario.partitions,
            per_run=scenario.per_run,
            asset=ASSET,
            pool=POOL,
            max_retries=scenario.max_retries,
        )
    )
    workspace = root / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {defs.name}\n"
        f"      location_name: {LOCATION}\n"
    )
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml)
    return Project(root=root, workspace=workspace, home=home)


# --- GraphQL -------------------------------------------------------------------------------------

_BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status error { message } }
    ... on PythonError { message }
  }
}
"""
_RUNS = """
query($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status startTime endTime } }
    ... on PythonError { message }
  }
}
"""
_STATUSES = """
query($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetPartitionStatuses {
      __typename
      ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
    }
  }
}
"""


def launch_backfill(base_url: str) -> str:
    params = {
        "allPartitions": True,
        "assetSelection": [{"path": [ASSET]}],
        "tags": [{"key": ACCOUNT_TAG, "value": "emulator"}],
    }
    launched = ui.graphql(base_url, ui.LAUNCH_BACKFILL, {"params": params})[
        "launchPartitionBackfill"
    ]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"launchPartitionBackfill: {launched}")
    return launched["backfillId"]


def wait_for_backfill(
    base_url: str, backfill_id: str, timeout_s: float, progress: Callable[[str], None]
) -> str:
    deadline = time.monotonic() + timeout_s
    status, shown = "", ""
    while time.monotonic() < deadline:
        backfill = ui.graphql(base_url, _BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill["__typename"] != "PartitionBackfill":
            raise RuntimeError(f"partitionBackfillOrError: {backfill}")
        status = backfill["status"]
        if status in _DONE:
            return status
        runs = backfill_runs(base_url, backfill_id)
        line = f"backfill {status}: " + ", ".join(
            f"{s} {sum(r.status == s for r in runs)}" for s in sorted({r.status for r in runs})
        )
        if line != shown:
            progress(line)
            shown = line
        time.sleep(2)
    return f"TIMEOUT ({status})"


def backfill_runs(base_url: str, backfill_id: str) -> list[RunRecord]:
    query = {"filter": {"tags": [{"key": "dagster/backfill", "value": backfill_id}]}}
    runs = ui.graphql(base_url, _RUNS, query)["runsOrError"]
    if runs["__typename"] != "Runs":
        raise RuntimeError(f"runsOrError: {runs}")
    return [
        RunRecord(r["runId"], r["status"], r["startTime"], r["endTime"]) for r in runs["results"]
    ]


def partition_statuses(base_url: str) -> tuple[set[str], set[str]]:
    nodes = ui.graphql(base_url, _STATUSES, {"keys": [{"path": [ASSET]}]})["assetNodes"]
    statuses = nodes[0]["assetPartitionStatuses"]
    if statuses["__typename"] != "DefaultPartitionStatuses":
        raise RuntimeError(f"assetPartitionStatuses: {statuses}")
    return set(statuses["materializedPartitions"]), set(statuses["failedPartitions"])


# --- the whole scenario --------------------------------------------------------------------------


def _deployment_env(pg: PostgresServer, s3: S3Server, emulator: EmulatorServer) -> dict[str, str]:
    return {
        **pg.env,
        "GPTIMAGE_BASE_URL": emulator.base_url,
        "GPTIMAGE_STORE_URL": f"s3://{s3.bucket}/images",
        "GPTIMAGE_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "NO_PROXY": "127.0.0.1,localhost",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }


def _emulator_args(scenario: Scenario) -> list[str]:
    return [
        "--latency",
        str(scenario.latency_s),
        "--images-per-minute",
        str(scenario.images_per_minute),
        "--images-burst",
        str(scenario.burst),
        "--max-recorded",
        str(20 * scenario.partitions + 1000),
    ]


@contextlib.contextmanager
def _services(scenario: Scenario) -> Iterator[tuple[PostgresServer, S3Server, EmulatorServer]]:
    with (
        postgres_server() as pg,
        seaweedfs_server(bucket="gptimage-production") as s3,
        EmulatorServer(args=_emulator_args(scenario), module="dagster_gptimage.emulator") as emu,
    ):
        yield pg, s3, emu


def run_scenario(
    scenario: Scenario, workdir: Path, *, progress: Callable[[str], None] = print
) -> Outcome:
    """Start the servers, launch the backfill through ``dagster dev``, collect what happened.
    Raises :class:`bench._services.ServiceUnavailable` when PostgreSQL or weed is missing."""
    dagster_yaml = production_dagster_yaml()
    limits = Limits.of(dagster_yaml)
    project = write_project(workdir, scenario, dagster_yaml)
    log_path = workdir / "dagster_dev.log"
    with _services(scenario) as (pg, s3, emulator):
        env = _deployment_env(pg, s3, emulator)
        with ui.dagster_dev(
            project.workspace, project.home, log_path=log_path, extra_env=env
        ) as url:
            progress(f"dagster dev up at {url}; launching the backfill")
            started, launched_at = time.monotonic(), time.time()
            backfill_id = launch_backfill(url)
            status = wait_for_backfill(url, backfill_id, scenario.timeout_s, progress)
            wall_s = time.monotonic() - started
            runs = backfill_runs(url, backfill_id)
            materialized, failed = partition_statuses(url)
        stats = emulator.stats()
        prefix = f"{s3.bucket}/images/{ASSET}"
        fs = s3.filesystem()
        stored = {path.rsplit("/", 1)[-1] for path in fs.find(prefix)}
        sidecars = {
            name.removesuffix(".json"): _json(fs.cat_file(f"{prefix}/{name}"))
            for name in sorted(stored)
            if name.endswith(".json")
        }
        postgres_runs = int(pg.query("SELECT count(*) FROM runs")[0][0])
    return Outcome(
        scenario=scenario,
        limits=limits,
        backfill_status=status,
        runs=runs,
        materialized=materialized,
        failed=failed,
        stored=stored,
        sidecars=sidecars,
        stats=stats,
        postgres_runs=postgres_runs,
        wall_s=wall_s,
        bucket_prefix=prefix,
        launched_at=launched_at,
        log_tail=ui._log_tail(log_path, 60),
    )


def _json(data: bytes) -> dict[str, Any]:
    import json

    return json.loads(data)


# --- the benchmark -------------------------------------------------------------------------------

CASES = (
    Scenario(
        "production_ipm240",
        partitions=180,
        per_run=30,
        images_per_minute=240,
        burst=20,
        latency_s=1.0,
        timeout_s=600,
    ),
    Scenario(
        "production_ipm60",
        partitions=180,
        per_run=30,
        images_per_minute=60,
        burst=10,
        latency_s=1.0,
        timeout_s=900,
    ),
)
"""240/min: the issue's case; 60/min: a limit the runs outpace even on a loaded 2-core machine."""


def report(outcome: Outcome, into: Report) -> None:
    s, label = outcome.scenario, outcome.scenario.label
    into.add(
        f"{label}.partitions",
        s.partitions,
        note=f"{s.partitions // s.per_run} runs of {s.per_run}, latency {s.latency_s:g} s",
    )
    into.add(
        f"{label}.materialized",
        len(outcome.materialized & set(s.keys)),
        target=f"= {s.partitions}",
        met=outcome.materialized >= set(s.keys),
        note=f"backfill {outcome.backfill_status}",
    )
    into.add(
        f"{label}.peak_runs_in_progress",
        outcome.peak_runs,
        target=f"≤ {outcome.limits.runs}",
        met=outcome.peak_runs <= outcome.limits.runs,
        note=f"{len(outcome.runs)} runs; limits: {outcome.limits}",
    )
    into.add(
        f"{label}.billed_images",
        outcome.stats["billed_images"],
        target=f"= {s.partitions}",
        met=outcome.stats["billed_images"] == s.partitions,
    )
    into.add(f"{label}.requests", outcome.stats["requests"])
    into.add(f"{label}.images_per_minute_limit", s.images_per_minute, note=f"burst {s.burst}")
    add_limit_figures(
        into,
        label,
        share_429=outcome.share_429,
        achieved=outcome.achieved_per_minute,
        limit=s.images_per_minute,
    )
    into.add(f"{label}.wall_s", outcome.wall_s, "s", note="launch to the backfill's final status")
    into.add(f"{label}.ideal_s", s.ideal_s, "s", note="(partitions - burst) / limit + latency")
    into.add(f"{label}.runs_span_s", outcome.runs_span_s, "s", note="first run start to last end")
    into.add(f"{label}.median_run_s", outcome.median_run_s, "s", note="one run, start to end")
    starts = [r.start for r in outcome.runs if r.start is not None]
    if starts:
        into.add(
            f"{label}.launch_to_first_run_s",
            min(starts) - outcome.launched_at,
            "s",
            note="backfill daemon tick, queue, run worker start",
        )


def run(quick: bool = False) -> Report:
    result = Report("Production-shaped scale-out (PostgreSQL, queued runs, S3, shared limit)")
    if quick:
        result.note("not run with --quick (minutes of dagster dev); tests/test_production.py is")
        return result
    from bench._services import ServiceUnavailable

    for case in CASES:
        with tempfile.TemporaryDirectory(prefix="gptimage-production-") as tmp:
            try:
                outcome = run_scenario(case, Path(tmp), progress=lambda line: print(f"  {line}"))
            except ServiceUnavailable as missing:
                result.note(f"not run: {missing}")
                return result
        report(outcome, result)
    result.note(
        "each run's process paces itself from the provider's x-ratelimit headers and 429s; "
        "runs share the account with no coordination beyond the provider's answers"
    )
    return result


def expected_store(scenario: Scenario) -> set[str]:
    """The object names a complete backfill leaves under the asset's prefix: image and sidecar."""
    return {f"{k}.jpg" for k in scenario.keys} | {f"{k}.json" for k in scenario.keys}
