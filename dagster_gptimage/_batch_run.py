"""A batch-mode run: the run's uncached requests go through OpenAI's Batch API, at half price.

Planning is the sync run's (validation, cache, budget at batch prices); only sending differs:

1. Batches that earlier runs submitted for the same requests are found by their records in the
   store (``_batch_records``) and followed, never submitted again: a SIGKILL, a terminated run or a
   restarted daemon costs nothing twice.
2. The other requests become JSONL input files (split at 50,000 lines / 200 MB), each uploaded,
   recorded in the store, then created as a batch, and its record completed with the batch id
   before the first poll.
3. Every ``batch_poll_interval_s`` each batch is polled, with a progress line. A finished batch's
   output is streamed line by line (never held whole), each image verified and stored like a sync
   image, and its partition's outcome handed to the step's thread at once.
4. Lines that expired, or were cancelled in an earlier run, go into one new batch; the others that
   failed fail their partition with the provider's reason. A record is removed once every line of
   it is stored or failed (lines of partitions outside this run stay for the run that has them).

Outcomes go on the queue the step's thread reads (``Done``, ``Failed``, or a ``str`` to log), then
``END``. Terminating the run leaves the batches running (a rerun collects them) unless
``batch_cancel_on_terminate`` is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import queue
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_gptimage._batch_records import (
    BatchLine,
    BatchRecord,
    read_records,
    record_url,
    remove_record,
    write_record,
)
from dagster_gptimage._batchapi import BatchAPI, BatchObject
from dagster_gptimage._batchfile import (
    BatchFile,
    BatchItem,
    LineFailure,
    LineSuccess,
    batch_files,
    encode_custom_id,
)
from dagster_gptimage._checks import DecodedImage, verify_image
from dagster_gptimage._execute import END, Budget, Done
from dagster_gptimage._metadata import safe_preview
from dagster_gptimage._plan import Failed, Planned, Planner, SourceProblem, short_error
from dagster_gptimage._urls import redact_url
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import (
    GPTImageError,
    InvalidImageError,
    ProviderError,
    failure_reason,
)
from dagster_gptimage.images import inspect_image
from dagster_gptimage.models import EditRequest, ImageParams, ImageRequest, Usage
from dagster_gptimage.pricing import cost_of_usage
from dagster_gptimage.storage import ImageRecord, ImageStore

__all__ = [
    "BATCH_PROVIDERS",
    "MAX_DATA_URL_BYTES",
    "BatchRun",
    "data_url_problem",
    "refuse_unbatchable",
]

BATCH_PROVIDERS = ("openai", "emulator")
MAX_DATA_URL_BYTES = 20 * 1024 * 1024
"""OpenAI's limit on one image given as a data URL: an edit input above it cannot be batched."""


def refuse_unbatchable(client: GPTImageClient, asset_name: str) -> None:
    """Fail the run before any request when its provider has no Batch API."""
    if client.provider in BATCH_PROVIDERS:
        return
    raise dg.Failure(
        description=(
            f"{asset_name}: mode='batch' needs OpenAI's Batch API, which provider="
            f"{client.provider!r} does not offer; no request was sent. Use provider 'openai' "
            "(or 'emulator' offline) for this asset's resource, or mode='sync'."
        ),
        allow_retries=False,
    )


def data_url_problem(request: ImageRequest) -> str | None:
    """Why an edit cannot travel in a batch line (an input above 20 MiB as a data URL), if so."""
    if not isinstance(request, EditRequest):
        return None
    inputs = [(f"input image {i + 1}", image) for i, image in enumerate(request.images)]
    if request.mask is not None:
        inputs.append(("the mask", request.mask))
    for name, image in inputs:
        size = len(f"data:{image.content_type};base64,") + 4 * math.ceil(len(image.data) / 3)
        if size > MAX_DATA_URL_BYTES:
            return (
                f"{name} is {len(image.data) / 2**20:.1f} MiB, a {size / 2**20:.1f} MiB data URL "
                f"in a batch line; the Batch API takes at most {MAX_DATA_URL_BYTES // 2**20} MiB "
                "per data URL. Nothing was sent: use smaller inputs, or mode='sync'"
            )
    return None


def _request_params(planned: Planned, client: GPTImageClient) -> ImageParams:
    if planned.request is not None:
        return planned.request.params()
    return ImageParams(**{"model": client.model, **planned.params})


