"""The run body shared by generation and edit assets.

One run materializes many partitions (a single-run backfill), so the body is built for that case:

1. Plan every partition of the run before sending anything (``_plan``): one bad row fails the run
   with zero requests sent; a budget that the estimate already exceeds refuses the run the same way.
2. Send the uncached requests concurrently (``_execute``), within the budget; in batch mode, as
   Batch API jobs (``_batch_run``).
3. As each image is stored, yield its partition's ``AssetMaterialization`` at once (``_events``), so
   that a failure of other partitions, or a crash of the whole run, keeps every finished one.
4. At the end, let downstream image steps of this run start (``_dagster.downstream_signal``), and
   fail the step naming every failed partition and why, unless an image step downstream in this
   run will report them (``_scope``): a failure stays with its partition, it never skips the
   edits of the partitions that succeeded.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_gptimage._batch_run import BatchRun, refuse_unbatchable
from dagster_gptimage._checks import (
    CHECK_NAME,
    check_result,
    earlier_failures,
    reverify,
    verify_all,
)
from dagster_gptimage._dagster import (
    downstream_signal,
    job_asset_is_partitioned,
    job_assets_defs,
    latest_materialization_ids,
    latest_observed_versions,
    previous_check_metadata,
)
from dagster_gptimage._events import failure, materialization
from dagster_gptimage._execute import END, Budget, Done, Executor
from dagster_gptimage._job import ImageJob, image_children
from dagster_gptimage._loop import LoopThread, next_item
from dagster_gptimage._metadata import run_summary
from dagster_gptimage._plan import Failed, Planned, Planner
from dagster_gptimage._progress import Progress, client_rate_limits, since
from dagster_gptimage._scope import RunScope
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import short_repr
from dagster_gptimage.prompt_rows import observations
from dagster_gptimage.storage import ImageStore

__all__ = ["ImageJob", "run_image_asset"]


class _Tally:
    """What the run did, for its summary line and its failure."""

    def __init__(self) -> None:
        self.made = 0
        self.cached = 0
        self.requests = 0
        self.possibly_billed = 0
        self.latencies: list[float] = []
        self.failures: list[Failed] = []
        self.check_problems: dict[str, list[str]] = {}

    def fail(self, failed: Failed) -> None:
        self.failures.append(failed)
        self.requests += failed.attempts
        self.possibly_billed += failed.possibly_billed_attempts

    def done(self, done: Done) -> None:
        self.made += 1
        self.requests += done.attempts
        self.possibly_billed += done.record.possibly_billed_attempts
        self.latencies.append(done.latency_s)


class _Run:
    """One run of one image asset: plan, refuse or execute, and report."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        job: ImageJob,
        client: GPTImageClient,
        store: ImageStore,
        *,
        force: bool,
        check: bool,
        scope: RunScope,
    ) -> None:
        self.context = context
        self.job = job
        self.client = client
        self.scope = scope
        self.check = check
        self.store = store
        self.planner = Planner(
            job, client, store, force=force, check=check, failed_upstream=scope.failed_upstream
        )
        self.budget = Budget(job.max_cost_usd)
        self.executor = Executor(self.planner, self.budget)
        self.tally = _Tally()
        self.input_pointers: dict[dg.AssetKey, Any] = {}
        self.observed_rows: dict[str, tuple[int, str | None]] = {}
        self.prompts_key = (
            job.prompts_key
            if job.prompts_key is not None and job_asset_is_partitioned(context, job.prompts_key)
            else None
        )
        self.unversioned_prompts = job.prompts_key if self.prompts_key is None else None
        """Prompt rows not defined as an asset: Dagster shows an unversioned stub in their place."""
        self.progress: Progress | None = None
        self.images_per_minute: float | None = None
        self.rate_limits_at_start = client_rate_limits(client)

    @property
    def name(self) -> str:
        return self.job.asset_key.to_user_string()

    def _refuse_invalid(self, plans: Sequence[Planned | Failed], total: int) -> None:
        invalid = [p for p in plans if isinstance(p, Failed) and p.reason == "invalid"]
        if invalid:
            raise failure(
                self.job.asset_key,
                invalid,
                total=total,
                materialized=0,
                headline=(
                    f"{len(invalid)} of {total} partitions have invalid requests for provider "
                    f"{self.client.provider!r}; no request was sent"
                ),
            )

    def _refuse_budget(self, todo: Sequence[Planned]) -> float:
        estimate = sum(p.estimate_usd for p in todo)
        cap = self.job.max_cost_usd
        if cap is not None and estimate > cap + 1e-12:
            raise dg.Failure(
                description=(
                    f"{self.name}: refused: the estimated cost ${estimate:.4f} of {len(todo)} "
                    f"uncached partitions exceeds max_cost_usd=${cap:.4f}; no request was sent. "
                    "Raise max_cost_usd or materialize fewer partitions per run."
                ),
                metadata={
                    "estimated_cost_usd": dg.MetadataValue.float(estimate),
                    "max_cost_usd": dg.MetadataValue.float(cap),
                    "uncached_partitions": dg.MetadataValue.int(len(todo)),
                },
                allow_retries=False,
            )
        return estimate

    def _load_input_pointers(self, keys: Sequence[str]) -> None:
        """The latest event of each input partition: what this run consumed, for Dagster's
        staleness (one query per input asset, not per partition)."""
        instance = self.context.instance
        for source in self.job.sources:
            self.input_pointers[source] = latest_materialization_ids(instance, source, keys)
        if self.prompts_key is not None:
            self.observed_rows = latest_observed_versions(instance, self.prompts_key, keys)
            self.input_pointers[self.prompts_key] = {
                key: storage_id for key, (storage_id, _) in self.observed_rows.items()
            }

    def _row_observations(self, plans: Sequence[Planned]) -> Iterator[dg.AssetObservation]:
        """The run read the table: a row whose version Dagster has not seen yet is observed here,
        so the image made from it is fresh even where no sensor observes the table."""
        if self.prompts_key is None:
            return
        versions = {
            plan.key: plan.row_version
            for plan in plans
            if plan.row_version is not None
            and self.observed_rows.get(plan.key, (0, None))[1] != plan.row_version
        }
        yield from observations(self.prompts_key, versions)

    def _materialization(self, record: Any, planned: Planned, *, cached: bool, preview: Any) -> Any:
        return materialization(
            self.job,
            record,
            planned,
            cached=cached,
            preview=preview,
            code_version=self.job.code_version or self.context.run.run_id,
            input_pointers=self.input_pointers,
            prompts_key=self.prompts_key,
            stub_key=self.unversioned_prompts,
        )

    def events(self, keys: Sequence[str], loop: LoopThread) -> Iterator[Any]:
        if self.job.mode == "batch":
            refuse_unbatchable(self.client, self.name)
        plans = loop.run(self.planner.plan(keys))
        self._refuse_invalid(plans, len(keys))
        planned = [p for p in plans if isinstance(p, Planned)]
        for failed in plans:
            if isinstance(failed, Failed):
                self.tally.fail(failed)
        hits = [p for p in planned if p.cached is not None]
        todo = [p for p in planned if p.cached is None]
        estimate = self._refuse_budget(todo)
        self.context.log.info(
            f"{self.name}: {len(keys)} partitions: {len(hits)} cached, {len(todo)} to request "
            f"(estimated ${estimate:.4f}) from {self.client.provider}"
            + (" (emulator: images are not real)" if self.planner.emulated else "")
            + (f", {len(self.tally.failures)} failed before sending" if self.tally.failures else "")
        )
        self._load_input_pointers(keys)
        observed = list(self._row_observations(planned))
        if observed:
            yield from observed
            self._load_input_pointers(keys)
        yield from self._cached(hits)
        if todo:
            yield from self._executed(todo, loop)
        if self.check:
            yield evaluate_check(
                self.context,
                self.job.asset_key,
                self.store,
                self.tally.check_problems,
                loop,
                scope="this run's partitions",
            )
        yield from self._finish(len(keys))

    def _cached(self, hits: Sequence[Planned]) -> Iterator[Any]:
        for plan in hits:
            assert plan.cached is not None
            self.tally.cached += 1
            if self.check:
                self.tally.check_problems[plan.key] = plan.cached_problems
            yield self._materialization(plan.cached, plan, cached=True, preview=plan.cached_preview)

    def _start_progress(self, total: int, todo: Sequence[Planned]) -> Progress:
        self.progress = Progress(
            self.name,
            total=total,
            cached=self.tally.cached,
            failed_before=len(self.tally.failures),
            to_request=len(todo),
            rate_limits=self._rate_limits,
        )
        return self.progress

    def _rate_limits(self) -> Any:
        """This run's share of the rate-limit counters (since the run started)."""
        return since(self.rate_limits_at_start, client_rate_limits(self.client))

    def _log_progress(self) -> None:
        """Called whenever the step thread wakes: logs a progress line when one is due."""
        progress = self.progress
        if progress is None or not progress.due():
            return
        self.context.log.info(
            progress.line(
                made=self.tally.made,
                failed=len(self.tally.failures),
                spent_usd=self.budget.spent,
                requests=self.tally.requests,
            )
        )

    def _executed(self, todo: Sequence[Planned], loop: LoopThread) -> Iterator[Any]:
        out: queue.Queue[Any] = queue.Queue()
        progress = self._start_progress(len(self.context.partition_keys), todo)
        pipeline = loop.submit(
            self.batch_run().run(todo, out)
            if self.job.mode == "batch"
            else self.executor.execute_all(todo, out)
        )
        while True:
            self._log_progress()
            outcome = next_item(out, self._log_progress)
            if outcome is END:
                pipeline.result()
                self.images_per_minute = progress.images_per_minute(self.tally.made)
                return
            if isinstance(outcome, str):
                self.context.log.info(outcome)
                continue
            if isinstance(outcome, Failed):
                self.tally.fail(outcome)
                self.context.log.warning(
                    f"partition {outcome.key} failed ({outcome.reason}): {outcome.message}"
                )
                continue
            self.tally.done(outcome)
            if self.check:
                self.tally.check_problems[outcome.planned.key] = outcome.problems
            yield self._materialization(
                outcome.record, outcome.planned, cached=False, preview=outcome.preview
            )

    def batch_run(self) -> BatchRun:
        return BatchRun(
            self.planner,
            self.budget,
            keys=self.context.partition_keys,
            run_id=self.context.run.run_id,
        )

    def _finish(self, total: int) -> Iterator[Any]:
        tally = self.tally
        failed_cost = sum(f.cost_usd for f in tally.failures)
        self.context.log.info(
            run_summary(
                self.job.asset_key,
                made=tally.made,
                cached=tally.cached,
                failed=len(tally.failures),
                cost_usd=self.budget.spent,
                latencies=tally.latencies,
                requests=tally.requests,
                possibly_billed=tally.possibly_billed,
                images_per_minute=self.images_per_minute,
                rate_limits=self._rate_limits(),
            )
            + (f" (of which ${failed_cost:.4f} on failed partitions)" if failed_cost else "")
        )
        yield downstream_signal(self.context, self.job.asset_key)
        if not tally.failures:
            return
        error = failure(
            self.job.asset_key,
            tally.failures,
            total=total,
            materialized=tally.made + tally.cached,
            requests=tally.requests,
        )
        if self.scope.downstream_in_run:
            names = ", ".join(key.to_user_string() for key in self.scope.downstream_in_run)
            self.context.log.error(
                f"{error.description}\nThe run continues with {names}: their partitions of failed "
                "sources fail there (reason 'source'), and the run ends failed."
            )
            return
        raise error


