"""Prompt rows are assets with data versions: a changed row marks exactly its image stale, and an
automation condition regenerates changed, added and fixed rows."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from _assets_support import SMALL, emulator_resources, materializations, materialize_range
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.observe import observe
from dagster._core.loader import LoadingContextForTest

from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.prompt_rows import prompt_rows_asset, row_data_version
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.sensors import prompt_table_sensor


def write_rows(path: Path, rows: dict[str, str], *, header: str = "key,prompt") -> None:
    path.write_text(header + "\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))


class Sensor:
    """Ticks a sensor the way the daemon does: cursor kept, events and partitions recorded."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs) -> None:  # type: ignore[no-untyped-def]
        self.sensor, self.instance, self.defs = sensor, instance, defs
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult | dg.SkipReason:
        context = dg.build_sensor_context(
            instance=self.instance, definitions=self.defs, cursor=self.cursor
        )
        result = self.sensor(context)
        if isinstance(result, dg.SensorResult):
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                self.instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            for event in result.asset_events or []:
                self.instance.report_runless_asset_event(event)
        return result


def stale(
    instance: dg.DagsterInstance, defs: dg.Definitions, key: dg.AssetKey, keys: list[str]
) -> set[str]:
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    return {k for k in keys if resolver.get_status(key, k) != StaleStatus.FRESH}


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def test_row_version_covers_what_reaches_the_request_only() -> None:
    table = PromptTable.from_records(
        [
            {"key": "a", "prompt": "p", "quality": "low", "caption": "one"},
            {"key": "b", "prompt": "p", "quality": "low", "caption": "two"},
            {"key": "c", "prompt": "p", "quality": "high", "caption": "one"},
        ]
    )
    a, b, c = (row_data_version(table.row(k)) for k in "abc")
    assert a == b, "a caption does not reach the request"
    assert a != c