class _Spend:
    """What the batches cost, against what the same usage costs synchronously."""

    def __init__(self) -> None:
        self.batch = 0.0
        self.sync = 0.0
        self.images = 0
        self.batch_ids: set[str] = set()

    def summary(self, name: str) -> str:
        saved = self.sync - self.batch
        share = f" ({saved / self.sync:.0%})" if self.sync > 0 else ""
        batches = f"{len(self.batch_ids)} batch" + ("" if len(self.batch_ids) == 1 else "es")
        return (
            f"{name}: batch mode: {self.images} images from {batches} cost ${self.batch:.4f}; "
            f"synchronous requests would have cost ${self.sync:.4f} for the same usage: "
            f"saved ${saved:.4f}{share}"
        )


class BatchRun:
    """Sends a run's planned requests as batches; see the module docstring."""

    def __init__(
        self,
        planner: Planner,
        client: GPTImageClient,
        store: ImageStore,
        budget: Budget,
        *,
        keys: Sequence[str],
        run_id: str,
    ) -> None:
        self.planner = planner
        self.job = planner.job
        self.name = self.job.asset_key.to_user_string()
        self.client = client
        self.store = store
        self.budget = budget
        self.keys = frozenset(keys)
        self.run_id = run_id
        self.interval = client.settings.batch_poll_interval_s
        self.cancel_on_terminate = client.settings.batch_cancel_on_terminate
        self.pending: dict[str, Planned] = {}
        """custom_id → this run's partitions whose outcome is not known yet."""
        self.keep: set[str] = set()
        """custom_ids whose results are paid for but were not stored: their record stays."""
        self.spend = _Spend()
        self.out: queue.Queue[Any] = queue.Queue()

    async def run(self, todo: Sequence[Planned], out: queue.Queue[Any]) -> None:
        self.out = out
        self.pending = {encode_custom_id(p.key, p.fingerprint): p for p in todo}
        try:
            async with self.client.batch_api() as api:
                retry = await self._round(api, *await self._resumable(api))
                if retry:
                    for planned in retry:
                        self.pending[encode_custom_id(planned.key, planned.fingerprint)] = planned
                    self._log(
                        f"{self.name}: {len(retry)} lines expired or were cancelled: sending "
                        "them in a new batch"
                    )
                    await self._round(api, [], retry, resubmission=True)
            for custom_id, planned in list(self.pending.items()):
                self._fail(custom_id, planned, "provider error", "the batch gave no result")
            self._log(self.spend.summary(self.name))
        finally:
            out.put(END)

    # --- resuming ------------------------------------------------------------------------------

    async def _resumable(self, api: BatchAPI) -> tuple[list[BatchRecord], list[Planned]]:
        """Batches of earlier runs holding this run's requests, and the requests left to send."""
        records = await asyncio.to_thread(read_records, self.store, self.job.asset_key)
        follow: list[BatchRecord] = []
        claimed: set[str] = set()
        for record in records:
            if not record.served_by(self.client.provider, self.client.base_url):
                continue
            ours = (record.custom_ids & self.pending.keys()) - claimed
            if not ours:
                continue
            if record.batch_id is None:
                record = await self._created_or_dropped(api, record)
                if record is None:
                    continue
            follow.append(record)
            claimed |= ours
        if follow:
            self._log(
                f"{self.name}: resuming {len(follow)} batch(es) submitted earlier for "
                f"{len(claimed)} of these partitions ({', '.join(str(r.batch_id) for r in follow)})"
                ": their requests are not sent again"
            )
        fresh = [planned for cid, planned in self.pending.items() if cid not in claimed]
        return follow, fresh

    async def _created_or_dropped(self, api: BatchAPI, record: BatchRecord) -> BatchRecord | None:
        """A record written before its batch was created: the batch, if it was created."""
        found = await api.find(input_file_id=record.input_file_id)
        if found is None:
            await asyncio.to_thread(remove_record, self.store, record)
            return None
        record = record.model_copy(update={"batch_id": found.id})
        await asyncio.to_thread(write_record, self.store, record)
        return record

    # --- one round: follow batches, submit the rest --------------------------------------------

    async def _round(
        self,
        api: BatchAPI,
        records: Sequence[BatchRecord],
        fresh: Sequence[Planned],
        *,
        resubmission: bool = False,
    ) -> list[Planned]:
        """Follow ``records`` (of earlier runs) and new batches of ``fresh`` to their end; the
        partitions to send again (only from a first round)."""
        tasks = [asyncio.create_task(self._follow(api, r, resumed=True)) for r in records]
        try:
            async for record in self._submit(api, fresh, resubmission=resubmission):
                tasks.append(asyncio.create_task(self._follow(api, record, resumed=False)))
            again = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        retry = [planned for found in again for planned in found]
        if resubmission:
            for planned in retry:
                cid = encode_custom_id(planned.key, planned.fingerprint)
                self._fail(cid, planned, "expired", "the batch line did not run, twice")
            return []
        return retry

    def _items(self, todo: Sequence[Planned], failed: list[Failed]) -> Iterator[BatchItem]:
        """Batch items of ``todo``; edits re-read their inputs now (runs in a worker thread)."""
        for planned in todo:
            try:
                request = planned.request or self._edit_request(planned)
            except SourceProblem as error:
                failed.append(Failed(planned.key, "source", str(error)))
                continue
            problem = data_url_problem(request)
            if problem is not None:
                failed.append(Failed(planned.key, "invalid", problem))
                continue
            yield BatchItem(planned.key, request, planned.fingerprint)

    def _edit_request(self, planned: Planned) -> ImageRequest:
        """An edit as planned; an input changed since planning fails the partition rather than
        paying for an image of the wrong inputs."""
        datas = []
        for source in planned.sources:
            data = self.store.read_bytes(source.path)
            if hashlib.sha256(data).hexdigest() != source.sha256:
                raise SourceProblem(
                    f"source image {redact_url(source.path)} changed during the run: re-run"
                )
            datas.append(data)
        mask = None
        if planned.mask_location is not None:
            mask = self.planner.read_mask(planned.mask_location)
            if planned.mask is not None and hashlib.sha256(mask).hexdigest() != planned.mask.sha256:
                raise SourceProblem(
                    f"mask {redact_url(planned.mask_location)} changed during the run: re-run"
                )
        return self.client.build_edit(planned.prompt, datas, mask=mask, **planned.params)

    async def _submit(
        self, api: BatchAPI, todo: Sequence[Planned], *, resubmission: bool
    ) -> AsyncIterator[BatchRecord]:
        """Upload, record and create one batch per input file; yield each record (with its id)."""
        if not todo:
            return
        failed: list[Failed] = []
        files = batch_files(self._items(todo, failed), api.settings)
        while (batch_file := await asyncio.to_thread(next, files, None)) is not None:
            self._fail_all(failed)
            record = await self._create(api, batch_file, resubmission=resubmission)
            if record is not None:
                yield record
        self._fail_all(failed)

    async def _create(
        self, api: BatchAPI, batch_file: BatchFile, *, resubmission: bool
    ) -> BatchRecord | None:
        lines = [
            BatchLine(
                custom_id=cid, key=self.pending[cid].key, fingerprint=self.pending[cid].fingerprint
            )
            for cid in batch_file.custom_ids
        ]
        try:
            uploaded = await api.upload(
                batch_file, filename=f"{self.job.asset_key.to_python_identifier()}.jsonl"
            )
        except GPTImageError as error:
            self._fail_lines(
                lines,
                failure_reason(error),
                f"uploading the batch input failed: {short_error(error)}",
            )
            return None
        record = BatchRecord(
            asset_key=list(self.job.asset_key.path),
            provider=self.client.provider,
            base_url=redact_url(self.client.base_url),
            endpoint=batch_file.endpoint,
            input_file_id=uploaded.id,
            run_id=self.run_id,
            resubmission=resubmission,
            lines=lines,
        )
        await asyncio.to_thread(write_record, self.store, record)
        try:
            batch = await api.create(
                uploaded.id,
                batch_file.endpoint,
                metadata={"dagster_asset": self.name[:512], "dagster_run_id": self.run_id},
            )
        except GPTImageError as error:
            ambiguous = failure_reason(error) not in ("invalid", "authentication", "quota")
            if not ambiguous:
                await asyncio.to_thread(remove_record, self.store, record)
            self._fail_lines(
                lines,
                failure_reason(error),
                f"creating the batch failed: {short_error(error)}"
                + (
                    "; a rerun looks for it by its input file before sending again"
                    if ambiguous
                    else ""
                ),
            )
            return None
        record = record.model_copy(update={"batch_id": batch.id, "submitted_at": time.time()})
        await asyncio.to_thread(write_record, self.store, record)
        estimate = sum(self.pending[line.custom_id].estimate_usd for line in lines)
        self._log(
            f"{self.name}: submitted batch {batch.id}: {batch_file.lines} requests "
            f"({batch_file.size:,} bytes), estimated ${estimate:.4f} at batch prices; recorded "
            f"in {redact_url(record_url(self.store, record))}"
        )
        return record

    # --- following a batch ---------------------------------------------------------------------

    async def _follow(self, api: BatchAPI, record: BatchRecord, *, resumed: bool) -> list[Planned]:
        """Wait for the batch, then store its results; the partitions to send again."""
        mine = record.custom_ids & self.pending.keys()
        try:
            batch = await self._wait(api, record)
        except GPTImageError as error:
            if resumed and error.status_code == 404:
                return await self._forget(record, mine)
            self._fail_ids(
                mine,
                failure_reason(error),
                f"batch {record.batch_id} could not be followed ({short_error(error)}); it runs "
                "on, and a rerun collects it",
            )
            return []
        self.spend.batch_ids.add(batch.id)
        if batch.status == "failed":
            self._fail_ids(mine, "provider error", f"batch {batch.id} failed: {_errors(batch)}")
            await asyncio.to_thread(remove_record, self.store, record)
            return []
        retry: list[Planned] = []
        try:
            async for result in api.results(batch):
                planned = self.pending.get(result.custom_id) if result.custom_id in mine else None
                if planned is None:
                    continue
                if isinstance(result, LineSuccess):
                    await self._store(planned, result, batch.id, record)
                elif result.reason == "expired" or (result.reason == "cancelled" and resumed):
                    del self.pending[result.custom_id]
                    retry.append(planned)
                else:
                    self._fail_line(planned, result)
        except GPTImageError as error:
            left = mine & self.pending.keys()
            self.keep |= left
            self._fail_ids(
                left,
                failure_reason(error),
                f"the results of batch {batch.id} could not be read ({short_error(error)}); "
                "they are paid for and kept: a rerun reads them again",
            )
        await self._settle(record)
        return retry

    async def _forget(self, record: BatchRecord, mine: set[str]) -> list[Planned]:
        """A recorded batch the provider does not know (an in-process emulator's, gone with its
        process): nothing of it was paid here, so its lines are sent again."""
        self._log(
            f"{self.name}: batch {record.batch_id} of an earlier run is unknown to "
            f"{self.client.provider} (404): its {len(mine)} requests are sent again"
        )
        await asyncio.to_thread(remove_record, self.store, record)
        return [
            self.pending.pop(custom_id) for custom_id in sorted(mine) if custom_id in self.pending
        ]

    async def _wait(self, api: BatchAPI, record: BatchRecord) -> BatchObject:
        assert record.batch_id is not None
        try:
            batch = await api.retrieve(record.batch_id)
            while not batch.terminal:
                self._progress(batch, record)
                await asyncio.sleep(self.interval)
                batch = await api.retrieve(record.batch_id)
        except asyncio.CancelledError:
            if self.cancel_on_terminate:
                await asyncio.shield(self._cancel(api, record.batch_id))
            raise
        self._progress(batch, record)
        return batch

    async def _cancel(self, api: BatchAPI, batch_id: str) -> None:
        try:
            await api.cancel(batch_id)
        except GPTImageError:
            return

    def _progress(self, batch: BatchObject, record: BatchRecord) -> None:
        counts = batch.request_counts
        done = f"{counts.completed}/{counts.total} done, {counts.failed} failed" if counts else ""
        elapsed = max(time.time() - record.submitted_at, 0.0)
        self._log(f"{self.name}: batch {batch.id} {batch.status}: {done} ({elapsed:.0f} s)")

    async def _settle(self, record: BatchRecord) -> None:
        """Keep only the lines still to collect: other runs' partitions, and results paid for but
        not stored; remove the record when none is left."""
        left = [
            line
            for line in record.lines
            if line.key not in self.keys or line.custom_id in self.keep
        ]
        if not left:
            await asyncio.to_thread(remove_record, self.store, record)
        elif len(left) < len(record.lines):
            await asyncio.to_thread(
                write_record, self.store, record.model_copy(update={"lines": left})
            )

    # --- one line's outcome --------------------------------------------------------------------

    async def _store(
        self, planned: Planned, line: LineSuccess, batch_id: str, submitted: BatchRecord
    ) -> None:
        params = _request_params(planned, self.client)
        prices = self.client.prices.for_model(params.model)
        usage_known = isinstance(line.body.usage, Mapping)
        cost = line.cost(prices) if usage_known else planned.estimate_usd
        sync_cost = (
            cost_of_usage(line.usage, prices)
            if usage_known
            else cost / max(prices.batch_discount, 1e-9)
        )
        self.budget.settle(0.0, cost)
        try:
            data = line.images()[0]
            info = await asyncio.to_thread(inspect_image, data, field="data[0]")
        except (InvalidImageError, ValueError) as error:
            self._fail_line(
                planned,
                LineFailure(line.custom_id, "provider error", _undecodable(error), billed=True),
                cost=cost,
            )
            return
        record = ImageRecord(
            fingerprint=planned.fingerprint,
            prompt=planned.prompt,
            params=params.model_dump(mode="json"),
            model=params.model,
            provider=self.client.provider,
            usage=line.usage.model_dump(mode="json")
            if usage_known
            else Usage().model_dump(mode="json"),
            cost_usd=cost,
            latency_s=max(time.time() - submitted.submitted_at, 0.0),
            attempts=1,
            possibly_billed_attempts=1,
            request_id=line.request_id,
            revised_prompt=line.body.data[0].revised_prompt if line.body.data else None,
            width=info.width,
            height=info.height,
            extra=planned.extra,
            sources=planned.sources,
            mask=planned.mask,
            revision=planned.revision,
            mode="batch",
            batch_id=batch_id,
        )
        try:
            written = await self.store.awrite_image(
                self.job.asset_key, planned.key, data, info.format, record
            )
        except Exception as error:
            self.keep.add(line.custom_id)
            self._fail(
                line.custom_id,
                planned,
                "storage",
                f"the image was made (and billed) but could not be stored: "
                f"{type(error).__name__}: {short_error(error)}; a rerun stores it from the batch",
                attempts=1,
                billed=1,
                cost=cost,
            )
            return
        self.spend.batch += cost
        self.spend.sync += sync_cost
        self.spend.images += 1
        preview = await asyncio.to_thread(safe_preview, data)
        problems: list[str] = []
        if self.planner.check:
            decoded = DecodedImage(written.sha256, info.format, info.width, info.height)
            problems = await asyncio.to_thread(verify_image, self.store, written, decoded=decoded)
        del self.pending[line.custom_id]
        self.out.put(Done(planned, written, preview, problems, written.latency_s, 1))

    def _fail_line(self, planned: Planned, line: LineFailure, *, cost: float = 0.0) -> None:
        ran = line.reason not in ("expired", "cancelled")
        self._fail(
            line.custom_id,
            planned,
            line.reason,
            short_error(line.error),
            attempts=1 if ran else 0,
            billed=1 if line.billed else 0,
            cost=cost,
        )

    def _fail(
        self,
        custom_id: str,
        planned: Planned,
        reason: str,
        message: str,
        *,
        attempts: int = 0,
        billed: int = 0,
        cost: float = 0.0,
    ) -> None:
        self.pending.pop(custom_id, None)
        self.out.put(
            Failed(
                planned.key,
                reason,
                message,
                attempts=attempts,
                possibly_billed_attempts=billed,
                cost_usd=cost,
            )
        )

    def _fail_ids(self, custom_ids: set[str], reason: str, message: str) -> None:
        for custom_id in sorted(custom_ids):
            planned = self.pending.get(custom_id)
            if planned is not None:
                self._fail(custom_id, planned, reason, message)

    def _fail_lines(self, lines: Sequence[BatchLine], reason: str, message: str) -> None:
        self._fail_ids({line.custom_id for line in lines}, reason, message)

    def _fail_all(self, failed: list[Failed]) -> None:
        """Partitions that could not become batch lines (nothing was sent for them)."""
        for item in failed:
            for custom_id, planned in list(self.pending.items()):
                if planned.key == item.key:
                    self.pending.pop(custom_id)
            self.out.put(item)
        failed.clear()

    def _log(self, message: str) -> None:
        self.out.put(message)


def _errors(batch: BatchObject) -> str:
    data = (batch.errors or {}).get("data") or []
    messages = [str(item.get("message", item)) for item in data if isinstance(item, Mapping)]
    return "; ".join(messages[:3]) or "no reason given"


def _undecodable(error: Exception) -> GPTImageError:
    return ProviderError(
        f"the batch returned an image that does not decode (billed): {short_error(error)}",
        code="invalid_image",
    )
