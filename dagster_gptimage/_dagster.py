"""Every use of Dagster internals (``dagster._core``, ``dagster.components.resolved``) in one
place, so a Dagster upgrade that moves them breaks here, visibly, and the tests that exercise each
one say which (``tests/test_dagster_internals.py`` checks the imports themselves).

Used for: the data-version tag layout Dagster's staleness resolver reads, the partition-range run
tags of single-run backfills, one batched event-log query, the step-output event that lets
downstream steps of the same run start when an asset records its partitions one by one, and the
YAML schema the component derives through ``Resolvable.model()`` (made precise here).
"""

from __future__ import annotations

import contextvars
import inspect
import types
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Union, get_args, get_origin

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    NULL_EVENT_POINTER,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.definitions.data_version import DEFAULT_DATA_VERSION as _DEFAULT_VERSION
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.execution.plan.outputs import StepOutputData, StepOutputHandle
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster.components.resolved.base import Resolvable
from dagster.components.resolved.errors import ResolutionException
from pydantic import BaseModel

UNOBSERVED_DATA_VERSION: str = _DEFAULT_VERSION.value
"""The data version Dagster assumes for an external asset that was never observed (and treats as
unchanged against a never-materialized one)."""

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "CODE_VERSION_TAG",
    "DATA_VERSION_IS_USER_PROVIDED_TAG",
    "DATA_VERSION_TAG",
    "NULL_EVENT_POINTER",
    "UNOBSERVED_DATA_VERSION",
    "PreciseSchema",
    "ResolutionException",
    "Resolvable",
    "ResolvedConfigMarker",
    "downstream_signal",
    "get_input_data_version_tag",
    "get_input_event_pointer_tag",
    "job_asset_is_partitioned",
    "job_assets_defs",
    "latest_materialization_ids",
    "latest_observed_versions",
    "op_function",
    "previous_check_metadata",
    "resolving_config",
]


_RESOLVING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gptimage_resolving", default=False
)


def resolving_config() -> bool:
    """Whether Dagster is building a resource from its resolved run config right now (``EnvVar``s
    already replaced by their values), rather than user code constructing it."""
    return _RESOLVING.get()


class ResolvedConfigMarker:
    """Mixin for a ``ConfigurableResource``: marks the instances Dagster builds at run time from
    resolved config (``_with_updated_values``), so validators can tell them from user code."""

    def _with_updated_values(self, values: Mapping[str, Any] | None) -> Any:
        token = _RESOLVING.set(True)
        try:
            return super()._with_updated_values(values)  # type: ignore[misc]
        finally:
            _RESOLVING.reset(token)


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


def job_asset_is_partitioned(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> bool:
    """Whether the step's job knows ``asset_key`` as a partitioned asset (a dependency left out of
    the definitions is an unpartitioned stub there)."""
    graph = context.job_def.asset_layer.asset_graph
    return graph.has(asset_key) and graph.get(asset_key).partitions_def is not None


def previous_check_metadata(
    instance: dg.DagsterInstance, check_key: dg.AssetCheckKey
) -> Mapping[str, dg.MetadataValue]:
    """The metadata of the check's latest completed evaluation (empty when it never ran)."""
    from dagster._core.storage.asset_check_execution_record import (
        COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES,
    )

    records = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=1, status=set(COMPLETED_ASSET_CHECK_EXECUTION_RECORD_STATUSES)
    )
    evaluation = records[0].evaluation if records else None
    return evaluation.metadata if evaluation is not None else {}


def latest_materialization_ids(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> Mapping[str, int]:
    """Storage id of the latest materialization of each of ``partition_keys`` (one query)."""
    return instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, set(partition_keys)
    )


def latest_observed_versions(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> dict[str, tuple[int, str | None]]:
    """Storage id and data version of the latest observation of each of ``partition_keys`` (two
    queries, whatever the number of partitions)."""
    ids = instance.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_OBSERVATION, set(partition_keys)
    )
    found: dict[str, tuple[int, str | None]] = {}
    if not ids:
        return found
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(ids.values())),
        limit=len(ids),
    ).records
    for record in records:
        observation = record.asset_observation
        if observation is not None and observation.partition is not None:
            version = observation.tags.get(DATA_VERSION_TAG)
            found[observation.partition] = (record.storage_id, version)
    return found


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


