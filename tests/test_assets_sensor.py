"""Dynamic partitions: prompt_table_sensor adds new rows' keys and requests their runs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from _assets_support import (
    RANGE_END,
    RANGE_START,
    SMALL,
    emulator_resources,
    materializations,
    value,
)

from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.prompts import PromptTable, PromptTableError
from dagster_gptimage.sensors import prompt_table_sensor


def write_table(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("key,prompt\n" + "".join(f"{key},{prompt}\n" for key, prompt in rows))


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


_CURSORS: dict[tuple[int, str], str | None] = {}


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions):  # type: ignore[no-untyped-def]
    """Evaluate one tick and apply its partition requests and cursor, as the sensor daemon does."""
    cursor_key = (id(instance), sensor.name)
    context = dg.build_sensor_context(
        instance=instance, definitions=defs, cursor=_CURSORS.get(cursor_key)
    )
    result = sensor(context)
    if isinstance(result, dg.SensorResult):
        if result.cursor is not None:
            _CURSORS[cursor_key] = result.cursor
        for event in result.asset_events or []:
            instance.report_runless_asset_event(event)
        for request in result.dynamic_partitions_requests or []:
            assert isinstance(request, dg.AddDynamicPartitionsRequest)
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
    return result


def test_sensor_adds_new_rows_and_runs_materialize_them_without_a_code_reload(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_table(csv, [("a", "a red kite"), ("b", "a blue kite")])
    asset = image_generation_asset(
        name="kites", prompts=PromptTable.from_path(csv), size=SMALL, partitioning="dynamic"
    )
    sensor = prompt_table_sensor(asset, minimum_interval_seconds=30)
    resources, emulator = emulator_resources(tmp_path / "store")
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources=resources)
    assert isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition)
    name = asset.partitions_def.name
    assert name is not None

    first = tick(sensor, instance, defs)
    assert isinstance(first, dg.SensorResult)
    [request] = first.run_requests or []
    assert request.asset_selection == [asset.key]
    assert request.tags[RANGE_START] == "a"
    assert request.tags[RANGE_END] == "b"
    assert instance.get_dynamic_partitions(name) == ["a", "b"]

    assert isinstance(tick(sensor, instance, defs), dg.SkipReason)

    write_table(csv, [("a", "a red kite"), ("b", "a blue kite"), ("c", "a green kite")])
    third = tick(sensor, instance, defs)
    assert isinstance(third, dg.SensorResult)
    [new_run] = third.run_requests or []
    assert new_run.partition_key == "c"
    assert instance.get_dynamic_partitions(name) == ["a", "b", "c"]

    result = dg.materialize([asset], resources=resources, instance=instance, partition_key="c")
    assert result.success
    assert value(materializations(instance, asset.key)["c"].metadata, "prompt") == "a green kite"
    assert emulator.stats.requests == 1


def test_sensor_run_requests_follow_the_backfill_policy(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_table(csv, [(f"k{i}", f"kite {i}") for i in range(5)])
    asset = image_generation_asset(
        name="chunked_kites",
        prompts=PromptTable.from_path(csv),
        partitioning="dynamic",
        max_partitions_per_run=2,
    )
    sensor = prompt_table_sensor(asset)
    resources, _ = emulator_resources(tmp_path / "store")
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources=resources)

    result = tick(sensor, instance, defs)

    assert isinstance(result, dg.SensorResult)
    ranges = [
        (r.tags.get(RANGE_START), r.tags.get(RANGE_END), r.partition_key)
        for r in result.run_requests or []
    ]
    assert ranges == [("k0", "k1", None), ("k2", "k3", None), (None, None, "k4")]


def test_a_bad_new_row_fails_the_tick_and_adds_nothing(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_table(csv, [("a", "a kite")])
    asset = image_generation_asset(
        name="strict_kites", prompts=PromptTable.from_path(csv), partitioning="dynamic"
    )
    sensor = prompt_table_sensor(asset)
    resources, _ = emulator_resources(tmp_path / "store")
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources=resources)
    csv.write_text("key,prompt,size\na,a kite,\nb/c,bad key,\n")

    with pytest.raises(PromptTableError, match="b/c"):
        tick(sensor, instance, defs)
    assert isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition)
    assert instance.get_dynamic_partitions(asset.partitions_def.name or "") == []


def test_edits_of_a_dynamic_asset_share_its_partitions(tmp_path: Path) -> None:
    csv = tmp_path / "prompts.csv"
    write_table(csv, [("a", "a kite")])
    asset = image_generation_asset(
        name="dyn_base", prompts=PromptTable.from_path(csv), partitioning="dynamic"
    )
    edited = image_edit_asset(name="dyn_edit", sources=[asset], prompt="at sunset")
    assert edited.partitions_def == asset.partitions_def


def test_sensor_needs_a_generation_asset() -> None:
    """Static partitioning is followed too (issue 13: its rows' versions are observed); anything
    that is not a generation asset is refused."""
    static = image_generation_asset(
        name="static_kites", prompts=PromptTable.from_records([{"key": "a", "prompt": "p"}])
    )
    assert prompt_table_sensor(static).name == "static_kites_prompt_table_sensor"

    @dg.asset
    def unrelated() -> None: ...

    with pytest.raises(ValueError, match="image_generation_asset"):
        prompt_table_sensor(unrelated)


def test_each_sensor_reads_its_own_assets_table_when_two_definitions_share_a_key(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    first_csv, second_csv = tmp_path / "first.csv", tmp_path / "second.csv"
    write_table(first_csv, [("a", "a red kite")])
    write_table(second_csv, [("z", "a green kite")])
    first = image_generation_asset(
        name="kites", prompts=PromptTable.from_path(first_csv), size=SMALL, partitioning="dynamic"
    )
    second = image_generation_asset(
        name="kites", prompts=PromptTable.from_path(second_csv), size=SMALL, partitioning="dynamic"
    )
    sensor = prompt_table_sensor(first)
    resources, _ = emulator_resources(tmp_path / "store")
    defs = dg.Definitions(assets=[first], sensors=[sensor], resources=resources)

    result = tick(sensor, instance, defs)

    assert isinstance(result, dg.SensorResult)
    added = [key for r in result.dynamic_partitions_requests or [] for key in r.partition_keys]
    assert added == ["a"]
    assert second.key == first.key


def test_sensor_accepts_an_asset_passed_through_map_asset_specs(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    csv = tmp_path / "prompts.csv"
    write_table(csv, [("a", "a red kite")])
    asset = image_generation_asset(
        name="mapped_kites", prompts=PromptTable.from_path(csv), size=SMALL, partitioning="dynamic"
    )
    [mapped] = dg.map_asset_specs(lambda spec: spec.replace_attributes(group_name="kites"), [asset])
    assert mapped is not asset
    assert mapped.specs_by_key[mapped.key].group_name == "kites"
    sensor = prompt_table_sensor(mapped)
    resources, _ = emulator_resources(tmp_path / "store")
    defs = dg.Definitions(assets=[mapped], sensors=[sensor], resources=resources)
    result = tick(sensor, instance, defs)
    assert isinstance(result, dg.SensorResult)
    assert [list(r.partition_keys) for r in result.dynamic_partitions_requests or []] == [["a"]]


def test_unknown_request_parameter_is_named_before_anything_runs() -> None:
    table = PromptTable.from_records([{"key": "a", "prompt": "p"}])
    with pytest.raises(InvalidRequestError, match=r"unknown request parameter.*qualty"):
        image_generation_asset(name="typo", prompts=table, qualty="low")
    with pytest.raises(InvalidRequestError, match="input_fidelity applies to edits only"):
        image_generation_asset(name="fidelity", prompts=table, input_fidelity="high")
