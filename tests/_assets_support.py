"""Helpers shared by the asset tests: emulator-backed resources and partition-range runs."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from PIL import Image

from dagster_gptimage.emulator import Emulator, get_emulator
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

RANGE_START = ASSET_PARTITION_RANGE_START_TAG
RANGE_END = ASSET_PARTITION_RANGE_END_TAG
SMALL = "1024x640"
"""A gpt-image-2 size the emulator renders quickly."""


def unique_name(prefix: str = "assets") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def emulator_resources(
    store_dir: Path | str,
    *,
    emulator_name: str | None = None,
    emulator_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> tuple[dict[str, Any], Emulator]:
    """Resources for an image asset run against a fresh in-process emulator, and that emulator.

    Keyword options go to the resource (``max_concurrency`` …) when they are resource fields,
    otherwise to the emulator's config (``moderation_word`` …); ``emulator_options`` always go to
    the emulator.
    """
    name = emulator_name or unique_name("emu")
    resource_fields = set(GPTImageResource.model_fields)
    resource_options = {k: v for k, v in options.items() if k in resource_fields}
    config = {k: v for k, v in options.items() if k not in resource_fields}
    emulator = get_emulator(name, **config, **(emulator_options or {}))
    resource = GPTImageResource(provider="emulator", emulator_name=name, **resource_options)
    return {"gptimage": resource, "image_store": ImageStore(base_url=str(store_dir))}, emulator


def materialize_range(
    assets: Sequence[dg.AssetsDefinition],
    resources: Mapping[str, Any],
    start: str,
    end: str,
    *,
    instance: dg.DagsterInstance,
    selection: Any = None,
    run_config: Any = None,
) -> dg.ExecuteInProcessResult:
    """One run over the partition range ``start``..``end``: what a single-run backfill launches."""
    return dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        tags={RANGE_START: start, RANGE_END: end},
        selection=selection,
        run_config=run_config,
        raise_on_error=False,
    )


def materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, *, run_id: str | None = None
) -> dict[str, dg.AssetMaterialization]:
    """The latest materialization of each partition (of one run when ``run_id`` is given)."""
    latest: dict[str, dg.AssetMaterialization] = {}
    records = instance.fetch_materializations(key, limit=10_000, ascending=True).records
    for record in records:
        if run_id is not None and record.run_id != run_id:
            continue
        materialization = record.asset_materialization
        assert materialization is not None
        assert materialization.partition is not None
        latest[materialization.partition] = materialization
    return latest


def step_failure_message(result: dg.ExecuteInProcessResult) -> str:
    messages = [
        event.step_failure_data.error.message
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error is not None
    ]
    assert messages, "expected a step failure"
    return "\n".join(messages)


def check_evaluations(result: dg.ExecuteInProcessResult) -> list[Any]:
    return [
        event.event_specific_data
        for event in result.all_events
        if event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]


def value(metadata: Mapping[str, Any], key: str) -> Any:
    entry = metadata[key]
    return entry.value if hasattr(entry, "value") else entry


def png_bytes(size: tuple[int, int], color: Any = (200, 30, 30, 255), mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(size: tuple[int, int]) -> bytes:
    """A valid edit mask: opaque except a transparent square in the middle."""
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    w, h = size
    image.paste((0, 0, 0, 0), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class HTTPInFlight:
    """Counts HTTP requests in flight at every in-process emulator: from the moment a request
    reaches it until the client has read and closed the answer's body."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.started = 0

    def install(self, monkeypatch: Any) -> HTTPInFlight:
        from dagster_gptimage.emulator import EmulatorTransport

        original = EmulatorTransport.handle_async_request
        counter = self

        async def counted(transport: EmulatorTransport, request: Any) -> Any:
            counter.now += 1
            counter.started += 1
            counter.peak = max(counter.peak, counter.now)
            try:
                response = await original(transport, request)
            except BaseException:
                counter.now -= 1
                raise
            response.stream = _ClosingStream(response.stream, counter)
            return response

        monkeypatch.setattr(EmulatorTransport, "handle_async_request", counted)
        return self


class _ClosingStream(httpx.AsyncByteStream):
    """An answer's body stream that ends its request's count when the client closes it."""

    def __init__(self, inner: Any, counter: HTTPInFlight) -> None:
        self._inner = inner
        self._counter: HTTPInFlight | None = counter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            counter, self._counter = self._counter, None
            if counter is not None:
                counter.now -= 1
