"""What a backfill of image assets would cost, before anything is sent.

A run checks its own estimate against ``max_cost_usd`` before sending; this module answers the
question earlier, for any set of assets and partitions, from the definitions alone (no store, no
Dagster instance): the prompt tables are re-read, every partition priced with the same per-model
price table the runs use. Cached images cost nothing at run time, so this is an upper bound of what
a run would pay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from dagster_gptimage._job import ImageJob, image_job
from dagster_gptimage.models import GenerateRequest, Usage
from dagster_gptimage.pricing import (
    PriceTable,
    cost_of_usage,
    estimate_input_tokens,
    estimate_output_tokens,
    output_dimensions,
)

__all__ = ["CostEstimate", "estimate_asset_cost"]


@dataclass(frozen=True)
class CostEstimate:
    """An estimate per asset: images to make and their cost in USD (before any cache hit)."""

    images: int = 0
    cost_usd: float = 0.0
    by_asset: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __add__(self, other: CostEstimate) -> CostEstimate:
        return CostEstimate(
            self.images + other.images,
            self.cost_usd + other.cost_usd,
            {**self.by_asset, **other.by_asset},
        )


def _rows(job: ImageJob, keys: Sequence[str] | None) -> list[tuple[str, dict[str, object]]]:
    """(prompt, request parameters) per partition to estimate."""
    if job.prompts is None:
        assert job.prompt is not None
        return [(job.prompt, dict(job.defaults)) for _ in keys or ()]
    table = job.prompts.reload()
    wanted = set(keys) if keys is not None else None
    return [
        (row.prompt, {**job.defaults, **row.params})
        for row in table
        if wanted is None or row.key in wanted
    ]


def _one(
    job: ImageJob, prompt: str, params: dict[str, object], prices: PriceTable, model: str
) -> float:
    request = GenerateRequest.model_validate({"model": model, **params, "prompt": prompt})
    width, height = output_dimensions(request)
    # An edit's inputs are its sources' images: estimated at the edit's own output size.
    inputs = [(width, height)] * len(job.sources)
    text, image = estimate_input_tokens(prompt, inputs)
    usage = Usage(
        input_text_tokens=text,
        input_image_tokens=image,
        output_image_tokens=estimate_output_tokens(request.model, width, height, request.quality),
    )
    return cost_of_usage(usage, prices.for_model(request.model), batch=False)


def estimate_asset_cost(
    assets: Iterable[dg.AssetsDefinition],
    *,
    partition_keys: Sequence[str] | None = None,
    model: str = "gpt-image-2",
    prices: PriceTable | None = None,
) -> CostEstimate:
    """The cost of materializing ``partition_keys`` (default: every row of a prompt table; edits
    with a fixed prompt need ``partition_keys``) of each image asset in ``assets``, none cached.

    ``model`` stands for the resource's model where an asset sets none. Other assets are ignored.
    """
    table = prices if prices is not None else PriceTable()
    total = CostEstimate()
    for asset in assets:
        job = image_job(asset)
        if job is None:
            continue
        keys = partition_keys
        if keys is None and job.prompts is None and asset.partitions_def is not None:
            keys = _static_keys(asset.partitions_def)
        rows = _rows(job, keys)
        cost = sum(_one(job, prompt, params, table, model) for prompt, params in rows)
        name = job.asset_key.to_user_string()
        total = total + CostEstimate(len(rows), cost, {name: (len(rows), cost)})
    return total


def _static_keys(partitions_def: dg.PartitionsDefinition) -> list[str] | None:
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return None
    return list(partitions_def.get_partition_keys())
