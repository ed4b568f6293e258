"""GPTImageClient: validated, retried, concurrency-bounded image requests that count their cost.

Every request is validated for the actual provider before anything is sent, so an invalid request
costs nothing. Retries follow the official SDK's rules, but an attempt that may have been billed
(the image was possibly generated even though we never received it) is counted and priced before
it is retried: a retry can double the bill, and the bill must say so.

The request path lives in private modules: ``_transport`` (per-loop pools, one exchange),
``_retry`` (verdicts and backoff), ``_responses`` (a 2xx answer to a result), ``_downloads``
(gateway image URLs) and ``_billing`` (the tally of a call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import ValidationError

from dagster_gptimage import _providers as providers
from dagster_gptimage import _retry, _transport
from dagster_gptimage._accounts import account_limiter
from dagster_gptimage._batchapi import BatchAPI
from dagster_gptimage._billing import Tally
from dagster_gptimage._exchange import Exchange
from dagster_gptimage._loop import LoopThread
from dagster_gptimage._ratelimit import RateLimitStats
from dagster_gptimage.images import load_input_image
from dagster_gptimage.models import (
    EditRequest,
    GenerateRequest,
    ImageRequest,
    ImageResult,
    InputImage,
    Provider,
)
from dagster_gptimage.pricing import PriceTable, estimate_cost
from dagster_gptimage.settings import ClientSettings
from dagster_gptimage.validation import validate_request

if TYPE_CHECKING:
    from collections.abc import Mapping

    from dagster_gptimage.emulator import Emulator

__all__ = ["GPTImageClient"]

_log = logging.getLogger("dagster_gptimage.client")
_T = TypeVar("_T")

ImageSource = bytes | str | os.PathLike[str] | InputImage


class GPTImageClient:
    """Async client for the GPT image endpoints of OpenAI, Azure OpenAI, an OpenAI-compatible
    gateway, or the emulator; every async method has a ``*_sync`` twin.

    Settings are a :class:`~dagster_gptimage.settings.ClientSettings`, or its fields as keyword
    arguments (``GPTImageClient(api_key=..., max_concurrency=4)``); keywords override ``settings``.
    ``transport`` (an httpx transport), ``emulator`` and ``default_headers`` wire the client up.

    ``provider="emulator"`` serves requests in-process (``emulator``, else the process-wide
    emulator named ``emulator_name``) unless a ``base_url`` without an ``emulator`` is given: then
    it talks HTTP to an emulator server, e.g. ``python -m dagster_gptimage.emulator``.

    ``max_concurrency`` bounds HTTP requests in flight (per event loop): a request's slot is free
    as soon as its answer's body has arrived, while the answer is decoded (a few at a time, within
    a bound on the bytes held, so memory stays bounded). ``images_per_minute`` adds a
    leaky-bucket rate limit, ``max_retries`` counts retries after the first attempt. The
    provider's own rate limit is learned from its answers (``x-ratelimit-*`` headers and 429s) and
    shared by every client of the process using the same account: requests are paced to it, and a
    429 waits (up to ``max_rate_limit_wait_s`` per request) instead of using a retry.
    ``retry_on_timeout`` is off by default because a timed-out request may still have generated,
    and billed, its image. Results and errors report attempts, possibly billed attempts and cost.
    """

    def __init__(
        self,
        settings: ClientSettings | None = None,
        *,
        emulator: Emulator | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        default_headers: Mapping[str, str] | None = None,
        **settings_kwargs: Any,
    ) -> None:
        self.settings = _validated(settings, settings_kwargs)
        s = self.settings
        self._settings = providers.ProviderSettings.create(
            s.provider,
            base_url=s.base_url,
            api_key=s.api_key or None,
            azure_deployment=s.azure_deployment,
            azure_api_version=s.azure_api_version,
            gateway_response_format=s.gateway_response_format,
        )
        self.prices = PriceTable(s.prices)
        self._exchange = Exchange(
            s, self._settings, self.prices, providers.base_headers(default_headers)
        )
        self._emulator: Emulator | None = emulator if s.provider == "emulator" else None
        in_process = s.provider == "emulator" and transport is None
        if in_process and (s.base_url is None or emulator is not None):
            from dagster_gptimage.emulator import EmulatorTransport, get_emulator

            if self._emulator is None:
                self._emulator = get_emulator(s.emulator_name, **(s.emulator_options or {}))
            transport = EmulatorTransport(self._emulator)
        # The provider limits the account, not this client: one governor per account and process.
        local = self._emulator if self._emulator is not None and in_process else transport
        self._gate = _transport.Gate(
            account_limiter(self._settings.base_url, self._settings.api_key, local),
            s.max_rate_limit_wait_s,
        )
        self._pools = _transport.LoopPools(
            _transport.PoolSettings(
                transport=transport,
                max_concurrency=s.max_concurrency,
                images_per_minute=s.images_per_minute,
                timeout_s=s.timeout_s,
                connect_timeout_s=s.connect_timeout_s,
                trust_env=s.provider != "emulator",
            )
        )
        self._lock = threading.Lock()
        self._background: LoopThread | None = None
        self._finalizer: weakref.finalize | None = None

    # --- introspection -------------------------------------------------------------------------

    @property
    def provider(self) -> Provider:
        return self.settings.provider

    @property
    def model(self) -> str:
        return self.settings.model

    def __getattr__(self, name: str) -> Any:
        """Every other setting reads through to :attr:`settings` (``client.max_concurrency`` …),
        so the settings are declared once, in ``ClientSettings``; the key is not exposed."""
        if name != "api_key" and name in ClientSettings.model_fields:
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def rate_limit_stats(self) -> RateLimitStats:
        """What the provider's rate limit has done so far to this process's requests to this
        client's account (all clients of the process on that account count): 429 answers, time
        waited, requests sent, the limit learned and the current pace."""
        return self._gate.account.stats()

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def emulator(self) -> Emulator | None:
        """The in-process emulator serving this client (provider="emulator"), else None."""
        return self._emulator

    def __repr__(self) -> str:
        return (
            f"GPTImageClient(provider={self.provider!r}, base_url={self.base_url!r}, "
            f"model={self.model!r}, max_concurrency={self.max_concurrency}, "
            f"max_retries={self.max_retries})"
        )

    # --- request building (no I/O) -------------------------------------------------------------

    def build_generate(self, prompt: str, **params: Any) -> GenerateRequest:
        """A validated generation request; the client's model is the default. Sends nothing."""
        params.setdefault("model", self.model)
        request = GenerateRequest(prompt=prompt, **params)
        validate_request(request, provider=self.provider)
        return request

    def build_edit(
        self,
        prompt: str,
        images: Sequence[ImageSource] | ImageSource,
        mask: ImageSource | None = None,
        **params: Any,
    ) -> EditRequest:
        """A validated edit request; ``images`` are paths, bytes or InputImage. Sends nothing."""
        if isinstance(images, (bytes, bytearray, str, os.PathLike, InputImage)):
            images = [images]
        inputs = tuple(_input_image(source, f"images[{i}]") for i, source in enumerate(images))
        mask_image = None if mask is None else _input_image(mask, "mask")
        params.setdefault("model", self.model)
        request = EditRequest(prompt=prompt, images=inputs, mask=mask_image, **params)
        validate_request(request, provider=self.provider)
        return request

    def estimate_cost(self, request: ImageRequest, *, batch: bool = False) -> float:
        """Pre-flight USD estimate of one attempt of ``request`` (all ``n`` images); ``batch=True``
        at Batch API prices."""
        return estimate_cost(request, self.prices, batch=batch)

    def batch_api(self) -> contextlib.AbstractAsyncContextManager[BatchAPI]:
        """The Files and Batches endpoints of this client's provider (OpenAI or the emulator), on a
        connection of their own, closed on exit: ``async with client.batch_api() as api: ...``."""
        return BatchAPI.connect(
            self._settings,
            emulator=self._emulator,
            timeout_s=self.timeout_s,
        )

    # --- async API -----------------------------------------------------------------------------

    async def generate(self, prompt: str, **params: Any) -> ImageResult:
        return await self._execute(self.build_generate(prompt, **params))

    async def edit(
        self,
        prompt: str,
        images: Sequence[ImageSource] | ImageSource,
        mask: ImageSource | None = None,
        **params: Any,
    ) -> ImageResult:
        # Building an edit decodes every input image: keep that off the event loop.
        request = await asyncio.to_thread(self.build_edit, prompt, images, mask, **params)
        return await self._execute(request)

    async def execute(
        self, request: ImageRequest, *, on_answer: Callable[[], None] | None = None
    ) -> ImageResult:
        """Validate ``request`` for this provider, send it, retry what is worth retrying.

        ``on_answer`` is called (once, on the event loop) as soon as a successful answer's body has
        arrived, before it is decoded and verified: from then on the call holds no HTTP request
        slot, so a caller that bounds its own calls can start the next one. The call may still
        fail afterwards (an undecodable image is retried).

        Raises a :class:`~dagster_gptimage.errors.GPTImageError` subclass carrying ``attempts``,
        ``possibly_billed_attempts`` and ``cost_usd`` (the estimate of attempts that may have been
        billed) when every attempt failed.
        """
        if isinstance(request, EditRequest):
            await asyncio.to_thread(validate_request, request, provider=self.provider)
        else:
            validate_request(request, provider=self.provider)
        return await self._execute(request, on_answer)

    async def _execute(
        self, request: ImageRequest, on_answer: Callable[[], None] | None = None
    ) -> ImageResult:
        """``execute`` for a request already validated for this provider."""
        estimate = self.estimate_cost(request)
        prepared = self._exchange.prepare(request)
        state = self._state()
        tally = Tally()
        gate = self._gate
        answered = _Once(on_answer) if on_answer is not None else None

        async def once() -> ImageResult:
            async with contextlib.AsyncExitStack() as body_slot:
                return await self._exchange.attempt(
                    state, request, prepared, tally, estimate, body_slot, gate, answered
                )

        hook = _retry.retry_hook(tally, self.max_retries + 1)
        try:
            async for attempt in _retry.attempts(hook, None):
                with attempt:
                    return await _retry.through_rate_limits(
                        once,
                        tally,
                        max_wait_s=gate.max_wait_s,
                        on_wait=gate.account.waited_after_429,
                    )
        except _retry.AttemptFailed as failed:
            raise tally.charge(self._exchange.scrubbed(failed.error), self.provider) from None
        raise AssertionError("unreachable: stamina yields at least one attempt")

    # --- sync twins ----------------------------------------------------------------------------

    def generate_sync(self, prompt: str, **params: Any) -> ImageResult:
        request = self.build_generate(prompt, **params)
        return self._run_sync(self._execute(request))

    def edit_sync(
        self,
        prompt: str,
        images: Sequence[ImageSource] | ImageSource,
        mask: ImageSource | None = None,
        **params: Any,
    ) -> ImageResult:
        request = self.build_edit(prompt, images, mask, **params)
        return self._run_sync(self._execute(request))

    def execute_sync(self, request: ImageRequest) -> ImageResult:
        return self._run_sync(self.execute(request))

    def _run_sync(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._background is None:
                self._background = LoopThread("dagster-gptimage-client").start()
                # A forgotten client must not keep its thread alive: stop it when collected.
                self._finalizer = weakref.finalize(self, self._background.stop)
            background = self._background
        return background.run(coro)

    # --- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool of the running loop (and the sync twins' private loop)."""
        state = self._pools.pop(asyncio.get_running_loop())
        if state is not None:
            await state.http.aclose()
        if self._background is not None:
            await asyncio.to_thread(self._close_background)
        self._pools.close_orphans()

    def close(self) -> None:
        """Release every pool and the private loop thread. The client stays usable afterwards."""
        self._close_background()
        self._pools.close_orphans()

    def _close_background(self) -> None:
        with self._lock:
            background, self._background = self._background, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if background is None:
            return
        state = self._pools.pop(background.loop)
        if state is not None and background.thread.is_alive():
            try:
                background.run(state.http.aclose())
            except Exception:
                _log.debug("closing the private loop's HTTP client failed", exc_info=True)
        background.stop()

    async def __aenter__(self) -> GPTImageClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> GPTImageClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------------------

    @property
    def _states(self) -> dict[int, _transport.LoopState]:
        return self._pools.states

    def _state(self) -> _transport.LoopState:
        return self._pools.state()


class _Once:
    """A callback that runs on the first call only (a call's later attempts answer again)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    def __call__(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def _validated(settings: ClientSettings | None, overrides: dict[str, Any]) -> ClientSettings:
    """``settings`` with keyword overrides, validated; a clear error names a bad or unknown field."""
    fields = ClientSettings.model_fields
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(
            f"GPTImageClient got unknown setting(s) {', '.join(map(repr, unknown))}. "
            f"Accepted: {', '.join(fields)}, emulator, transport, default_headers"
        )
    if settings is not None and not overrides:
        return settings.client_settings()
    values = {} if settings is None else settings.client_settings().model_dump()
    try:
        return ClientSettings(**{**values, **overrides})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}={e.get('input')!r}: {e['msg']}"
            if e["loc"] and e["loc"][0] != "api_key"
            else f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ValueError(f"invalid GPTImageClient settings: {problems}") from None


def _input_image(source: ImageSource, field: str) -> InputImage:
    if isinstance(source, InputImage):
        return source
    if isinstance(source, bytearray):
        source = bytes(source)
    return load_input_image(source, field=field)
