"""The run body shared by generation and edit assets.

One run materializes many partitions (a single-run backfill), so the body is built for that case:

1. Plan every partition of the run before sending anything: build and validate each request with the
   run's client (provider-aware), fingerprint it, look for a cached image. One bad row fails the run
   with zero requests sent; a budget that the estimate already exceeds refuses the run the same way.
2. Send the uncached requests concurrently (the client bounds how many are in flight), on an event
   loop of their own thread so that Dagster's event-log writes in the step's thread never pause
   them. A new request starts only if spent + in-flight estimates + its own estimate stay within
   the budget.
3. As each image is stored, yield its partition's ``AssetMaterialization`` at once, so that a failure
   of other partitions, or a crash of the whole run, keeps every finished one.
4. At the end, fail the step naming every failed partition and why; or, when all succeeded, tell
   Dagster that downstream steps of this run may start (see ``_dagster.downstream_signal``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dagster as dg

from dagster_gptimage._checks import (
    CHECK_NAME,
    DecodedImage,
    check_result,
    verify_all,
    verify_bytes,
    verify_image,
)
from dagster_gptimage._dagster import downstream_signal, latest_materialization_ids
from dagster_gptimage._loop import LoopThread, next_item
from dagster_gptimage._metadata import (
    InputVersion,
    data_version_tags,
    partition_metadata,
    preview_markdown,
    run_summary,
)
from dagster_gptimage._urls import redact_url
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import (
    AuthenticationError,
    GPTImageError,
    GPTImageTimeoutError,
    InvalidRequestError,
    ModerationBlockedError,
    QuotaExceededError,
    RateLimitError,
    short_repr,
)
from dagster_gptimage.fingerprint import request_fingerprint
from dagster_gptimage.models import ImageRequest
from dagster_gptimage.prompts import PromptRow, PromptTable
from dagster_gptimage.storage import ImageRecord, ImageStore, SourceImage

__all__ = ["ImageJob", "run_image_asset"]

Kind = Literal["generate", "edit"]
_END = object()
_PLAN_THREADS = 8
_LISTED_FAILURES = 100
_FINAL_REASONS = frozenset({"moderation", "invalid", "budget", "source"})


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


@dataclass
class _Planned:
    """One partition after planning: what to send (or what is already stored)."""

    key: str
    prompt: str
    params: dict[str, Any]
    fingerprint: str
    estimate_usd: float
    extra: dict[str, Any]
    request: ImageRequest | None = None
    sources: list[SourceImage] = field(default_factory=list)
    mask: SourceImage | None = None
    mask_location: str | None = None
    cached: ImageRecord | None = None
    cached_preview: dg.MetadataValue | None = None
    cached_problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Failed:
    key: str
    reason: str
    message: str
    attempts: int = 0
    possibly_billed_attempts: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class _Done:
    planned: _Planned
    record: ImageRecord
    preview: dg.MetadataValue | None
    problems: list[str]
    latency_s: float


class _SourceProblem(Exception):
    """A partition's source image is missing, unreadable or changed: that partition fails alone."""


class _Budget:
    """Spend tracking for ``max_cost_usd``: actual spend plus estimates of requests in flight."""

    def __init__(self, cap: float | None) -> None:
        self.cap = cap
        self.spent = 0.0
        self.in_flight = 0.0

    def reserve(self, estimate: float) -> str | None:
        """Reserve ``estimate``; the refusal reason when it would pass the cap."""
        if self.cap is not None and self.spent + self.in_flight + estimate > self.cap + 1e-12:
            return (
                f"not started: spent ${self.spent:.4f} + in flight ${self.in_flight:.4f} + this "
                f"request's estimate ${estimate:.4f} would pass max_cost_usd=${self.cap:.4f}"
            )
        self.in_flight += estimate
        return None

    def settle(self, estimate: float, cost: float) -> None:
        self.in_flight = max(self.in_flight - estimate, 0.0)
        self.spent += cost


def _reason(error: BaseException) -> str:
    if isinstance(error, ModerationBlockedError):
        return "moderation"
    if isinstance(error, InvalidRequestError):
        return "invalid"
    if isinstance(error, AuthenticationError):
        return "authentication"
    if isinstance(error, QuotaExceededError):
        return "quota"
    if isinstance(error, RateLimitError):
        return "rate limit"
    if isinstance(error, GPTImageTimeoutError):
        return "timeout"
    return "provider error"


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stored_path(store: ImageStore, record: ImageRecord) -> str:
    return store.image_path(record.asset_key, record.partition_key, record.format)