def run_image_asset(
    context: dg.AssetExecutionContext,
    job: ImageJob,
    *,
    force: bool,
    check_partitions: Sequence[str] | None = None,
) -> Iterator[Any]:
    """The body of an image asset's step: materialize the run's partitions and/or run the check."""
    store: ImageStore = getattr(context.resources, job.store_key)
    check_selected = (
        dg.AssetCheckKey(job.asset_key, CHECK_NAME) in context.selected_asset_check_keys
    )
    with LoopThread() as loop:
        if job.asset_key not in context.selected_asset_keys:
            if check_selected:
                yield _check_stored(context, job, store, loop, check_partitions)
            return
        keys = list(context.partition_keys)
        scope = RunScope.of(
            context,
            job.asset_key,
            job.sources,
            keys,
            image_children(job_assets_defs(context), job.asset_key),
        )
        client: GPTImageClient = getattr(context.resources, job.resource_key).get_client()
        run = _Run(context, job, client, store, force=force, check=check_selected, scope=scope)
        try:
            yield from run.events(keys, loop)
        finally:
            loop.cancel_all()
            loop.run(client.aclose())


def evaluate_check(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    store: ImageStore,
    problems: Mapping[str, list[str]],
    loop: LoopThread,
    *,
    scope: str,
) -> dg.AssetCheckResult:
    """The check's result over ``problems`` (the partitions verified now), with every partition the
    previous evaluation found invalid re-verified: a bad image stays reported, whatever else is
    materialized meanwhile, until it is fixed or regenerated."""
    previous = previous_check_metadata(context.instance, dg.AssetCheckKey(asset_key, CHECK_NAME))
    earlier = [key for key in earlier_failures(previous) if key not in problems]
    found = dict(problems)
    if earlier:
        found.update(loop.run(reverify(store, asset_key, earlier)))
        scope = f"{scope}, and {len(earlier)} partitions found invalid before"
    return check_result(asset_key, found, scope=scope)


