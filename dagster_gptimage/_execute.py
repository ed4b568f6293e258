"""Executing a run's requests: concurrently, within the budget, each image stored as it arrives.

Requests run on an event loop of their own thread, so Dagster's event-log writes in the step's
thread never pause them; each outcome is handed to the step's thread at once through a queue.
A request's slot is free as soon as its answer has arrived: the next request is on the wire while
the answer is decoded, verified and stored (the client bounds that work and its memory).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import dagster as dg

from dagster_gptimage._checks import DecodedImage, verify_image
from dagster_gptimage._metadata import preview_value, safe_preview_bytes
from dagster_gptimage._plan import Failed, Planned, Planner, SourceProblem, short_error
from dagster_gptimage.errors import (
    AuthenticationError,
    GPTImageError,
    QuotaExceededError,
    failure_reason,
)
from dagster_gptimage.images import thumbnail_data_uri
from dagster_gptimage.models import ImageRequest, ImageResult
from dagster_gptimage.storage import ImageRecord

__all__ = ["END", "Budget", "Done", "Executor"]

END = object()
"""Put on the outcome queue after the last outcome."""


@dataclass(frozen=True)
class Done:
    planned: Planned
    record: ImageRecord
    preview: dg.MetadataValue | None
    problems: list[str]
    latency_s: float
    attempts: int


class Budget:
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


class _Slot:
    """One of the executor's ``max_concurrency`` slots, released once: at :meth:`release` (the
    answer arrived) or on exit, whichever comes first."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = False

    async def __aenter__(self) -> _Slot:
        await self._slots.acquire()
        self._held = True
        return self

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Executor:
    """Sends planned requests and stores their images."""

    def __init__(self, planner: Planner, budget: Budget) -> None:
        self.planner = planner
        self.job = planner.job
        self.client = planner.client
        self.store = planner.store
        self.budget = budget
        self.slots = asyncio.Semaphore(self.client.max_concurrency)
        self.partitions = asyncio.Semaphore(2 * self.client.max_concurrency)
        """Partitions between sending and stored: answers whose images wait for a slow store
        hold their bytes, so they are bounded too (the next requests wait in turn)."""
        self.stop_reason: tuple[str, str] | None = None

    async def _send(self, planned: Planned) -> tuple[ImageRequest, ImageResult] | Failed:
        """One request (with the client's retries), within the slots and the budget.

        Without ``max_cost_usd`` the slot is free once the answer's body has arrived. With a cap
        it is held until the call is over and its cost known, so that each request reserves its
        estimate knowing what its predecessors actually cost (billed retries included)."""
        async with _Slot(self.slots) as slot:
            if self.stop_reason is not None:
                reason, message = self.stop_reason
                return Failed(planned.key, reason, f"not started: {message}")
            refusal = self.budget.reserve(planned.estimate_usd)
            if refusal is not None:
                return Failed(planned.key, "budget", refusal)
            try:
                request = planned.request
                if request is None:
                    request = await asyncio.to_thread(self.planner.rebuild_edit, planned)
                on_answer = slot.release if self.budget.cap is None else None
                result = await self.client.execute(request, on_answer=on_answer)
            except SourceProblem as error:
                self.budget.settle(planned.estimate_usd, 0.0)
                return Failed(planned.key, "source", str(error))
            except GPTImageError as error:
                self.budget.settle(planned.estimate_usd, error.cost_usd)
                reason = failure_reason(error)
                if isinstance(error, (AuthenticationError, QuotaExceededError)):
                    self.stop_reason = (
                        reason,
                        f"an earlier request failed with {short_error(error)}",
                    )
                return Failed(
                    planned.key,
                    reason,
                    short_error(error),
                    attempts=error.attempts,
                    possibly_billed_attempts=error.possibly_billed_attempts,
                    cost_usd=error.cost_usd,
                )
            self.budget.settle(planned.estimate_usd, result.cost_usd)
            return request, result

    async def execute(self, planned: Planned) -> Done | Failed:
        """Send, then store outside the request slot, so the next request starts meanwhile."""
        async with self.partitions:
            sent = await self._send(planned)
            if isinstance(sent, Failed):
                return sent
            return await self._store(planned, *sent)

    async def _store(
        self, planned: Planned, request: ImageRequest, result: ImageResult
    ) -> Done | Failed:
        image = result.images[0]
        thumbnail = image.preview
        if thumbnail is None:
            thumbnail = await asyncio.to_thread(safe_preview_bytes, image.data)
        record = planned.record(
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
            decoded=True,
            preview=None if thumbnail is None else thumbnail_data_uri(thumbnail),
        )
        try:
            written = await self.store.awrite_image(
                self.job.asset_key, planned.key, image.data, image.format, record
            )
        except Exception as error:
            return Failed(
                planned.key,
                "storage",
                f"the image was generated (and billed) but could not be stored: "
                f"{type(error).__name__}: {short_error(error)}",
                attempts=result.attempts,
                possibly_billed_attempts=result.possibly_billed_attempts,
                cost_usd=result.cost_usd,
            )
        preview = None if written.preview is None else preview_value(written.preview)
        problems: list[str] = []
        if self.planner.check:
            # ``written.sha256`` was computed from ``image.data`` as it was written.
            decoded = DecodedImage(written.sha256, image.format, image.width, image.height)
            problems = await asyncio.to_thread(verify_image, self.store, written, decoded=decoded)
        return Done(planned, written, preview, problems, result.latency_s, result.attempts)

    async def execute_all(self, todo: Sequence[Planned], out: queue.Queue[Any]) -> None:
        """Run every request concurrently, handing each outcome to the step's thread at once."""
        tasks = [asyncio.create_task(self.execute(plan)) for plan in todo]
        try:
            for next_done in asyncio.as_completed(tasks):
                out.put(await next_done)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            out.put(END)
