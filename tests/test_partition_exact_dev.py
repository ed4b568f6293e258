"""Partition-exact pipelines through the paths deployments take.

A project written to tmp (a prompt table in a CSV, a generation asset, an edit of it and an edit of
the edit) runs against the emulator *server* on loopback, because runs of ``dagster dev`` and of the
CLI execute in other processes: the server's ``/_emulator/stats`` counts every request they send.

- ``dagster dev``: ONE backfill of the three assets over every partition, launched through the UI's
  GraphQL API, must materialize every good row of every asset (edits in the same run as their
  sources) and leave exactly the blocked rows failed; after the rows are fixed and the code location
  reloaded, a backfill of the failed partitions sends exactly one request per fixed row and asset.
- ``dagster asset materialize --partition-range``: the same, through the CLI.

What Dagster does with such a run: it records no per-partition failure event; the UI's failed
partitions of an asset are the partitions its ranged run planned (``ASSET_MATERIALIZATION_PLANNED``)
and did not materialize, counted only because the run ended FAILURE. The backfill daemon ticks
every 30 s (not configurable), and a backfill of non-adjacent partitions of single-run assets
launches one run per contiguous range, which is why the dev test takes three to four minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _dev_support import EmulatorServer, dev_workspace, emulator_process, load_ui

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
KEYS = [f"row{i:02d}" for i in range(32)]
BLOCKED = ("row04", "row13", "row27")
GOOD = sorted(set(KEYS) - set(BLOCKED))
ASSETS = ("scenes", "inked", "framed")
LOCATION = "partition_exact"


ui = load_ui()


# --- the project -----------------------------------------------------------------------------

_DEFS = '''
"""A generation asset, an edit of it and an edit of the edit, on the emulator server."""
import dagster as dg
from dagster_gptimage import (
    GPTImageResource, ImageStore, PromptTable, image_edit_asset, image_generation_asset,
)

SIZE = "1024x640"
prompts = PromptTable.from_path({prompts!r})
scenes = image_generation_asset(name="scenes", prompts=prompts, size=SIZE)
inked = image_edit_asset(name="inked", sources=[scenes], prompt="Ink it", size=SIZE)
framed = image_edit_asset(name="framed", sources=[inked], prompt="Frame it", size=SIZE)
defs = dg.Definitions(
    assets=[scenes, inked, framed],
    resources={{
        "gptimage": GPTImageResource(provider="emulator", base_url={base_url!r}),
        "image_store": ImageStore(base_url={store!r}),
    }},
)
'''


def _write_prompts(path: Path, blocked: Sequence[str]) -> None:
    lines = ["key,prompt"]
    lines += [
        f"{key},{'A forbidden' if key in blocked else 'A calm'} harbour at dawn {key}"
        for key in KEYS
    ]
    path.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Project:
    root: Path
    defs: Path
    prompts: Path
    workspace: Path
    home: Path


def _project(tmp: Path, base_url: str) -> Project:
    prompts = tmp / "prompts.csv"
    _write_prompts(prompts, BLOCKED)
    defs = tmp / "defs.py"
    defs.write_text(
        textwrap.dedent(_DEFS).format(
            prompts=str(prompts), base_url=base_url, store=str(tmp / "images")
        )
    )
    workspace, home = dev_workspace(tmp, defs, LOCATION)
    return Project(root=tmp, defs=defs, prompts=prompts, workspace=workspace, home=home)


# --- the emulator server ---------------------------------------------------------------------


@pytest.fixture
def emulator_server() -> Iterator[EmulatorServer]:
    args = ("--latency", "0.05", "--moderation-word", "forbidden", "--log-level", "warning")
    with emulator_process(*args) as base_url:
        yield EmulatorServer(base_url)


@pytest.fixture
def project(tmp_path: Path, emulator_server: EmulatorServer) -> Project:
    return _project(tmp_path, emulator_server.base_url)


# --- GraphQL: what the UI sends --------------------------------------------------------------

_BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status runs { runId status } error { message } }
    ... on PythonError { message }
  }
}
"""
_STATUSES = """
query($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetPartitionStatuses {
      __typename
      ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
    }
    latestMaterializationByPartition(partitions: $partitions) { partition runId }
  }
}
"""
_RELOAD = """
mutation($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus locationOrLoadError { __typename } }
    ... on PythonError { message }
  }
}
"""
_RUN_EVENTS = """
query($runId: ID!) {
  logsForRun(runId: $runId, limit: 5000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on StepEvent { stepKey }
      }
    }
  }
}
"""
_BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@dataclass(frozen=True)
class AssetState:
    materialized: set[str]
    failed: set[str]
    run_by_partition: dict[str, str]


