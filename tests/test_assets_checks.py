"""The image_valid asset check: in materialization runs and run alone over stored images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import SMALL, check_evaluations, emulator_resources, materialize_range
from PIL import Image

from dagster_gptimage.assets import IMAGE_CHECK_NAME, image_edit_asset, image_generation_asset
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageStore


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def generated(tmp_path: Path, instance: dg.DagsterInstance, name: str, n: int = 3):  # type: ignore[no-untyped-def]
    prompts = PromptTable.from_records(
        [{"key": f"k{i}", "prompt": f"a fern {i}"} for i in range(n)]
    )
    asset = image_generation_asset(name=name, prompts=prompts, size=SMALL, output_format="png")
    resources, emulator = emulator_resources(tmp_path / "store")
    assert materialize_range([asset], resources, "k0", f"k{n - 1}", instance=instance).success
    return asset, resources, emulator


def run_check_alone(
    asset: dg.AssetsDefinition, resources: dict, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    job = dg.define_asset_job("verify_images", selection=dg.AssetSelection.checks_for_assets(asset))
    defs = dg.Definitions(assets=[asset], jobs=[job], resources=resources)
    return defs.resolve_job_def("verify_images").execute_in_process(
        instance=instance, raise_on_error=False
    )


def test_check_passes_in_the_materialization_run(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    prompts = PromptTable.from_records([{"key": "k0", "prompt": "a fern"}])
    asset = image_generation_asset(name="ferns", prompts=prompts, size=SMALL)
    resources, _ = emulator_resources(tmp_path)

    result = materialize_range([asset], resources, "k0", "k0", instance=instance)

    [evaluation] = check_evaluations(result)
    assert evaluation.passed
    assert evaluation.check_name == IMAGE_CHECK_NAME
    assert evaluation.metadata["checked"].value == 1


def test_check_alone_sends_no_request_and_fails_on_a_corrupted_file(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset, resources, emulator = generated(tmp_path, instance, "verified")
    store: ImageStore = resources["image_store"]
    requests_before = emulator.stats.requests
    healthy = run_check_alone(asset, resources, instance)
    [ok] = check_evaluations(healthy)
    assert ok.passed
    assert ok.metadata["checked"].value == 3

    path = Path(store.image_path(asset.key, "k1", "png"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    result = run_check_alone(asset, resources, instance)

    assert emulator.stats.requests == requests_before
    [evaluation] = check_evaluations(result)
    assert not evaluation.passed
    assert "1 of 3 stored images are invalid" in evaluation.description
    failures = evaluation.metadata["failures"].value
    assert set(failures) == {"k1"}
    assert any("sha256" in problem for problem in failures["k1"])
    assert any("does not decode" in problem for problem in failures["k1"])
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(asset.key, IMAGE_CHECK_NAME), limit=1
    )
    assert records[0].evaluation is not None
    assert not records[0].evaluation.passed


def test_check_fails_on_a_wrong_size_even_when_the_sidecar_agrees(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset, resources, _ = generated(tmp_path, instance, "resized", n=1)
    store: ImageStore = resources["image_store"]
    buffer = io.BytesIO()
    Image.new("RGB", (512, 320), "blue").save(buffer, format="PNG")
    record = store.read_record(asset.key, "k0")
    assert record is not None
    store.write_image(
        asset.key,
        "k0",
        buffer.getvalue(),
        "png",
        record.model_copy(update={"width": 0, "height": 0}),
    )

    [evaluation] = check_evaluations(run_check_alone(asset, resources, instance))

    assert not evaluation.passed
    assert evaluation.metadata["failures"].value == {"k0": ["is 512x320, 1024x640 was requested"]}


def test_check_fails_when_a_materialized_image_is_gone(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset, resources, _ = generated(tmp_path, instance, "vanished", n=2)
    store: ImageStore = resources["image_store"]
    Path(store.image_path(asset.key, "k0", "png")).unlink()
    Path(store.sidecar_path(asset.key, "k1")).unlink()

    [evaluation] = check_evaluations(run_check_alone(asset, resources, instance))

    assert not evaluation.passed
    failures = evaluation.metadata["failures"].value
    assert failures["k0"] == [f"image file {store.image_path(asset.key, 'k0', 'png')} is missing"]
    assert failures["k1"] == ["materialized in Dagster but no image in the store"]


def test_check_fails_when_the_format_differs_from_the_request(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset, resources, _ = generated(tmp_path, instance, "reformatted", n=1)
    store: ImageStore = resources["image_store"]
    sidecar = Path(store.sidecar_path(asset.key, "k0"))
    document = json.loads(sidecar.read_text())
    document["params"]["output_format"] = "webp"
    sidecar.write_text(json.dumps(document))

    [evaluation] = check_evaluations(run_check_alone(asset, resources, instance))

    assert not evaluation.passed
    assert evaluation.metadata["failures"].value == {"k0": ["is png, webp was requested"]}


def test_edit_assets_carry_the_check_too(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset, resources, _ = generated(tmp_path, instance, "check_base", n=1)
    edited = image_edit_asset(name="check_edit", sources=[asset], prompt="in autumn")

    result = materialize_range([edited], resources, "k0", "k0", instance=instance)

    assert edited.check_keys == {dg.AssetCheckKey(edited.key, IMAGE_CHECK_NAME)}
    [evaluation] = check_evaluations(result)
    assert evaluation.passed
    assert evaluation.asset_key == edited.key


def _corrupt(store: ImageStore, asset: dg.AssetsDefinition, key: str) -> None:
    path = Path(store.image_path(asset.key, key, "png"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def _latest(instance: dg.DagsterInstance, asset: dg.AssetsDefinition):  # type: ignore[no-untyped-def]
    [record] = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(asset.key, IMAGE_CHECK_NAME), limit=1
    )
    assert record.evaluation is not None
    return record.evaluation


def test_a_corrupt_partition_stays_failing_while_others_are_materialized(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """Issue 13: corrupt k0, run the check alone, materialize k1: k0 is still reported."""
    asset, resources, emulator = generated(tmp_path, instance, "kept_failing")
    store: ImageStore = resources["image_store"]
    _corrupt(store, asset, "k0")
    alone = run_check_alone(asset, resources, instance)
    [evaluation] = check_evaluations(alone)
    assert not evaluation.passed
    assert evaluation.metadata["failing_partitions"].value == ["k0"]

    before = emulator.stats.requests
    other = materialize_range([asset], resources, "k1", "k1", instance=instance)
    assert other.success
    assert emulator.stats.requests == before, "k1 is a cache hit"
    latest = _latest(instance, asset)
    assert not latest.passed, "the corruption of k0 must not disappear from the UI"
    assert latest.metadata["failing_partitions"].value == ["k0"]
    assert "found invalid before" in latest.description

    # Regenerating k0 (the store's copy no longer matches: it is a cache miss) fixes it.
    fixed = materialize_range([asset], resources, "k0", "k0", instance=instance)
    assert fixed.success
    assert emulator.stats.requests == before + 1
    assert _latest(instance, asset).passed


def test_the_check_alone_on_a_partition_subset_regenerates_nothing(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset, resources, emulator = generated(tmp_path, instance, "subset_checked")
    store: ImageStore = resources["image_store"]
    _corrupt(store, asset, "k2")
    before = emulator.stats.requests
    job = dg.define_asset_job("verify_some", selection=dg.AssetSelection.checks_for_assets(asset))
    defs = dg.Definitions(assets=[asset], jobs=[job], resources=resources)

    def check(keys: list[str]) -> dg.ExecuteInProcessResult:
        config = {"ops": {asset.node_def.name: {"config": {"check_partitions": keys}}}}
        return defs.resolve_job_def("verify_some").execute_in_process(
            instance=instance, raise_on_error=False, run_config=config
        )

    [evaluation] = check_evaluations(check(["k0", "k1"]))
    assert evaluation.passed
    assert evaluation.metadata["checked"].value == 2
    assert emulator.stats.requests == before

    [evaluation] = check_evaluations(check(["k2"]))
    assert not evaluation.passed
    assert evaluation.metadata["failing_partitions"].value == ["k2"]
    assert emulator.stats.requests == before
