"""Lineage through Dagster's own staleness resolver (what the UI shows and what "materialize
stale" uses): an image's data version is its sha256, edits record the versions they consumed, and
manifests/exports version their content.

Scenario: two generated assets, an edit of one, an edit of both, an edit of the edit, a manifest
of all five and an export of the manifest. Regenerating one upstream partition with different
bytes must mark exactly its dependent partitions stale, and materializing what is stale (asset by
asset, in dependency order, the way a "materialize stale" run proceeds) must send exactly one
request per stale image partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import SMALL, emulator_resources, materializations, materialize_range, value
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from dagster_gptimage.assets import ImageAssetConfig, image_edit_asset, image_generation_asset
from dagster_gptimage.datasets import image_dataset_export_asset, image_manifest_asset
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageStore

KEYS = ["a", "b", "c"]
Node = tuple[str, str | None]


def roads_table(**changed: str) -> PromptTable:
    return PromptTable.from_records(
        [{"key": k, "prompt": changed.get(k, f"a country road {k}")} for k in KEYS]
    )


class Graph:
    """The scenario's assets, resources and emulator, plus staleness queries."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.roads = image_generation_asset(name="roads", prompts=roads_table(), size=SMALL)
        self.skies = image_generation_asset(
            name="skies",
            prompts=PromptTable.from_records([{"key": k, "prompt": f"a sky {k}"} for k in KEYS]),
            size=SMALL,
        )
        self.rain = image_edit_asset(name="roads_rain", sources=[self.roads], prompt="in rain")
        self.both = image_edit_asset(
            name="roads_skies", sources=[self.roads, self.skies], prompt="road under this sky"
        )
        self.ink = image_edit_asset(name="roads_rain_ink", sources=[self.rain], prompt="as ink")
        self.manifest = image_manifest_asset(
            sources=[self.roads, self.skies, self.rain, self.both, self.ink]
        )
        self.export = image_dataset_export_asset(
            sources=[self.manifest], output_url=str(tmp_path / "dataset")
        )
        self.resources, self.emulator = emulator_resources(tmp_path / "store")
        self.instance = dg.DagsterInstance.ephemeral()

    @property
    def images(self) -> list[dg.AssetsDefinition]:
        return [self.roads, self.skies, self.rain, self.both, self.ink]

    @property
    def all(self) -> list[dg.AssetsDefinition]:
        return [*self.images, self.manifest, self.export]

    def regenerate_road(self, key: str, table: PromptTable, *, force: bool = False) -> None:
        self.roads = image_generation_asset(name="roads", prompts=table, size=SMALL)
        config = dg.RunConfig({self.roads.node_def.name: ImageAssetConfig(force=force)})
        assert dg.materialize(
            [self.roads],
            resources=self.resources,
            instance=self.instance,
            partition_key=key,
            run_config=config,
        ).success

    def resolver(self) -> CachingStaleStatusResolver:
        graph = dg.Definitions(assets=self.all, resources=self.resources).resolve_asset_graph()
        return CachingStaleStatusResolver(
            self.instance, graph, LoadingContextForTest(self.instance)
        )

    def nodes(self, assets: Sequence[dg.AssetsDefinition] | None = None) -> list[Node]:
        out: list[Node] = []
        for asset in assets or self.all:
            name = asset.key.to_user_string()
            out.extend((name, k) for k in KEYS) if asset.partitions_def else out.append(
                (name, None)
            )
        return out

    def stale(self) -> set[Node]:
        resolver = self.resolver()
        return {
            (name, key)
            for name, key in self.nodes()
            if resolver.get_status(dg.AssetKey.from_user_string(name), key) != StaleStatus.FRESH
        }

    def requests(self) -> dict[str, int]:
        return dict(self.emulator.stats.requests_by_endpoint)

    def materialize_everything(self) -> None:
        assert materialize_range(
            self.images, self.resources, "a", "c", instance=self.instance
        ).success
        assert dg.materialize(
            [self.manifest, self.export], resources=self.resources, instance=self.instance
        ).success

    def materialize_stale(self) -> list[Node]:
        """Materialize what the resolver reports stale, asset by asset in dependency order, each
        asset's stale partitions in one run (what a "materialize stale" launch does)."""
        done: list[Node] = []
        for asset in self.all:
            stale = [node for node in self.nodes([asset]) if node in self.stale()]
            if not stale:
                continue
            if asset.partitions_def is None:
                result = dg.materialize([asset], resources=self.resources, instance=self.instance)
                assert result.success
            else:
                for _, key in stale:
                    assert key is not None
                    assert dg.materialize(
                        [asset], resources=self.resources, instance=self.instance, partition_key=key
                    ).success
            done.extend(stale)
        return done


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    g = Graph(tmp_path)
    g.materialize_everything()
    return g


def sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Requests per endpoint sent between two snapshots (endpoints with none left out)."""
    counts = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    return {k: n for k, n in counts.items() if n}


def test_regenerating_one_partition_marks_exactly_its_dependents_stale(graph: Graph) -> None:
    assert graph.stale() == set()
    store: ImageStore = graph.resources["image_store"]
    old_b = store.read_record("roads", "b")
    assert old_b is not None

    graph.regenerate_road("b", roads_table(b="a country road b at night"))

    new_b = store.read_record("roads", "b")
    assert new_b is not None
    assert new_b.sha256 != old_b.sha256
    assert graph.stale() == {("roads_rain", "b"), ("roads_skies", "b"), ("image_manifest", None)}
    resolver = graph.resolver()
    for edit in ("roads_rain", "roads_skies"):
        [cause] = resolver.get_stale_causes(dg.AssetKey(edit), "b")
        assert cause.reason == "has a new dependency data version"
        assert cause.dependency_asset_key == dg.AssetKey("roads")
        assert cause.dependency_partition_key == "b"
    manifest_causes = resolver.get_stale_causes(dg.AssetKey("image_manifest"))
    assert {(c.dependency_asset_key, c.dependency_partition_key) for c in manifest_causes} == {
        (dg.AssetKey("roads"), "b")
    }


def test_materializing_stale_partitions_requests_only_those(graph: Graph) -> None:
    graph.regenerate_road("b", roads_table(b="a country road b at night"))
    before = graph.requests()
    manifest_version = graph.resolver().get_current_data_version(graph.manifest.key)

    done = graph.materialize_stale()

    assert done == [
        ("roads_rain", "b"),
        ("roads_skies", "b"),
        ("roads_rain_ink", "b"),
        ("image_manifest", None),
        ("image_dataset", None),
    ]
    assert sent(before, graph.requests()) == {"edits": 3}
    assert graph.stale() == set()
    store: ImageStore = graph.resources["image_store"]
    road_b = store.read_record("roads", "b")
    rain_b = store.read_record("roads_rain", "b")
    assert road_b is not None
    assert rain_b is not None
    assert [s.sha256 for s in rain_b.sources] == [road_b.sha256]
    ink = materializations(graph.instance, graph.ink.key)
    assert ink["b"].tags["dagster/input_data_version/roads_rain"] == rain_b.sha256
    assert graph.resolver().get_current_data_version(graph.manifest.key) != manifest_version
    rows = (graph.tmp_path / "dataset" / "train" / "metadata.jsonl").read_text()
    assert "a country road b at night" in rows


def test_full_rerun_after_an_upstream_change_pays_only_for_changed_inputs(graph: Graph) -> None:
    graph.regenerate_road("c", roads_table(c="a country road c in snow"))
    before = graph.requests()

    result = materialize_range(graph.images[2:], graph.resources, "a", "c", instance=graph.instance)

    assert result.success
    assert sent(before, graph.requests()) == {"edits": 3}
    for asset in graph.images[2:]:
        mats = materializations(graph.instance, asset.key, run_id=result.run_id)
        cached = {key: value(m.metadata, "cached") for key, m in mats.items()}
        assert cached == {"a": True, "b": True, "c": False}
    assert graph.stale() == {("image_manifest", None)}


def test_same_bytes_or_cache_hits_leave_everything_fresh(graph: Graph) -> None:
    before = graph.requests()
    graph.regenerate_road("a", roads_table())  # cache hit: no request, same version
    assert graph.requests() == before
    graph.regenerate_road("a", roads_table(), force=True)  # paid again, identical bytes
    assert sent(before, graph.requests()) == {"generations": 1}
    assert graph.stale() == set()

    # The forced run rewrote a's sidecar (created_at, latency), so the manifest's content and
    # version change when it is rebuilt, and the export (downstream of the manifest) goes stale.
    assert dg.materialize(
        [graph.manifest], resources=graph.resources, instance=graph.instance
    ).success
    version = graph.resolver().get_current_data_version(graph.manifest.key)
    assert graph.stale() == {("image_dataset", None)}
    assert dg.materialize(
        [graph.export], resources=graph.resources, instance=graph.instance
    ).success
    assert graph.stale() == set()

    # Rebuilding the manifest with nothing changed keeps its version: the export stays fresh.
    assert dg.materialize(
        [graph.manifest], resources=graph.resources, instance=graph.instance
    ).success
    assert graph.resolver().get_current_data_version(graph.manifest.key) == version
    assert graph.stale() == set()