def _asset_keys() -> list[dict[str, list[str]]]:
    return [{"path": [name]} for name in ASSETS]


def _launch_backfill(base_url: str, params: dict[str, Any]) -> str:
    params = {**params, "assetSelection": _asset_keys()}
    launched = ui.graphql(base_url, ui.LAUNCH_BACKFILL, {"params": params})[
        "launchPartitionBackfill"
    ]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _wait_for_backfill(base_url: str, backfill_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    backfill: dict[str, Any] = {}
    while time.monotonic() < deadline:
        backfill = ui.graphql(base_url, _BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in _BACKFILL_DONE:
            return backfill
        time.sleep(1)
    raise AssertionError(f"backfill {backfill_id} not finished in {timeout_s:g}s: {backfill}")


def _asset_states(base_url: str) -> dict[str, AssetState]:
    nodes = ui.graphql(base_url, _STATUSES, {"keys": _asset_keys(), "partitions": KEYS})
    states: dict[str, AssetState] = {}
    for node in nodes["assetNodes"]:
        statuses = node["assetPartitionStatuses"]
        assert statuses["__typename"] == "DefaultPartitionStatuses", statuses
        runs = {
            event["partition"]: event["runId"]
            for event in node["latestMaterializationByPartition"]
            if event is not None
        }
        states[node["assetKey"]["path"][-1]] = AssetState(
            materialized=set(statuses["materializedPartitions"]),
            failed=set(statuses["failedPartitions"]),
            run_by_partition=runs,
        )
    assert set(states) == set(ASSETS)
    return states


def _failed_steps(base_url: str, run_id: str) -> list[str]:
    logs = ui.graphql(base_url, _RUN_EVENTS, {"runId": run_id})["logsForRun"]
    assert logs["__typename"] == "EventConnection", logs
    return [e["stepKey"] for e in logs["events"] if e["__typename"] == "ExecutionStepFailureEvent"]


def _run_log_excerpt(base_url: str, run_id: str, limit: int = 60) -> str:
    logs = ui.graphql(base_url, _RUN_EVENTS, {"runId": run_id})["logsForRun"]
    events = logs.get("events") or []
    return (
        "\n".join(
            f"{e['__typename']} {e.get('stepKey') or ''}: {(e.get('message') or '')[:300]}"
            for e in events
            if e["__typename"] not in {"MaterializationEvent", "LogMessageEvent"}
        )[-20_000:]
        or "(no events)"
    )


# --- dagster dev -----------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_dev_backfill_fails_exactly_the_blocked_partitions_then_fixes_them(
    project: Project, emulator_server: EmulatorServer
) -> None:
    with ui.dagster_dev(
        project.workspace, project.home, log_path=project.root / "dagster_dev.log"
    ) as base_url:
        backfill_id = _launch_backfill(base_url, {"allPartitions": True})
        backfill = _wait_for_backfill(base_url, backfill_id)
        runs = backfill["runs"]
        excerpt = "\n".join(_run_log_excerpt(base_url, run["runId"]) for run in runs)
        assert len(runs) == 1, f"one run for the three assets, got {runs}\n{excerpt}"
        run_id = runs[0]["runId"]
        assert runs[0]["status"] == "FAILURE", excerpt
        assert backfill["status"] == "COMPLETED_FAILED", f"{backfill}\n{excerpt}"
        assert _failed_steps(base_url, run_id) == ["framed"], excerpt

        states = _asset_states(base_url)
        for name, state in states.items():
            assert state.materialized == set(GOOD), f"{name}\n{excerpt}"
            assert state.failed == set(BLOCKED), f"{name}\n{excerpt}"
            assert set(state.run_by_partition) == set(GOOD), name
            assert set(state.run_by_partition.values()) == {run_id}, "edits run with sources"
        assert emulator_server.by_endpoint() == {
            "generations": len(KEYS),
            "edits": 2 * len(GOOD),
        }, "every row generated once; edits only of good rows, never of blocked ones"

        # The rows are fixed: reload the code location, backfill only the failed partitions.
        _write_prompts(project.prompts, blocked=())
        reloaded = ui.graphql(base_url, _RELOAD, {"name": LOCATION})["reloadRepositoryLocation"]
        assert reloaded["__typename"] == "WorkspaceLocationEntry", reloaded
        assert reloaded["loadStatus"] == "LOADED", reloaded
        failed = sorted(set().union(*(state.failed for state in states.values())))
        assert failed == sorted(BLOCKED)
        before = emulator_server.stats()["requests"]
        retry_id = _launch_backfill(base_url, {"partitionNames": failed})
        retry = _wait_for_backfill(base_url, retry_id)
        retry_excerpt = "\n".join(_run_log_excerpt(base_url, r["runId"]) for r in retry["runs"])
        assert retry["status"] == "COMPLETED_SUCCESS", f"{retry}\n{retry_excerpt}"
        assert emulator_server.stats()["requests"] - before == len(ASSETS) * len(BLOCKED)

        retry_runs = {r["runId"] for r in retry["runs"]}
        for name, state in _asset_states(base_url).items():
            assert state.materialized == set(KEYS), name
            assert state.failed == set(), name
            assert {state.run_by_partition[key] for key in BLOCKED} <= retry_runs, name
            assert {state.run_by_partition[key] for key in GOOD} == {run_id}, "good rows untouched"


# --- the CLI ---------------------------------------------------------------------------------


def _cli_materialize(project: Project) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(project.home)}
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):
        env.pop(name, None)
    dagster = Path(sys.executable).with_name("dagster")
    return subprocess.run(
        [
            str(dagster if dagster.exists() else "dagster"),
            "asset",
            "materialize",
            "--select",
            "*",
            "--partition-range",
            f"{KEYS[0]}...{KEYS[-1]}",
            "-f",
            str(project.defs),
        ],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.timeout(300)
def test_cli_partition_range_fails_only_the_last_edit_step(
    project: Project, emulator_server: EmulatorServer
) -> None:
    completed = _cli_materialize(project)
    output = (completed.stdout + completed.stderr)[-6000:]
    assert completed.returncode != 0, output

    instance = dg.DagsterInstance.from_config(str(project.home))
    try:
        runs = instance.get_runs()
        assert len(runs) == 1, output
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.FAILURE
        failures = [
            entry.dagster_event
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            if entry.dagster_event is not None
        ]
        assert [failure.step_key for failure in failures] == ["framed"], output
        error = failures[0].step_failure_data.error
        assert error is not None
        for key in BLOCKED:
            assert f"{key}: source:" in error.message, "the edit of a failed source fails alone"
        for name in ASSETS:
            records = instance.fetch_materializations(dg.AssetKey(name), limit=1000).records
            partitions = [
                r.asset_materialization.partition if r.asset_materialization else None
                for r in records
            ]
            assert sorted(str(p) for p in partitions) == GOOD, name
            assert {r.run_id for r in records} == {run.run_id}
    finally:
        instance.dispose()
    assert emulator_server.by_endpoint() == {"generations": len(KEYS), "edits": 2 * len(GOOD)}