def test_the_prompt_table_is_upstream_with_one_version_per_row(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_rows(csv, {"a": "a red kite", "b": "a blue kite", "c": "a green kite"})
    base = image_generation_asset(name="kites", prompts=PromptTable.from_path(csv), size=SMALL)
    rows = prompt_rows_asset(base)
    edit = image_edit_asset(name="kites_ink", sources=[base], prompt="ink", size=SMALL)
    resources, emulator = emulator_resources(tmp_path / "store")
    sensor = prompt_table_sensor(base)
    defs = dg.Definitions(assets=[rows, base, edit], sensors=[sensor], resources=resources)
    graph = defs.resolve_asset_graph()
    assert rows.key == dg.AssetKey("kites_prompts")
    assert graph.get(base.key).parent_keys == {rows.key}
    assert graph.get(rows.key).partitions_def == base.partitions_def

    ticker = Sensor(sensor, instance, defs)
    first = ticker.tick()
    assert isinstance(first, dg.SensorResult)
    assert sorted(e.partition for e in first.asset_events) == ["a", "b", "c"]
    assert materialize_range(
        [rows, base, edit], resources, "a", "c", instance=instance, selection=[base, edit]
    ).success
    made = materializations(instance, base.key)
    assert made["b"].tags["dagster/input_data_version/kites_prompts"] == (
        made["b"].metadata["prompt_row_version"].value
    )
    assert stale(instance, defs, base.key, ["a", "b", "c"]) == set()
    assert isinstance(ticker.tick(), dg.SkipReason), "nothing changed, nothing observed"

    write_rows(csv, {"a": "a red kite", "b": "a blue kite at dusk", "c": "a green kite"})
    changed = ticker.tick()
    assert isinstance(changed, dg.SensorResult)
    assert [e.partition for e in changed.asset_events] == ["b"]
    assert changed.run_requests == [], (
        "static partitions: regeneration is the user's or automation's"
    )
    assert stale(instance, defs, base.key, ["a", "b", "c"]) == {"b"}

    before = emulator.stats.requests
    assert materialize_range(
        [rows, base], resources, "b", "b", instance=instance, selection=[base]
    ).success
    assert emulator.stats.requests - before == 1
    assert stale(instance, defs, base.key, ["a", "b", "c"]) == set()
    # Edits follow by the images' own data versions.
    assert stale(instance, defs, edit.key, ["a", "b", "c"]) == {"b"}


def test_observing_the_rows_asset_records_every_rows_version(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_rows(csv, {"a": "one", "b": "two"})
    base = image_generation_asset(name="obs", prompts=PromptTable.from_path(csv), size=SMALL)
    rows = prompt_rows_asset(base)
    result = observe([rows], instance=instance)  # what the UI's "Observe" button runs
    assert result.success
    observed = {
        e.event_specific_data.asset_observation.partition: e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    table = PromptTable.from_path(csv)
    assert {k: o.tags["dagster/data_version"] for k, o in observed.items()} == {
        k: row_data_version(table.row(k)) for k in "ab"
    }


def test_eager_regenerates_changed_added_and_fixed_rows(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_rows(csv, {"a": "a red kite", "b": "a forbidden kite", "c": "a green kite"})
    eager = dg.AutomationCondition.eager()
    base = image_generation_asset(
        name="auto_kites",
        prompts=PromptTable.from_path(csv),
        size=SMALL,
        partitioning="dynamic",
        automation_condition=eager,
    )
    rows = prompt_rows_asset(base)
    resources, emulator = emulator_resources(tmp_path / "store", moderation_word="forbidden")
    sensor = prompt_table_sensor(base)
    defs = dg.Definitions(assets=[rows, base], sensors=[sensor], resources=resources)
    ticker = Sensor(sensor, instance, defs)
    first = ticker.tick()
    assert isinstance(first, dg.SensorResult)
    assert first.run_requests == [], "the automation condition requests the runs"

    def evaluate(cursor):  # type: ignore[no-untyped-def]
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        requested = {
            key
            for subset in result.results
            if subset.key == base.key
            for key in subset.true_subset.expensively_compute_partition_keys()
        }
        return result, requested

    result, requested = evaluate(None)
    assert requested == set(), "Dagster's first evaluation only takes stock"
    run = materialize_range([rows, base], resources, "a", "c", instance=instance, selection=[base])
    assert not run.success, "b is blocked"
    assert set(materializations(instance, base.key)) == {"a", "c"}
    result, requested = evaluate(result.cursor)
    assert requested == set(), "a failed row is not retried until it changes"

    write_rows(
        csv, {"a": "a red kite", "b": "a blue kite", "c": "a green kite at dusk", "d": "new kite"}
    )
    assert isinstance(ticker.tick(), dg.SensorResult)
    result, requested = evaluate(result.cursor)
    assert requested == {"b", "c", "d"}
    before = emulator.stats.requests
    for key in sorted(requested):
        assert dg.materialize(
            [base], resources=resources, instance=instance, partition_key=key
        ).success
    assert emulator.stats.requests - before == 3
    result, requested = evaluate(result.cursor)
    assert requested == set()


def test_bumping_revision_regenerates_exactly_that_row(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    rows = {"a": "a red kite,", "b": "a blue kite,", "c": "a green kite,"}
    write_rows(csv, rows, header="key,prompt,revision")
    resources, emulator = emulator_resources(tmp_path / "store")

    def run() -> dg.ExecuteInProcessResult:
        base = image_generation_asset(
            name="revised", prompts=PromptTable.from_path(csv), size=SMALL
        )
        return materialize_range([base], resources, "a", "c", instance=instance)

    assert run().success
    assert emulator.stats.requests == 3
    assert run().success
    assert emulator.stats.requests == 3, "same rows: every partition is a cache hit"

    write_rows(csv, {**rows, "b": "a blue kite,2"}, header="key,prompt,revision")
    again = run()
    assert again.success
    assert emulator.stats.requests == 4, "only the row whose revision changed is paid again"
    made = materializations(instance, dg.AssetKey("revised"), run_id=again.run_id)
    cached = {k for k, m in made.items() if m.metadata["cached"].value}
    assert cached == {"a", "c"}
    store = resources["image_store"]
    assert store.read_record(dg.AssetKey("revised"), "b").revision == "2"
    assert store.read_record(dg.AssetKey("revised"), "a").revision is None
