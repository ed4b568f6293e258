"""A blocked prompt fails its partition in every image asset of the run, and nothing else."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from _assets_support import (
    SMALL,
    emulator_resources,
    materializations,
    materialize_range,
    step_failure_message,
)

from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.prompts import PromptTable

KEYS = [f"k{i:02d}" for i in range(12)]
BLOCKED = {"k03", "k07", "k10"}


def _table(blocked: set[str]) -> PromptTable:
    return PromptTable.from_records(
        [
            {"key": key, "prompt": f"{'forbidden ' if key in blocked else ''}scene {key}"}
            for key in KEYS
        ]
    )


def _pipeline(blocked: set[str]) -> list[dg.AssetsDefinition]:
    base = image_generation_asset(name="scenes", prompts=_table(blocked), size=SMALL)
    edit = image_edit_asset(name="inked", sources=[base], prompt="ink it", size=SMALL)
    again = image_edit_asset(name="framed", sources=[edit], prompt="frame it", size=SMALL)
    return [base, edit, again]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def _requests_by_endpoint(emulator) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return dict(emulator.stats.requests_by_endpoint)


def test_blocked_rows_fail_alone_in_a_run_holding_generation_and_edits(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources, emulator = emulator_resources(tmp_path / "store", moderation_word="forbidden")
    assets = _pipeline(BLOCKED)
    result = materialize_range(assets, resources, KEYS[0], KEYS[-1], instance=instance)

    assert not result.success, "a run with failed partitions ends failed"
    good = set(KEYS) - BLOCKED
    for name in ("scenes", "inked", "framed"):
        made = materializations(instance, dg.AssetKey(name), run_id=result.run_id)
        assert set(made) == good, name
    # Only the last image step of the run fails; the others hand their failures downstream.
    failed_steps = [e.step_key for e in result.all_events if e.is_step_failure]
    assert failed_steps == ["framed"]
    message = step_failure_message(result)
    for key in BLOCKED:
        assert f"{key}: source:" in message
    # Every request counted: 12 generations (3 refused by moderation), 9 + 9 edits, nothing for
    # the edits of blocked rows.
    stats = emulator.stats
    assert stats.requests == 12 + 9 + 9
    assert stats.billed_requests == 9 + 9 + 9
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    assert any("scenes: 9 images made, 0 cached, 3 failed; 12 requests sent" in m for m in logs)


def test_fixing_the_rows_regenerates_exactly_the_failed_partitions(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources, emulator = emulator_resources(tmp_path / "store", moderation_word="forbidden")
    first = materialize_range(_pipeline(BLOCKED), resources, KEYS[0], KEYS[-1], instance=instance)
    assert not first.success
    before = emulator.stats.requests

    fixed = materialize_range(_pipeline(set()), resources, KEYS[0], KEYS[-1], instance=instance)
    assert fixed.success
    assert emulator.stats.requests - before == 3 * 3, "3 generations + 3 edits + 3 edits of edits"
    for name in ("scenes", "inked", "framed"):
        made = materializations(instance, dg.AssetKey(name), run_id=fixed.run_id)
        assert set(made) == set(KEYS), "cache hits are materialized again, not left out"
        cached = {k for k, m in made.items() if m.metadata["cached"].value}
        assert cached == set(KEYS) - BLOCKED, name


def test_an_edit_never_uses_an_old_source_image_when_its_source_failed_in_this_run(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    resources, emulator = emulator_resources(tmp_path / "store", moderation_word="forbidden")
    ok = materialize_range(_pipeline(set()), resources, KEYS[0], KEYS[-1], instance=instance)
    assert ok.success
    before = emulator.stats.requests
    # The row of k03 changes to a blocked prompt: its old image is still in the store.
    changed = materialize_range(_pipeline({"k03"}), resources, KEYS[0], KEYS[-1], instance=instance)
    assert not changed.success
    assert emulator.stats.requests - before == 1, "only the changed row's generation is sent"
    inked = materializations(instance, dg.AssetKey("inked"), run_id=changed.run_id)
    assert "k03" not in inked
    assert "k03: source:" in step_failure_message(changed)
