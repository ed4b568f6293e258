"""Many answers arriving at once: the client reads and decodes only a few at a time.

A backfill's requests often share one latency, so their answers (15 MB bodies for 4K PNGs) arrive
together; the client decodes at most ``BODY_SLOTS`` of them at once and holds at most
``HELD_BODY_BYTES`` of bodies in memory, the others wait in their sockets. Gateway URL downloads run inside their response's slot, which must never deadlock with the
requests still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _reliability import SIZE

from dagster_gptimage import _responses as responses_module
from dagster_gptimage import _transport as transport_module
from dagster_gptimage._bytebudget import ByteBudget
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator

pytestmark = pytest.mark.anyio


class _Concurrency:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def wrap(self, inspect: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            try:
                time.sleep(0.02)  # widen the window in which overlapping decodes would show
                return inspect(*args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1

        return counted


async def test_answers_arriving_together_are_decoded_a_few_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = _Concurrency()
    monkeypatch.setattr(
        responses_module, "inspect_image", counter.wrap(responses_module.inspect_image)
    )
    emulator = Emulator(latency_s=0.3)
    async with GPTImageClient(provider="emulator", emulator=emulator, max_concurrency=8) as client:
        results = await asyncio.gather(*(client.generate(f"p {i}", size=SIZE) for i in range(8)))

    assert [len(r.images) for r in results] == [1] * 8
    assert emulator.stats.requests == 8
    assert 1 <= counter.peak <= transport_module.BODY_SLOTS


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_gateway_downloads_inside_body_slots_never_deadlock(concurrency: int) -> None:
    emulator = Emulator(profile="gateway", latency_s=0.05)
    async with GPTImageClient(
        provider="gateway",
        api_key="gateway-key",
        base_url="http://emulator.localhost/v1",
        gateway_response_format="url",
        max_concurrency=concurrency,
        transport=emulator.transport(),
    ) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.generate(f"p {i}", size=SIZE) for i in range(6))),
            timeout=60,
        )
    assert len(results) == 6
    assert emulator.stats.file_downloads == 6
    assert emulator.stats.billed_requests == 6


async def test_bodies_held_in_memory_stay_within_the_byte_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bound smaller than one body: each body is read only when no other is held, and every
    request still completes (the HTTP slots of the waiting ones are freed as bodies are done)."""
    counter = _Concurrency()
    monkeypatch.setattr(
        responses_module, "inspect_image", counter.wrap(responses_module.inspect_image)
    )
    monkeypatch.setattr(transport_module, "HELD_BODY_BYTES", 1)
    held_peak = 0
    hold = ByteBudget.hold

    @contextlib.asynccontextmanager
    async def watched(budget: ByteBudget, size: int) -> AsyncIterator[None]:
        nonlocal held_peak
        async with hold(budget, size):
            held_peak = max(held_peak, budget.held)
            yield

    monkeypatch.setattr(ByteBudget, "hold", watched)
    emulator = Emulator(latency_s=0.2)
    async with GPTImageClient(provider="emulator", emulator=emulator, max_concurrency=6) as client:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.generate(f"p {i}", size=SIZE) for i in range(6))), timeout=60
        )

    assert [len(r.images) for r in results] == [1] * 6
    assert held_peak == 1
    assert counter.peak == 1
