"""Batch mode never pays twice: a run killed (SIGKILL) or interrupted while its batch is pending,
then run again, collects the batch it had submitted.

The first run is a real process (``dg.materialize`` on a SQLite DagsterInstance) talking to an
emulator server in this process, so the batch outlives the run as a real provider's would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import RANGE_END, RANGE_START, SMALL

from dagster_gptimage._batch_records import BatchRecord, read_records
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.emulator import Emulator, run_server_in_thread
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"k{i}" for i in range(6)]

SCRIPT = """
import sys
import dagster as dg
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

base_url, store, home, cancel = sys.argv[1:5]
table = PromptTable.from_records([{{"key": f"k{{i}}", "prompt": f"a lighthouse {{i}}"}} for i in range(6)])
asset = image_generation_asset(name="lights", prompts=table, size="{size}", mode="batch")
resources = {{
    "gptimage": GPTImageResource(
        provider="emulator", base_url=base_url, batch_poll_interval_s=0.05,
        batch_cancel_on_terminate=cancel == "cancel",
    ),
    "image_store": ImageStore(base_url=store),
}}
with dg.DagsterInstance.from_config(home) as instance:
    dg.materialize(
        [asset], resources=resources, instance=instance, raise_on_error=False,
        tags={{"{start}": "k0", "{end}": "k5"}},
    )
"""


def asset() -> dg.AssetsDefinition:
    table = PromptTable.from_records(
        [{"key": f"k{i}", "prompt": f"a lighthouse {i}"} for i in range(6)]
    )
    return image_generation_asset(name="lights", prompts=table, size=SMALL, mode="batch")


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(batch_completion_s=100.0)
    with run_server_in_thread(emulator) as base_url:
        yield emulator, base_url


def start_run(tmp_path: Path, base_url: str, cancel: bool) -> subprocess.Popen[bytes]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT).format(size=SMALL, start=RANGE_START, end=RANGE_END))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env["DAGSTER_HOME"] = str(home)
    args = [str(tmp_path / "store"), str(home), "cancel" if cancel else "keep"]
    return subprocess.Popen(
        [sys.executable, str(script), base_url, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_record(proc: subprocess.Popen[bytes], store: ImageStore) -> BatchRecord:
    deadline = time.monotonic() + 120
    key = dg.AssetKey("lights")
    while time.monotonic() < deadline:
        recorded = [record for record in read_records(store, key) if record.batch_id]
        if recorded:
            return recorded[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its batch was recorded: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no batch record appeared")


def rerun(tmp_path: Path, base_url: str) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    resources = {
        "gptimage": GPTImageResource(
            provider="emulator", base_url=base_url, batch_poll_interval_s=0.05
        ),
        "image_store": ImageStore(base_url=str(tmp_path / "store")),
    }
    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    result = dg.materialize(
        [asset()],
        resources=resources,
        instance=instance,
        raise_on_error=False,
        tags={RANGE_START: "k0", RANGE_END: "k5"},
    )
    return result, instance


@pytest.mark.parametrize("how", ["sigkill", "interrupt-and-cancel"])
def test_a_killed_run_is_resumed_without_a_second_batch(
    tmp_path: Path, served: tuple[Emulator, str], how: str
) -> None:
    emulator, base_url = served
    store = ImageStore(base_url=str(tmp_path / "store"))
    proc = start_run(tmp_path, base_url, cancel=how != "sigkill")
    record = wait_for_record(proc, store)
    assert sorted(line.key for line in record.lines) == KEYS
    emulator.advance_clock(30.0)  # 2 of the 6 lines are done
    if how == "sigkill":
        proc.send_signal(signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert emulator.stats.batch_calls["batches.create"] == 1
    assert [r.batch_id for r in read_records(store, dg.AssetKey("lights"))] == [record.batch_id]
    if how == "sigkill":
        emulator.advance_clock(100.0)
    else:
        assert emulator.stats.batch_calls["batches.cancel"] >= 1
        emulator.advance_clock(20.0)  # cancelled, with the lines done so far
        emulator.configure(batch_completion_s=0.2)

    result, instance = rerun(tmp_path, base_url)

    assert result.success
    creates = emulator.stats.batch_calls["batches.create"]
    assert creates == (1 if how == "sigkill" else 2), "only the cancelled lines are sent again"
    assert emulator.stats.batch_lines_billed == 6
    assert emulator.stats.sync_requests == 0
    materialized = instance.get_materialized_partitions(dg.AssetKey("lights"))
    assert sorted(materialized) == KEYS
    first = store.read_record(dg.AssetKey("lights"), "k0")
    assert first is not None
    assert first.batch_id == record.batch_id
    assert read_records(store, dg.AssetKey("lights")) == []
    instance.dispose()
