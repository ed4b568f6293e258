"""Batch mode: image assets whose runs go through the Batch API, against the in-process emulator."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _assets_support import (
    SMALL,
    emulator_resources,
    materializations,
    materialize_range,
    step_failure_message,
    value,
)

from dagster_gptimage._batch_records import BatchRecord, read_records, records_url, write_record
from dagster_gptimage._batch_submit import data_url_problem
from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator, run_server_in_thread
from dagster_gptimage.errors import DefinitionError
from dagster_gptimage.models import EditRequest, InputImage, Usage
from dagster_gptimage.pricing import DEFAULT_PRICES, cost_of_usage
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

POLL = {"batch_poll_interval_s": 0.02}


def prompts(n: int, blocked: set[int] = frozenset()) -> PromptTable:  # type: ignore[assignment]
    return PromptTable.from_records(
        [
            {"key": f"p{i:02d}", "prompt": f"harbour {i}" + (" FORBIDDEN" if i in blocked else "")}
            for i in range(n)
        ]
    )


def failed_partitions(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data.user_failure_data
    assert data is not None
    return data.metadata["failed_partitions"].value  # type: ignore[return-value]


def logs(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(result.run_id)]


def test_batch_backfill_makes_every_image_in_one_batch_at_half_price(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(
        name="harbour", prompts=prompts(20, blocked={7}), size=SMALL, quality="low", mode="batch"
    )
    resources, emulator = emulator_resources(
        tmp_path / "store", moderation_word="forbidden", batch_completion_s=0.3, **POLL
    )

    result = materialize_range([asset], resources, "p00", "p19", instance=instance)

    assert not result.success
    assert "1 of 20 partitions failed (1 moderation); 19 materialized" in step_failure_message(
        result
    )
    assert set(failed_partitions(result)) == {"p07"}
    assert failed_partitions(result)["p07"]["reason"] == "moderation"
    stats = emulator.stats
    assert stats.batch_calls["batches.create"] == 1
    assert stats.sync_requests == 0
    assert stats.batch_lines_billed == 19
    mats = materializations(instance, asset.key)
    assert len(mats) == 19
    assert "p07" not in mats
    store: ImageStore = resources["image_store"]
    prices = DEFAULT_PRICES["gpt-image-2"]
    batch_ids = set()
    total = 0.0
    for key, mat in mats.items():
        record = store.read_record(asset.key, key)
        assert record is not None
        assert (record.mode, record.batch_id) == ("batch", value(mat.metadata, "batch_id"))
        assert value(mat.metadata, "mode") == "batch"
        batch_ids.add(record.batch_id)
        usage = Usage(**record.usage)
        assert usage.output_image_tokens > 0
        sync_price = cost_of_usage(usage, prices)
        assert value(mat.metadata, "cost_usd") == pytest.approx(sync_price / 2)
        assert record.cost_usd == pytest.approx(sync_price / 2)
        assert 0 < record.latency_s < 60
        total += record.cost_usd
    assert len(batch_ids) == 1
    assert read_records(store, asset.key) == [], "the record is removed once every line is done"
    messages = logs(result, instance)
    assert any("submitted batch" in m and "20 requests" in m for m in messages)
    assert any("in_progress" in m or "validating" in m for m in messages), "progress lines"
    summary = next(m for m in messages if "synchronous requests would have cost" in m)
    assert f"${total:.4f}" in summary
    assert "saved" in summary


def test_a_rerun_uses_the_cache_and_sends_no_batch(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="again", prompts=prompts(3), size=SMALL, mode="batch")
    resources, emulator = emulator_resources(tmp_path / "store", batch_completion_s=0.1, **POLL)
    assert materialize_range([asset], resources, "p00", "p02", instance=instance).success
    second = materialize_range([asset], resources, "p00", "p02", instance=instance)
    assert second.success
    assert emulator.stats.batch_calls["batches.create"] == 1
    cached = materializations(instance, asset.key, run_id=second.run_id)
    assert all(value(mat.metadata, "cached") for mat in cached.values())
    assert all(value(mat.metadata, "mode") == "batch" for mat in cached.values())


def test_failing_lines_fail_their_partitions_alone(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="flaky", prompts=prompts(40), size=SMALL, mode="batch")
    resources, emulator = emulator_resources(
        tmp_path / "store", batch_completion_s=0.1, batch_failure_rate=0.1, seed=3, **POLL
    )

    result = materialize_range([asset], resources, "p00", "p39", instance=instance)

    failed = failed_partitions(result)
    assert 1 <= len(failed) <= 10, "seeded: the same lines fail on every run"
    assert {item["reason"] for item in failed.values()} == {"provider error"}
    assert len(materializations(instance, asset.key)) == 40 - len(failed)
    assert emulator.stats.batch_lines_billed == 40 - len(failed)
    assert emulator.stats.batch_calls["batches.create"] == 1
    store: ImageStore = resources["image_store"]
    assert read_records(store, asset.key) == []
    # The rerun sends only the failed lines, in one new batch.
    emulator.configure(batch_failure_rate=0.0)
    again = materialize_range([asset], resources, "p00", "p39", instance=instance)
    assert again.success
    assert emulator.stats.batch_calls["batches.create"] == 2
    assert emulator.stats.batch_lines_billed == 40


def test_interrupted_downloads_resume(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    asset = image_generation_asset(name="resumed", prompts=prompts(6), size=SMALL, mode="batch")
    resources, emulator = emulator_resources(
        tmp_path / "store",
        batch_completion_s=0.1,
        batch_download_faults=2,
        batch_download_fault="reset",
        batch_download_fault_at=0.4,
        **POLL,
    )
    result = materialize_range([asset], resources, "p00", "p05", instance=instance)
    assert result.success
    assert len(materializations(instance, asset.key)) == 6
    assert emulator.stats.batch_calls["files.content"] == 3
    assert emulator.stats.batch_lines_billed == 6


def test_an_expired_batch_keeps_its_lines_done_and_resends_the_rest(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    asset = image_generation_asset(name="slow", prompts=prompts(8), size=SMALL, mode="batch")
    # 100 s to complete but a 50 s window: half of the lines run, then the batch expires.
    resources, emulator = emulator_resources(
        tmp_path / "store",
        batch_completion_s=100.0,
        batch_window_s=50.0,
        batch_poll_interval_s=0.05,
    )

    def expire_then_speed_up() -> None:
        emulator.advance_clock(60.0)
        emulator.configure(batch_completion_s=0.1, batch_window_s=86_400.0)

    clock = _after_first_batch(resources["image_store"], asset.key, expire_then_speed_up)
    result = materialize_range([asset], resources, "p00", "p07", instance=instance)
    clock.join()

    assert result.success, step_failure_message(result)
    assert emulator.stats.batch_calls["batches.create"] == 2
    assert emulator.stats.batch_lines_billed == 8
    store: ImageStore = resources["image_store"]
    batch_ids = [store.read_record(asset.key, f"p{i:02d}").batch_id for i in range(8)]  # type: ignore[union-attr]
    assert len(set(batch_ids)) == 2
    assert batch_ids.count(batch_ids[0]) == 4, "the lines done before expiry are used"
    assert read_records(store, asset.key) == []


def _after_first_batch(store: ImageStore, asset_key: dg.AssetKey, action: Any) -> Any:
    """Run ``action`` in a thread once the run has recorded its batch in the store."""

    def wait() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(record.batch_id for record in read_records(store, asset_key)):
                break
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def test_edits_in_batch_mode_send_their_inputs_as_data_urls(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    table = PromptTable.from_records([{"key": k, "prompt": f"a street {k}"} for k in "abc"])
    streets = image_generation_asset(name="streets", prompts=table, size=SMALL, mode="batch")
    night = image_edit_asset(
        name="streets_night", sources=[streets], prompt="the same at night", mode="batch"
    )
    resources, emulator = emulator_resources(tmp_path / "store", batch_completion_s=0.1, **POLL)

    result = materialize_range([streets, night], resources, "a", "c", instance=instance)

    assert result.success
    assert emulator.stats.sync_requests == 0
    assert emulator.stats.batch_calls["batches.create"] == 2
    assert emulator.stats.batch_lines_billed == 6
    store: ImageStore = resources["image_store"]
    for key in "abc":
        source = store.read_record(streets.key, key)
        edit = store.read_record(night.key, key)
        assert source is not None
        assert edit is not None
        assert edit.mode == "batch"
        assert edit.sources[0].sha256 == source.sha256
        assert edit.usage["input_image_tokens"] > 0, "the input image reached the emulator"
    assert len(materializations(instance, night.key)) == 3


def test_gateway_is_refused_before_any_request(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATED_TEST_KEY", "sk-test")
    asset = image_generation_asset(name="gated", prompts=prompts(2), size=SMALL, mode="batch")
    emulator = Emulator(profile="gateway")
    with run_server_in_thread(emulator) as base_url:
        resource = GPTImageResource(
            provider="gateway", api_key=dg.EnvVar("GATED_TEST_KEY"), base_url=base_url
        )
        resources = {"gptimage": resource, "image_store": ImageStore(base_url=str(tmp_path))}
        result = materialize_range([asset], resources, "p00", "p01", instance=instance)

    assert not result.success
    message = step_failure_message(result)
    assert "provider='gateway'" in message
    assert "no request was sent" in message
    assert "mode='sync'" in message
    assert emulator.stats.requests == 0
    assert materializations(instance, asset.key) == {}


def test_mode_is_checked_at_definition() -> None:
    with pytest.raises(DefinitionError, match="accepted: 'sync' or 'batch'"):
        image_generation_asset(name="x", prompts=prompts(1), mode="later")  # type: ignore[arg-type]


def test_budget_counts_batch_prices(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    client = GPTImageClient(provider="emulator")
    request = client.build_generate("harbour 0", size=SMALL, quality="low")
    sync, batch = client.estimate_cost(request), client.estimate_cost(request, batch=True)
    assert batch == pytest.approx(sync / 2)
    # A budget between the batch and the sync estimate of 4 images: refused in sync, run in batch.
    cap = 4 * (sync + batch) / 2
    resources, _emulator = emulator_resources(tmp_path / "store", batch_completion_s=0.1, **POLL)
    for mode, succeeds in (("sync", False), ("batch", True)):
        asset = image_generation_asset(
            name=f"budget_{mode}",
            prompts=prompts(4),
            size=SMALL,
            quality="low",
            max_cost_usd=cap,
            mode=mode,  # type: ignore[arg-type]
        )
        result = materialize_range([asset], resources, "p00", "p03", instance=instance)
        assert result.success is succeeds
    assert records_url(resources["image_store"], "x").endswith("/x/_batches")


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[BatchRecord]:
    """Every batch record the runs write, as written."""
    from dagster_gptimage import _batch_submit

    written: list[BatchRecord] = []

    def capture(store: ImageStore, record: BatchRecord) -> None:
        written.append(record)
        write_record(store, record)

    monkeypatch.setattr(_batch_submit, "write_record", capture)
    return written


def forget_images(store: ImageStore, asset_key: dg.AssetKey) -> None:
    for record in store.list_records(asset_key):
        store.fs.rm_file(store.fs._strip_protocol(record.path))


@pytest.mark.parametrize("batch_id", [None, "batch_unknown"])
def test_records_of_a_crashed_submission_are_resolved(
    tmp_path: Path, instance: dg.DagsterInstance, captured: list[BatchRecord], batch_id: str | None
) -> None:
    """A record without batch id (the run died between upload and creation): the batch is looked
    up by its input file and collected. A batch the provider does not know: sent again."""
    asset = image_generation_asset(name="crashy", prompts=prompts(4), size=SMALL, mode="batch")
    resources, emulator = emulator_resources(tmp_path / "store", batch_completion_s=0.1, **POLL)
    store: ImageStore = resources["image_store"]
    assert materialize_range([asset], resources, "p00", "p03", instance=instance).success
    before_creation = captured[0]
    assert before_creation.batch_id is None
    assert captured[1].batch_id is not None
    forget_images(store, asset.key)
    write_record(store, before_creation.model_copy(update={"batch_id": batch_id}))

    again = materialize_range([asset], resources, "p00", "p03", instance=instance)

    assert again.success
    assert emulator.stats.batch_calls["batches.create"] == (1 if batch_id is None else 2)
    assert emulator.stats.batch_lines_billed == (4 if batch_id is None else 8)
    made = materializations(instance, asset.key, run_id=again.run_id)
    assert sorted(made) == ["p00", "p01", "p02", "p03"]
    assert not any(value(mat.metadata, "cached") for mat in made.values())
    assert read_records(store, asset.key) == []
    if batch_id is not None:
        assert any("unknown to emulator (404)" in m for m in logs(again, instance))


def test_edit_inputs_above_20_mib_cannot_be_batched() -> None:
    def edit(size: int) -> EditRequest:
        image = InputImage(data=b"\0" * size, filename="in.png", content_type="image/png")
        return EditRequest(prompt="the same at night", images=(image,))

    problem = data_url_problem(edit(16 * 2**20))
    assert problem is not None
    assert "input image 1 is 16.0 MiB" in problem
    assert "at most 20 MiB" in problem
    assert data_url_problem(edit(14 * 2**20)) is None
