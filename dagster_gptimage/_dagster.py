"""Every use of Dagster internals (``dagster._core``) in one place, so a Dagster upgrade that moves
them breaks here, visibly, and the tests that exercise each one say which.

Used for: the data-version tag layout Dagster's staleness resolver reads, the partition-range run
tags of single-run backfills, one batched event-log query, and the step-output event that lets
downstream steps of the same run start when an asset records its partitions one by one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    NULL_EVENT_POINTER,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.execution.plan.outputs import StepOutputData, StepOutputHandle
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "CODE_VERSION_TAG",
    "DATA_VERSION_IS_USER_PROVIDED_TAG",
    "DATA_VERSION_TAG",
    "NULL_EVENT_POINTER",
    "downstream_signal",
    "get_input_data_version_tag",
    "get_input_event_pointer_tag",
    "job_assets_defs",
    "latest_materialization_ids",
    "latest_observation_ids",
    "op_function",
]


def op_function(asset: dg.AssetsDefinition) -> object:
    """The Python function behind an asset's op (what the ``@multi_asset`` decorator wrapped), or
    None for assets without one."""
    node = asset.node_def if asset.is_executable else None
    compute_fn = getattr(node, "compute_fn", None)
    return getattr(compute_fn, "decorated_fn", None)


def job_assets_defs(
    context: dg.AssetExecutionContext,
) -> dict[dg.AssetKey, dg.AssetsDefinition]:
    """Every asset definition of the step's job (a run of ``dg.materialize`` has no repository, so
    the job's asset layer is the one place that always knows them)."""
    found: dict[dg.AssetKey, dg.AssetsDefinition] = {}
    for data in context.job_def.asset_layer.data:
        for key in data.assets_def.keys:
            found[key] = data.assets_def
    return found


def latest_materialization_ids(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> Mapping[str, int]:
    """Storage id of the latest materialization of each of ``partition_keys`` (one query)."""
    return instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, set(partition_keys)
    )


def latest_observation_ids(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> Mapping[str, int]:
    """Storage id of the latest observation of each of ``partition_keys`` (one query)."""
    return instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_OBSERVATION, set(partition_keys)
    )


def downstream_signal(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> DagsterEvent:
    """Mark the asset's step output as produced, without an ``Output``.

    Dagster skips steps downstream of an output that was never yielded, so an edit asset in the same
    run as its sources would be skipped. Yielding an ``Output`` is not an option: Dagster would then
    record a second materialization for every partition of the run, with its own data version,
    overriding the per-partition ones. The step-output event is what Dagster itself emits after an
    ``Output``; ``get_step_execution_context`` is its documented escape hatch for framework authors.
    """
    step_context = context.op_execution_context.get_step_execution_context()
    output_name = context.assets_def.get_output_name_for_asset_key(asset_key)
    handle = StepOutputHandle(step_context.step.key, output_name)
    return DagsterEvent.step_output_event(step_context, StepOutputData(step_output_handle=handle))
