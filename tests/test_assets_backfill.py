"""Single-run backfills on a real SQLite-backed DagsterInstance: partial failures, budget, storage.

These tests read what Dagster itself recorded (event log, partition status, run status), not only
what the asset yielded.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _assets_support import (
    SMALL,
    HTTPInFlight,
    emulator_resources,
    materializations,
    materialize_range,
    step_failure_message,
    value,
)
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from dagster_gptimage import _responses as responses_module
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageStore


def prompts(n: int, blocked: set[int] = frozenset()) -> PromptTable:  # type: ignore[assignment]
    return PromptTable.from_records(
        [
            {
                "key": f"p{i:02d}",
                "prompt": f"harbour scene {i}" + (" FORBIDDEN" if i in blocked else ""),
            }
            for i in range(n)
        ]
    )


def partition_status(
    instance: dg.DagsterInstance, asset: dg.AssetsDefinition
) -> tuple[set[str], set[str]]:
    partitions_def = asset.partitions_def
    assert partitions_def is not None
    status = get_and_update_asset_status_cache_value(instance, asset.key, partitions_def)
    assert status is not None
    materialized = set(
        status.deserialize_materialized_partition_subsets(partitions_def).get_partition_keys()
    )
    failed = set(status.deserialize_failed_partition_subsets(partitions_def).get_partition_keys())
    return materialized, failed


def test_partial_failure_keeps_finished_partitions_and_names_the_failed_ones(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="harbour", prompts=prompts(6, blocked={1, 4}), size=SMALL)
    resources, emulator = emulator_resources(tmp_path / "store", moderation_word="forbidden")

    result = materialize_range([asset], resources, "p00", "p05", instance=instance)

    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.status == dg.DagsterRunStatus.FAILURE
    message = step_failure_message(result)
    assert "2 of 6 partitions failed (2 moderation); 4 materialized" in message
    assert "p01: moderation" in message
    assert "p04: moderation" in message
    assert "Possibly billed attempts among failed partitions: 0" in message
    assert emulator.stats.requests == 6
    assert emulator.stats.billed_requests == 4

    mats = materializations(instance, asset.key)
    assert sorted(mats) == ["p00", "p02", "p03", "p05"]
    for key, mat in mats.items():
        assert value(mat.metadata, "prompt") == f"harbour scene {int(key[1:])}"
        assert mat.tags["dagster/data_version"] == value(mat.metadata, "sha256")
    materialized, failed = partition_status(instance, asset)
    assert materialized == {"p00", "p02", "p03", "p05"}
    assert failed == {"p01", "p04"}
    planned = instance.get_records_for_run(
        result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ).records
    # Dagster plans every partition of the range; failed = planned but never materialized.
    assert len(planned) == 6
    store: ImageStore = resources["image_store"]
    assert store.read_record(asset.key, "p01") is None
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data.user_failure_data is not None
    failed_metadata = failure.step_failure_data.user_failure_data.metadata[
        "failed_partitions"
    ].value
    assert set(failed_metadata) == {"p01", "p04"}
    assert failed_metadata["p01"]["reason"] == "moderation"


def test_rerun_after_partial_failure_pays_only_for_the_failed(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="retry_me", prompts=prompts(4), size=SMALL)
    resources, emulator = emulator_resources(tmp_path / "store")
    emulator.script(["ok", "moderation", "ok", "ok"])
    first = materialize_range([asset], resources, "p00", "p03", instance=instance)
    assert not first.success
    assert len(materializations(instance, asset.key)) == 3

    second = materialize_range([asset], resources, "p00", "p03", instance=instance)

    assert second.success
    assert emulator.stats.requests == 5
    cached = {
        key: value(mat.metadata, "cached")
        for key, mat in materializations(instance, asset.key, run_id=second.run_id).items()
    }
    assert sum(cached.values()) == 3
    assert len(cached) == 4
    materialized, failed = partition_status(instance, asset)
    assert materialized == {"p00", "p01", "p02", "p03"}
    assert failed == set()


def _estimate(resources: dict[str, Any], prompt: str, **params: Any) -> float:
    client: GPTImageClient = resources["gptimage"].get_client()
    return client.estimate_cost(client.build_generate(prompt, **params))


def test_budget_refuses_up_front_with_the_estimate(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources, emulator = emulator_resources(tmp_path)
    per_image = _estimate(resources, "harbour scene 0", size=SMALL)
    asset = image_generation_asset(
        name="expensive", prompts=prompts(4), size=SMALL, max_cost_usd=per_image * 2.5
    )

    result = materialize_range([asset], resources, "p00", "p03", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "refused" in message
    assert "no request was sent" in message
    assert f"${per_image * 4:.4f}" in message
    assert emulator.stats.requests == 0
    assert materializations(instance, asset.key) == {}


def test_budget_counts_only_uncached_partitions(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources, emulator = emulator_resources(tmp_path)
    per_image = _estimate(resources, "harbour scene 0", size=SMALL)
    asset = image_generation_asset(
        name="budget_cached", prompts=prompts(4), size=SMALL, max_cost_usd=per_image * 2.5
    )
    assert materialize_range([asset], resources, "p00", "p01", instance=instance).success

    result = materialize_range([asset], resources, "p00", "p03", instance=instance)

    assert result.success
    assert emulator.stats.requests == 4


def test_budget_caps_requests_mid_run(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    resources, emulator = emulator_resources(tmp_path, max_concurrency=1)
    per_image = _estimate(resources, "harbour scene 0", size=SMALL)
    asset = image_generation_asset(
        name="capped", prompts=prompts(4), size=SMALL, max_cost_usd=per_image * 4.01
    )
    # The first request's connection drops after the image was generated: that attempt is billed
    # (counted at its estimate) and retried, so the run spends more than its pre-flight estimate.
    emulator.script(["reset"])

    result = materialize_range([asset], resources, "p00", "p03", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "1 budget" in message
    assert "would pass max_cost_usd" in message
    assert len(materializations(instance, asset.key)) == 3
    assert emulator.stats.requests == 4  # 3 images + the reset attempt; the 4th never started
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data.user_failure_data is not None
    failed = failure.step_failure_data.user_failure_data.metadata["failed_partitions"].value
    [(_key, details)] = failed.items()
    assert details["reason"] == "budget"
    assert details["attempts"] == 0


class _FlakyStore(ImageStore):
    """Fails to write the sidecar of one partition, after its image bytes were written."""

    fail_key: str = "p01"

    def write_bytes(self, url: str, data: bytes) -> None:
        if url.endswith(f"/{self.fail_key}.json"):
            raise OSError("disk full")
        super().write_bytes(url, data)


def test_storage_failure_fails_only_that_partition_and_is_not_cached(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="flaky_disk", prompts=prompts(3), size=SMALL)
    resources, emulator = emulator_resources(tmp_path)
    good_store = resources["image_store"]
    resources["image_store"] = _FlakyStore(base_url=good_store.base_url)

    result = materialize_range([asset], resources, "p00", "p02", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "p01: storage" in message
    assert "billed" in message
    assert "disk full" in message
    assert "Possibly billed attempts among failed partitions: 1" in message
    assert sorted(materializations(instance, asset.key)) == ["p00", "p02"]
    assert good_store.read_record(asset.key, "p01") is None

    resources["image_store"] = good_store
    again = materialize_range([asset], resources, "p00", "p02", instance=instance)
    assert again.success
    assert emulator.stats.requests == 4
    assert value(materializations(instance, asset.key)["p01"].metadata, "cached") is False


def test_auth_failure_stops_starting_new_requests(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="no_auth", prompts=prompts(5), size=SMALL)
    resources, emulator = emulator_resources(
        tmp_path, max_concurrency=1, emulator_options={"api_key": "expected-key"}
    )

    result = materialize_range([asset], resources, "p00", "p04", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "5 authentication" in message
    assert "not started" in message
    assert emulator.stats.requests == 1


def test_requests_run_concurrently_up_to_the_resource_limit(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = HTTPInFlight().install(monkeypatch)
    asset = image_generation_asset(name="parallel", prompts=prompts(10), size=SMALL)
    resources, emulator = emulator_resources(tmp_path, max_concurrency=4, latency_s=0.2)

    result = materialize_range([asset], resources, "p00", "p09", instance=instance)

    assert result.success
    assert emulator.stats.requests == 10
    assert http.peak == 4


class _SlowDecodes:
    """Makes every answer's decode take ``seconds`` and counts client calls in flight."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
        self.calls_now = 0
        self.calls_peak = 0
        inspect = responses_module.inspect_image
        execute = GPTImageClient.execute

        def slow_inspect(*args: Any, **kwargs: Any) -> Any:
            time.sleep(seconds)
            return inspect(*args, **kwargs)

        async def counted(client: GPTImageClient, request: Any, **kwargs: Any) -> Any:
            self.calls_now += 1
            self.calls_peak = max(self.calls_peak, self.calls_now)
            try:
                return await execute(client, request, **kwargs)
            finally:
                self.calls_now -= 1

        monkeypatch.setattr(responses_module, "inspect_image", slow_inspect)
        monkeypatch.setattr(GPTImageClient, "execute", counted)


