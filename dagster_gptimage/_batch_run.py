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

Submitting is ``_batch_submit``'s and each line's outcome ``_batch_ledger``'s; this module follows
the batches. Outcomes go on the queue the step's thread reads (``Done``, ``Failed``, or a ``str`` to
log), then ``END``. Terminating the run leaves the batches running (a rerun collects them) unless
``batch_cancel_on_terminate`` is set.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_gptimage._batch_ledger import Ledger
from dagster_gptimage._batch_records import BatchRecord, read_records, remove_record, write_record
from dagster_gptimage._batch_submit import Submitter
from dagster_gptimage._batchapi import BatchAPI, BatchObject
from dagster_gptimage._batchfile import LineSuccess, encode_custom_id
from dagster_gptimage._execute import END, Budget
from dagster_gptimage._plan import Planned, Planner, short_error
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import GPTImageError, failure_reason

__all__ = ["BATCH_PROVIDERS", "BatchRun", "refuse_unbatchable"]

BATCH_PROVIDERS = ("openai", "emulator")


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


class BatchRun:
    """Sends a run's planned requests as batches; see the module docstring."""

    def __init__(
        self, planner: Planner, budget: Budget, *, keys: Sequence[str], run_id: str
    ) -> None:
        self.planner = planner
        self.job = planner.job
        self.name = self.job.asset_key.to_user_string()
        self.client = planner.client
        self.store = planner.store
        self.budget = budget
        self.keys = frozenset(keys)
        self.run_id = run_id
        self.interval = self.client.settings.batch_poll_interval_s
        self.cancel_on_terminate = self.client.settings.batch_cancel_on_terminate
        self.ledger = Ledger(
            self.client,
            self.store,
            budget,
            queue.Queue(),
            planner_check=planner.check,
            asset_key=self.job.asset_key,
        )
        self.submitter = Submitter(planner, self.ledger, run_id=run_id)

    async def run(self, todo: Sequence[Planned], out: queue.Queue[Any]) -> None:
        self.ledger.out = out
        self.ledger.pending = {encode_custom_id(p.key, p.fingerprint): p for p in todo}
        try:
            async with self.client.batch_api() as api:
                retry = await self._round(api, *await self._resumable(api))
                if retry:
                    for planned in retry:
                        self.ledger.pending[encode_custom_id(planned.key, planned.fingerprint)] = (
                            planned
                        )
                    self.ledger.log(
                        f"{self.name}: {len(retry)} lines expired or were cancelled: sending "
                        "them in a new batch"
                    )
                    await self._round(api, [], retry, resubmission=True)
            for custom_id, planned in list(self.ledger.pending.items()):
                self.ledger.fail(custom_id, planned, "provider error", "the batch gave no result")
            self.ledger.log(self.ledger.spend.summary(self.name))
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
            ours = (record.custom_ids & self.ledger.pending.keys()) - claimed
            if not ours:
                continue
            if record.batch_id is None:
                record = await self._created_or_dropped(api, record)
                if record is None:
                    continue
            follow.append(record)
            claimed |= ours
        if follow:
            self.ledger.log(
                f"{self.name}: resuming {len(follow)} batch(es) submitted earlier for "
                f"{len(claimed)} of these partitions ({', '.join(str(r.batch_id) for r in follow)})"
                ": their requests are not sent again"
            )
        fresh = [planned for cid, planned in self.ledger.pending.items() if cid not in claimed]
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
            async for record in self.submitter.submit(api, fresh, resubmission=resubmission):
                tasks.append(asyncio.create_task(self._follow(api, record, resumed=False)))
            again = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        retry = [planned for found in again for planned in found]
        if resubmission:
            for planned in retry:
                cid = encode_custom_id(planned.key, planned.fingerprint)
                self.ledger.fail(cid, planned, "expired", "the batch line did not run, twice")
            return []
        return retry

    # --- following a batch ---------------------------------------------------------------------

    async def _follow(self, api: BatchAPI, record: BatchRecord, *, resumed: bool) -> list[Planned]:
        """Wait for the batch, then store its results; the partitions to send again."""
        mine = record.custom_ids & self.ledger.pending.keys()
        try:
            batch = await self._wait(api, record)
        except GPTImageError as error:
            if resumed and error.status_code == 404:
                return await self._forget(record, mine)
            self.ledger.fail_ids(
                mine,
                failure_reason(error),
                f"batch {record.batch_id} could not be followed ({short_error(error)}); it runs "
                "on, and a rerun collects it",
            )
            return []
        self.ledger.spend.batch_ids.add(batch.id)
        if batch.status == "failed":
            self.ledger.fail_ids(
                mine, "provider error", f"batch {batch.id} failed: {_errors(batch)}"
            )
            await asyncio.to_thread(remove_record, self.store, record)
            return []
        retry: list[Planned] = []
        try:
            async for result in api.results(batch):
                planned = (
                    self.ledger.pending.get(result.custom_id) if result.custom_id in mine else None
                )
                if planned is None:
                    continue
                if isinstance(result, LineSuccess):
                    await self.ledger.store_image(planned, result, batch.id, record)
                elif result.reason == "expired" or (result.reason == "cancelled" and resumed):
                    del self.ledger.pending[result.custom_id]
                    retry.append(planned)
                else:
                    self.ledger.fail_line(planned, result)
        except GPTImageError as error:
            left = mine & self.ledger.pending.keys()
            self.ledger.keep |= left
            self.ledger.fail_ids(
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
        self.ledger.log(
            f"{self.name}: batch {record.batch_id} of an earlier run is unknown to "
            f"{self.client.provider} (404): its {len(mine)} requests are sent again"
        )
        await asyncio.to_thread(remove_record, self.store, record)
        return [
            self.ledger.pending.pop(custom_id)
            for custom_id in sorted(mine)
            if custom_id in self.ledger.pending
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
        self.ledger.log(f"{self.name}: batch {batch.id} {batch.status}: {done} ({elapsed:.0f} s)")

    async def _settle(self, record: BatchRecord) -> None:
        """Keep only the lines still to collect: other runs' partitions, and results paid for but
        not stored; remove the record when none is left."""
        left = [
            line
            for line in record.lines
            if line.key not in self.keys or line.custom_id in self.ledger.keep
        ]
        if not left:
            await asyncio.to_thread(remove_record, self.store, record)
        elif len(left) < len(record.lines):
            await asyncio.to_thread(
                write_record, self.store, record.model_copy(update={"lines": left})
            )

    # --- one line's outcome --------------------------------------------------------------------


def _errors(batch: BatchObject) -> str:
    data = (batch.errors or {}).get("data") or []
    messages = [str(item.get("message", item)) for item in data if isinstance(item, Mapping)]
    return "; ".join(messages[:3]) or "no reason given"
