"""The Batch API client against the emulator, in-process and over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from dagster_gptimage import _batchfile as bf
from dagster_gptimage._batchapi import BatchAPI, BatchObject
from dagster_gptimage._providers import ProviderSettings
from dagster_gptimage.emulator import IN_PROCESS_BASE_URL, Emulator, run_server_in_thread
from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.models import GenerateRequest
from dagster_gptimage.pricing import DEFAULT_PRICES, cost_of_usage

pytestmark = pytest.mark.anyio


def items(count: int, blocked: int | None = None) -> list[bf.BatchItem]:
    made = []
    for index in range(count):
        prompt = "A forbidden scene" if index == blocked else f"A lighthouse, study {index}"
        request = GenerateRequest(prompt=prompt, size="1024x1024", quality="low")
        made.append(bf.BatchItem(f"2024-01-{index + 1:02d}|région", request, f"{index:064x}"))
    return made


class Tap(httpx.AsyncBaseTransport):
    """Forwards to ``inner``; ``rule(request, calls)`` may return "drop-after" (forward, then lose
    the answer), "strip-range" or "500" for a request."""

    def __init__(self, inner: httpx.AsyncBaseTransport, rule: Callable[[httpx.Request, int], str]):
        self.inner = inner
        self.rule = rule
        self.calls = 0
        self.ranges: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        action = self.rule(request, self.calls)
        if "range" in request.headers:
            self.ranges.append(request.headers["range"])
        if action == "500":
            return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
        if action == "strip-range" and "range" in request.headers:
            del request.headers["range"]
        response = await self.inner.handle_async_request(request)
        if action == "drop-after":
            await response.aread()
            raise httpx.ReadError("connection lost after the request was sent", request=request)
        return response


@contextlib.asynccontextmanager
async def api_for(
    emulator: Emulator,
    base_url: str = IN_PROCESS_BASE_URL,
    rule: Callable[[httpx.Request, int], str] | None = None,
) -> AsyncIterator[tuple[BatchAPI, Tap | None]]:
    settings = ProviderSettings.create("emulator", base_url=base_url)
    inner: httpx.AsyncBaseTransport = (
        emulator.transport() if base_url == IN_PROCESS_BASE_URL else httpx.AsyncHTTPTransport()
    )
    tap = Tap(inner, rule) if rule is not None else None
    async with BatchAPI.connect(
        settings, transport=tap or inner, wait_initial_s=0.0, wait_max_s=0.0
    ) as api:
        yield api, tap


@pytest.fixture(params=["in-process", "server"])
def where(request: pytest.FixtureRequest) -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(batch_completion_s=0.0, moderation_word="forbidden")
    if request.param == "in-process":
        yield emulator, IN_PROCESS_BASE_URL
        return
    with run_server_in_thread(emulator) as base_url:
        yield emulator, base_url


async def run_batch(api: BatchAPI, batch_items: list[bf.BatchItem], **metadata: str) -> BatchObject:
    settings = ProviderSettings.create("emulator")
    [batch_file] = list(bf.batch_files(batch_items, settings))
    uploaded = await api.upload(batch_file)
    created = await api.create(uploaded.id, batch_file.endpoint, metadata=metadata or None)
    assert created.status == "validating"
    batch = await api.retrieve(created.id)
    assert batch.terminal
    return batch


async def test_round_trip_maps_results_back(where: tuple[Emulator, str]) -> None:
    emulator, base_url = where
    batch_items = items(5, blocked=2)
    index = bf.custom_id_index(batch_items)
    async with api_for(emulator, base_url) as (api, _):
        batch = await run_batch(api, batch_items)
        results = [result async for result in api.results(batch)]
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
    by_key = {index[result.custom_id].partition_key: result for result in results}
    assert set(by_key) == {item.partition_key for item in batch_items}
    failure = by_key[batch_items[2].partition_key]
    assert isinstance(failure, bf.LineFailure)
    assert failure.reason == "moderation"
    successes = [r for r in results if isinstance(r, bf.LineSuccess)]
    assert len(successes) == 4
    prices = DEFAULT_PRICES["gpt-image-2"]
    for success in successes:
        assert success.images()[0][:8] == b"\x89PNG\r\n\x1a\n"
        assert success.cost(prices) == pytest.approx(cost_of_usage(success.usage, prices) * 0.5)
        assert success.usage.output_image_tokens == 196
    assert emulator.stats.sync_requests == 0
    assert emulator.stats.batch_lines_billed == 4


@pytest.mark.parametrize("fault", ["truncate", "reset"])
async def test_broken_downloads_resume_without_repeating_lines(
    where: tuple[Emulator, str], fault: str
) -> None:
    emulator, base_url = where
    async with api_for(emulator, base_url, rule=lambda request, calls: "") as (api, tap):
        batch = await run_batch(api, items(6))
        assert batch.output_file_id is not None
        clean = [line async for line in api.stream_lines(batch.output_file_id)]
        emulator.configure(
            batch_download_faults=2, batch_download_fault=fault, batch_download_fault_at=0.4
        )
        resumed = [line async for line in api.stream_lines(batch.output_file_id)]
    assert resumed == clean
    assert len(clean) == 6
    assert tap is not None
    assert len(tap.ranges) == 2, "each retry asked only for the rest"
    assert emulator.stats.batch_calls["files.content"] == 4


async def test_servers_ignoring_range_are_skipped_through(where: tuple[Emulator, str]) -> None:
    emulator, base_url = where
    async with api_for(emulator, base_url, rule=lambda request, calls: "strip-range") as (api, _):
        batch = await run_batch(api, items(6))
        assert batch.output_file_id is not None
        clean = [line async for line in api.stream_lines(batch.output_file_id)]
        emulator.configure(batch_download_faults=3, batch_download_fault_at=0.3)
        resumed = [line async for line in api.stream_lines(batch.output_file_id)]
    assert resumed == clean


async def test_a_create_whose_answer_was_lost_is_found_not_reposted() -> None:
    emulator = Emulator(batch_completion_s=0.0)

    def lose_first_create(request: httpx.Request, calls: int) -> str:
        creating = request.method == "POST" and request.url.path.endswith("/batches")
        return (
            "drop-after" if creating and emulator.stats.batch_calls["batches.create"] == 0 else ""
        )

    async with api_for(emulator, rule=lose_first_create) as (api, _):
        [batch_file] = list(bf.batch_files(items(2), ProviderSettings.create("emulator")))
        uploaded = await api.upload(batch_file)
        created = await api.create(uploaded.id, batch_file.endpoint)
        listed = await api.list(limit=100)
    assert emulator.stats.batch_calls["batches.create"] == 1
    assert [batch.id for batch in listed.data] == [created.id]
    assert created.input_file_id == uploaded.id


async def test_a_refused_create_is_not_retried() -> None:
    emulator = Emulator()
    async with api_for(emulator) as (api, _):
        with pytest.raises(InvalidRequestError, match="input_file_id"):
            await api.create("file-missing", "/v1/images/generations")
    assert emulator.stats.batch_calls["batches.create"] == 1


async def test_reads_are_retried_after_server_errors() -> None:
    emulator = Emulator(batch_completion_s=0.0)
    failures = {"left": 0}

    def rule(request: httpx.Request, calls: int) -> str:
        if request.method == "GET" and failures["left"] > 0:
            failures["left"] -= 1
            return "500"
        return ""

    async with api_for(emulator, rule=rule) as (api, _):
        batch = await run_batch(api, items(1))
        failures["left"] = 2
        again = await api.retrieve(batch.id)
    assert again.id == batch.id
    assert failures["left"] == 0
    assert emulator.stats.batch_calls["batches.retrieve"] == 2


async def test_kill_and_resume_finds_the_batch_by_metadata() -> None:
    emulator = Emulator(batch_completion_s=100.0)
    batch_items = items(3)
    async with api_for(emulator) as (api, _):
        [batch_file] = list(bf.batch_files(batch_items, ProviderSettings.create("emulator")))
        uploaded = await api.upload(batch_file)
        created = await api.create(uploaded.id, batch_file.endpoint, metadata={"run": "r-42"})
    emulator.advance_clock(200.0)
    async with api_for(emulator) as (api, _):
        found = await api.find(metadata={"run": "r-42"})
        assert found is not None
        assert await api.find(metadata={"run": "other"}) is None
        results = [result async for result in api.results(found)]
    assert found.id == created.id
    assert found.status == "completed"
    index = bf.custom_id_index(batch_items)
    assert sorted(index[r.custom_id].partition_key for r in results) == sorted(
        item.partition_key for item in batch_items
    )


async def test_cancel_twice_is_harmless() -> None:
    emulator = Emulator(batch_completion_s=100.0)
    async with api_for(emulator) as (api, _):
        [batch_file] = list(bf.batch_files(items(4), ProviderSettings.create("emulator")))
        uploaded = await api.upload(batch_file)
        created = await api.create(uploaded.id, batch_file.endpoint)
        emulator.advance_clock(30.0)
        first = await api.cancel(created.id)
        second = await api.cancel(created.id)
        emulator.advance_clock(20.0)
        final = await api.retrieve(created.id)
        results = [result async for result in api.results(final)]
    assert (first.status, second.status, final.status) == ("cancelling", "cancelling", "cancelled")
    reasons = sorted(r.reason if isinstance(r, bf.LineFailure) else "ok" for r in results)
    assert reasons == ["cancelled", "cancelled", "cancelled", "ok"]


def test_other_providers_are_refused() -> None:
    settings = ProviderSettings.create("gateway", api_key="sk-x")
    with pytest.raises(ValueError, match="OpenAI"):
        BatchAPI(httpx.AsyncClient(), settings)