def test_next_request_starts_while_answers_are_decoded(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = HTTPInFlight().install(monkeypatch)
    slow = _SlowDecodes(monkeypatch, seconds=0.3)
    asset = image_generation_asset(name="pipelined", prompts=prompts(8), size=SMALL)
    resources, emulator = emulator_resources(tmp_path, max_concurrency=2, latency_s=0.15)

    result = materialize_range([asset], resources, "p00", "p07", instance=instance)

    assert result.success
    assert emulator.stats.requests == 8
    assert len(materializations(instance, asset.key)) == 8
    assert http.peak == 2
    assert slow.calls_peak > 2  # answers being decoded no longer hold a request slot


def test_answers_waiting_for_a_slow_store_hold_back_new_requests(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freed request slots must not let images pile up in memory behind a slow store: partitions
    between sending and stored stay within twice ``max_concurrency``."""
    pending = {"now": 0, "peak": 0}
    execute, write = GPTImageClient.execute, ImageStore.awrite_image

    async def counted(client: GPTImageClient, request: Any, **kwargs: Any) -> Any:
        pending["now"] += 1
        pending["peak"] = max(pending["peak"], pending["now"])
        return await execute(client, request, **kwargs)

    async def slow_write(store: ImageStore, *args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.sleep(0.3)
            return await write(store, *args, **kwargs)
        finally:
            pending["now"] -= 1

    monkeypatch.setattr(GPTImageClient, "execute", counted)
    monkeypatch.setattr(ImageStore, "awrite_image", slow_write)
    asset = image_generation_asset(name="slow_store", prompts=prompts(16), size=SMALL)
    resources, emulator = emulator_resources(tmp_path, max_concurrency=2, latency_s=0.01)

    result = materialize_range([asset], resources, "p00", "p15", instance=instance)

    assert result.success
    assert emulator.stats.requests == 16
    assert pending["peak"] == 4


def test_with_a_budget_cap_a_request_waits_for_its_predecessors_costs(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = HTTPInFlight().install(monkeypatch)
    slow = _SlowDecodes(monkeypatch, seconds=0.2)
    resources, emulator = emulator_resources(tmp_path, max_concurrency=2, latency_s=0.05)
    per_image = _estimate(resources, "harbour scene 0", size=SMALL)
    asset = image_generation_asset(
        name="capped_slots", prompts=prompts(6), size=SMALL, max_cost_usd=per_image * 100
    )

    result = materialize_range([asset], resources, "p00", "p05", instance=instance)

    assert result.success
    assert emulator.stats.requests == 6
    assert http.peak <= 2
    assert slow.calls_peak == 2  # a call keeps its slot through its decode: its cost is known