def _read_cached(
    store: ImageStore, asset_key: dg.AssetKey, key: str, fingerprint: str
) -> tuple[ImageRecord, bytes] | None:
    """The cache hit and the bytes verified for it (for the preview and the check)."""
    hit = store.read_verified(asset_key, key, fingerprint)
    return None if hit is None else (hit.record, hit.data)


def _safe_preview(data: bytes) -> dg.MetadataValue | None:
    try:
        return preview_markdown(data)
    except Exception:
        return None


def _resolve_location(location: str, table: PromptTable | None) -> str:
    """A per-row mask path relative to a local prompt table resolves next to that table."""
    if "://" in location or "::" in location or os.path.isabs(location):
        return location
    source = table.source if table is not None else None
    if source and "://" not in source and os.path.isabs(source):
        return os.path.join(os.path.dirname(source), location)
    return os.path.abspath(location)


class _Run:
    """State of one run of one image asset."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        job: ImageJob,
        client: GPTImageClient,
        store: ImageStore,
        *,
        force: bool,
        check: bool,
    ) -> None:
        self.context = context
        self.job = job
        self.client = client
        self.store = store
        self.force = force
        self.check = check
        self.emulated = client.provider == "emulator"
        self.budget = _Budget(job.max_cost_usd)
        self.slots = asyncio.Semaphore(client.max_concurrency)
        self.stop_reason: tuple[str, str] | None = None
        self.failures: list[_Failed] = []
        self.made = 0
        self.cached = 0
        self.latencies: list[float] = []
        self.check_problems: dict[str, list[str]] = {}
        self.table = job.prompts
        self.fixed_mask: bytes | None = None
        self.input_pointers: dict[dg.AssetKey, Mapping[str, int]] = {}

    # --- planning ---------------------------------------------------------------------------

    def _rows(self, keys: Sequence[str]) -> dict[str, PromptRow | None]:
        table = self.table
        if table is None:
            return dict.fromkeys(keys)
        if self.job.dynamic and any(key not in table for key in keys):
            table = self.table = table.reload()
        return {key: table.row(key) if key in table else None for key in keys}

    def _read_source(self, source: dg.AssetKey, key: str) -> tuple[SourceImage, bytes]:
        record = self.store.read_record(source, key)
        if record is None:
            raise _SourceProblem(
                f"source {source.to_user_string()} has no stored image for partition {key!r}: "
                "materialize it first"
            )
        path = _stored_path(self.store, record)
        try:
            data = self.store.read_bytes(path)
        except (FileNotFoundError, OSError) as error:
            raise _SourceProblem(
                f"source image {redact_url(path)} could not be read ({type(error).__name__})"
            ) from error
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise _SourceProblem(
                f"source image {redact_url(path)} does not match its sidecar's sha256: "
                "re-materialize the source"
            )
        source_image = SourceImage(
            asset_key=list(source.path), partition_key=key, path=path, sha256=record.sha256
        )
        return source_image, data

    def _mask_location(self, row: PromptRow | None) -> str | None:
        if self.job.mask is not None:
            return self.job.mask
        if self.job.mask_column is None:
            return None
        value = (row.extra if row is not None else {}).get(self.job.mask_column)
        if value is None or value == "":
            return None
        return _resolve_location(str(value), self.table)

    def _read_mask(self, location: str) -> bytes:
        if location == self.job.mask and self.fixed_mask is not None:
            return self.fixed_mask
        try:
            data = self.store.read_bytes(location)
        except FileNotFoundError as error:
            column = f" (column {self.job.mask_column!r})" if self.job.mask_column else ""
            raise InvalidRequestError(
                f"mask file {redact_url(location)}{column} does not exist",
                field="mask",
                value=location,
                accepted="an existing PNG file path or fsspec URL",
            ) from error
        if location == self.job.mask:
            self.fixed_mask = data
        return data

    def _build(
        self, key: str, row: PromptRow | None
    ) -> tuple[ImageRequest, list[SourceImage], SourceImage | None, dict[str, Any], str]:
        prompt = row.prompt if row is not None else self.job.prompt
        if prompt is None:
            raise InvalidRequestError(
                f"no row with key {key!r} in prompt table {self.table.source if self.table else ''}",
                field="key",
                value=key,
                accepted="a key present in the prompt table",
            )
        params = {**self.job.defaults, **(row.params if row is not None else {})}
        if params.get("n", 1) != 1:
            raise InvalidRequestError(
                f"n={params['n']!r}: an image asset stores one image per partition",
                field="n",
                value=params["n"],
                accepted="1",
            )
        if self.job.kind == "generate":
            return self.client.build_generate(prompt, **params), [], None, params, prompt
        sources: list[SourceImage] = []
        datas: list[bytes] = []
        for source in self.job.sources:
            source_image, data = self._read_source(source, key)
            sources.append(source_image)
            datas.append(data)
        location = self._mask_location(row)
        mask_data = self._read_mask(location) if location is not None else None
        request = self.client.build_edit(prompt, datas, mask=mask_data, **params)
        mask = None
        if location is not None and mask_data is not None:
            mask = SourceImage(
                path=redact_url(location), sha256=hashlib.sha256(mask_data).hexdigest()
            )
        return request, sources, mask, params, prompt

    def _plan_one(self, key: str, row: PromptRow | None) -> _Planned | _Failed:
        try:
            request, sources, mask, params, prompt = self._build(key, row)
        except InvalidRequestError as error:
            return _Failed(key, "invalid", _short(error))
        except _SourceProblem as error:
            return _Failed(key, "source", str(error))
        planned = _Planned(
            key=key,
            prompt=prompt,
            params=params,
            fingerprint=request_fingerprint(request, emulated=self.emulated),
            estimate_usd=self.client.estimate_cost(request),
            extra=dict(row.extra) if row is not None else {},
            request=request if self.job.kind == "generate" else None,
            sources=sources,
            mask=mask,
            mask_location=self._mask_location(row) if self.job.kind == "edit" else None,
        )
        if not self.force:
            hit = _read_cached(self.store, self.job.asset_key, key, planned.fingerprint)
            if hit is not None:
                record, data = hit
                planned.cached = record
                planned.cached_preview = _safe_preview(data)
                if self.check:
                    planned.cached_problems = verify_bytes(record, data)
        return planned

    async def _plan(self, keys: Sequence[str]) -> list[_Planned | _Failed]:
        rows = self._rows(keys)
        limit = asyncio.Semaphore(_PLAN_THREADS)

        async def one(key: str) -> _Planned | _Failed:
            async with limit:
                return await asyncio.to_thread(self._plan_one, key, rows[key])

        return list(await asyncio.gather(*(one(key) for key in keys)))

    # --- executing ----------------------------------------------------------------------------

    def _rebuild_edit(self, planned: _Planned) -> ImageRequest:
        """Edits re-read their inputs when sent, so a big backfill never holds every input image in
        memory; an input that changed since planning fails the partition rather than paying for an
        image of the wrong inputs."""
        datas = []
        for source in planned.sources:
            data = self.store.read_bytes(source.path)
            if hashlib.sha256(data).hexdigest() != source.sha256:
                raise _SourceProblem(
                    f"source image {redact_url(source.path)} changed during the run: re-run"
                )
            datas.append(data)
        mask = None
        if planned.mask_location is not None:
            mask = self._read_mask(planned.mask_location)
            if planned.mask is not None and hashlib.sha256(mask).hexdigest() != planned.mask.sha256:
                raise _SourceProblem(
                    f"mask {redact_url(planned.mask_location)} changed during the run: re-run"
                )
        return self.client.build_edit(planned.prompt, datas, mask=mask, **planned.params)

    async def _execute(self, planned: _Planned) -> _Done | _Failed:
        async with self.slots:
            if self.stop_reason is not None:
                reason, message = self.stop_reason
                return _Failed(planned.key, reason, f"not started: {message}")
            refusal = self.budget.reserve(planned.estimate_usd)
            if refusal is not None:
                return _Failed(planned.key, "budget", refusal)
            try:
                request = planned.request
                if request is None:
                    request = await asyncio.to_thread(self._rebuild_edit, planned)
                result = await self.client.execute(request)
            except _SourceProblem as error:
                self.budget.settle(planned.estimate_usd, 0.0)
                return _Failed(planned.key, "source", str(error))
            except GPTImageError as error:
                self.budget.settle(planned.estimate_usd, error.cost_usd)
                reason = _reason(error)
                if isinstance(error, (AuthenticationError, QuotaExceededError)):
                    self.stop_reason = (reason, f"an earlier request failed with {_short(error)}")
                return _Failed(
                    planned.key,
                    reason,
                    _short(error),
                    attempts=error.attempts,
                    possibly_billed_attempts=error.possibly_billed_attempts,
                    cost_usd=error.cost_usd,
                )
            self.budget.settle(planned.estimate_usd, result.cost_usd)
        image = result.images[0]
        record = ImageRecord(
            fingerprint=planned.fingerprint,
            prompt=planned.prompt,
            params=request.params().model_dump(mode="json"),
            model=result.model,
            provider=result.provider,
            usage=result.usage.model_dump(mode="json"),
            cost_usd=result.cost_usd,
            latency_s=result.latency_s,
            attempts=result.attempts,
            possibly_billed_attempts=result.possibly_billed_attempts,
            request_id=result.request_id,
            revised_prompt=image.revised_prompt,
            width=image.width,
            height=image.height,
            extra=planned.extra,
            sources=planned.sources,
            mask=planned.mask,
        )
        try:
            written = await self.store.awrite_image(
                self.job.asset_key, planned.key, image.data, image.format, record
            )
        except Exception as error:
            return _Failed(
                planned.key,
                "storage",
                f"the image was generated (and billed) but could not be stored: "
                f"{type(error).__name__}: {_short(error)}",
                attempts=result.attempts,
                possibly_billed_attempts=result.possibly_billed_attempts,
                cost_usd=result.cost_usd,
            )
        preview = await asyncio.to_thread(_safe_preview, image.data)
        problems: list[str] = []
        if self.check:
            decoded = DecodedImage(image.sha256, image.format, image.width, image.height)
            problems = await asyncio.to_thread(verify_image, self.store, written, decoded=decoded)
        return _Done(planned, written, preview, problems, result.latency_s)

    # --- events -------------------------------------------------------------------------------

    def _load_input_pointers(self, keys: Sequence[str]) -> None:
        """The latest materialization of each source partition: what an edit consumed, for
        Dagster's staleness (one query per source, not per partition)."""
        for source in self.job.sources:
            self.input_pointers[source] = latest_materialization_ids(
                self.context.instance, source, keys
            )

    def _materialization(
        self, record: ImageRecord, planned: _Planned, *, cached: bool, preview: Any
    ) -> dg.AssetMaterialization:
        inputs = [
            InputVersion(
                asset_key=source_key,
                data_version=source.sha256,
                storage_id=self.input_pointers.get(source_key, {}).get(planned.key),
            )
            for source_key, source in zip(self.job.sources, planned.sources, strict=True)
        ]
        tags = data_version_tags(
            record.sha256,
            code_version=self.job.code_version or self.context.run.run_id,
            inputs=inputs,
        )
        return dg.AssetMaterialization(
            asset_key=self.job.asset_key,
            partition=planned.key,
            metadata=partition_metadata(
                record, cached=cached, preview=preview, extra=planned.extra
            ),
            tags=tags,
        )

    async def _execute_all(self, todo: Sequence[_Planned], out: queue.Queue[Any]) -> None:
        """Run every request concurrently, handing each outcome to the step's thread at once."""
        tasks = [asyncio.create_task(self._execute(plan)) for plan in todo]
        try:
            for next_done in asyncio.as_completed(tasks):
                out.put(await next_done)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            out.put(_END)

    def events(self, keys: Sequence[str], loop: LoopThread) -> Iterator[Any]:
        log = self.context.log
        plans = loop.run(self._plan(keys))
        invalid = [p for p in plans if isinstance(p, _Failed) and p.reason == "invalid"]
        if invalid:
            raise _failure(
                self.job.asset_key,
                invalid,
                total=len(keys),
                materialized=0,
                headline=(
                    f"{len(invalid)} of {len(keys)} partitions have invalid requests for provider "
                    f"{self.client.provider!r}; no request was sent"
                ),
            )
        planned = [p for p in plans if isinstance(p, _Planned)]
        self.failures.extend(p for p in plans if isinstance(p, _Failed))
        hits = [p for p in planned if p.cached is not None]
        todo = [p for p in planned if p.cached is None]
        estimate = sum(p.estimate_usd for p in todo)
        cap = self.job.max_cost_usd
        if cap is not None and estimate > cap + 1e-12:
            raise dg.Failure(
                description=(
                    f"{self.job.asset_key.to_user_string()}: refused: the estimated cost "
                    f"${estimate:.4f} of {len(todo)} uncached partitions exceeds "
                    f"max_cost_usd=${cap:.4f}; no request was sent. Raise max_cost_usd or "
                    "materialize fewer partitions per run."
                ),
                metadata={
                    "estimated_cost_usd": dg.MetadataValue.float(estimate),
                    "max_cost_usd": dg.MetadataValue.float(cap),
                    "uncached_partitions": dg.MetadataValue.int(len(todo)),
                },
                allow_retries=False,
            )
        log.info(
            f"{self.job.asset_key.to_user_string()}: {len(keys)} partitions: {len(hits)} cached, "
            f"{len(todo)} to request (estimated ${estimate:.4f}) from {self.client.provider}"
            + (" (emulator: images are not real)" if self.emulated else "")
        )
        if self.job.sources:
            self._load_input_pointers(keys)

        out: queue.Queue[Any] = queue.Queue()
        pipeline = loop.submit(self._execute_all(todo, out)) if todo else None
        for plan in hits:
            assert plan.cached is not None
            self.cached += 1
            if self.check:
                self.check_problems[plan.key] = plan.cached_problems
            yield self._materialization(plan.cached, plan, cached=True, preview=plan.cached_preview)
        while pipeline is not None:
            outcome = next_item(out)
            if outcome is _END:
                pipeline.result()
                break
            if isinstance(outcome, _Failed):
                self.failures.append(outcome)
                log.warning(f"partition {outcome.key} failed ({outcome.reason}): {outcome.message}")
                continue
            self.made += 1
            self.latencies.append(outcome.latency_s)
            if self.check:
                self.check_problems[outcome.planned.key] = outcome.problems
            yield self._materialization(
                outcome.record, outcome.planned, cached=False, preview=outcome.preview
            )

        if self.check and self.check_problems:
            yield check_result(
                self.job.asset_key, self.check_problems, scope="this run's partitions"
            )
        failed_cost = sum(f.cost_usd for f in self.failures)
        log.info(
            run_summary(
                self.job.asset_key,
                made=self.made,
                cached=self.cached,
                failed=len(self.failures),
                cost_usd=self.budget.spent,
                latencies=self.latencies,
            )
            + (f" (of which ${failed_cost:.4f} on failed partitions)" if failed_cost else "")
        )
        if self.failures:
            raise _failure(
                self.job.asset_key,
                self.failures,
                total=len(keys),
                materialized=self.made + self.cached,
            )
        yield downstream_signal(self.context, self.job.asset_key)


