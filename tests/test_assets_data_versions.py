"""Data versions: Dagster's own staleness resolver sees exactly the edit partitions whose source
image changed."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from _assets_support import SMALL, emulator_resources, materializations, materialize_range, value
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from dagster_gptimage.assets import ImageAssetConfig, image_edit_asset, image_generation_asset
from dagster_gptimage.prompts import PromptTable

KEYS = ["a", "b", "c"]


def statuses(
    instance: dg.DagsterInstance, assets: list[dg.AssetsDefinition], resources: dict
) -> dict[str, dict[str, StaleStatus]]:
    graph = dg.Definitions(assets=assets, resources=resources).resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    return {
        asset.key.to_user_string(): {key: resolver.get_status(asset.key, key) for key in KEYS}
        for asset in assets
    }


def test_regenerating_one_source_partition_marks_exactly_its_edit_stale(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    resources, _ = emulator_resources(tmp_path)
    rows = [{"key": key, "prompt": f"a bridge {key}"} for key in KEYS]
    base = image_generation_asset(
        name="bridges", prompts=PromptTable.from_records(rows), size=SMALL
    )
    edit = image_edit_asset(name="bridges_fog", sources=[base], prompt="in fog")
    edit2 = image_edit_asset(name="bridges_fog_ink", sources=[edit], prompt="as ink")
    assets = [base, edit, edit2]
    assert materialize_range(assets, resources, "a", "c", instance=instance).success
    fresh = {key: StaleStatus.FRESH for key in KEYS}
    assert statuses(instance, assets, resources) == {
        "bridges": fresh,
        "bridges_fog": fresh,
        "bridges_fog_ink": fresh,
    }
    mat = materializations(instance, edit.key)["b"]
    base_b = materializations(instance, base.key)["b"]
    assert mat.tags["dagster/input_data_version/bridges"] == value(base_b.metadata, "sha256")
    assert mat.tags["dagster/data_version_is_user_provided"] == "true"

    # Same request again (forced): the emulator renders identical bytes, so nothing is stale.
    force = dg.RunConfig({base.node_def.name: ImageAssetConfig(force=True)})
    assert dg.materialize(
        [base], resources=resources, instance=instance, partition_key="a", run_config=force
    ).success
    assert statuses(instance, assets, resources)["bridges_fog"] == fresh

    # A changed row makes different bytes for b only.
    rows[1]["prompt"] = "a bridge b at night"
    base = image_generation_asset(
        name="bridges", prompts=PromptTable.from_records(rows), size=SMALL
    )
    assets = [base, edit, edit2]
    assert dg.materialize([base], resources=resources, instance=instance, partition_key="b").success

    after = statuses(instance, assets, resources)
    assert after["bridges"] == fresh
    assert after["bridges_fog"] == {
        "a": StaleStatus.FRESH,
        "b": StaleStatus.STALE,
        "c": StaleStatus.FRESH,
    }
    graph = dg.Definitions(assets=assets, resources=resources).resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    [cause] = resolver.get_stale_causes(edit.key, "b")
    assert cause.reason == "has a new dependency data version"
    assert cause.dependency is not None
    assert cause.dependency.partition_key == "b"

    # Materializing the stale edit partition makes its own edit stale in turn, and nothing else.
    assert dg.materialize([edit], resources=resources, instance=instance, partition_key="b").success
    final = statuses(instance, assets, resources)
    assert final["bridges_fog"] == fresh
    assert final["bridges_fog_ink"] == {
        "a": StaleStatus.FRESH,
        "b": StaleStatus.STALE,
        "c": StaleStatus.FRESH,
    }
