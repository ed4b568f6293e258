"""What a run tells Dagster: one materialization per stored partition, and the run's failure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_gptimage._dagster import UNOBSERVED_DATA_VERSION
from dagster_gptimage._job import ImageJob
from dagster_gptimage._metadata import InputVersion, data_version_tags, partition_metadata
from dagster_gptimage._plan import Failed, Planned
from dagster_gptimage.errors import FINAL_REASONS
from dagster_gptimage.storage import ImageRecord

__all__ = ["failure", "materialization"]

_LISTED_FAILURES = 100


def materialization(
    job: ImageJob,
    record: ImageRecord,
    planned: Planned,
    *,
    cached: bool,
    preview: Any,
    code_version: str,
    input_pointers: Mapping[dg.AssetKey, Mapping[str, int]],
    prompts_key: dg.AssetKey | None,
    stub_key: dg.AssetKey | None = None,
) -> dg.AssetMaterialization:
    """A partition's materialization: the image's sha256 as data version, with what it was made of
    (source images' versions for edits; for generations, the prompt row's version, recorded against
    ``prompts_key`` when the prompt rows are defined as an asset; without that asset, ``stub_key``
    is recorded with the version Dagster assumes for the stub it shows in its place, so the
    image is not reported stale for a dependency nobody can observe)."""
    inputs = [
        InputVersion(
            asset_key=source_key,
            data_version=source.sha256,
            storage_id=input_pointers.get(source_key, {}).get(planned.key),
        )
        for source_key, source in zip(job.sources, planned.sources, strict=True)
    ]
    if prompts_key is not None and planned.row_version is not None:
        inputs.append(
            InputVersion(
                asset_key=prompts_key,
                data_version=planned.row_version,
                storage_id=input_pointers.get(prompts_key, {}).get(planned.key),
            )
        )
    if stub_key is not None:
        inputs.append(
            InputVersion(asset_key=stub_key, data_version=UNOBSERVED_DATA_VERSION, storage_id=None)
        )
    metadata = partition_metadata(record, cached=cached, preview=preview, extra=planned.extra)
    if planned.row_version is not None:
        metadata["prompt_row_version"] = dg.MetadataValue.text(planned.row_version)
    return dg.AssetMaterialization(
        asset_key=job.asset_key,
        partition=planned.key,
        metadata=metadata,
        tags=data_version_tags(record.sha256, code_version=code_version, inputs=inputs),
    )


def failure(
    asset_key: dg.AssetKey,
    failures: Sequence[Failed],
    *,
    total: int,
    materialized: int,
    requests: int = 0,
    headline: str | None = None,
) -> dg.Failure:
    """A Failure naming every failed partition and why, with what the failures may have cost."""
    ordered = sorted(failures, key=lambda f: (f.key, str(f.reason)))
    billed = sum(f.possibly_billed_attempts for f in ordered)
    cost = sum(f.cost_usd for f in ordered)
    by_reason: dict[str, int] = {}
    for failed in ordered:
        by_reason[failed.reason] = by_reason.get(failed.reason, 0) + 1
    headline = headline or (
        f"{len(ordered)} of {total} partitions failed "
        f"({', '.join(f'{n} {reason}' for reason, n in sorted(by_reason.items()))}); "
        f"{materialized} materialized"
    )
    lines = [f"{asset_key.to_user_string()}: {headline}."]
    lines += [f"  - {f.key}: {f.reason}: {f.message}" for f in ordered[:_LISTED_FAILURES]]
    if len(ordered) > _LISTED_FAILURES:
        lines.append(f"  … and {len(ordered) - _LISTED_FAILURES} more (see metadata)")
    lines.append(
        f"Possibly billed attempts among failed partitions: {billed} (estimated ${cost:.4f})."
    )
    return dg.Failure(
        description="\n".join(lines),
        metadata={
            "failed_partitions": dg.MetadataValue.json(
                {
                    f.key: {
                        "reason": f.reason,
                        "message": f.message,
                        "attempts": f.attempts,
                        "possibly_billed_attempts": f.possibly_billed_attempts,
                        "cost_usd": f.cost_usd,
                    }
                    for f in ordered
                }
            ),
            "failed": dg.MetadataValue.int(len(ordered)),
            "materialized": dg.MetadataValue.int(materialized),
            "requests_sent": dg.MetadataValue.int(requests),
            "possibly_billed_attempts": dg.MetadataValue.int(billed),
            "failed_cost_usd": dg.MetadataValue.float(cost),
        },
        allow_retries=not all(f.reason in FINAL_REASONS for f in ordered),
    )
