"""image_generation_asset against the in-process emulator: partitions, metadata, cache, force."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import (
    SMALL,
    check_evaluations,
    emulator_resources,
    materializations,
    materialize_range,
    step_failure_message,
    value,
)

from dagster_gptimage.assets import IMAGE_CHECK_NAME, ImageAssetConfig, image_generation_asset
from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.images import inspect_image
from dagster_gptimage.prompts import PromptTable, PromptTableError
from dagster_gptimage.storage import ImageRecord, ImageStore

NUMERIC = {
    "cost_usd": dg.FloatMetadataValue,
    "latency_s": dg.FloatMetadataValue,
    "attempts": dg.IntMetadataValue,
    "input_tokens": dg.IntMetadataValue,
    "output_tokens": dg.IntMetadataValue,
    "width": dg.IntMetadataValue,
    "height": dg.IntMetadataValue,
    "bytes": dg.IntMetadataValue,
    "possibly_billed_attempts": dg.IntMetadataValue,
}
REQUIRED = {
    *NUMERIC,
    "model",
    "provider",
    "size",
    "quality",
    "output_format",
    "sha256",
    "cached",
    "prompt",
    "request_id",
    "path",
    "fingerprint",
    "preview",
}


def table(n: int = 3, **extra_columns: object) -> PromptTable:
    return PromptTable.from_records(
        [{"key": f"k{i}", "prompt": f"a lighthouse, study {i}", **extra_columns} for i in range(n)],
        description="Lighthouse studies",
    )


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def test_range_run_materializes_every_partition_with_its_own_metadata(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(
        name="lighthouses",
        prompts=table(3, mood="calm"),
        size=SMALL,
        quality="low",
        output_format="webp",
    )
    resources, emulator = emulator_resources(tmp_path / "store")

    result = materialize_range([asset], resources, "k0", "k2", instance=instance)

    assert result.success
    assert emulator.stats.requests == 3
    mats = materializations(instance, asset.key)
    assert sorted(mats) == ["k0", "k1", "k2"]
    store = resources["image_store"]
    for key, mat in mats.items():
        metadata = mat.metadata
        assert set(metadata) >= REQUIRED
        for name, kind in NUMERIC.items():
            assert isinstance(metadata[name], kind), name
        assert value(metadata, "prompt") == f"a lighthouse, study {key[1]}"
        assert value(metadata, "cached") is False
        assert value(metadata, "cost_usd") > 0
        assert value(metadata, "provider") == "emulator"
        assert value(metadata, "model") == "gpt-image-2"
        assert (value(metadata, "width"), value(metadata, "height")) == (1024, 640)
        assert value(metadata, "size") == SMALL
        assert value(metadata, "quality") == "low"
        assert value(metadata, "output_format") == "webp"
        assert value(metadata, "mood") == "calm"
        assert isinstance(metadata["path"], dg.PathMetadataValue)
        path = value(metadata, "path")
        assert path == store.image_path(asset.key, key, "webp")
        data = Path(path).read_bytes()
        assert inspect_image(data).format == "webp"
        record = store.read_record(asset.key, key)
        assert record is not None
        assert record.sha256 == value(metadata, "sha256") == mat.tags["dagster/data_version"]
        assert record.fingerprint == value(metadata, "fingerprint")
        assert record.extra == {"mood": "calm"}


def test_preview_is_a_small_inline_image(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="previewed", prompts=table(1), size=SMALL)
    resources, _ = emulator_resources(tmp_path)
    assert materialize_range([asset], resources, "k0", "k0", instance=instance).success

    preview = materializations(instance, asset.key)["k0"].metadata["preview"]
    assert isinstance(preview, dg.MarkdownMetadataValue)
    match = re.fullmatch(
        r"!\[preview\]\(data:(image/(?:webp|jpeg));base64,([A-Za-z0-9+/=]+)\)", preview.value
    )
    assert match, preview.value[:80]
    thumbnail = base64.b64decode(match.group(2))
    assert len(thumbnail) < 8_000
    info = inspect_image(thumbnail)
    assert max(info.width, info.height) <= 128


def test_single_partition_run(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="single", prompts=table(3), size=SMALL, code_version="v7")
    resources, emulator = emulator_resources(tmp_path)

    result = dg.materialize([asset], resources=resources, instance=instance, partition_key="k1")

    assert result.success
    assert emulator.stats.requests == 1
    mats = materializations(instance, asset.key)
    assert sorted(mats) == ["k1"]
    assert mats["k1"].tags["dagster/code_version"] == "v7"
    [evaluation] = check_evaluations(result)
    assert evaluation.passed
    assert evaluation.check_name == IMAGE_CHECK_NAME


def test_definition_carries_dagster_idioms() -> None:
    prompts = table(2)
    asset = image_generation_asset(
        name="idioms",
        prompts=prompts,
        key_prefix=["media"],
        group_name="images",
        owners=["team:media"],
        tags={"domain": "marketing"},
        code_version="v1",
        pool="openai",
    )
    spec = next(iter(asset.specs))
    assert asset.key == dg.AssetKey(["media", "idioms"])
    assert spec.kinds == {"openai", "image"}
    assert spec.description == prompts.description == "Lighthouse studies"
    assert spec.group_name == "images"
    assert spec.owners == ["team:media"]
    assert spec.tags["domain"] == "marketing"
    assert spec.code_version == "v1"
    assert asset.backfill_policy == dg.BackfillPolicy.single_run()
    assert isinstance(asset.partitions_def, dg.StaticPartitionsDefinition)
    assert asset.partitions_def.get_partition_keys() == ["k0", "k1"]
    assert asset.check_keys == {dg.AssetCheckKey(asset.key, IMAGE_CHECK_NAME)}
    assert asset.op.pool == "openai"
    resources, _ = emulator_resources("memory://unused")
    dg.Definitions(assets=[asset], resources=resources).resolve_all_job_defs()


def test_max_partitions_per_run_sets_multi_run_policy() -> None:
    asset = image_generation_asset(name="chunked", prompts=table(2), max_partitions_per_run=25)
    assert asset.backfill_policy == dg.BackfillPolicy.multi_run(25)


def test_bad_row_fails_at_definition_time() -> None:
    bad = PromptTable.from_records(
        [
            {"key": "ok", "prompt": "fine"},
            {"key": "odd", "prompt": "bad size", "size": "1000x1000"},
        ]
    )
    with pytest.raises(PromptTableError, match="odd") as raised:
        image_generation_asset(name="bad_rows", prompts=bad, model="gpt-image-2")
    assert "1000x1000" in str(raised.value)


def test_bad_default_fails_at_definition_time() -> None:
    with pytest.raises(InvalidRequestError, match="quality"):
        image_generation_asset(name="bad_default", prompts=table(1), quality="ultra")


def test_n_other_than_one_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="one image per partition"):
        image_generation_asset(
            name="many",
            prompts=PromptTable.from_records([{"key": "a", "prompt": "p", "n": 2}]),
        )


def test_without_model_a_table_valid_for_some_model_loads() -> None:
    transparent = PromptTable.from_records(
        [{"key": "a", "prompt": "a logo", "background": "transparent"}]
    )
    image_generation_asset(name="logo_any_model", prompts=transparent)
    with pytest.raises(PromptTableError, match="transparent"):
        image_generation_asset(name="logo_v2", prompts=transparent, model="gpt-image-2")


def test_run_time_validation_is_provider_aware_and_sends_nothing(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    rows = PromptTable.from_records(
        [
            {"key": "a", "prompt": "fine"},
            {"key": "b", "prompt": "a gif", "output_format": "gif"},
        ]
    )
    asset = image_generation_asset(name="gif_rows", prompts=rows, size=SMALL)
    resources, emulator = emulator_resources(tmp_path)

    result = materialize_range([asset], resources, "a", "b", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "no request was sent" in message
    assert "b: invalid" in message
    assert "gif" in message
    assert emulator.stats.requests == 0
    assert materializations(instance, asset.key) == {}


def test_model_none_uses_the_resource_model(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="resource_model", prompts=table(1), size="1024x1024")
    resources, emulator = emulator_resources(tmp_path, model="gpt-image-1.5")

    assert materialize_range([asset], resources, "k0", "k0", instance=instance).success

    assert value(materializations(instance, asset.key)["k0"].metadata, "model") == "gpt-image-1.5"
    assert emulator.stats.last is not None
    assert emulator.stats.last.fields["model"] == "gpt-image-1.5"


def test_row_columns_override_defaults_and_colliding_extras_go_under_row(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    rows = PromptTable.from_records(
        [{"key": "a", "prompt": "p", "quality": "medium", "sha256": "user column", "theme": "sea"}]
    )
    asset = image_generation_asset(name="overrides", prompts=rows, size=SMALL, quality="low")
    resources, _ = emulator_resources(tmp_path)
    assert materialize_range([asset], resources, "a", "a", instance=instance).success

    metadata = materializations(instance, asset.key)["a"].metadata
    assert value(metadata, "quality") == "medium"
    assert value(metadata, "theme") == "sea"
    assert value(metadata, "sha256") != "user column"
    assert value(metadata, "row") == {"sha256": "user column"}


def test_cache_hits_send_zero_requests(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="cached", prompts=table(3), size=SMALL)
    resources, emulator = emulator_resources(tmp_path)
    first = materialize_range([asset], resources, "k0", "k2", instance=instance)
    assert first.success
    assert emulator.stats.requests == 3
    before = materializations(instance, asset.key)

    second = materialize_range([asset], resources, "k0", "k2", instance=instance)

    assert second.success
    assert emulator.stats.requests == 3
    after = materializations(instance, asset.key, run_id=second.run_id)
    assert sorted(after) == ["k0", "k1", "k2"]
    for key, mat in after.items():
        assert value(mat.metadata, "cached") is True
        assert value(mat.metadata, "cost_usd") == 0.0
        assert value(mat.metadata, "original_cost_usd") == value(before[key].metadata, "cost_usd")
        assert value(mat.metadata, "sha256") == value(before[key].metadata, "sha256")
        assert "preview" in mat.metadata


def test_changed_row_regenerates_only_that_partition(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    original = table(3)
    resources, emulator = emulator_resources(tmp_path)
    asset = image_generation_asset(name="edited_rows", prompts=original, size=SMALL)
    assert materialize_range([asset], resources, "k0", "k2", instance=instance).success
    changed = PromptTable.from_records(
        [
            {"key": row.key, "prompt": row.prompt + (" at dawn" if row.key == "k1" else "")}
            for row in original
        ]
    )
    asset = image_generation_asset(name="edited_rows", prompts=changed, size=SMALL)

    result = materialize_range([asset], resources, "k0", "k2", instance=instance)

    assert result.success
    assert emulator.stats.requests == 4
    assert emulator.stats.last is not None
    assert emulator.stats.last.fields["prompt"].endswith("at dawn")
    cached = {
        key: value(mat.metadata, "cached")
        for key, mat in materializations(instance, asset.key, run_id=result.run_id).items()
    }
    assert cached == {"k0": True, "k1": False, "k2": True}


def test_force_regenerates_cached_partitions(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="forced", prompts=table(2), size=SMALL)
    resources, emulator = emulator_resources(tmp_path)
    assert materialize_range([asset], resources, "k0", "k1", instance=instance).success

    result = materialize_range(
        [asset],
        resources,
        "k0",
        "k1",
        instance=instance,
        run_config=dg.RunConfig({asset.node_def.name: ImageAssetConfig(force=True)}),
    )

    assert result.success
    assert emulator.stats.requests == 4
    for mat in materializations(instance, asset.key, run_id=result.run_id).values():
        assert value(mat.metadata, "cached") is False


def test_a_corrupted_stored_image_is_not_a_cache_hit(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="repaired", prompts=table(2), size=SMALL)
    resources, emulator = emulator_resources(tmp_path)
    assert materialize_range([asset], resources, "k0", "k1", instance=instance).success
    store: ImageStore = resources["image_store"]
    Path(store.image_path(asset.key, "k0", "png")).write_bytes(b"not an image any more")

    result = materialize_range([asset], resources, "k0", "k1", instance=instance)

    assert result.success
    assert emulator.stats.requests == 3
    mats = materializations(instance, asset.key, run_id=result.run_id)
    assert value(mats["k0"].metadata, "cached") is False
    assert value(mats["k1"].metadata, "cached") is True


def test_memory_store(instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="in_memory", prompts=table(2), size=SMALL)
    base = f"memory://gptimage-tests/{asset.key.to_python_identifier()}"
    resources, _ = emulator_resources(base)

    assert materialize_range([asset], resources, "k0", "k1", instance=instance).success

    store: ImageStore = resources["image_store"]
    records = store.list_records(asset.key)
    assert [r.partition_key for r in records] == ["k0", "k1"]
    for record in records:
        assert isinstance(record, ImageRecord)
        assert value(
            materializations(instance, asset.key)[record.partition_key].metadata, "path"
        ) == (
            f"memory://gptimage-tests/{asset.key.to_python_identifier()}/in_memory/{record.partition_key}.png"
        )
        assert inspect_image(store.read_bytes(record.path)).format == "png"


def test_run_logs_a_summary(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="summarized", prompts=table(3), size=SMALL)
    resources, _ = emulator_resources(tmp_path)
    assert materialize_range([asset], resources, "k0", "k1", instance=instance).success
    second = materialize_range([asset], resources, "k0", "k2", instance=instance)
    assert second.success

    messages = [entry.user_message for entry in instance.all_logs(second.run_id)]
    [summary] = [m for m in messages if "images made" in m]
    assert "summarized: 1 images made, 2 cached, 0 failed" in summary
    assert re.search(r"total cost \$0\.\d{4}", summary)
    assert re.search(r"latency p50 \d+\.\d\d s, p95 \d+\.\d\d s", summary)


def test_sidecar_json_is_written_next_to_the_image(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="sidecars", prompts=table(1), size=SMALL, quality="low")
    resources, _ = emulator_resources(tmp_path / "images")
    assert materialize_range([asset], resources, "k0", "k0", instance=instance).success

    sidecar = json.loads((tmp_path / "images" / "sidecars" / "k0.json").read_text())
    assert sidecar["prompt"] == "a lighthouse, study 0"
    assert sidecar["params"]["quality"] == "low"
    assert sidecar["provider"] == "emulator"
    assert sidecar["cost_usd"] > 0
    assert (tmp_path / "images" / "sidecars" / "k0.png").is_file()
