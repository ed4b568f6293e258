"""``ImageJob``: what a run needs to know about one image asset, fixed at definition time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

from dagster_gptimage.prompts import PromptTable

__all__ = ["ImageJob", "Kind", "Mode", "attach_job", "image_children", "image_job"]

Kind = Literal["generate", "edit"]
Mode = Literal["sync", "batch"]
"""How a run sends its requests: one by one as they are planned (sync), or as one Batch API job
at half price, finished within 24 hours (batch; see ``_batch_run``)."""


@dataclass(frozen=True)
class ImageJob:
    """Everything a run needs to know about one image asset, fixed at definition time."""

    asset_key: dg.AssetKey
    kind: Kind
    prompts: PromptTable | None
    prompt: str | None
    defaults: Mapping[str, Any]
    sources: tuple[dg.AssetKey, ...] = ()
    mask: str | None = None
    mask_column: str | None = None
    max_cost_usd: float | None = None
    resource_key: str = "gptimage"
    store_key: str = "image_store"
    dynamic: bool = False
    code_version: str | None = None
    prompts_key: dg.AssetKey | None = None
    """The prompt-rows asset upstream of a generation asset (its data versions are the rows')."""
    mode: Mode = "sync"


_JOB_ATTRIBUTE = "gptimage_job"


def attach_job(body: object, job: ImageJob) -> None:
    """Let ``job`` travel with the op made from ``body``: it survives ``dg.map_asset_specs`` and any
    other rewrite that keeps the op, with no registry in a module."""
    setattr(body, _JOB_ATTRIBUTE, job)


def image_job(asset: dg.AssetsDefinition) -> ImageJob | None:
    """The definition-time description of an image asset made by this package, or None."""
    from dagster_gptimage._dagster import op_function

    job = getattr(op_function(asset), _JOB_ATTRIBUTE, None)
    return job if isinstance(job, ImageJob) else None


def image_children(
    assets_defs: Mapping[dg.AssetKey, dg.AssetsDefinition] | None, asset_key: dg.AssetKey
) -> list[dg.AssetKey]:
    """Image assets (made by this package) that edit ``asset_key``."""
    children: list[dg.AssetKey] = []
    for key, assets_def in (assets_defs or {}).items():
        job = image_job(assets_def)
        if job is not None and asset_key in job.sources:
            children.append(key)
    return children
