"""The outcomes of a batch run's partitions, handed to the step's thread as soon as each is known.

A line's outcome is final once it is here: its image stored (a ``Done``, priced at batch rates) or
its partition failed (a ``Failed`` with the provider's reason). The ledger also keeps what the run
has left to learn (``pending``), which paid results it could not store (``keep``: their batch
record stays for a rerun) and what the batches cost against sync prices (``spend``).
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_gptimage._batch_records import BatchLine, BatchRecord
from dagster_gptimage._batchfile import LineFailure, LineSuccess
from dagster_gptimage._checks import DecodedImage, verify_image
from dagster_gptimage._execute import Budget, Done
from dagster_gptimage._metadata import safe_preview
from dagster_gptimage._plan import Failed, Planned, short_error
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import GPTImageError, InvalidImageError, ProviderError
from dagster_gptimage.images import inspect_image
from dagster_gptimage.models import ImageParams, Usage
from dagster_gptimage.pricing import cost_of_usage
from dagster_gptimage.storage import ImageStore

__all__ = ["Ledger", "Spend"]


def _request_params(planned: Planned, client: GPTImageClient) -> ImageParams:
    if planned.request is not None:
        return planned.request.params()
    return ImageParams(**{"model": client.model, **planned.params})


class Spend:
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


class Ledger:
    """Outcomes of one batch run's partitions, put on ``out`` for the step's thread."""

    def __init__(
        self,
        client: GPTImageClient,
        store: ImageStore,
        budget: Budget,
        out: queue.Queue[Any],
        *,
        planner_check: bool,
        asset_key: dg.AssetKey,
    ) -> None:
        self.client = client
        self.store = store
        self.budget = budget
        self.out = out
        self.check = planner_check
        self.asset_key = asset_key
        self.pending: dict[str, Planned] = {}
        """custom_id → this run's partitions whose outcome is not known yet."""
        self.keep: set[str] = set()
        """custom_ids whose results are paid for but were not stored: their record stays."""
        self.spend = Spend()

    async def store_image(
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
            self.fail_line(
                planned,
                LineFailure(line.custom_id, "provider error", _undecodable(error), billed=True),
                cost=cost,
            )
            return
        record = planned.record(
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
            mode="batch",
            batch_id=batch_id,
        )
        try:
            written = await self.store.awrite_image(
                self.asset_key, planned.key, data, info.format, record
            )
        except Exception as error:
            self.keep.add(line.custom_id)
            self.fail(
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
        if self.check:
            decoded = DecodedImage(written.sha256, info.format, info.width, info.height)
            problems = await asyncio.to_thread(verify_image, self.store, written, decoded=decoded)
        del self.pending[line.custom_id]
        self.out.put(Done(planned, written, preview, problems, written.latency_s, 1))

    def fail_line(self, planned: Planned, line: LineFailure, *, cost: float = 0.0) -> None:
        ran = line.reason not in ("expired", "cancelled")
        self.fail(
            line.custom_id,
            planned,
            line.reason,
            short_error(line.error),
            attempts=1 if ran else 0,
            billed=1 if line.billed else 0,
            cost=cost,
        )

    def fail(
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

    def fail_ids(self, custom_ids: set[str], reason: str, message: str) -> None:
        for custom_id in sorted(custom_ids):
            planned = self.pending.get(custom_id)
            if planned is not None:
                self.fail(custom_id, planned, reason, message)

    def fail_lines(self, lines: Sequence[BatchLine], reason: str, message: str) -> None:
        self.fail_ids({line.custom_id for line in lines}, reason, message)

    def fail_unsent(self, failed: list[Failed]) -> None:
        """Partitions that could not become batch lines (nothing was sent for them)."""
        for item in failed:
            for custom_id, planned in list(self.pending.items()):
                if planned.key == item.key:
                    self.pending.pop(custom_id)
            self.out.put(item)
        failed.clear()

    def log(self, message: str) -> None:
        self.out.put(message)


def _undecodable(error: Exception) -> GPTImageError:
    return ProviderError(
        f"the batch returned an image that does not decode (billed): {short_error(error)}",
        code="invalid_image",
    )
