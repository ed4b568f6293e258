"""The sensor that follows a prompt table: new rows become partitions, changed rows new versions.

Each tick re-reads the table (``PromptTable.reload()``), so editing the CSV, JSONL, Parquet or YAML
file (locally or on object storage) is enough: no code reload.

- New and changed rows are reported as observations of the asset's prompt rows
  (``prompt_rows_asset``, when it is in the definitions), each with the row's data version, so the
  image partitions made from an older version of a row turn stale, and an automation condition
  (``dg.AutomationCondition.eager()``) regenerates them: changed rows, fixed rows that had failed,
  and new rows alike.
- With dynamic partitioning, new keys are added as partitions in the same tick and, unless the
  asset has an automation condition (which then requests them), their runs are requested, grouped
  like the asset's backfill policy.
- Rows removed from the table keep their partitions and stored images: deleting data is left to a
  person. The tick logs their keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import dagster as dg

from dagster_gptimage._dagster import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster_gptimage.assets import _validate_rows
from dagster_gptimage.prompt_rows import (
    existing_partitions,
    generation_job,
    observations,
    row_versions,
)

__all__ = ["prompt_table_sensor"]

_LISTED_KEYS = 20


def _chunks(keys: Sequence[str], size: int | None) -> list[list[str]]:
    if size is None:
        return [list(keys)]
    return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def _run_request(asset_key: dg.AssetKey, keys: Sequence[str]) -> dg.RunRequest:
    if len(keys) == 1:
        return dg.RunRequest(
            run_key=f"{asset_key.to_user_string()}:{keys[0]}",
            asset_selection=[asset_key],
            partition_key=keys[0],
        )
    return dg.RunRequest(
        run_key=f"{asset_key.to_user_string()}:{keys[0]}..{keys[-1]}",
        asset_selection=[asset_key],
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )


def _listed(keys: Sequence[str]) -> str:
    more = f" … (+{len(keys) - _LISTED_KEYS})" if len(keys) > _LISTED_KEYS else ""
    return ", ".join(keys[:_LISTED_KEYS]) + more


def _observes_rows(context: dg.SensorEvaluationContext, prompts_key: dg.AssetKey) -> bool:
    """Whether the prompt rows are defined as a partitioned asset (``prompt_rows_asset``)."""
    repository = context.repository_def
    if repository is None:
        return False
    graph = repository.asset_graph
    return graph.has(prompts_key) and graph.get(prompts_key).partitions_def is not None


def _new_keys(
    context: dg.SensorEvaluationContext,
    keys: Sequence[str],
    existing: set[str],
    *,
    dynamic: bool,
    asset_key: dg.AssetKey,
) -> list[str]:
    """Keys of rows that are not partitions yet; static partitions cannot take them (logged)."""
    new = [key for key in keys if key not in existing]
    if new and not dynamic:
        context.log.warning(
            f"{len(new)} rows have keys that are not partitions of {asset_key.to_user_string()} "
            f"(static partitions change with a code reload): {_listed(new)}"
        )
        return []
    return new


def _changed_versions(
    context: dg.SensorEvaluationContext, versions: Mapping[str, str], known: set[str]
) -> dict[str, str]:
    """Row versions of partition keys that differ from the cursor's (removed rows are logged)."""
    seen: Mapping[str, str] = json.loads(context.cursor) if context.cursor else {}
    removed = sorted(key for key in seen if key not in versions)
    if removed:
        context.log.info(f"rows removed from the table (images kept): {_listed(removed)}")
    return {k: v for k, v in versions.items() if k in known and seen.get(k) != v}


def prompt_table_sensor(
    asset: dg.AssetsDefinition,
    *,
    name: str | None = None,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    description: str | None = None,
    request_runs: bool | None = None,
) -> dg.SensorDefinition:
    """A sensor following ``asset``'s prompt table: observes new and changed rows, adds new keys as
    dynamic partitions and requests their runs.

    ``asset`` is what ``image_generation_asset`` returned (static or dynamic partitioning). Add the
    sensor and ``prompt_rows_asset(asset)`` to your ``dg.Definitions`` next to the asset. With
    static partitioning, rows with new keys need a code reload (the tick logs them).
    ``request_runs`` (default: only for dynamic partitions of an asset without an automation
    condition) requests runs of new keys. A table that fails to load or validate fails the tick with
    the table's error (nothing is recorded until it is fixed).
    """
    job = generation_job(asset, what="prompt_table_sensor")
    table = job.prompts
    prompts_key = job.prompts_key
    assert table is not None
    assert prompts_key is not None
    partitions_def = asset.partitions_def
    dynamic = isinstance(partitions_def, dg.DynamicPartitionsDefinition)
    asset_key = asset.key
    spec = asset.specs_by_key[asset_key]
    if request_runs is None:
        request_runs = dynamic and spec.automation_condition is None
    policy = asset.backfill_policy
    per_run = policy.max_partitions_per_run if policy is not None else None

    @dg.sensor(
        name=name or f"{asset_key.to_python_identifier()}_prompt_table_sensor",
        target=[asset],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description
        or f"Follows {table.source or 'the prompt table'} of {asset_key.to_user_string()}",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        current = table.reload()
        _validate_rows(current, job.defaults, edit=False, what=asset_key.to_user_string())
        versions = row_versions(current)
        existing = set(existing_partitions(partitions_def, context.instance))
        new = _new_keys(context, current.keys, existing, dynamic=dynamic, asset_key=asset_key)
        known = existing | set(new)
        changed = _changed_versions(context, versions, known)
        if not new and not changed:
            return dg.SkipReason(
                f"{len(current)} rows in {current.source or 'the table'}, no change"
            )
        events = observations(prompts_key, changed) if _observes_rows(context, prompts_key) else []
        context.log.info(
            f"{asset_key.to_user_string()}: {len(new)} new keys, {len(changed)} new row versions"
        )
        return dg.SensorResult(
            dynamic_partitions_requests=(
                [partitions_def.build_add_request(new)]  # type: ignore[union-attr]
                if new
                else []
            ),
            run_requests=(
                [_run_request(asset_key, chunk) for chunk in _chunks(new, per_run)]
                if new and request_runs
                else []
            ),
            asset_events=events,
            cursor=json.dumps({k: v for k, v in versions.items() if k in known}, sort_keys=True),
        )

    return _sensor
