"""The protocol-agnostic emulator: one request in, one response (or a transport fault) out.

Adapters (:mod:`._transport` for in-process httpx, :mod:`._asgi` for a real HTTP server) only move
bytes; every behaviour that a client must cope with lives here, so both see the same thing.

Order of checks, as on the real API: route (404) → authentication (401) → body and parameters
(400) → account rate limits (429, see :mod:`._ratelimit`) → injected fault (a scripted one first,
else drawn from the configured rates) → moderation (400) → generation. Only a request that reaches
generation is billed, and it is billed when generation starts: a client that hangs up, times out or
loses the connection afterwards has still paid, exactly the case clients get wrong.

The answers themselves are built elsewhere: :mod:`._auth` (401s), :mod:`._faults` (fault draw and
fault answers), :mod:`._bodies` (success bodies), :mod:`._control` (``/_emulator/`` endpoints);
this module holds the state they act on and the order they act in.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from dagster_gptimage.models import MODEL_SPECS

from . import _bodies, _faults
from ._account import Account
from ._auth import authenticate
from ._batch_service import BatchService
from ._config import EmulatorConfig
from ._control import control
from ._downloads import Downloads
from ._messages import (
    IN_PROCESS_ORIGIN,
    EmulatorRequest,
    EmulatorResponse,
    error_response,
    response_headers,
    route,
)
from ._ratelimit import Rejection
from ._render import renderable_formats
from ._stats import EmulatorStats, RecordedRequest, new_record, query_of
from ._wire import ApiError, Call, Endpoint, RawBody, decode_body, interpret, read_call

if TYPE_CHECKING:
    from ._transport import EmulatorTransport

__all__ = ["Emulator", "get_emulator"]

_BIG_BODY = 256 * 1024


def _config_from(
    config: EmulatorConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> EmulatorConfig:
    base = config.model_dump() if isinstance(config, EmulatorConfig) else dict(config or {})
    return EmulatorConfig.model_validate({**base, **overrides})


class Emulator:
    """An offline imitation of the GPT image API with scriptable faults and billing counters.

    Thread-safe: one instance may serve an in-process client, a server thread and Dagster runs
    at the same time (see :func:`get_emulator` for the process-wide instances); they all share its
    account limits. ``clock`` (monotonic seconds) drives those limits; tests may pass their own.
    """

    def __init__(
        self,
        config: EmulatorConfig | Mapping[str, Any] | None = None,
        /,
        *,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._config = _config_from(config, overrides)
        self._account = Account(self._config, clock)
        self._faults = _faults.FaultPlan(self._config.seed)
        self._downloads = Downloads()
        self._ids = itertools.count(1)
        self._stats = EmulatorStats(recorded=deque(maxlen=self._config.max_recorded))
        self._batches = BatchService(self)

    def __repr__(self) -> str:
        return f"Emulator(profile={self._config.profile!r}, requests={self._stats.requests})"

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change settings in place (validated); a new ``seed`` restarts the random draws."""
        with self._lock:
            previous, self._config = self._config, _config_from(self._config, changes)
            self._account.reconfigure(previous, self._config)
            if "seed" in changes:
                self._faults.reseed(self._config.seed)
            if self._stats.recorded.maxlen != self._config.max_recorded:
                self._stats.recorded = deque(self._stats.recorded, maxlen=self._config.max_recorded)
            config = self._config
        if "batch_download_faults" in changes:
            self._batches.rearm_download_faults()
        return config

    def advance_clock(self, seconds: float) -> None:
        """Move the Batch API's clock forward: batches progress, and expire, as if that much time
        had passed (a 24 h completion window in a test)."""
        self._batches.advance(seconds)

    @property
    def stats(self) -> EmulatorStats:
        """The live counters (read them after the requests you care about have finished)."""
        return self._stats

    @property
    def pending_faults(self) -> tuple[str, ...]:
        return self._faults.pending

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one each, before any drawn at random.

        Kinds: see :data:`FAULT_KINDS` ("ok" = serve normally). A request consumes an entry once it
        has passed routing, authentication and parameter validation.
        """
        self._faults.extend(faults)

    def reset(self) -> None:
        """Clear counters, the request log, pending scripted faults, stored files, batches and
        the batch clock; reseed; refill the rate limit buckets."""
        with self._lock:
            self._stats = EmulatorStats(recorded=deque(maxlen=self._config.max_recorded))
            self._account.refill(self._config)
            self._faults.reseed(self._config.seed, clear=True)
            self._downloads.clear()
        self._batches.clear()

    def transport(self) -> EmulatorTransport:
        """An httpx transport serving this emulator in-process."""
        from ._transport import EmulatorTransport

        return EmulatorTransport(self)

    async def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        """Answer one HTTP request."""
        request_id = f"req_emu_{next(self._ids):08x}"
        if request.path.startswith("/_emulator/"):
            return control(self, request, request_id)
        started = time.monotonic()
        if self._config.profile == "openai" and BatchService.matches(request.path):
            return await self._batch_api(request, request_id, started)
        record: RecordedRequest | None = None
        try:
            endpoint, deployment = self._route(request)
            record = new_record(request, request_id, endpoint)
            with self._lock:
                self._stats.requests += 1
                self._stats.requests_by_endpoint[record.endpoint] += 1
                self._stats.recorded.append(record)
            response = await self._serve(request, request_id, record, endpoint, deployment, started)
        except ApiError as error:
            response = self._error(error, request_id, started)
        except BaseException:
            if record is not None:
                record.outcome = "cancelled"
            raise
        if record is not None:
            record.status = response.status
            record.outcome = response.fault or ("ok" if response.status < 400 else "error")
        return response

    async def _batch_api(
        self, request: EmulatorRequest, request_id: str, started: float
    ) -> EmulatorResponse:
        """Files and Batches endpoints (openai profile), served by :class:`BatchService`."""
        headers = {key.lower(): value for key, value in request.headers.items()}
        try:
            reply = await self._batches.handle(
                request.method.upper(), request.path, query_of(request), headers, request.body
            )
        except ApiError as error:
            return self._error(error, request_id, started)
        return reply.response(self._headers(request_id, started, "application/json"))

    def _interpret_line(self, url: str, body: bytes) -> Call:
        """A batch line's body, checked like a synchronous request to ``url``."""
        endpoint: Endpoint = "edits" if url.endswith("/edits") else "generations"
        raw = decode_body(endpoint, "application/json", body)
        return interpret(
            raw,
            endpoint,
            profile=self._config.profile,
            deployment_model=None,
            output_formats=renderable_formats(),
        )

    def _batch_body(self, call: Call) -> bytes:
        """The ImagesResponse of a batch line (rendered now; equal images come from a cache)."""
        images = [_bodies.render_cached(spec) for spec in _bodies.render_specs(call)]
        return _bodies.success_body(call, images, self._file_store(IN_PROCESS_ORIGIN))[0]

    def _count_batch(self, call_name: str, *, lines: int = 0, images: int = 0) -> None:
        with self._lock:
            if call_name:
                self._stats.batch_calls[call_name] += 1
            self._stats.batch_lines_billed += lines
            self._stats.batch_images_billed += images

    def _route(self, request: EmulatorRequest) -> tuple[Endpoint, str | None]:
        routed = route(self._config.profile, request.method, request.path)
        if routed is None:
            with self._lock:
                self._stats.requests += 1
                self._stats.requests_by_endpoint["other"] += 1
            raise ApiError(404, f"Invalid URL ({request.method.upper()} {request.path})")
        return routed

    async def _serve(
        self,
        request: EmulatorRequest,
        request_id: str,
        record: RecordedRequest,
        endpoint: Endpoint,
        deployment: str | None,
        started: float,
    ) -> EmulatorResponse:
        headers = {key.lower(): value for key, value in request.headers.items()}
        authenticate(self._config, headers, record.query)
        call = await self._parse(
            request, headers.get("content-type", ""), endpoint, deployment, record
        )
        rejection = self._admit(call)
        if rejection is not None:
            record.rate_limited = True
            raise _faults.throttle_error(self._config, "429", rejection, call.request.model)
        fault, latency = await self._inject(call, record)
        with self._lock:
            self._stats.billed_requests += 1
            self._stats.billed_images += call.request.n
        record.billed = True
        record.images = call.request.n
        images = await _bodies.generate(call, latency)
        if fault == "timeout":
            self._count_fault(fault)
            await anyio.sleep(self._config.hang_s)
        if fault in ("reset", "truncate"):
            self._count_fault(fault)
        body, media_type = _bodies.success_body(call, images, self._file_store(request.origin))
        response_headers = self._headers(request_id, started, media_type)
        transport_fault = (
            "reset" if fault == "reset" else "truncate" if fault == "truncate" else None
        )
        return EmulatorResponse(200, response_headers, body, fault=transport_fault)

    async def _parse(
        self,
        request: EmulatorRequest,
        content_type: str,
        endpoint: Endpoint,
        deployment: str | None,
        record: RecordedRequest,
    ) -> Call:
        """The request's call, its body kept in ``record`` even when a rule refuses it (400).

        Large bodies (edits with big inputs) are decoded in a worker thread, off the event loop."""
        deployment_model = None
        if deployment is not None:
            deployment_model = deployment if deployment in MODEL_SPECS else self._config.azure_model

        def parse() -> tuple[RawBody | None, Call | ApiError]:
            return read_call(
                endpoint,
                content_type,
                request.body,
                profile=self._config.profile,
                deployment_model=deployment_model,
                output_formats=renderable_formats(),
            )

        if len(request.body) > _BIG_BODY:
            raw, outcome = await anyio.to_thread.run_sync(parse)
        else:
            raw, outcome = parse()
        if raw is not None:
            record.record_body(raw)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    async def _inject(self, call: Call, record: RecordedRequest) -> tuple[str, float]:
        """Draw the fault and latency; raise the faults answered before generation (throttling,
        server errors after the latency, moderation). The rest are the caller's to apply."""
        config = self._config
        fault, latency = self._draw()
        if fault != "ok":
            record.fault = fault
        if fault in ("429", "insufficient_quota"):
            self._count_fault(fault)
            raise _faults.throttle_error(config, fault)
        if fault in ("500", "502", "503"):
            self._count_fault(fault)
            await anyio.sleep(latency)
            raise _faults.server_error(config.profile, fault)
        word = config.moderation_word
        if fault == "moderation" or (word and word.lower() in call.request.prompt.lower()):
            record.fault = "moderation"
            self._count_fault("moderation")
            raise _faults.moderation_error(config.profile)
        return fault, latency

    def _admit(self, call: Call) -> Rejection | None:
        """The account's refusal of ``call`` (counted in ``stats.rate_limited``; nothing is
        billed), or None."""
        rejection = self._account.admit(call)
        if rejection is not None:
            with self._lock:
                self._stats.rate_limited += 1
        return rejection

    def _draw(self) -> tuple[str, float]:
        return self._faults.draw(self._config)

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._stats.faults[kind] += 1

    def _file_store(self, origin: str) -> Callable[[bytes, str], str]:
        return lambda data, fmt: self._downloads.store(data, fmt, origin, self._config.max_files)

    def _take_download(self, name: str) -> tuple[bytes, str] | None:
        """A stored image and its format, counted as a download; None once it has expired."""
        stored = self._downloads.get(name)
        if stored is not None:
            with self._lock:
                self._stats.file_downloads += 1
        return stored

    def _stats_payload(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._stats.to_dict(),
                "pending_faults": list(self._faults.pending),
                "config": self._config.model_dump(exclude={"api_key"}),
            }

    def _headers(
        self, request_id: str, started: float, media_type: str
    ) -> tuple[tuple[str, str], ...]:
        limits = self._account.headers()
        return response_headers(self._config.profile, request_id, started, media_type, limits)

    def _error(self, error: ApiError, request_id: str, started: float) -> EmulatorResponse:
        return error_response(error, lambda media: self._headers(request_id, started, media))


_REGISTRY: dict[str, Emulator] = {}
_REGISTRY_LOCK = threading.Lock()


def get_emulator(name: str = "default", **config: Any) -> Emulator:
    """The process-wide emulator called ``name``, created on first use.

    Dagster runs executed in-process and the tests that launch them share it, so counters seen by
    a test include the run's requests. Passing ``config`` to an existing emulator updates it.
    """
    with _REGISTRY_LOCK:
        emulator = _REGISTRY.get(name)
        if emulator is None:
            emulator = _REGISTRY[name] = Emulator(**config)
            return emulator
    if config:
        emulator.configure(**config)
    return emulator