class PreciseSchema(Resolvable):
    """A Resolvable whose derived YAML schema (what ``dg check yaml`` validates) is precise.

    Dagster derives the schema from the pydantic fields (inherited ones included) and accepts a
    template string for every non-string field, which turns enums into "any string" and nested
    blocks into "object or any string": ``dg check yaml`` could not flag ``quality: ultra``, and it
    reports any mismatch inside an ``anyOf`` as "not valid under any of the given schemas", naming
    neither the bad key nor the accepted values. Its field merge also drops descriptions. This
    override restores the descriptions, drops the injected string alternative (choices, numbers and
    blocks are written literally), and folds what is left into one schema so that the validator's
    message names the accepted values, or, for a block, the bad key inside it.

    ``yaml_patterns``: a regex for string fields the YAML may write in a template-free form only.
    ``yaml_order_after``: the field after which inherited fields are listed (``ui:order``).
    """

    yaml_patterns: ClassVar[Mapping[str, str]] = {}
    yaml_order_after: ClassVar[str | None] = None

    @classmethod
    def model(cls) -> type[BaseModel]:
        derived = super().model()
        extra = derived.model_config.get("json_schema_extra")
        if callable(extra):
            return derived
        static: dict[str, Any] = dict(extra or {})
        fields = dict(getattr(cls, "model_fields", {}))
        order = static.get("ui:order")
        after = cls.yaml_order_after
        if after is not None and isinstance(order, list) and after in order:
            static["ui:order"] = _ordered(cls, [str(name) for name in order], after)
        strings = {name for name, field in fields.items() if _has_str(field.annotation)}
        patterns = dict(cls.yaml_patterns)

        def _apply(schema: dict[str, Any], model: Any = None) -> None:
            schema.update(static)
            for name, prop in schema.get("properties", {}).items():
                field = fields.get(name)
                if field is not None and field.description:
                    prop.setdefault("description", field.description)
                for stray in ("ge", "gt", "le", "lt"):
                    prop.pop(stray, None)
            _template_free_schema(schema, strings, patterns)

        derived.model_config["json_schema_extra"] = _apply
        return derived


def _ordered(cls: type, order: Sequence[str], after: str) -> list[str]:
    """``order`` with the fields ``cls`` inherits moved right after ``after``."""
    own = set(inspect.get_annotations(cls))
    inherited = [name for name in order if name not in own]
    rest = [name for name in order if name in own]
    at = rest.index(after) + 1
    return [*rest[:at], *inherited, *rest[at:]]


def _has_str(annotation: Any) -> bool:
    """Whether a field's declared type is or includes ``str`` (its string alternative is real)."""
    if annotation is str:
        return True
    return get_origin(annotation) in (Union, types.UnionType) and str in get_args(annotation)


def _template_free_schema(
    schema: dict[str, Any], strings: set[str], patterns: Mapping[str, str]
) -> None:
    for name, prop in schema.get("properties", {}).items():
        variants = prop.get("anyOf")
        if not variants:
            continue
        if name in patterns:
            variants = [
                {"type": "string", "pattern": patterns[name]} if v == {"type": "string"} else v
                for v in variants
            ]
        elif name not in strings and len(variants) > 1:
            rest = [v for v in variants if v != {"type": "string"}]
            if any(v.get("type") != "null" for v in rest):
                variants = rest
        prop.pop("anyOf")
        prop.update(_fold(variants) or {"anyOf": variants})


def _fold(variants: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One schema equivalent to ``anyOf: variants``, or None when there is none this simple."""
    blocks = [v for v in variants if v.get("type") != "null"]
    if len(blocks) == 1 and ("$ref" in blocks[0] or blocks[0].get("type") in ("object", "array")):
        return dict(blocks[0])
    if any("$ref" in v or "items" in v or "properties" in v or "anyOf" in v for v in variants):
        return None
    types: list[str] = []
    merged: dict[str, Any] = {}
    for variant in variants:
        kind = variant.get("type")
        if not isinstance(kind, str) or kind in types:
            return None
        types.append(kind)
        for key, value in variant.items():
            if key == "type":
                continue
            if key in merged and merged[key] != value:
                return None
            merged[key] = value
    if "enum" in merged and "null" in types:
        merged["enum"] = [*merged["enum"], None]
    merged["type"] = types[0] if len(types) == 1 else types
    return merged
