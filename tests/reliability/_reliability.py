"""Helpers of the reliability suite: emulator-backed resources, range runs, and store audits.

The audits read the store as a user would find it, file by file, rather than through ImageStore,
so that a temp file, a half-written image or an image without its sidecar cannot hide.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from dagster_gptimage.emulator import Emulator, get_emulator
from dagster_gptimage.images import EXTENSIONS, inspect_image
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

SIZE = "1024x640"
"""A small gpt-image-2 size the emulator renders quickly."""

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
"""Run config keeping Dagster's per-event console lines out of the test output."""

_IMAGE_SUFFIXES = {f".{ext}" for ext in EXTENSIONS.values()}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def prompt_table(n: int, *, prefix: str = "k", words: str = "a lighthouse") -> PromptTable:
    return PromptTable.from_records(
        [{"key": f"{prefix}{i:03d}", "prompt": f"{words}, study {i}"} for i in range(n)]
    )


def emulator_resources(
    store_url: str | Path,
    *,
    resource: Mapping[str, Any] | None = None,
    emulator: Mapping[str, Any] | None = None,
    store_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Emulator]:
    """Resources for an image asset run against a fresh, uniquely named in-process emulator."""
    name = unique("rel")
    emu = get_emulator(name, **dict(emulator or {}))
    gptimage = GPTImageResource(provider="emulator", emulator_name=name, **dict(resource or {}))
    store = ImageStore(base_url=str(store_url), storage_options=dict(store_options or {}))
    return {"gptimage": gptimage, "image_store": store}, emu


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


def run_range(
    assets: Sequence[dg.AssetsDefinition],
    resources: Mapping[str, Any],
    keys: Sequence[str],
    instance: dg.DagsterInstance,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """One run over ``keys`` (a contiguous range): what a single-run backfill launches."""
    return dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        tags=range_tags(keys),
        run_config=QUIET,
        raise_on_error=False,
        **kwargs,
    )


def run_materializations(
    instance: dg.DagsterInstance, run_id: str
) -> dict[str, dg.AssetMaterialization]:
    """The materializations one run recorded, by partition (paged: fetches cap at 10,000)."""
    found: dict[str, dg.AssetMaterialization] = {}
    cursor = None
    while True:
        page = instance.get_records_for_run(
            run_id,
            cursor=cursor,
            of_type=dg.DagsterEventType.ASSET_MATERIALIZATION,
            limit=1000,
        )
        for record in page.records:
            materialization = record.asset_materialization
            assert materialization is not None
            assert materialization.partition is not None
            found[materialization.partition] = materialization
        if not page.has_more:
            return found
        cursor = page.cursor


def metadata_value(materialization: dg.AssetMaterialization, key: str) -> Any:
    entry = materialization.metadata[key]
    return entry.value if hasattr(entry, "value") else entry


def failure_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """``failed_partitions`` of the step failure (reason, message, attempts … per key)."""
    failures = [event for event in result.all_events if event.is_step_failure]
    assert failures, "expected a step failure"
    data = failures[0].step_failure_data.user_failure_data
    assert data is not None, failures[0].step_failure_data.error
    return data.metadata["failed_partitions"].value


@dataclass
class StoreAudit:
    """What an asset's folder holds, file by file."""

    images: dict[str, Path] = field(default_factory=dict)
    sidecars: dict[str, Path] = field(default_factory=dict)
    others: list[Path] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        return set(self.images) | set(self.sidecars)


def audit_local(folder: Path) -> StoreAudit:
    audit = StoreAudit()
    if not folder.exists():
        return audit
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            audit.others.append(path)
        elif path.suffix == ".json":
            audit.sidecars[path.stem] = path
        elif path.suffix in _IMAGE_SUFFIXES:
            audit.images[path.stem] = path
        else:
            audit.others.append(path)
    return audit


def check_pair(sidecar: Mapping[str, Any], data: bytes, key: str) -> list[str]:
    """Problems between one image's bytes and its sidecar record (empty: consistent)."""
    problems = []
    if hashlib.sha256(data).hexdigest() != sidecar["sha256"]:
        problems.append(f"{key}: sha256 differs from the sidecar")
    if len(data) != sidecar["bytes"]:
        problems.append(f"{key}: {len(data)} bytes, the sidecar says {sidecar['bytes']}")
    info = inspect_image(data, field=key)
    if (info.width, info.height, info.format) != (
        sidecar["width"],
        sidecar["height"],
        sidecar["format"],
    ):
        problems.append(f"{key}: decoded {info.format} {info.width}x{info.height} ≠ sidecar")
    if sidecar["partition_key"] != key:
        problems.append(f"{key}: sidecar is for partition {sidecar['partition_key']!r}")
    return problems


def assert_local_store_consistent(folder: Path, expected: Iterable[str]) -> dict[str, Any]:
    """Every expected partition has exactly one complete image and its sidecar; nothing else is
    there (no temp file, no image without sidecar, no sidecar without image). Returns the
    sidecars by key."""
    audit = audit_local(folder)
    expected = set(expected)
    assert audit.others == [], f"unexpected files (temp files?): {audit.others}"
    assert set(audit.images) == expected, sorted(set(audit.images) ^ expected)
    assert set(audit.sidecars) == expected, sorted(set(audit.sidecars) ^ expected)
    sidecars = {}
    problems: list[str] = []
    for key in sorted(expected):
        sidecar = json.loads(audit.sidecars[key].read_bytes())
        problems += check_pair(sidecar, audit.images[key].read_bytes(), key)
        sidecars[key] = sidecar
    assert problems == []
    return sidecars


def materialized_partitions(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    return set(instance.get_materialized_partitions(key))


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.is_file()) if folder.exists() else []


def crash_asset(n: int) -> tuple[dg.AssetsDefinition, PromptTable]:
    """The asset of the crash test, defined identically in the killed process and the test."""
    from dagster_gptimage.assets import image_generation_asset

    table = prompt_table(n, words="a storm over the harbour")
    return image_generation_asset(name="crash", prompts=table, size=SIZE), table