def _failure(
    asset_key: dg.AssetKey,
    failures: Sequence[_Failed],
    *,
    total: int,
    materialized: int,
    headline: str | None = None,
) -> dg.Failure:
    """A Failure naming every failed partition and why, with what the failures may have cost."""
    ordered = sorted(failures, key=lambda f: f.key)
    billed = sum(f.possibly_billed_attempts for f in ordered)
    cost = sum(f.cost_usd for f in ordered)
    by_reason: dict[str, int] = {}
    for failure in ordered:
        by_reason[failure.reason] = by_reason.get(failure.reason, 0) + 1
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
            "possibly_billed_attempts": dg.MetadataValue.int(billed),
            "failed_cost_usd": dg.MetadataValue.float(cost),
        },
        allow_retries=not all(f.reason in _FINAL_REASONS for f in ordered),
    )


def run_image_asset(
    context: dg.AssetExecutionContext, job: ImageJob, *, force: bool
) -> Iterator[Any]:
    """The body of an image asset's step: materialize the run's partitions and/or run the check."""
    store: ImageStore = getattr(context.resources, job.store_key)
    check_selected = (
        dg.AssetCheckKey(job.asset_key, CHECK_NAME) in context.selected_asset_check_keys
    )
    with LoopThread() as loop:
        if job.asset_key not in context.selected_asset_keys:
            if check_selected:
                yield _check_stored(context, job, store, loop)
            return
        keys = list(context.partition_keys)
        client: GPTImageClient = getattr(context.resources, job.resource_key).get_client()
        run = _Run(context, job, client, store, force=force, check=check_selected)
        try:
            yield from run.events(keys, loop)
        finally:
            loop.cancel_all()
            loop.run(client.aclose())


def _check_stored(
    context: dg.AssetExecutionContext, job: ImageJob, store: ImageStore, loop: LoopThread
) -> dg.AssetCheckResult:
    """The check run alone (Dagster runs an unpartitioned check without partitions): verify every
    stored image without generating anything, and flag every partition Dagster records as
    materialized that the store lacks."""
    records = store.list_records(job.asset_key)
    stored = {record.partition_key for record in records}
    problems: dict[str, list[str]] = {
        key: ["materialized in Dagster but no image in the store"]
        for key in sorted(context.instance.get_materialized_partitions(job.asset_key) - stored)
    }
    problems.update(loop.run(verify_all(store, records)))
    invalid = sum(1 for found in problems.values() if found)
    context.log.info(
        f"{job.asset_key.to_user_string()}: verified {len(problems)} images ({invalid} invalid) "
        f"in {short_repr(store.resolved_base_url, 200)}"
    )
    return check_result(job.asset_key, problems, scope="every stored image")
