"""Submitting a batch run's requests: input files written, uploaded, recorded, then created.

The order is what makes a crash harmless: a batch is created only after its record is in the store
(``_batch_records``), and the record gets the batch id before anyone waits for it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator, Sequence

from dagster_gptimage._batch_ledger import Ledger
from dagster_gptimage._batch_records import (
    BatchLine,
    BatchRecord,
    record_url,
    remove_record,
    write_record,
)
from dagster_gptimage._batchapi import BatchAPI
from dagster_gptimage._batchfile import BatchFile, BatchItem, batch_files
from dagster_gptimage._plan import Failed, Planned, Planner, SourceProblem, short_error
from dagster_gptimage._urls import redact_url
from dagster_gptimage.errors import GPTImageError, InvalidRequestError, failure_reason
from dagster_gptimage.models import EditRequest, ImageRequest

__all__ = ["MAX_DATA_URL_BYTES", "Submitter", "data_url_problem"]

MAX_DATA_URL_BYTES = 20 * 1024 * 1024
"""OpenAI's limit on one image given as a data URL: an edit input above it cannot be batched."""


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


class Submitter:
    """Turns planned requests into batches, each recorded in the store before it is created."""

    def __init__(self, planner: Planner, ledger: Ledger, *, run_id: str) -> None:
        self.planner = planner
        self.job = planner.job
        self.name = self.job.asset_key.to_user_string()
        self.client = planner.client
        self.store = planner.store
        self.ledger = ledger
        self.run_id = run_id

    def items(self, todo: Sequence[Planned], failed: list[Failed]) -> Iterator[BatchItem]:
        """Batch items of ``todo``; edits re-read their inputs now (runs in a worker thread)."""
        for planned in todo:
            try:
                request = planned.request or self.planner.rebuild_edit(planned)
            except SourceProblem as error:
                failed.append(Failed(planned.key, "source", str(error)))
                continue
            except InvalidRequestError as error:
                failed.append(Failed(planned.key, "invalid", short_error(error)))
                continue
            problem = data_url_problem(request)
            if problem is not None:
                failed.append(Failed(planned.key, "invalid", problem))
                continue
            yield BatchItem(planned.key, request, planned.fingerprint)

    async def submit(
        self, api: BatchAPI, todo: Sequence[Planned], *, resubmission: bool
    ) -> AsyncIterator[BatchRecord]:
        """Upload, record and create one batch per input file; yield each record (with its id)."""
        if not todo:
            return
        failed: list[Failed] = []
        files = batch_files(self.items(todo, failed), api.settings)
        while (batch_file := await asyncio.to_thread(next, files, None)) is not None:
            self.ledger.fail_unsent(failed)
            record = await self.create(api, batch_file, resubmission=resubmission)
            if record is not None:
                yield record
        self.ledger.fail_unsent(failed)

    async def create(
        self, api: BatchAPI, batch_file: BatchFile, *, resubmission: bool
    ) -> BatchRecord | None:
        lines = [
            BatchLine(
                custom_id=cid,
                key=self.ledger.pending[cid].key,
                fingerprint=self.ledger.pending[cid].fingerprint,
            )
            for cid in batch_file.custom_ids
        ]
        try:
            uploaded = await api.upload(
                batch_file, filename=f"{self.job.asset_key.to_python_identifier()}.jsonl"
            )
        except GPTImageError as error:
            self.ledger.fail_lines(
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
            self.ledger.fail_lines(
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
        estimate = sum(self.ledger.pending[line.custom_id].estimate_usd for line in lines)
        self.ledger.log(
            f"{self.name}: submitted batch {batch.id}: {batch_file.lines} requests "
            f"({batch_file.size:,} bytes), estimated ${estimate:.4f} at batch prices; recorded "
            f"in {redact_url(record_url(self.store, record))}"
        )
        return record
