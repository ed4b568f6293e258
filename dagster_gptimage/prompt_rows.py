"""Prompt rows as assets: the prompt table in the asset graph, one data version per row.

Every generation asset depends on ``<name>_prompts``, a partitioned observable asset with the same
partitions, whose data version per partition is a hash of what that row puts into the request
(prompt, request parameters, ``revision``). Each image materialization records the version of the
row it was made from, so changing one row marks exactly its image partition stale in Dagster, and an
automation condition such as ``dg.AutomationCondition.eager()`` regenerates it (edits follow by the
images' own data versions). Versions are observed by :func:`prompt_table_sensor` (new and changed
rows, each tick) and by running this asset's observation (the UI's "Observe" button).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import dagster as dg

from dagster_gptimage._dagster import DATA_VERSION_TAG
from dagster_gptimage._job import ImageJob, image_job
from dagster_gptimage.errors import DefinitionError
from dagster_gptimage.prompts import PromptRow, PromptTable

__all__ = [
    "prompt_rows_asset",
    "prompt_rows_key",
    "row_data_version",
]


def prompt_rows_key(asset_key: dg.AssetKey) -> dg.AssetKey:
    """The default key of a generation asset's prompt rows: ``<asset name>_prompts``."""
    return dg.AssetKey([*asset_key.path[:-1], f"{asset_key.path[-1]}_prompts"])


def row_data_version(row: PromptRow) -> str:
    """A short, stable hash of the row's prompt, request parameters and revision.

    Columns that do not reach the request (captions, notes) are left out, so editing them marks
    nothing stale.
    """
    payload = {
        "prompt": row.prompt,
        "params": dict(sorted(row.params.items())),
        "revision": row.revision,
    }
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def row_versions(table: PromptTable, keys: Iterable[str] | None = None) -> dict[str, str]:
    """Each row's data version, for ``keys`` only when given (partitions that exist)."""
    wanted = None if keys is None else set(keys)
    return {row.key: row_data_version(row) for row in table if wanted is None or row.key in wanted}


def observations(
    prompts_key: dg.AssetKey, versions: Mapping[str, str]
) -> list[dg.AssetObservation]:
    """One observation per row, carrying its data version (what Dagster's staleness compares)."""
    return [
        dg.AssetObservation(
            asset_key=prompts_key,
            partition=key,
            tags={DATA_VERSION_TAG: version},
        )
        for key, version in versions.items()
    ]


def generation_job(asset: dg.AssetsDefinition, *, what: str) -> ImageJob:
    """The job of a generation asset made by ``image_generation_asset``, or a clear error."""
    job = image_job(asset)
    if job is None or job.prompts is None or job.kind != "generate" or job.prompts_key is None:
        raise DefinitionError(
            f"{what} needs an asset made by image_generation_asset; "
            f"{asset.key.to_user_string()} is not one",
            field="asset",
            fix="pass what image_generation_asset(...) returned",
        )
    return job


def existing_partitions(
    partitions_def: dg.PartitionsDefinition | None, instance: dg.DagsterInstance
) -> Sequence[str]:
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition) and partitions_def.name:
        return instance.get_dynamic_partitions(partitions_def.name)
    if partitions_def is None:
        return []
    return partitions_def.get_partition_keys()


def prompt_rows_asset(
    asset: dg.AssetsDefinition, *, group_name: str | None = None
) -> dg.SourceAsset:
    """The prompt rows of generation asset ``asset`` as a partitioned observable asset.

    Add it to your ``dg.Definitions`` next to ``asset`` (the component does it for you): it puts
    the table in the asset graph upstream of the images, with one data version per row. Observing
    it re-reads the table and records every existing partition's row version; rows whose key is not
    (yet) a partition are left to :func:`prompt_table_sensor`.
    """
    job = generation_job(asset, what="prompt_rows_asset")
    table = job.prompts
    assert table is not None
    assert job.prompts_key is not None
    partitions_def = asset.partitions_def
    spec = asset.specs_by_key[asset.key]

    @dg.observable_source_asset(
        key=job.prompts_key,
        partitions_def=partitions_def,
        group_name=group_name or spec.group_name,
        description=(
            f"Prompt rows of {asset.key.to_user_string()} from "
            f"{table.source or 'in-memory records'}; one data version per row."
        ),
        metadata={"prompt_table": dg.MetadataValue.text(table.source or "in-memory records")},
    )
    def _prompt_rows(context: dg.OpExecutionContext) -> dg.DataVersionsByPartition:
        current = table.reload()
        keys = existing_partitions(partitions_def, context.instance)
        return dg.DataVersionsByPartition(row_versions(current, keys))

    return _prompt_rows
