"""What else the current run holds: which image assets run upstream and downstream of this one.

A run may hold a generation asset and its edits (a job, a single-run backfill of several assets, a
CLI partition range). A partition that failed upstream in this run must fail its edit alone (reason
``source``), never edit an older stored image; and a step whose failures will be reported by an
image step downstream in the same run must not fail, or Dagster would skip that step and mark every
one of its partitions failed. Everything here reads the run's own event log through public APIs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

__all__ = ["RunScope"]


def _planned_assets(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    planned: set[dg.AssetKey] = set()
    for entry in instance.all_logs(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    ):
        event = entry.dagster_event
        if event is not None and event.asset_key is not None:
            planned.add(event.asset_key)
    return planned


def _materialized_in_run(
    instance: dg.DagsterInstance, run_id: str, asset_keys: set[dg.AssetKey]
) -> dict[dg.AssetKey, set[str]]:
    done: dict[dg.AssetKey, set[str]] = {key: set() for key in asset_keys}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.dagster_event
        if event is None or event.asset_key not in done:
            continue
        partition = event.partition
        if partition is not None:
            done[event.asset_key].add(partition)
    return done


@dataclass(frozen=True)
class RunScope:
    """This step's place in its run."""

    failed_upstream: Mapping[dg.AssetKey, frozenset[str]]
    """Per source asset of this step that ran earlier in this run: the partitions of this step's
    range it did not materialize."""
    downstream_in_run: tuple[dg.AssetKey, ...]
    """Image assets of this run that edit this step's asset (they report its failures)."""

    @classmethod
    def of(
        cls,
        context: dg.AssetExecutionContext,
        asset_key: dg.AssetKey,
        sources: Sequence[dg.AssetKey],
        keys: Sequence[str],
        children: Sequence[dg.AssetKey],
    ) -> RunScope:
        instance, run_id = context.instance, context.run.run_id
        planned = _planned_assets(instance, run_id)
        upstream = {source for source in sources if source in planned}
        done = _materialized_in_run(instance, run_id, upstream) if upstream else {}
        failed = {
            source: frozenset(key for key in keys if key not in done.get(source, set()))
            for source in upstream
        }
        downstream = tuple(child for child in children if child in planned and child != asset_key)
        return cls(failed_upstream=failed, downstream_in_run=downstream)
