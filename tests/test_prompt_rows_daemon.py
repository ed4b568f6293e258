"""Prompt rows through Dagster's daemons: edit the CSV, and automation regenerates exactly the rows
that changed, were added or were fixed after a failure, with their edits, with no one clicking.

A project in tmp: a prompt CSV with dynamic partitioning (one row blocked by the emulator's
moderation word), a generation asset and an edit of it, both with
``dg.AutomationCondition.eager()``, the prompt rows asset, ``prompt_table_sensor`` and an explicit
``dg.AutomationConditionSensorDefinition``, both declared RUNNING in code. In Dagster 1.13 the
``default_automation_condition_sensor`` (created for assets with an automation condition that no
automation sensor targets) is STOPPED until someone turns it on in the UI, so a deployment that
should work unattended declares its own with ``default_status=RUNNING``.

Runs are separate processes, so the emulator runs as a server on loopback and its
``/_emulator/stats`` counts every request. Dagster's first automation evaluation only takes stock:
whether the initial rows are requested by automation depends on whether the prompt sensor's first
tick lands before or after that evaluation, so the test materializes whatever automation left
missing through a GraphQL backfill (what "Materialize all" in the UI launches), and checks the
baseline request counts either way. Requested partitions are launched as backfills
(``emit_backfills``, Dagster's default), which the backfill daemon picks up every 30 s.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _dev_support import EmulatorServer, dev_workspace, emulator_process, load_ui

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "prompt_rows_daemon"
REPOSITORY = "__repository__"
AUTOMATION_SENSOR = "images_automation"
PROMPT_SENSOR = "scenes_prompt_table_sensor"
ASSETS = ("scenes", "inked")
KEYS = [f"row{i:02d}" for i in range(6)]
BLOCKED = "row03"
CHANGED = "row01"
ADDED = "row06"


ui = load_ui()

_DEFS = '''
"""Prompt rows with automation: eager images and edits, the prompt sensor, an automation sensor."""
import dagster as dg
from dagster_gptimage import (
    GPTImageResource, ImageStore, PromptTable, image_edit_asset, image_generation_asset,
    prompt_rows_asset, prompt_table_sensor,
)

SIZE = "1024x640"
eager = dg.AutomationCondition.eager()
scenes = image_generation_asset(
    name="scenes",
    prompts=PromptTable.from_path({prompts!r}),
    size=SIZE,
    partitioning="dynamic",
    automation_condition=eager,
)
inked = image_edit_asset(
    name="inked", sources=[scenes], prompt="Ink it", size=SIZE, automation_condition=eager
)
defs = dg.Definitions(
    assets=[prompt_rows_asset(scenes), scenes, inked],
    sensors=[
        prompt_table_sensor(
            scenes, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING
        ),
        dg.AutomationConditionSensorDefinition(
            {automation!r},
            target=dg.AssetSelection.all(),
            minimum_interval_seconds=5,
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
    ],
    resources={{
        "gptimage": GPTImageResource(provider="emulator", base_url={base_url!r}),
        "image_store": ImageStore(base_url={store!r}),
    }},
)
'''


def _write_prompts(path: Path, prompts: dict[str, str]) -> None:
    path.write_text("key,prompt\n" + "".join(f"{k},{v}\n" for k, v in prompts.items()))


INITIAL = {
    key: f"A {'forbidden' if key == BLOCKED else 'calm'} harbour at dawn {key}" for key in KEYS
}


@dataclass(frozen=True)
class Project:
    root: Path
    prompts: Path
    workspace: Path
    home: Path


def _project(tmp: Path, base_url: str) -> Project:
    prompts = tmp / "prompts.csv"
    _write_prompts(prompts, INITIAL)
    defs = tmp / "defs.py"
    defs.write_text(
        textwrap.dedent(_DEFS).format(
            prompts=str(prompts),
            automation=AUTOMATION_SENSOR,
            base_url=base_url,
            store=str(tmp / "images"),
        )
    )
    workspace, home = dev_workspace(tmp, defs, LOCATION)
    return Project(root=tmp, prompts=prompts, workspace=workspace, home=home)


@pytest.fixture
def emulator_server() -> Iterator[EmulatorServer]:
    args = ("--latency", "0.05", "--moderation-word", "forbidden", "--log-level", "warning")
    with emulator_process(*args) as base_url:
        yield EmulatorServer(base_url)


# --- GraphQL: what the UI reads and sends ----------------------------------------------------

_STATE = """
query($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    partitionKeysByDimension { partitionKeys }
    assetPartitionStatuses {
      __typename
      ... on DefaultPartitionStatuses { materializedPartitions failedPartitions }
    }
    latestMaterializationByPartition(partitions: $partitions) { partition runId }
  }
}
"""
_TICKS = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState {
        status
        ticks(limit: 200) {
          status timestamp endTimestamp runIds requestedAssetMaterializationCount skipReason
          error { message }
        }
      }
    }
  }
}
"""
_ACTIVE = """
query {
  runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
    __typename
    ... on Runs { results { runId } }
  }
  partitionBackfillsOrError(status: REQUESTED) {
    __typename
    ... on PartitionBackfills { results { id } }
  }
}
"""
_RUNS = """
query {
  runsOrError {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
_EVENTS = """
query($runId: ID!) {
  logsForRun(runId: $runId, limit: 5000) {
    __typename
    ... on EventConnection {
      events { __typename ... on MessageEvent { message } ... on StepEvent { stepKey } }
    }
  }
}
"""


@dataclass(frozen=True)
class AssetState:
    partitions: list[str]
    materialized: set[str]
    failed: set[str]
    run_by_partition: dict[str, str]


def _asset_keys() -> list[dict[str, list[str]]]:
    return [{"path": [name]} for name in ASSETS]


def _states(base_url: str) -> dict[str, AssetState]:
    data = ui.graphql(base_url, _STATE, {"keys": _asset_keys(), "partitions": [*KEYS, ADDED]})
    states: dict[str, AssetState] = {}
    for node in data["assetNodes"]:
        statuses = node["assetPartitionStatuses"]
        assert statuses["__typename"] == "DefaultPartitionStatuses", statuses
        dims = node["partitionKeysByDimension"] or [{"partitionKeys": []}]
        states[node["assetKey"]["path"][-1]] = AssetState(
            partitions=list(dims[0]["partitionKeys"]),
            materialized=set(statuses["materializedPartitions"]),
            failed=set(statuses["failedPartitions"]),
            run_by_partition={
                event["partition"]: event["runId"]
                for event in node["latestMaterializationByPartition"]
                if event is not None
            },
        )
    assert set(states) == set(ASSETS)
    return states


def _ticks(base_url: str, sensor: str) -> list[dict[str, Any]]:
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": sensor,
    }
    found = ui.graphql(base_url, _TICKS, {"selector": selector})["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    return found["sensorState"]["ticks"]


def _finished_ticks_since(base_url: str, sensor: str, since: float) -> list[dict[str, Any]]:
    return [
        tick
        for tick in _ticks(base_url, sensor)
        if tick["timestamp"] > since and tick["status"] != "STARTED"
    ]


def _busy(base_url: str) -> list[str]:
    data = ui.graphql(base_url, _ACTIVE)
    runs = [run["runId"] for run in data["runsOrError"]["results"]]
    backfills = [b["id"] for b in data["partitionBackfillsOrError"]["results"]]
    return runs + backfills


def _wait(what: str, check: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout_s:g}s\n{why()}")


def _settle(base_url: str, since: float, timeout_s: float, why: Callable[[], str]) -> None:
    """Wait until two automation evaluations have finished after ``since`` and no run or backfill
    is active (one tick may have started before the change it should see)."""

    def settled() -> bool:
        return len(_finished_ticks_since(base_url, AUTOMATION_SENSOR, since)) >= 2 and not _busy(
            base_url
        )

    _wait("automation settled", settled, timeout_s, why)


def _launch_backfill(base_url: str, partitions: Sequence[str]) -> str:
    params = {"partitionNames": list(partitions), "assetSelection": _asset_keys()}
    launched = ui.graphql(base_url, ui.LAUNCH_BACKFILL, {"params": params})[
        "launchPartitionBackfill"
    ]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _run_report(base_url: str) -> str:
    """Every run with its tags and the messages of its failures: what to read when this fails."""
    lines: list[str] = []
    for run in ui.graphql(base_url, _RUNS)["runsOrError"]["results"]:
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        wanted = ("dagster/partition", "dagster/backfill", "dagster/asset_partition_range_start")
        shown = {k: v for k, v in tags.items() if k in wanted or k.startswith("dagster/auto")}
        lines.append(f"run {run['runId'][:8]} {run['status']} {shown}")
        logs = ui.graphql(base_url, _EVENTS, {"runId": run["runId"]})["logsForRun"]
        for event in logs.get("events") or []:
            if event["__typename"] in {"ExecutionStepFailureEvent", "RunFailureEvent"}:
                lines.append(f"  {event['__typename']}: {(event.get('message') or '')[:300]}")
    for sensor in (AUTOMATION_SENSOR, PROMPT_SENSOR):
        for tick in _ticks(base_url, sensor)[:12]:
            error = (tick.get("error") or {}).get("message", "")[:300]
            lines.append(
                f"{sensor} tick {tick['timestamp']:.0f} {tick['status']} runs={tick['runIds']} "
                f"requested={tick['requestedAssetMaterializationCount']} "
                f"{tick.get('skipReason') or ''} {error}"
            )
    return "\n".join(lines)


# --- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_automation_regenerates_exactly_changed_added_and_fixed_rows(
    tmp_path: Path, emulator_server: EmulatorServer
) -> None:
    project = _project(tmp_path, emulator_server.base_url)
    good = [key for key in KEYS if key != BLOCKED]
    with ui.dagster_dev(
        project.workspace, project.home, log_path=project.root / "dagster_dev.log"
    ) as base_url:
        started = time.monotonic()

        def why() -> str:
            return _run_report(base_url)

        # The prompt sensor adds one partition per row, with no one clicking.
        _wait(
            "the prompt sensor added every row as a partition",
            lambda: _states(base_url)["scenes"].partitions == KEYS,
            90,
            why,
        )
        added_at = time.time()
        _settle(base_url, added_at, 120, why)

        # Whatever automation's first evaluation took stock of (instead of requesting it) is
        # materialized once, as a user would with "Materialize all".
        states = _states(base_url)
        left = [k for k in KEYS if k not in states["scenes"].materialized | states["scenes"].failed]
        if left:
            _launch_backfill(base_url, left)
        _settle(base_url, time.time(), 150, why)
        states = _states(base_url)
        assert states["scenes"].materialized == set(good), why()
        assert states["scenes"].failed == {BLOCKED}, why()
        assert states["inked"].materialized == set(good), why()
        baseline = emulator_server.by_endpoint()
        assert baseline == {"generations": len(KEYS), "edits": len(good)}, why()
        before = {name: state.run_by_partition for name, state in states.items()}

        # Change one row, add one, fix the blocked one: nothing else happens by hand.
        _write_prompts(
            project.prompts,
            {
                **INITIAL,
                CHANGED: f"A calm harbour at dusk {CHANGED}",
                BLOCKED: f"A calm harbour at dawn {BLOCKED}",
                ADDED: f"A calm harbour at noon {ADDED}",
            },
        )
        expected = {CHANGED, BLOCKED, ADDED}
        _wait(
            "automation regenerated the changed, added and fixed rows and their edits",
            lambda: all(
                key in state.run_by_partition
                and state.run_by_partition[key] != before[name].get(key)
                for name, state in _states(base_url).items()
                for key in expected
            ),
            180,
            why,
        )
        _settle(base_url, time.time(), 90, why)

        after = _states(base_url)
        assert emulator_server.by_endpoint() == {
            "generations": baseline["generations"] + 3,
            "edits": baseline["edits"] + 3,
        }, why()
        for name, state in after.items():
            assert state.partitions == [*KEYS, ADDED], name
            assert state.materialized == {*KEYS, ADDED}, f"{name}\n{why()}"
            assert state.failed == set(), f"{name}\n{why()}"
            regenerated = {
                key
                for key, run_id in state.run_by_partition.items()
                if before[name].get(key) != run_id
            }
            assert regenerated == expected, f"{name}\n{why()}"
        print(f"daemon test: {time.monotonic() - started:.0f} s after dagster dev loaded")
