"""image_edit_asset: sources read from the store, several sources, masks, edits of edits, automation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import (
    SMALL,
    emulator_resources,
    mask_png,
    materializations,
    materialize_range,
    step_failure_message,
    value,
)

from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageStore

KEYS = ["a", "b", "c"]


def scenes(prefix: str = "a quiet street") -> PromptTable:
    return PromptTable.from_records([{"key": key, "prompt": f"{prefix} {key}"} for key in KEYS])


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def edit_requests(emulator) -> list:  # type: ignore[no-untyped-def]
    return [r for r in emulator.stats.recorded if r.endpoint == "edits"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_edit_runs_in_the_same_run_as_its_source_and_sends_the_stored_image(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    streets = image_generation_asset(name="streets", prompts=scenes(), size=SMALL)
    night = image_edit_asset(name="streets_night", sources=[streets], prompt="the same at night")
    resources, emulator = emulator_resources(tmp_path)

    result = materialize_range([streets, night], resources, "a", "c", instance=instance)

    assert result.success
    skipped = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"]
    assert skipped == []
    store: ImageStore = resources["image_store"]
    mats = materializations(instance, night.key)
    assert sorted(mats) == KEYS
    edits = edit_requests(emulator)
    assert len(edits) == 3
    for key in KEYS:
        source = store.read_record(streets.key, key)
        assert source is not None
        metadata = mats[key].metadata
        assert value(metadata, "sources") == [
            {
                "asset_key": ["streets"],
                "partition_key": key,
                "path": store.image_path(streets.key, key, "png"),
                "sha256": source.sha256,
            }
        ]
        assert value(metadata, "prompt") == "the same at night"
        record = store.read_record(night.key, key)
        assert record is not None
        assert record.sources[0].sha256 == source.sha256
    sent = sorted(f.sha256 for r in edits for f in r.files if f.field.startswith("image"))
    expected = sorted(store.read_record(streets.key, k).sha256 for k in KEYS)  # type: ignore[union-attr]
    assert sent == expected
    assert night.backfill_policy == dg.BackfillPolicy.single_run()
    assert night.partitions_def == streets.partitions_def
    assert {dep.asset_key for dep in next(iter(night.specs)).deps} == {streets.key}


def test_multiple_sources_are_sent_in_order(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    products = image_generation_asset(name="products", prompts=scenes("a teapot"), size=SMALL)
    backgrounds = image_generation_asset(
        name="backgrounds", prompts=scenes("a kitchen"), size=SMALL
    )
    composed = image_edit_asset(
        name="composed",
        sources=[products, backgrounds],
        prompt="put the object of image 1 into the scene of image 2",
    )
    resources, emulator = emulator_resources(tmp_path)

    assert materialize_range(
        [products, backgrounds, composed], resources, "a", "c", instance=instance
    ).success

    store: ImageStore = resources["image_store"]
    by_first_image = {
        r.files[0].sha256: [f.sha256 for f in r.files if f.field.startswith("image")]
        for r in edit_requests(emulator)
    }
    for key in KEYS:
        first = store.read_record(products.key, key)
        second = store.read_record(backgrounds.key, key)
        assert first is not None
        assert second is not None
        assert by_first_image[first.sha256] == [first.sha256, second.sha256]
        sources = value(materializations(instance, composed.key)[key].metadata, "sources")
        assert [s["asset_key"] for s in sources] == [["products"], ["backgrounds"]]


def test_edit_of_an_edit(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    base = image_generation_asset(name="base", prompts=scenes(), size=SMALL)
    night = image_edit_asset(name="night", sources=[base], prompt="at night")
    snowy = image_edit_asset(name="snowy_night", sources=[night], prompt="add snow")
    resources, emulator = emulator_resources(tmp_path)

    result = materialize_range([base, night, snowy], resources, "a", "c", instance=instance)

    assert result.success
    store: ImageStore = resources["image_store"]
    for key in KEYS:
        record = store.read_record(snowy.key, key)
        middle = store.read_record(night.key, key)
        assert record is not None
        assert middle is not None
        assert record.sources[0].sha256 == middle.sha256
    assert emulator.stats.requests_by_endpoint["edits"] == 6


def test_fixed_mask_file(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    mask = tmp_path / "mask.png"
    mask.write_bytes(mask_png((1024, 640)))
    base = image_generation_asset(name="masked_base", prompts=scenes(), size=SMALL)
    edited = image_edit_asset(name="masked", sources=[base], prompt="a red door", mask=str(mask))
    resources, emulator = emulator_resources(tmp_path / "store")

    assert materialize_range([base, edited], resources, "a", "b", instance=instance).success

    for request in edit_requests(emulator):
        masks = [f for f in request.files if f.field == "mask"]
        assert [m.sha256 for m in masks] == [sha(mask.read_bytes())]
    record = resources["image_store"].read_record(edited.key, "a")
    assert record.mask is not None
    assert record.mask.sha256 == sha(mask.read_bytes())
    assert value(materializations(instance, edited.key)["a"].metadata, "mask")["sha256"] == sha(
        mask.read_bytes()
    )


def test_mask_column_per_key(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(mask_png((1024, 640)))
    table_path = tmp_path / "edits.csv"
    table_path.write_text(
        "key,prompt,mask\na,paint the door red,masks/a.png\nb,paint the door blue,\nc,paint the door green,\n"
    )
    base = image_generation_asset(name="doors", prompts=scenes(), size=SMALL)
    edited = image_edit_asset(
        name="doors_painted",
        sources=[base],
        prompts=PromptTable.from_path(table_path),
        mask_column="mask",
    )
    resources, emulator = emulator_resources(tmp_path / "store")

    assert materialize_range([base, edited], resources, "a", "c", instance=instance).success

    by_prompt = {r.fields["prompt"]: r for r in edit_requests(emulator)}
    assert set(by_prompt) == {"paint the door red", "paint the door blue", "paint the door green"}
    assert [f.sha256 for f in by_prompt["paint the door red"].files if f.field == "mask"] == [
        sha((masks / "a.png").read_bytes())
    ]
    assert not [f for f in by_prompt["paint the door blue"].files if f.field == "mask"]


def test_per_key_prompts_table_must_cover_the_source_partitions() -> None:
    base = image_generation_asset(name="cover_base", prompts=scenes(), size=SMALL)
    partial = PromptTable.from_records([{"key": "a", "prompt": "only one"}])
    with pytest.raises(ValueError, match="no row for 2 source partitions: b, c"):
        image_edit_asset(name="cover_edit", sources=[base], prompts=partial)


def test_sources_must_share_partitions() -> None:
    first = image_generation_asset(name="first", prompts=scenes(), size=SMALL)
    other = image_generation_asset(
        name="other", prompts=PromptTable.from_records([{"key": "z", "prompt": "p"}]), size=SMALL
    )
    with pytest.raises(ValueError, match="share one partitions definition"):
        image_edit_asset(name="mixed", sources=[first, other], prompt="combine")


def test_source_given_by_key_needs_its_partitions() -> None:
    """No registry of factory assets: a source given by key carries no partitions, so the caller
    passes them (or the AssetsDefinition itself)."""
    first = image_generation_asset(name="by_key_source", prompts=scenes(), size=SMALL)
    edited = image_edit_asset(
        name="by_key_edit",
        sources=["by_key_source"],
        prompt="p",
        partitions_def=first.partitions_def,
    )
    assert edited.partitions_def == first.partitions_def
    with pytest.raises(ValueError, match="cannot tell the partitions"):
        image_edit_asset(name="unknown_source_edit", sources=["not_an_image_asset"], prompt="p")


def test_edit_arguments_are_checked() -> None:
    base = image_generation_asset(name="args_base", prompts=scenes(), size=SMALL)
    with pytest.raises(ValueError, match="exactly one of prompt"):
        image_edit_asset(name="no_prompt", sources=[base])
    with pytest.raises(ValueError, match="mask_column"):
        image_edit_asset(name="bad_column", sources=[base], prompt="p", mask_column="mask")
    with pytest.raises(InvalidRequestError, match="mask"):
        image_edit_asset(name="missing_mask", sources=[base], prompt="p", mask="/nonexistent/m.png")
    with pytest.raises(InvalidRequestError, match="input_fidelity"):
        image_edit_asset(
            name="bad_fidelity",
            sources=[base],
            prompt="p",
            model="gpt-image-2",
            input_fidelity="high",
        )


def test_missing_source_image_fails_only_that_partition(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    base = image_generation_asset(name="partial_base", prompts=scenes(), size=SMALL)
    edited = image_edit_asset(name="partial_edit", sources=[base], prompt="at dusk")
    resources, emulator = emulator_resources(tmp_path)
    assert dg.materialize([base], resources=resources, instance=instance, partition_key="a").success

    result = materialize_range([edited], resources, "a", "b", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "b: source: source partial_base has no stored image for partition 'b'" in message
    assert sorted(materializations(instance, edited.key)) == ["a"]
    assert emulator.stats.requests_by_endpoint["edits"] == 1


def test_edit_is_cached_until_its_source_changes(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources, emulator = emulator_resources(tmp_path)
    base = image_generation_asset(name="cache_base", prompts=scenes(), size=SMALL)
    edited = image_edit_asset(name="cache_edit", sources=[base], prompt="in watercolour")
    assert materialize_range([base, edited], resources, "a", "c", instance=instance).success
    assert emulator.stats.requests_by_endpoint["edits"] == 3

    changed = PromptTable.from_records(
        [
            {"key": k, "prompt": f"a quiet street {k}" + (" in the rain" if k == "b" else "")}
            for k in KEYS
        ]
    )
    base = image_generation_asset(name="cache_base", prompts=changed, size=SMALL)
    result = materialize_range([base, edited], resources, "a", "c", instance=instance)

    assert result.success
    assert emulator.stats.requests_by_endpoint["edits"] == 4
    cached = {
        key: value(mat.metadata, "cached")
        for key, mat in materializations(instance, edited.key, run_id=result.run_id).items()
    }
    assert cached == {"a": True, "b": False, "c": True}


def test_eager_edits_follow_their_sources_partition_by_partition(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    base = image_generation_asset(name="eager_base", prompts=scenes(), size=SMALL)
    edited = image_edit_asset(
        name="eager_edit",
        sources=[base],
        prompt="as a pencil sketch",
        automation_condition=dg.AutomationCondition.eager(),
    )
    resources, _ = emulator_resources(tmp_path)
    defs = dg.Definitions(assets=[base, edited], resources=resources)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0

    assert dg.materialize([base], resources=resources, instance=instance, partition_key="b").success
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)

    assert second.total_requested == 1
    assert second.get_requested_partitions(edited.key) == {"b"}
