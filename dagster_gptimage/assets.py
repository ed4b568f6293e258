"""Asset factories: a prompt table becomes a partitioned image asset; image assets become edits.

``image_generation_asset`` makes one partition per prompt-table row; ``image_edit_asset`` makes one
partition per partition of its source image assets (identity mapping) and sends their stored images
as the edit's inputs. Both store images with the ``ImageStore`` resource (not an IO manager), record
per-partition metadata and data versions, carry the ``image_valid`` asset check, and materialize a
whole partition range in one run (``BackfillPolicy.single_run()`` by default) with requests in
flight concurrently. See ``_backfill`` for the run body.

Implementation note: the assets are ``multi_asset``s with a single ``AssetSpec`` and
``can_subset=True`` so that the ``image_valid`` check can run alone, re-verifying stored images
without regenerating them.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from dagster_gptimage import validation
from dagster_gptimage._backfill import run_image_asset
from dagster_gptimage._checks import CHECK_NAME, check_spec
from dagster_gptimage._job import ImageJob, Mode, attach_job
from dagster_gptimage._urls import redact_url
from dagster_gptimage.errors import DefinitionError, InvalidRequestError
from dagster_gptimage.images import load_input_image
from dagster_gptimage.models import MODEL_SPECS, ImageParams, request_defaults
from dagster_gptimage.prompt_rows import prompt_rows_key
from dagster_gptimage.prompts import PromptTable, PromptTableError

__all__ = [
    "IMAGE_CHECK_NAME",
    "ImageAssetConfig",
    "image_edit_asset",
    "image_generation_asset",
]

IMAGE_CHECK_NAME = CHECK_NAME
"""Name of the asset check every image asset carries."""

Partitioning = Literal["static", "dynamic"]

_KINDS = {"openai", "image"}


class ImageAssetConfig(dg.Config):
    """Run configuration of an image asset."""

    force: bool = Field(
        default=False,
        description=(
            "Regenerate every partition of the run even when a stored image was made by the same "
            "request (this pays again)."
        ),
    )
    check_partitions: list[str] | None = Field(
        default=None,
        description=(
            "When only the image_valid check runs: verify these partitions (default: every stored "
            "image). Nothing is generated either way."
        ),
    )


def _asset_key(name: str, key_prefix: str | Sequence[str] | None) -> dg.AssetKey:
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    return dg.AssetKey([*prefix, name])


def _load_time_params(defaults: Mapping[str, Any], *, what: str) -> ImageParams:
    try:
        return ImageParams(**defaults)
    except InvalidRequestError as error:
        raise InvalidRequestError(
            f"{what}: {error.message}",
            field=error.field,
            value=error.value,
            accepted=error.accepted,
        ) from error


def _validate_defaults(defaults: Mapping[str, Any], *, edit: bool, what: str) -> None:
    """The asset-level defaults must be valid for their model (without one, for at least one model,
    as the rows are), so a bad default is blamed on its own field and not on every row."""
    models = [defaults["model"]] if "model" in defaults else list(MODEL_SPECS)
    errors: list[InvalidRequestError] = []
    for model in models:
        params = _load_time_params({**defaults, "model": model}, what=what)
        try:
            validation.validate_params(params, provider=None, edit=edit)
            return
        except InvalidRequestError as error:
            errors.append(error)
    first = errors[0]
    raise InvalidRequestError(
        f"{what}: {first.message}", field=first.field, value=first.value, accepted=first.accepted
    ) from first


def _validate_rows(
    table: PromptTable, defaults: Mapping[str, Any], *, edit: bool, what: str
) -> None:
    """Validate the defaults, then every row, at definition load time, so a bad row fails
    ``dagster definitions validate`` rather than a run.

    Without an asset-level ``model`` the resource decides the model at run time, so the table passes
    if it is valid for at least one model (the run validates again with the real model and provider).
    """
    _validate_defaults(defaults, edit=edit, what=what)
    if "model" in defaults:
        table.validate(_load_time_params(defaults, what=what), provider=None, edit=edit)
    else:
        first_error: PromptTableError | None = None
        for model in (ImageParams.model_fields["model"].default, *MODEL_SPECS):
            try:
                table.validate(
                    _load_time_params({**defaults, "model": model}, what=what),
                    provider=None,
                    edit=edit,
                )
                break
            except PromptTableError as error:
                first_error = first_error or error
        else:
            assert first_error is not None
            raise first_error
    bad_n = [row.key for row in table if row.params.get("n", defaults.get("n", 1)) != 1]
    if bad_n:
        raise InvalidRequestError(
            f"{what}: n must be 1 (an image asset stores one image per partition); rows with another "
            f"n: {', '.join(bad_n[:20])}",
            field="n",
            value=bad_n,
            accepted="1",
        )


def _validate_fixed_prompt(prompt: str, defaults: Mapping[str, Any], *, what: str) -> None:
    _validate_defaults(defaults, edit=True, what=what)
    try:
        validation.validate_prompt(prompt)
    except InvalidRequestError as error:
        raise InvalidRequestError(
            f"{what}: {error.message}", field="prompt", value=error.value, accepted=error.accepted
        ) from error


def _partitions(
    keys: Sequence[str], partitioning: Partitioning, asset_key: dg.AssetKey
) -> dg.PartitionsDefinition:
    if partitioning == "static":
        return dg.StaticPartitionsDefinition(list(keys))
    if partitioning == "dynamic":
        return dg.DynamicPartitionsDefinition(name=f"gptimage__{asset_key.to_python_identifier()}")
    raise DefinitionError(
        f"partitioning={partitioning!r}; accepted: 'static' or 'dynamic'",
        field="partitioning",
        fix="use 'static' or 'dynamic'",
    )


def _backfill_policy(max_partitions_per_run: int | None) -> dg.BackfillPolicy:
    if max_partitions_per_run is None:
        return dg.BackfillPolicy.single_run()
    if max_partitions_per_run < 1:
        raise DefinitionError(
            f"max_partitions_per_run={max_partitions_per_run!r} must be >= 1 or None",
            field="max_partitions_per_run",
            fix="give at least 1, or None for one run per backfill",
        )
    return dg.BackfillPolicy.multi_run(max_partitions_per_run)


def _check_mode(mode: str) -> None:
    if mode not in ("sync", "batch"):
        raise DefinitionError(
            f"mode={mode!r}; accepted: 'sync' or 'batch'",
            field="mode",
            fix="use 'sync' (one request per partition, now) or 'batch' (the Batch API: half "
            "price, within 24 hours)",
        )


def _check_budget(max_cost_usd: float | None) -> None:
    if max_cost_usd is not None and not max_cost_usd >= 0:
        raise DefinitionError(
            f"max_cost_usd={max_cost_usd!r} must be >= 0 or None",
            field="max_cost_usd",
            fix="give a budget in USD (>= 0), or None for no budget",
        )


def _build(
    job: ImageJob,
    *,
    partitions_def: dg.PartitionsDefinition,
    deps: Sequence[dg.AssetKey],
    description: str,
    metadata: Mapping[str, Any],
    group_name: str | None,
    automation_condition: dg.AutomationCondition | None,
    tags: Mapping[str, str] | None,
    owners: Sequence[str] | None,
    pool: str | None,
    code_version: str | None,
    max_partitions_per_run: int | None,
) -> dg.AssetsDefinition:
    spec = dg.AssetSpec(
        job.asset_key,
        deps=[dg.AssetDep(key) for key in deps],
        description=description,
        metadata=metadata,
        skippable=True,
        group_name=group_name,
        code_version=code_version,
        automation_condition=automation_condition,
        owners=owners,
        tags=tags,
        kinds=_KINDS,
    )

    def _image_asset(context: dg.AssetExecutionContext, config: ImageAssetConfig):
        # No return annotation: Dagster reads it as the type of the op's (several) outputs.
        yield from run_image_asset(
            context, job, force=config.force, check_partitions=config.check_partitions
        )

    attach_job(_image_asset, job)
    return dg.multi_asset(
        name=job.asset_key.to_python_identifier(),
        specs=[spec],
        check_specs=[check_spec(job.asset_key)],
        partitions_def=partitions_def,
        backfill_policy=_backfill_policy(max_partitions_per_run),
        can_subset=True,
        required_resource_keys={job.resource_key, job.store_key},
        pool=pool,
    )(_image_asset)


def image_generation_asset(
    *,
    name: str,
    prompts: PromptTable,
    model: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    description: str | None = None,
    partitioning: Partitioning = "static",
    max_partitions_per_run: int | None = None,
    max_cost_usd: float | None = None,
    resource_key: str = "gptimage",
    store_key: str = "image_store",
    automation_condition: dg.AutomationCondition | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    pool: str | None = None,
    code_version: str | None = None,
    prompts_key: str | Sequence[str] | dg.AssetKey | None = None,
    mode: Mode = "sync",
    **request_params: Any,
) -> dg.AssetsDefinition:
    """A partitioned image asset with one partition per row of ``prompts`` (key = partition key).

    ``request_params`` are request defaults, any field of :class:`RequestDefaults` (``size``,
    ``quality``, ``output_format``, ``output_compression``, ``background``, ``moderation``, …); a
    table column named like a request field overrides them per row; ``model=None`` uses the
    resource's model. Every row is validated now, so a bad row fails
    ``dagster definitions validate``.

    ``partitioning="dynamic"`` uses a ``DynamicPartitionsDefinition`` filled by
    ``prompt_table_sensor(asset)`` from the re-read table (no code reload needed). A run materializes
    its whole partition range (``max_partitions_per_run`` splits backfills), reuses stored images made
    by the same request (run config ``force: true`` regenerates) and refuses to pass ``max_cost_usd``.
    Images go to the ``ImageStore`` under ``store_key``; the asset has no IO-manager output, so
    downstream assets read images from the store (as ``image_edit_asset`` does).

    The asset depends on its prompt rows, ``prompts_key`` (default ``<name>_prompts``): add
    ``prompt_rows_asset(asset)`` to your definitions to see them in the asset graph with one data
    version per row, so that a changed row marks exactly its image partition stale.

    ``mode="batch"`` sends a run's uncached requests through OpenAI's Batch API: half the price,
    results within 24 hours (providers openai and emulator; see docs/batch.md). A run waits for its
    batches, and a rerun after a crash or termination collects them instead of paying again.
    """
    asset_key = _asset_key(name, key_prefix)
    rows_key = (
        prompt_rows_key(asset_key)
        if prompts_key is None
        else dg.AssetKey.from_coercible(prompts_key)  # type: ignore[arg-type]
    )
    what = f"image asset {asset_key.to_user_string()}"
    _check_budget(max_cost_usd)
    _check_mode(mode)
    defaults = request_defaults(what, edit=False, model=model, **request_params)
    _validate_rows(prompts, defaults, edit=False, what=what)
    partitions_def = _partitions(prompts.keys, partitioning, asset_key)
    job = ImageJob(
        asset_key=asset_key,
        kind="generate",
        prompts=prompts,
        prompt=None,
        defaults=defaults,
        max_cost_usd=max_cost_usd,
        resource_key=resource_key,
        store_key=store_key,
        dynamic=partitioning == "dynamic",
        code_version=code_version,
        prompts_key=rows_key,
        mode=mode,
    )
    return _build(
        job,
        partitions_def=partitions_def,
        deps=(rows_key,),
        description=description or prompts.description,
        metadata={
            "prompt_table": dg.MetadataValue.text(prompts.source or "in-memory records"),
            "prompt_rows": dg.MetadataValue.int(len(prompts)),
            "image_defaults": dg.MetadataValue.json(defaults),
            "partitioning": dg.MetadataValue.text(partitioning),
            "request_mode": dg.MetadataValue.text(mode),
        },
        group_name=group_name,
        automation_condition=automation_condition,
        tags=tags,
        owners=owners,
        pool=pool,
        code_version=code_version,
        max_partitions_per_run=max_partitions_per_run,
    )


def _source_partitions(
    sources: Sequence[dg.AssetsDefinition | dg.AssetKey | str],
    partitions_def: dg.PartitionsDefinition | None,
    *,
    what: str,
) -> tuple[list[dg.AssetKey], dg.PartitionsDefinition]:
    """Source keys and their shared partitions definition (identity mapping needs one)."""
    if not sources:
        raise DefinitionError(
            f"{what}: sources is empty; give at least one upstream image asset",
            field="sources",
            fix="give at least one upstream image asset",
        )
    keys: list[dg.AssetKey] = []
    found: list[tuple[dg.AssetKey, dg.PartitionsDefinition | None]] = []
    for source in sources:
        if isinstance(source, dg.AssetsDefinition):
            if len(source.keys) != 1:
                raise DefinitionError(
                    f"{what}: source {source.node_def.name!r} defines {len(source.keys)} assets; "
                    "pass the AssetKey of the image asset instead",
                    field="sources",
                    fix="pass the AssetKey of the image asset instead",
                )
            key = source.key
            found.append((key, source.partitions_def))
        else:
            key = (
                source if isinstance(source, dg.AssetKey) else dg.AssetKey.from_user_string(source)
            )
        keys.append(key)
    if partitions_def is not None:
        found.insert(0, (keys[0], partitions_def))
    if not found:
        raise DefinitionError(
            f"{what}: cannot tell the partitions of source {keys[0].to_user_string()}; pass the "
            "AssetsDefinition returned by image_generation_asset/image_edit_asset, or partitions_def=",
            field="sources",
            fix="pass the source's AssetsDefinition, or partitions_def=",
        )
    first_key, first_def = found[0]
    for key, other in found:
        if other is None:
            raise DefinitionError(
                f"{what}: source {key.to_user_string()} is not partitioned; edit assets map "
                "partitions one to one and need partitioned image sources",
                field="sources",
                fix="edit partitioned image assets only",
            )
        if other != first_def:
            raise DefinitionError(
                f"{what}: all sources must share one partitions definition (identity mapping), but "
                f"{key.to_user_string()} differs from {first_key.to_user_string()}",
                field="sources",
                fix="edit sources made from one prompt table (one partitions definition)",
            )
    assert first_def is not None
    return keys, first_def


def _local_mask(mask: str, *, what: str) -> str:
    """A fixed local mask is checked now (exists, is an image); URLs are read at run time."""
    if "://" in mask or "::" in mask:
        return mask
    path = os.path.abspath(os.path.expanduser(mask))
    try:
        load_input_image(path, field="mask")
    except InvalidRequestError as error:
        raise InvalidRequestError(
            f"{what}: {error.message}", field="mask", value=mask, accepted=error.accepted
        ) from error
    return path


def _check_edit_arguments(
    prompt: str | None,
    prompts: PromptTable | None,
    mask: str | None,
    mask_column: str | None,
    *,
    what: str,
) -> None:
    if (prompt is None) == (prompts is None):
        raise DefinitionError(
            f"{what}: give exactly one of prompt= (one for all) or prompts= (a table)",
            field="prompt",
            fix="give prompt= (one text for every partition) or prompts= (a table keyed like the "
            "sources), not both or neither",
        )
    if mask is not None and mask_column is not None:
        raise DefinitionError(
            f"{what}: give mask= (one file) or mask_column= (per key), not both",
            field="mask_column",
            fix="give mask (one file for all) or mask_column (a per-key column), not both",
        )
    if mask_column is not None and (prompts is None or mask_column not in prompts.columns):
        raise DefinitionError(
            f"{what}: mask_column={mask_column!r} must name a column of the prompts table"
            + (f" (columns: {', '.join(prompts.columns)})" if prompts is not None else ""),
            field="mask_column",
            fix=f"use one of its columns: {', '.join(prompts.columns)}"
            if prompts is not None
            else "give a prompts table with a mask column, or mask for one mask",
        )


def _check_not_own_source(
    asset_key: dg.AssetKey, source_keys: Sequence[dg.AssetKey], *, what: str
) -> None:
    if asset_key in source_keys:
        raise DefinitionError(
            f"{what}: an edit asset cannot be its own source",
            field="sources",
            fix="remove the asset itself from its sources",
        )


def _validate_edit_prompts(
    prompt: str | None,
    prompts: PromptTable | None,
    shared: dg.PartitionsDefinition,
    defaults: Mapping[str, Any],
    *,
    what: str,
) -> None:
    """The table's rows (one per source partition) or the fixed prompt, valid for some model."""
    if prompts is None:
        assert prompt is not None
        _validate_fixed_prompt(prompt, defaults, what=what)
        return
    _validate_rows(prompts, defaults, edit=True, what=what)
    if isinstance(shared, dg.StaticPartitionsDefinition):
        missing = [key for key in shared.get_partition_keys() if key not in prompts]
        if missing:
            raise DefinitionError(
                f"{what}: the prompts table has no row for {len(missing)} source partitions: "
                f"{', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}",
                field="prompts",
                fix="add a row for each of them to the prompts table, or change the "
                "declaration so that the sources' partitions match it",
            )


