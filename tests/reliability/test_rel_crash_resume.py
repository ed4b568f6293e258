"""Crash and resume: the run process is SIGKILLed mid-backfill, then the backfill runs again.

Every image stored before the kill must be a cache hit (no new request, so no new bill, and
``cached: true`` in its metadata); the images that were in flight or not started are requested once
more; the final state is complete and consistent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from _reliability import (
    QUIET,
    SIZE,
    assert_local_store_consistent,
    audit_local,
    check_pair,
    crash_asset,
    emulator_resources,
    materialized_partitions,
    metadata_value,
    prompt_table,
    range_tags,
    run_materializations,
    run_range,
    temp_files,
)

from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.emulator import Emulator, run_server_in_thread
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

CHILD = Path(__file__).with_name("_crash_child.py")
N = 40
CONCURRENCY = 4
KILL_AFTER = 8


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(latency_s=0.2)


@pytest.fixture
def base_url(emulator: Emulator) -> Iterator[str]:
    with run_server_in_thread(emulator) as url:
        yield url


def _complete(folder: Path) -> set[str]:
    """Partitions whose sidecar and image are both there and agree."""
    audit = audit_local(folder)
    done = set()
    for key, sidecar_path in audit.sidecars.items():
        image = audit.images.get(key)
        if image is not None and not check_pair(
            json.loads(sidecar_path.read_bytes()), image.read_bytes(), key
        ):
            done.add(key)
    return done


def _kill_mid_backfill(process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.json"))) < KILL_AFTER:
        if process.poll() is not None:
            raise AssertionError(f"the backfill process ended early ({process.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError("the backfill stored nothing within 120 s")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_mid_backfill_then_rerun_pays_only_for_unfinished_images(
    tmp_path: Path, dagster_home: Path, emulator: Emulator, base_url: str
) -> None:
    store = tmp_path / "store"
    folder = store / "crash"
    process = subprocess.Popen(
        [
            sys.executable,
            str(CHILD),
            base_url,
            str(dagster_home),
            str(store),
            str(N),
            str(CONCURRENCY),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _kill_mid_backfill(process, folder)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    finished = _complete(folder)
    assert KILL_AFTER <= len(finished) < N
    billed_before = emulator.stats.billed_requests
    # What was in flight when the process died was generated (and billed) but never stored.
    assert billed_before >= len(finished)
    recorded_before = len(emulator.stats.recorded)

    asset, table = crash_asset(N)
    resources = {
        "gptimage": GPTImageResource(provider="emulator", base_url=base_url, max_concurrency=8),
        "image_store": ImageStore(base_url=str(store)),
    }
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = dg.materialize(
            [asset],
            resources=resources,
            instance=instance,
            tags=range_tags(table.keys),
            run_config=QUIET,
            raise_on_error=False,
        )
        assert result.success
        mats = run_materializations(instance, result.run_id)
        assert materialized_partitions(instance, asset.key) == set(table.keys)

    # Finished images were cache hits: no request, no bill; every other one was requested once.
    assert set(mats) == set(table.keys)
    cached = {key for key, mat in mats.items() if metadata_value(mat, "cached")}
    assert cached == finished
    assert all(metadata_value(mats[key], "cost_usd") == 0.0 for key in cached)
    assert emulator.stats.billed_requests - billed_before == N - len(finished)
    rerun_prompts = {
        r.fields.get("prompt") for r in list(emulator.stats.recorded)[recorded_before:]
    }
    assert len(rerun_prompts) == N - len(finished)
    assert not rerun_prompts & {table.row(key).prompt for key in finished}

    # Complete and consistent: one image and its sidecar per partition, no temp file anywhere.
    assert _complete(folder) == set(table.keys)
    audit = audit_local(folder)
    assert set(audit.images) == set(audit.sidecars) == set(table.keys)
    assert temp_files(store) == []
    assert audit.others == []


_KILLED_WRITER = """
import os, signal, sys
from dagster_gptimage import storage

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

# Killed between writing the temp file and renaming it into place.
storage.os.replace = die
store = storage.ImageStore(base_url=sys.argv[1])
store.write_bytes(store.image_path("temp_left", "k000", "png"), b"half an image")
"""


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_run(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    store = tmp_path / "store"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(store)], capture_output=True, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [left] = temp_files(store)
    assert left.name.startswith(".k000.png.")
    assert not (store / "temp_left" / "k000.png").exists()

    table = prompt_table(2)
    asset = image_generation_asset(name="temp_left", prompts=table, size=SIZE)
    resources, _emulator = emulator_resources(store)
    assert run_range([asset], resources, table.keys, instance).success

    assert temp_files(store) == []
    assert_local_store_consistent(store / "temp_left", table.keys)
