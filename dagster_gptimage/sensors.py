"""The sensor that turns new prompt-table rows into dynamic partitions and runs.

A generation asset made with ``partitioning="dynamic"`` has no partitions until this sensor adds
them. Each tick re-reads the table (``PromptTable.reload()``), so appending rows to the CSV, JSONL,
Parquet or YAML file (locally or on object storage) is enough: no code reload. New keys are added
and their runs requested in the same tick, grouped like the asset's backfill policy (one run for all
new keys, or chunks of ``max_partitions_per_run``). Rows removed from the table keep their partitions
and images: deleting data is left to a person.
"""

from collections.abc import Sequence

import dagster as dg

from dagster_gptimage._dagster import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster_gptimage.assets import _validate_rows, image_job
from dagster_gptimage.errors import DefinitionError

__all__ = ["prompt_table_sensor"]


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


def prompt_table_sensor(
    asset: dg.AssetsDefinition,
    *,
    name: str | None = None,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor adding the keys of new rows of ``asset``'s prompt table as dynamic partitions and
    requesting their runs.

    ``asset`` is what ``image_generation_asset(..., partitioning="dynamic")`` returned. Add the sensor
    to your ``dg.Definitions(sensors=[...])`` next to the asset. A table that fails to load or
    validate fails the tick with the table's error (nothing is added until it is fixed).
    """
    job = image_job(asset)
    partitions_def = asset.partitions_def
    if job is None or job.prompts is None or job.kind != "generate":
        raise DefinitionError(
            f"prompt_table_sensor needs an asset made by image_generation_asset; "
            f"{asset.key.to_user_string()} is not one",
            field="asset",
            fix="pass what image_generation_asset(..., partitioning='dynamic') returned",
        )
    if not isinstance(partitions_def, dg.DynamicPartitionsDefinition) or not partitions_def.name:
        raise DefinitionError(
            f"prompt_table_sensor: {asset.key.to_user_string()} has static partitions; make it with "
            "image_generation_asset(..., partitioning='dynamic')",
            field="asset",
            fix="make the asset with image_generation_asset(..., partitioning='dynamic')",
        )
    table = job.prompts
    asset_key = asset.key
    policy = asset.backfill_policy
    per_run = policy.max_partitions_per_run if policy is not None else None
    partitions_name = partitions_def.name

    @dg.sensor(
        name=name or f"{asset_key.to_python_identifier()}_prompt_table_sensor",
        target=[asset],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description
        or f"Adds partitions of {asset_key.to_user_string()} for new rows of {table.source or 'its prompt table'}",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        current = table.reload()
        _validate_rows(current, job.defaults, edit=False, what=asset_key.to_user_string())
        existing = set(context.instance.get_dynamic_partitions(partitions_name))
        new = [key for key in current.keys if key not in existing]
        if not new:
            return dg.SkipReason(
                f"{len(current)} rows in {current.source or 'the prompt table'}, no new keys"
            )
        context.log.info(f"adding {len(new)} partitions to {asset_key.to_user_string()}")
        return dg.SensorResult(
            dynamic_partitions_requests=[partitions_def.build_add_request(new)],
            run_requests=[_run_request(asset_key, chunk) for chunk in _chunks(new, per_run)],
        )

    return _sensor