def _edit_description(
    job: ImageJob, description: str | None, mask: str | None
) -> tuple[str, dict[str, Any]]:
    """An edit asset's description (given, or made from its sources and prompt) and metadata."""
    names = [key.to_user_string() for key in job.sources]
    if description is None:
        description = (
            f"Edits of {', '.join(names)}: {job.prompt}"
            if job.prompt is not None
            else f"Edits of {', '.join(names)} with per-key prompts from "
            f"{job.prompts.source if job.prompts else ''}"
        )
    metadata: dict[str, Any] = {
        "edit_sources": dg.MetadataValue.json(names),
        "image_defaults": dg.MetadataValue.json(dict(job.defaults)),
        "request_mode": dg.MetadataValue.text(job.mode),
    }
    if job.prompt is not None:
        metadata["edit_prompt"] = dg.MetadataValue.text(job.prompt)
    if job.prompts is not None:
        metadata["prompt_table"] = dg.MetadataValue.text(job.prompts.source or "in-memory records")
    if mask is not None:
        metadata["mask"] = dg.MetadataValue.text(redact_url(mask))
    return description, metadata


def image_edit_asset(
    *,
    name: str,
    sources: Sequence[dg.AssetsDefinition | dg.AssetKey | str],
    prompt: str | None = None,
    prompts: PromptTable | None = None,
    mask: str | None = None,
    mask_column: str | None = None,
    model: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    description: str | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    max_partitions_per_run: int | None = None,
    max_cost_usd: float | None = None,
    resource_key: str = "gptimage",
    store_key: str = "image_store",
    automation_condition: dg.AutomationCondition | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    pool: str | None = None,
    code_version: str | None = None,
    mode: Mode = "sync",
    **request_params: Any,
) -> dg.AssetsDefinition:
    """An image asset editing the images of ``sources``, partition by partition.

    Partitions are those of the sources (all must share one partitions definition; identity
    mapping). For each partition the sources' stored images (their latest sidecars in the
    ``ImageStore``, not an IO manager) are sent in order as the edit's input images. Give one
    ``prompt`` for every partition or a ``prompts`` table keyed like the sources (its request-field
    columns override per row; ``request_params`` are request defaults as in
    ``image_generation_asset``, plus ``input_fidelity``). ``mask`` is a fixed PNG (path or fsspec
    URL); ``mask_column`` names a ``prompts`` column holding a per-key mask path (relative paths
    resolve next to a local table).
    Sources may be edit assets: edits of edits work. With
    ``automation_condition=dg.AutomationCondition.eager()`` edits follow their sources partition by
    partition. ``partitions_def`` is only needed when a source is given by key and was not made by
    this package. ``mode="batch"`` sends the edits through the Batch API, inputs as data URLs of at
    most 20 MiB each (see ``image_generation_asset`` and docs/batch.md).
    """
    asset_key = _asset_key(name, key_prefix)
    what = f"image edit asset {asset_key.to_user_string()}"
    _check_budget(max_cost_usd)
    _check_mode(mode)
    _check_edit_arguments(prompt, prompts, mask, mask_column, what=what)
    source_keys, shared = _source_partitions(sources, partitions_def, what=what)
    _check_not_own_source(asset_key, source_keys, what=what)
    defaults = request_defaults(what, edit=True, model=model, **request_params)
    _validate_edit_prompts(prompt, prompts, shared, defaults, what=what)
    fixed_mask = _local_mask(mask, what=what) if mask is not None else None
    job = ImageJob(
        asset_key=asset_key,
        kind="edit",
        prompts=prompts,
        prompt=prompt,
        defaults=defaults,
        sources=tuple(source_keys),
        mask=fixed_mask,
        mask_column=mask_column,
        max_cost_usd=max_cost_usd,
        resource_key=resource_key,
        store_key=store_key,
        dynamic=isinstance(shared, dg.DynamicPartitionsDefinition),
        code_version=code_version,
        mode=mode,
    )
    description, metadata = _edit_description(job, description, mask)
    return _build(
        job,
        partitions_def=shared,
        deps=source_keys,
        description=description,
        metadata=metadata,
        group_name=group_name,
        automation_condition=automation_condition,
        tags=tags,
        owners=owners,
        pool=pool,
        code_version=code_version,
        max_partitions_per_run=max_partitions_per_run,
    )
