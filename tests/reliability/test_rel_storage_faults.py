"""Storage faults: the file system raises while an image or its sidecar is written.

Two stores: an object store (an fsspec file system whose uploads fail for some files, like a
dropped connection during a PUT) and a local disk that fills up half-way through a write (ENOSPC).
In both, no partial image may ever be visible, the partitions whose writes failed must be reported
failed and not materialized (with their possibly-billed cost), and the others must be fine.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import fsspec
import pytest
from _reliability import (
    SIZE,
    assert_local_store_consistent,
    audit_local,
    check_pair,
    emulator_resources,
    failure_metadata,
    materialized_partitions,
    metadata_value,
    prompt_table,
    run_materializations,
    run_range,
    temp_files,
)
from fsspec.implementations.memory import MemoryFileSystem

from dagster_gptimage import storage
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.images import inspect_image


class FaultyObjectStore(MemoryFileSystem):
    """An in-memory object store whose uploads of chosen files fail before anything is stored
    (as a PUT does when the connection drops). ``failing`` holds file names (``k003.png``)."""

    protocol = "faultyobj"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    failing: ClassVar[set[str]] = set()
    failed: ClassVar[list[str]] = []

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("faultyobj://"))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        name = path.rsplit("/", 1)[-1]
        if name in self.failing:
            self.failed.append(name)
            raise ConnectionResetError(errno.ECONNRESET, f"injected upload failure for {name}")
        super().pipe_file(path, value, mode=mode, **kwargs)


fsspec.register_implementation("faultyobj", FaultyObjectStore, clobber=True)


def test_object_store_upload_failures_fail_only_their_partitions(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    table = prompt_table(12)
    asset = image_generation_asset(name="uploads", prompts=table, size=SIZE)
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    resources, emulator = emulator_resources(f"faultyobj://{bucket}/images")
    image_fails, sidecar_fails = {"k003", "k007"}, {"k005", "k010"}
    failing = {f"{k}.png" for k in image_fails} | {f"{k}.json" for k in sidecar_fails}
    FaultyObjectStore.failing = failing
    FaultyObjectStore.failed = []
    try:
        result = run_range([asset], resources, table.keys, instance)
    finally:
        FaultyObjectStore.failing = set()

    assert not result.success
    assert sorted(FaultyObjectStore.failed) == sorted(failing)
    failed = failure_metadata(result)
    assert set(failed) == image_fails | sidecar_fails
    for details in failed.values():
        assert details["reason"] == "storage"
        assert "could not be stored" in details["message"]
        # The image was generated, so the provider billed it: the failure says so.
        assert details["possibly_billed_attempts"] == 1
        assert details["cost_usd"] > 0
    good = set(table.keys) - image_fails - sidecar_fails
    assert materialized_partitions(instance, asset.key) == good
    assert emulator.stats.billed_requests == len(table.keys)

    fs = FaultyObjectStore()
    folder = f"/{bucket}/images/uploads"
    files = {path.rsplit("/", 1)[-1]: path for path in fs.find(folder)}
    for key in image_fails:
        assert f"{key}.png" not in files
        assert f"{key}.json" not in files
    for key in sidecar_fails:
        assert f"{key}.json" not in files
    for name, path in files.items():
        key, ext = name.rsplit(".", 1)
        if ext == "png":
            inspect_image(fs.cat_file(path), field=name)  # complete, never partial
    for key in good:
        sidecar = json.loads(fs.cat_file(files[f"{key}.json"]))
        assert check_pair(sidecar, fs.cat_file(files[f"{key}.png"]), key) == []

    # Once the store works again, the failed partitions are made again; the others are cache hits.
    rerun = run_range([asset], resources, table.keys, instance)
    assert rerun.success
    mats = run_materializations(instance, rerun.run_id)
    assert {k for k, m in mats.items() if not metadata_value(m, "cached")} == (
        image_fails | sidecar_fails
    )
    assert emulator.stats.billed_requests == len(table.keys) + 4


class _FullDisk:
    """``os`` as the storage module sees it, except that writing the temp file of a chosen target
    stops half-way with ENOSPC. Records whether the target was visible at that moment."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.visible_at_failure: list[bool] = []
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def fdopen(self, fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = os.fdopen(fd, *args, **kwargs)
        temp = os.readlink(f"/proc/self/fd/{fd}")
        target_name = os.path.basename(temp)[1:].rsplit(".", 3)[0]
        if target_name not in self.failing:
            return handle
        target = os.path.join(os.path.dirname(temp), target_name)
        disk = self

        class _HalfWriter:
            def __enter__(self) -> _HalfWriter:
                return self

            def __exit__(self, *exc_info: object) -> None:
                handle.close()

            def write(self, data: bytes) -> int:
                handle.write(data[: len(data) // 2])
                handle.flush()
                disk.failures += 1
                disk.visible_at_failure.append(os.path.exists(target))
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

        return _HalfWriter()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_disk_full_mid_write_leaves_nothing_partial(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = prompt_table(10)
    asset = image_generation_asset(name="diskfull", prompts=table, size=SIZE)
    store_dir = tmp_path / "store"
    resources, emulator = emulator_resources(store_dir)
    image_fails, sidecar_fails = {"k002"}, {"k006"}
    disk = _FullDisk({"k002.png", "k006.json"})
    monkeypatch.setattr(storage, "os", disk)

    result = run_range([asset], resources, table.keys, instance)
    monkeypatch.undo()

    assert not result.success
    assert disk.failures == 2
    assert disk.visible_at_failure == [False, False]
    failed = failure_metadata(result)
    assert set(failed) == image_fails | sidecar_fails
    assert all(
        d["reason"] == "storage" and "No space left" in d["message"] for d in failed.values()
    )
    good = set(table.keys) - image_fails - sidecar_fails
    assert materialized_partitions(instance, asset.key) == good

    folder = store_dir / "diskfull"
    assert temp_files(store_dir) == []
    audit = audit_local(folder)
    assert "k002" not in audit.images
    assert "k002" not in audit.sidecars
    assert "k006" not in audit.sidecars
    for key, path in audit.images.items():
        inspect_image(path.read_bytes(), field=key)  # complete, never partial
    for key in good:
        assert (
            check_pair(
                json.loads(audit.sidecars[key].read_bytes()), audit.images[key].read_bytes(), key
            )
            == []
        )

    rerun = run_range([asset], resources, table.keys, instance)
    assert rerun.success
    assert_local_store_consistent(folder, table.keys)
    assert emulator.stats.billed_requests == len(table.keys) + 2
