"""GPTImageClient: validated, retried, concurrency-bounded image requests that count their cost.

Every request is validated for the actual provider before anything is sent, so an invalid request
costs nothing. Retries follow the official SDK's rules, but an attempt that may have been billed
(the image was possibly generated even though we never received it) is counted and priced before
it is retried: a retry can double the bill, and the bill must say so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import unquote_to_bytes, urljoin

import httpx
import stamina
from aiolimiter import AsyncLimiter

from dagster_gptimage import _providers as providers
from dagster_gptimage.errors import (
    GPTImageError,
    GPTImageTimeoutError,
    InvalidImageError,
    ProviderError,
)
from dagster_gptimage.images import inspect_image, load_input_image
from dagster_gptimage.models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageRequest,
    ImageResult,
    InputImage,
    Provider,
    Usage,
)
from dagster_gptimage.pricing import PriceTable, cost_of_usage, estimate_cost
from dagster_gptimage.validation import validate_request

if TYPE_CHECKING:
    from dagster_gptimage.emulator import Emulator

__all__ = ["GPTImageClient"]

_log = logging.getLogger("dagster_gptimage.client")
_T = TypeVar("_T")

ImageSource = bytes | str | os.PathLike[str] | InputImage

_WAIT_INITIAL_S = 0.5
_WAIT_MAX_S = 8.0
_WAIT_JITTER_S = 1.0
_DOWNLOAD_ATTEMPTS = 3
_BODY_SLOTS = 2
"""Responses read, parsed and decoded at once per event loop. A 4K PNG arrives as a 15 MB body,
becomes 15 MB of base64 text, an 11 MB image and a 33 MB bitmap while it is verified; when many
answers arrive together (a backfill's requests often share one latency), the other bodies wait in
their sockets instead of all being decoded in memory at once. Decoding is CPU-bound, so more slots
would not make a small machine faster either. Gateway URL downloads run in their response's slot."""
_MAX_REDIRECTS = 5

_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
)
"""Transport failures that happen before the request fully reached the server: never billed."""
_FINAL_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)
"""Transport failures that are configuration mistakes: retrying cannot help."""