def _check_stored(
    context: dg.AssetExecutionContext,
    job: ImageJob,
    store: ImageStore,
    loop: LoopThread,
    check_partitions: Sequence[str] | None,
) -> dg.AssetCheckResult:
    """The check run alone (Dagster runs the unpartitioned check without partitions): verify
    ``check_partitions`` (run config), or every stored image, without generating anything, and
    flag every partition Dagster records as materialized that the store lacks."""
    keys = list(check_partitions) if check_partitions is not None else None
    if keys is None:
        records = store.list_records(job.asset_key)
        materialized = context.instance.get_materialized_partitions(job.asset_key)
        scope = "every stored image"
    else:
        found = (store.read_record(job.asset_key, key) for key in keys)
        records = [record for record in found if record is not None]
        materialized = context.instance.get_materialized_partitions(job.asset_key) & set(keys)
        scope = f"{len(keys)} partitions given in run config"
    stored = {record.partition_key for record in records}
    problems: dict[str, list[str]] = {
        key: ["materialized in Dagster but no image in the store"]
        for key in sorted(set(materialized) - stored)
    }
    problems.update(loop.run(verify_all(store, records)))
    invalid = sum(1 for found in problems.values() if found)
    context.log.info(
        f"{job.asset_key.to_user_string()}: verified {len(problems)} images ({invalid} invalid) "
        f"in {short_repr(store.resolved_base_url, 200)}"
    )
    return evaluate_check(context, job.asset_key, store, problems, loop, scope=scope)