class _AttemptFailed(Exception):
    """One failed attempt and the verdict on retrying it (read by the stamina hook)."""

    def __init__(self, error: GPTImageError, *, retry: bool, wait_s: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry = retry
        self.wait_s = wait_s

    def __repr__(self) -> str:
        return f"{type(self.error).__name__}({self.error})"


@dataclass
class _Tally:
    """What one logical call has done so far, across its attempts."""

    attempts: int = 0
    billed_failures: int = 0
    unconfirmed_cost_usd: float = 0.0
    confirmed_cost_usd: float = 0.0
    started: float | None = None
    request_id: str | None = None

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started


@dataclass
class _LoopState:
    """Per-event-loop resources: asyncio primitives and connection pools cannot cross loops."""

    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    limiter: AsyncLimiter | None
    bodies: asyncio.Semaphore


@dataclass(frozen=True)
class _Prepared:
    url: str
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: list[providers.FormFile] | None = None


class _BackgroundLoop:
    """A private event loop on a daemon thread, so the sync methods work from plain code and from
    threads that already run a loop (Jupyter) without nesting loops."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self._run, name="dagster-gptimage-client", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a sync GPTImageClient method was called from the client's own event loop; "
                "use the async method instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self.thread:
                self.thread.join()
        if not self.thread.is_alive():
            self.loop.close()


class GPTImageClient:
    """Async client for the GPT image endpoints of OpenAI, Azure OpenAI, an OpenAI-compatible
    gateway, or the emulator; every async method has a ``*_sync`` twin.

    ``provider="emulator"`` serves requests in-process (``emulator``, else the process-wide
    ``get_emulator("default")``) unless a ``base_url`` without an ``emulator`` is given: then it
    talks HTTP to an emulator server, e.g. ``python -m dagster_gptimage.emulator``.

    ``max_concurrency`` bounds requests in flight (per event loop), ``images_per_minute`` adds a
    leaky-bucket rate limit, ``max_retries`` counts retries after the first attempt.
    ``retry_on_timeout`` is off by default because a timed-out request may still have generated,
    and billed, its image. Results and errors report attempts, possibly billed attempts and cost.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        provider: Provider = "openai",
        base_url: str | None = None,
        model: str = "gpt-image-2",
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 4,
        retry_on_timeout: bool = False,
        max_retry_wait_s: float = 120.0,
        max_concurrency: int = 8,
        images_per_minute: float | None = None,
        prices: PriceTable | Mapping[str, Any] | None = None,
        azure_deployment: str | None = None,
        azure_api_version: str = "2025-04-01-preview",
        gateway_response_format: Literal["b64_json", "url"] = "b64_json",
        max_download_bytes: int = 64 * 2**20,
        allow_insecure_downloads: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        emulator: Emulator | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be >= 0")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r} must be >= 1")
        if images_per_minute is not None and images_per_minute <= 0:
            raise ValueError(f"images_per_minute={images_per_minute!r} must be > 0 or None")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeout_s and connect_timeout_s must be > 0")
        if max_download_bytes < 1:
            raise ValueError(f"max_download_bytes={max_download_bytes!r} must be >= 1")
        self._settings = providers.ProviderSettings.create(
            provider,
            base_url=base_url,
            api_key=api_key,
            azure_deployment=azure_deployment,
            azure_api_version=azure_api_version,
            gateway_response_format=gateway_response_format,
        )
        self.provider: Provider = provider
        self.model = model
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max_retries
        self.retry_on_timeout = retry_on_timeout
        self.max_retry_wait_s = max_retry_wait_s
        self.max_concurrency = max_concurrency
        self.images_per_minute = images_per_minute
        self.max_download_bytes = max_download_bytes
        self.allow_insecure_downloads = allow_insecure_downloads
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable(prices)
        self._headers = providers.base_headers(default_headers)
        self._emulator: Emulator | None = emulator if provider == "emulator" else None
        in_process = provider == "emulator" and transport is None
        if in_process and (base_url is None or emulator is not None):
            from dagster_gptimage.emulator import EmulatorTransport, get_emulator

            self._emulator = emulator if emulator is not None else get_emulator("default")
            transport = EmulatorTransport(self._emulator)
        self._transport = transport
        self._states: dict[int, _LoopState] = {}
        self._lock = threading.Lock()
        self._background: _BackgroundLoop | None = None
        self._finalizer: weakref.finalize | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # --- introspection -------------------------------------------------------------------------

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

    def estimate_cost(self, request: ImageRequest) -> float:
        """Pre-flight USD estimate of one attempt of ``request`` (all ``n`` images)."""
        return estimate_cost(request, self.prices)

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

    async def execute(self, request: ImageRequest) -> ImageResult:
        """Validate ``request`` for this provider, send it, retry what is worth retrying.

        Raises a :class:`~dagster_gptimage.errors.GPTImageError` subclass carrying ``attempts``,
        ``possibly_billed_attempts`` and ``cost_usd`` (the estimate of attempts that may have been
        billed) when every attempt failed.
        """
        if isinstance(request, EditRequest):
            await asyncio.to_thread(validate_request, request, provider=self.provider)
        else:
            validate_request(request, provider=self.provider)
        return await self._execute(request)

    async def _execute(self, request: ImageRequest) -> ImageResult:
        """``execute`` for a request already validated for this provider."""
        estimate = self.estimate_cost(request)
        prepared = self._prepare(request)
        state = self._state()
        tally = _Tally()
        try:
            async for attempt in stamina.retry_context(
                on=self._retry_hook(tally),
                attempts=self.max_retries + 1,
                timeout=None,
                wait_initial=_WAIT_INITIAL_S,
                wait_max=_WAIT_MAX_S,
                wait_jitter=_WAIT_JITTER_S,
            ):
                with attempt:
                    async with contextlib.AsyncExitStack() as body_slot:
                        return await self._attempt(
                            state, request, prepared, tally, estimate, body_slot
                        )
        except _AttemptFailed as failed:
            error = self._scrubbed(failed.error)
            error.provider = error.provider or self.provider
            error.request_id = error.request_id or tally.request_id
            error.attempts = tally.attempts
            error.possibly_billed_attempts = tally.billed_failures
            error.cost_usd = tally.unconfirmed_cost_usd + tally.confirmed_cost_usd
            raise error from None
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
                self._background = _BackgroundLoop()
                # A forgotten client must not keep its thread alive: stop it when collected.
                self._finalizer = weakref.finalize(self, self._background.stop)
            background = self._background
        return background.run(coro)

    # --- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool of the running loop (and the sync twins' private loop)."""
        loop = asyncio.get_running_loop()
        state = self._pop_state(loop)
        if state is not None:
            await state.http.aclose()
        if self._background is not None:
            await asyncio.to_thread(self._close_background)
        self._close_orphans()

    def close(self) -> None:
        """Release every pool and the private loop thread. The client stays usable afterwards."""
        self._close_background()
        self._close_orphans()

    def _close_background(self) -> None:
        with self._lock:
            background, self._background = self._background, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if background is None:
            return
        state = self._pop_state(background.loop)
        if state is not None and background.thread.is_alive():
            try:
                background.run(state.http.aclose())
            except Exception:
                _log.debug("closing the private loop's HTTP client failed", exc_info=True)
        background.stop()

    def _close_orphans(self) -> None:
        """Drop pools whose loop is gone; close those on a loop that is running in this thread."""
        with self._lock:
            states = list(self._states.items())
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for key, state in states:
            loop = state.loop()
            if loop is None or loop.is_closed():
                with self._lock:
                    self._states.pop(key, None)
            elif loop is running:
                with self._lock:
                    self._states.pop(key, None)
                task = loop.create_task(state.http.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

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

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        key = id(loop)
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.loop() is loop:
                return state
            for other_key, other in list(self._states.items()):
                other_loop = other.loop()
                if other_loop is None or other_loop.is_closed():
                    del self._states[other_key]
            # Gateway URL downloads need connections beside the requests in flight.
            limits = httpx.Limits(
                max_connections=self.max_concurrency + _BODY_SLOTS,
                max_keepalive_connections=self.max_concurrency + _BODY_SLOTS,
            )
            http = httpx.AsyncClient(
                transport=self._transport,
                limits=limits,
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                headers={"User-Agent": providers.USER_AGENT},
                follow_redirects=False,
                trust_env=self.provider != "emulator",
            )
            limiter = AsyncLimiter(self.images_per_minute, 60) if self.images_per_minute else None
            state = _LoopState(
                loop=weakref.ref(loop),
                http=http,
                semaphore=asyncio.Semaphore(self.max_concurrency),
                limiter=limiter,
                bodies=asyncio.Semaphore(_BODY_SLOTS),
            )
            self._states[key] = state
            return state

    def _pop_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState | None:
        with self._lock:
            state = self._states.get(id(loop))
            if state is not None and state.loop() is loop:
                del self._states[id(loop)]
                return state
            return None

    def _prepare(self, request: ImageRequest) -> _Prepared:
        if isinstance(request, EditRequest):
            data, files = providers.edit_form(request, self._settings)
            return _Prepared(
                url=providers.endpoint_url(self._settings, "edits"), data=data, files=files
            )
        return _Prepared(
            url=providers.endpoint_url(self._settings, "generations"),
            json=providers.generation_body(request, self._settings),
        )

    def _retry_hook(self, tally: _Tally) -> Callable[[Exception], bool | float]:
        max_attempts = self.max_retries + 1

        def hook(exc: Exception) -> bool | float:
            if not isinstance(exc, _AttemptFailed) or not exc.retry:
                return False
            if tally.attempts >= max_attempts:
                return False
            _log.warning(
                "GPT image request attempt %d/%d failed (%s); retrying %s",
                tally.attempts,
                max_attempts,
                exc.error,
                "with exponential backoff" if exc.wait_s is None else f"in {exc.wait_s:.3g}s",
                extra={
                    "gptimage_attempt": tally.attempts,
                    "gptimage_wait_s": exc.wait_s,
                    "gptimage_error": type(exc.error).__name__,
                },
            )
            return True if exc.wait_s is None else exc.wait_s

        return hook

    def _scrubbed(self, error: GPTImageError) -> GPTImageError:
        """Remove the key from provider-supplied text: some proxies echo the credential back."""
        key = self._settings.api_key
        if key:
            error.message = error.message.replace(key, "***")
            error.args = (error.message,)
            if error.param:
                error.param = error.param.replace(key, "***")
            if error.code:
                error.code = error.code.replace(key, "***")
        return error

    def _billed_failure(self, tally: _Tally, estimate: float) -> None:
        tally.billed_failures += 1
        tally.unconfirmed_cost_usd += estimate

    async def _attempt(
        self,
        state: _LoopState,
        request: ImageRequest,
        prepared: _Prepared,
        tally: _Tally,
        estimate: float,
        body_slot: contextlib.AsyncExitStack,
    ) -> ImageResult:
        """One HTTP attempt; its response is read and processed in a body slot (``_BODY_SLOTS``)
        that ``body_slot`` releases when the attempt is over."""
        status, headers, body = await self._send(
            state, request, prepared, tally, estimate, body_slot
        )
        tally.request_id = providers.request_id_from(headers, self.provider) or tally.request_id
        if not 200 <= status < 300:
            raise self._http_failure(status, headers, body)
        try:
            parsed = providers.parse_images_body(body)
        except ValueError as exc:
            self._billed_failure(tally, estimate)
            raise _AttemptFailed(
                ProviderError(
                    f"HTTP {status} with an unusable body (possibly billed): {exc}",
                    status_code=status,
                    code="invalid_response",
                    request_id=tally.request_id,
                ),
                retry=True,
            ) from None
        # A 4K image is a 15 MB body and a 15 MB base64 text: drop each as soon as it is consumed,
        # or every image in flight holds both while it is decoded.
        del body

        usage_known = isinstance(parsed.usage, Mapping)
        usage = Usage.from_api(parsed.usage if usage_known else None)
        if usage_known:
            attempt_cost = cost_of_usage(usage, self.prices.for_model(request.model))
            attempt_unconfirmed = 0.0
        else:
            attempt_cost = attempt_unconfirmed = estimate

        images: list[GeneratedImage] = []
        for index, datum in enumerate(parsed.data):
            if datum.b64_json:
                encoded, datum.b64_json = datum.b64_json, None
                try:
                    data = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError):
                    self._billed_failure(tally, estimate)
                    raise _AttemptFailed(
                        ProviderError(
                            f"data[{index}].b64_json is not valid base64 (possibly billed)",
                            status_code=status,
                            code="invalid_response",
                            request_id=tally.request_id,
                        ),
                        retry=True,
                    ) from None
                del encoded
            else:
                try:
                    data = await self._download(state, datum.url or "", index)
                except ProviderError as error:
                    # The provider generated (and billed) the image; only the download failed, and
                    # generating again would bill again.
                    tally.billed_failures += 1
                    tally.confirmed_cost_usd += attempt_cost - attempt_unconfirmed
                    tally.unconfirmed_cost_usd += attempt_unconfirmed
                    error.request_id = error.request_id or tally.request_id
                    raise _AttemptFailed(error, retry=False) from None
            try:
                info = await asyncio.to_thread(inspect_image, data, field=f"data[{index}]")
            except InvalidImageError as exc:
                self._billed_failure(tally, estimate)
                raise _AttemptFailed(
                    ProviderError(
                        f"the provider returned an undecodable image (possibly billed): {exc}",
                        status_code=status,
                        code="invalid_image",
                        request_id=tally.request_id,
                    ),
                    retry=True,
                ) from None
            images.append(
                GeneratedImage(
                    data=data,
                    format=info.format,
                    width=info.width,
                    height=info.height,
                    revised_prompt=datum.revised_prompt,
                )
            )
        if len(images) != request.n:
            _log.warning("asked for n=%d images, the provider returned %d", request.n, len(images))
        return ImageResult(
            images=tuple(images),
            usage=usage,
            cost_usd=attempt_cost + tally.unconfirmed_cost_usd + tally.confirmed_cost_usd,
            unconfirmed_cost_usd=attempt_unconfirmed + tally.unconfirmed_cost_usd,
            latency_s=tally.elapsed(),
            attempts=tally.attempts,
            possibly_billed_attempts=tally.billed_failures + 1,
            request_id=tally.request_id,
            model=request.model,
            provider=self.provider,
            created=parsed.created,
        )

    async def _send(
        self,
        state: _LoopState,
        request: ImageRequest,
        prepared: _Prepared,
        tally: _Tally,
        estimate: float,
        body_slot: contextlib.AsyncExitStack,
    ) -> tuple[int, httpx.Headers, bytes]:
        """One HTTP exchange under the concurrency bound; transport failures become verdicts. The
        body is read once a body slot is free (held in ``body_slot``)."""
        async with state.semaphore:
            if state.limiter is not None:
                await state.limiter.acquire(min(float(request.n), state.limiter.max_rate))
            if tally.started is None:
                tally.started = time.monotonic()
            tally.attempts += 1
            headers = {**self._headers, **providers.auth_headers(self._settings)}
            http_request = state.http.build_request(
                "POST",
                prepared.url,
                json=prepared.json,
                data=prepared.data,
                files=prepared.files,
                headers=headers,
            )
            try:
                response = await state.http.send(http_request, stream=True)
            except httpx.TransportError as exc:
                raise self._transport_failure(exc, tally, estimate, sent=True) from None
            try:
                await body_slot.enter_async_context(state.bodies)
                body = await response.aread()
            except httpx.TransportError as exc:
                raise self._transport_failure(
                    exc, tally, estimate, sent=response.is_success
                ) from None
            finally:
                await response.aclose()
            return response.status_code, response.headers, body

    def _transport_failure(
        self, exc: httpx.TransportError, tally: _Tally, estimate: float, *, sent: bool
    ) -> _AttemptFailed:
        """``sent``: the server may have started generating (a 2xx status arrived, or the request
        left completely and the answer never came), so the attempt may be billed."""
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, _FINAL_TRANSPORT):
            return _AttemptFailed(
                ProviderError(f"cannot reach {self.base_url}: {detail}", code="transport_error"),
                retry=False,
            )
        if isinstance(exc, _NOT_SENT):
            return _AttemptFailed(
                ProviderError(
                    f"connection to {self.base_url} failed before the request was sent: {detail}",
                    code="connection_error",
                ),
                retry=True,
            )
        if not sent:
            return _AttemptFailed(
                ProviderError(
                    f"connection lost while reading an error response: {detail}",
                    code="connection_error",
                ),
                retry=True,
            )
        self._billed_failure(tally, estimate)
        if isinstance(exc, httpx.ReadTimeout):
            return _AttemptFailed(
                GPTImageTimeoutError(
                    f"no complete response within timeout_s={self.timeout_s:g}; the image may "
                    "still have been generated and billed"
                    + ("" if self.retry_on_timeout else " (not retried: retry_on_timeout=False)"),
                    code="timeout",
                ),
                retry=self.retry_on_timeout,
            )
        return _AttemptFailed(
            ProviderError(
                f"connection dropped after the request was sent (possibly billed): {detail}",
                code="connection_dropped",
            ),
            retry=True,
        )

    def _http_failure(self, status: int, headers: httpx.Headers, body: bytes) -> _AttemptFailed:
        error = self._scrubbed(providers.error_from_response(status, headers, body, self.provider))
        retry = providers.is_retryable_error(error, headers)
        wait = providers.parse_retry_after(headers) if retry else None
        if wait is not None and wait <= 0:
            wait = None
        if wait is not None and wait > self.max_retry_wait_s:
            error.message = (
                f"{error.message} — not retried: the provider asked to wait {wait:.0f}s, "
                f"more than max_retry_wait_s={self.max_retry_wait_s:g}"
            )
            error.args = (error.message,)
            retry, wait = False, None
        return _AttemptFailed(error, retry=retry, wait_s=wait)

    async def _download(self, state: _LoopState, url: str, index: int) -> bytes:
        """Fetch a gateway's image URL without credentials, over https (or loopback), with a
        size cap. Transport hiccups are retried: fetching again costs nothing."""
        if url.startswith("data:"):
            return _decode_data_url(url, index)
        try:
            async for attempt in stamina.retry_context(
                on=_RetryableDownload,
                attempts=_DOWNLOAD_ATTEMPTS,
                timeout=None,
                wait_initial=_WAIT_INITIAL_S,
                wait_max=_WAIT_MAX_S,
            ):
                with attempt:
                    return await self._download_once(state, url, index)
        except _RetryableDownload as exc:
            raise exc.error from None
        raise AssertionError("unreachable: stamina yields at least one attempt")

    async def _download_once(self, state: _LoopState, url: str, index: int) -> bytes:
        for _hop in range(_MAX_REDIRECTS + 1):
            providers.check_download_url(url, allow_insecure=self.allow_insecure_downloads)
            request = state.http.build_request("GET", url, headers={"Accept": "image/*"})
            # Bounded by the body slot of the response that named the URL, not by the requests in
            # flight: waiting for one of those while holding a body slot could deadlock.
            try:
                response = await state.http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise _RetryableDownload(
                    ProviderError(
                        f"downloading data[{index}] failed: {type(exc).__name__}: {exc}",
                        code="download_failed",
                    )
                ) from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return await self._read_image_body(response, index)
            finally:
                await response.aclose()
        raise ProviderError(
            f"downloading data[{index}] failed: more than {_MAX_REDIRECTS} redirects",
            code="download_failed",
        )

    async def _read_image_body(self, response: httpx.Response, index: int) -> bytes:
        status = response.status_code
        if status >= 500 or status in (408, 429):
            raise _RetryableDownload(
                ProviderError(
                    f"downloading data[{index}] failed: HTTP {status}",
                    status_code=status,
                    code="download_failed",
                )
            )
        if not response.is_success:
            raise ProviderError(
                f"downloading data[{index}] failed: HTTP {status} (the URL may have expired)",
                status_code=status,
                code="download_failed",
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise ProviderError(
                f"downloading data[{index}] returned content-type {content_type or 'none'!r}, "
                "not an image",
                code="download_not_image",
            )
        cap = self.max_download_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ProviderError(
                f"data[{index}] is {int(declared)} bytes, over max_download_bytes={cap}",
                code="download_too_large",
            )
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise ProviderError(
                        f"data[{index}] exceeds max_download_bytes={cap}; download aborted",
                        code="download_too_large",
                    )
                chunks.append(chunk)
        except httpx.TransportError as exc:
            raise _RetryableDownload(
                ProviderError(
                    f"downloading data[{index}] failed: {type(exc).__name__}: {exc}",
                    code="download_failed",
                )
            ) from None
        return b"".join(chunks)


class _RetryableDownload(Exception):
    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error))
        self.error = error


def _decode_data_url(url: str, index: int) -> bytes:
    header, _, payload = url.partition(",")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise ProviderError(
            f"data[{index}] is a malformed data: URL", code="invalid_response"
        ) from None


def _input_image(source: ImageSource, field: str) -> InputImage:
    if isinstance(source, InputImage):
        return source
    if isinstance(source, bytearray):
        source = bytes(source)
    return load_input_image(source, field=field)
