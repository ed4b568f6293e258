"""The protocol-agnostic emulator: one request in, one response (or a transport fault) out.

Adapters (:mod:`._transport` for in-process httpx, :mod:`._asgi` for a real HTTP server) only move
bytes; every behaviour that a client must cope with lives here, so both see the same thing.

Order of checks, as on the real API: route (404) → authentication (401) → body and parameters
(400) → account rate limits (429, see :mod:`._ratelimit`) → injected fault (a scripted one first,
else drawn from the configured rates) → moderation (400) → generation. Only a request that reaches generation is billed, and it is billed when
generation starts: a client that hangs up, times out or loses the connection afterwards has still
paid, exactly the case clients get wrong.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import random
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from pydantic import ValidationError

from dagster_gptimage.images import CONTENT_TYPES, EXTENSIONS
from dagster_gptimage.models import MODEL_SPECS, EditRequest
from dagster_gptimage.pricing import estimate_usage

from ._batch_service import BatchService, Reply
from ._config import FAULT_KINDS, RATE_LIMIT_FIELDS, EmulatorConfig
from ._ratelimit import (
    AccountLimits,
    Rejection,
    format_duration,
    format_number,
    retry_after_headers,
)
from ._render import RenderSpec, render, renderable_formats
from ._wire import ApiError, Call, Endpoint, RawBody, decode_body, interpret

if TYPE_CHECKING:
    from dagster_gptimage.models import Usage

    from ._transport import EmulatorTransport

__all__ = [
    "IN_PROCESS_BASE_URL",
    "IN_PROCESS_ORIGIN",
    "Emulator",
    "EmulatorRequest",
    "EmulatorResponse",
    "EmulatorStats",
    "RecordedFile",
    "RecordedRequest",
    "get_emulator",
]

IN_PROCESS_ORIGIN = "http://emulator.localhost"
IN_PROCESS_BASE_URL = f"{IN_PROCESS_ORIGIN}/v1"

_REDACTED_HEADERS = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "proxy-authorization",
        "cookie",
        "ocp-apim-subscription-key",
    }
)
_SCHEMA_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})
_SCHEMA_FORMATS = frozenset({"png", "webp", "jpeg"})
_OPENAI_ROUTE = re.compile(r"(?:/openai)?(?:/v1)?/images/(?P<endpoint>generations|edits)")
_AZURE_ROUTE = re.compile(
    r"/openai/deployments/(?P<deployment>[^/]+)/images/(?P<endpoint>generations|edits)"
)
_FILE_ROUTE = re.compile(r"/_emulator/files/(?P<name>[0-9a-f]+\.[a-z]+)")
_LOGNORMAL_Z95 = 1.6448536269514722
_BIG_BODY = 256 * 1024
_B64_DATA_MARKER = "\x00b64-data\x00"
"""Stands in for ``data`` while the rest of a response is JSON-encoded: base64 needs no escaping,
and letting ``json.dumps`` scan megabytes of it for characters to escape took longer than encoding
the image, on the server's event loop."""
_ORGANIZATION = "org-emulator"
_UNLIMITED_HEADERS = [
    ("x-ratelimit-limit-requests", "250"),
    ("x-ratelimit-remaining-requests", "249"),
    ("x-ratelimit-reset-requests", "240ms"),
]
"""What the OpenAI profile reports when no account limit is configured (a generous tier)."""
_CLOUDFLARE_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class EmulatorRequest:
    """An HTTP request as the adapters see it. ``headers`` keys are matched case-insensitively;
    ``origin`` (scheme://host[:port]) is where the emulator's own download URLs point."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)
    origin: str = IN_PROCESS_ORIGIN


@dataclass(frozen=True)
class EmulatorResponse:
    """What to send back. ``fault`` asks the adapter to break the transport instead:
    "reset" drops the connection before any response byte, "truncate" sends the headers with the
    full Content-Length and then only part of ``body``."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    fault: Literal["reset", "truncate"] | None = None
    chunks: Iterator[bytes] | None = field(default=None, repr=False)
    """Streamed content (large files) instead of ``body``; with a fault it ends early, and the
    adapter then breaks the connection as ``fault`` says."""
    length: int | None = None
    """Content-Length of streamed content."""

    @property
    def content_length(self) -> int:
        return (
            self.length if self.chunks is not None and self.length is not None else len(self.body)
        )

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class RecordedFile:
    """An uploaded file, by fingerprint only."""

    field: str
    filename: str | None
    content_type: str | None
    sha256: str
    size: int


@dataclass
class RecordedRequest:
    """One API request as received (credentials redacted) and how it was answered.

    ``outcome`` is "ok", "error" (an HTTP error answer), a transport fault ("reset", "truncate"),
    or "cancelled" (the client gave up first: in-process timeouts, server disconnects).
    ``received_at`` is wall-clock time (``time.time()``), to measure achieved rates."""

    request_id: str
    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    headers: dict[str, str]
    fields: dict[str, Any] = field(default_factory=dict)
    files: list[RecordedFile] = field(default_factory=list)
    status: int | None = None
    fault: str | None = None
    billed: bool = False
    images: int = 0
    outcome: str | None = None
    rate_limited: bool = False
    received_at: float = 0.0


@dataclass
class EmulatorStats:
    """Counters since creation or the last ``Emulator.reset()``.

    ``requests`` counts image API requests (generations, edits and unroutable API calls);
    ``rate_limited`` those refused with 429 by the account limits (``images_per_minute``...; not
    billed, not in ``faults``, which counts injected faults); ``file_downloads`` counts gateway URL
    downloads; control endpoints are not counted. Files and Batches API calls are counted apart, in
    ``batch_calls`` (by operation, e.g. ``"batches.create"``), and batch lines billed (at the batch
    rate) in ``batch_lines_billed`` and ``batch_images_billed``, never in ``billed_requests``.
    """

    requests: int = 0
    requests_by_endpoint: Counter[str] = field(default_factory=Counter)
    billed_requests: int = 0
    billed_images: int = 0
    rate_limited: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    file_downloads: int = 0
    recorded: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=500))
    batch_calls: Counter[str] = field(default_factory=Counter)
    batch_lines_billed: int = 0
    batch_images_billed: int = 0

    @property
    def last(self) -> RecordedRequest | None:
        return self.recorded[-1] if self.recorded else None

    @property
    def sync_requests(self) -> int:
        """Requests that reached the synchronous image endpoints (any outcome)."""
        return self.requests_by_endpoint["generations"] + self.requests_by_endpoint["edits"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_endpoint": dict(self.requests_by_endpoint),
            "billed_requests": self.billed_requests,
            "billed_images": self.billed_images,
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
            "file_downloads": self.file_downloads,
            "sync_requests": self.sync_requests,
            "batch_calls": dict(self.batch_calls),
            "batch_lines_billed": self.batch_lines_billed,
            "batch_images_billed": self.batch_images_billed,
            "recorded": [asdict(item) for item in self.recorded],
        }


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
        self._limits = self._new_limits()
        self._rng = random.Random(self._config.seed)
        self._script: deque[str] = deque()
        self._files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
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
            if any(
                getattr(previous, name) != getattr(self._config, name) for name in RATE_LIMIT_FIELDS
            ):
                self._limits = self._new_limits()
            if "seed" in changes:
                self._rng = random.Random(self._config.seed)
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
        with self._lock:
            return tuple(self._script)

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one each, before any drawn at random.

        Kinds: see :data:`FAULT_KINDS` ("ok" = serve normally). A request consumes an entry once it
        has passed routing, authentication and parameter validation.
        """
        kinds = [str(kind) for kind in faults]
        unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; accepted: {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._script.extend(kinds)

    def reset(self) -> None:
        """Clear counters, the request log, pending scripted faults, stored files, batches and
        the batch clock; reseed; refill the rate limit buckets."""
        with self._lock:
            self._stats = EmulatorStats(recorded=deque(maxlen=self._config.max_recorded))
            self._limits = self._new_limits()
            self._script.clear()
            self._files.clear()
            self._rng = random.Random(self._config.seed)
        self._batches.clear()

    def _new_limits(self) -> AccountLimits | None:
        config = self._config
        if config.images_per_minute is None and config.tokens_per_minute is None:
            return None
        return AccountLimits(
            images_per_minute=config.images_per_minute,
            images_burst=config.images_burst,
            tokens_per_minute=config.tokens_per_minute,
            tokens_burst=config.tokens_burst,
            now=self._clock(),
        )

    def transport(self) -> EmulatorTransport:
        """An httpx transport serving this emulator in-process."""
        from ._transport import EmulatorTransport

        return EmulatorTransport(self)

    async def handle(self, request: EmulatorRequest) -> EmulatorResponse:
        """Answer one HTTP request."""
        request_id = f"req_emu_{next(self._ids):08x}"
        if request.path.startswith("/_emulator/"):
            return self._control(request, request_id)
        started = time.monotonic()
        if self._config.profile == "openai" and BatchService.matches(request.path):
            return await self._batch_api(request, request_id, started)
        record: RecordedRequest | None = None
        try:
            endpoint, deployment = self._route(request)
            record = self._record(request, request_id, endpoint)
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
        query = {key: values[-1] for key, values in parse_qs(request.query).items()}
        try:
            reply: Reply = await self._batches.handle(
                request.method.upper(), request.path, query, headers, request.body
            )
        except ApiError as error:
            return self._error(error, request_id, started)
        base = self._headers(request_id, started, "application/json")
        if reply.chunks is None:
            body = json.dumps(reply.payload).encode()
            return EmulatorResponse(reply.status, base, body)
        kept = tuple(item for item in base if item[0] != "content-type")
        fault: Literal["reset", "truncate"] | None = (
            "reset" if reply.fault == "reset" else "truncate" if reply.fault else None
        )
        return EmulatorResponse(
            reply.status,
            kept + reply.headers,
            b"",
            fault=fault,
            chunks=reply.chunks,
            length=reply.length,
        )

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
        images = [_render_cached(spec) for spec in _render_specs(call)]
        return self._success_body(call, images, IN_PROCESS_ORIGIN)[0]

    def _count_batch(self, call_name: str, *, lines: int = 0, images: int = 0) -> None:
        with self._lock:
            if call_name:
                self._stats.batch_calls[call_name] += 1
            self._stats.batch_lines_billed += lines
            self._stats.batch_images_billed += images

    def _route(self, request: EmulatorRequest) -> tuple[Endpoint, str | None]:
        path = request.path.rstrip("/") or "/"
        pattern = _AZURE_ROUTE if self._config.profile == "azure" else _OPENAI_ROUTE
        match = pattern.fullmatch(path)
        if match is None or request.method.upper() != "POST":
            with self._lock:
                self._stats.requests += 1
                self._stats.requests_by_endpoint["other"] += 1
            raise ApiError(404, f"Invalid URL ({request.method.upper()} {request.path})")
        endpoint: Endpoint = "edits" if match.group("endpoint") == "edits" else "generations"
        return endpoint, match.groupdict().get("deployment")

    def _record(
        self, request: EmulatorRequest, request_id: str, endpoint: Endpoint
    ) -> RecordedRequest:
        headers = {
            key.lower(): ("<redacted>" if key.lower() in _REDACTED_HEADERS else value)
            for key, value in request.headers.items()
        }
        record = RecordedRequest(
            request_id=request_id,
            method=request.method.upper(),
            path=request.path,
            endpoint=endpoint,
            query={key: values[-1] for key, values in parse_qs(request.query).items()},
            headers=headers,
            received_at=time.time(),
        )
        with self._lock:
            self._stats.requests += 1
            self._stats.requests_by_endpoint[record.endpoint] += 1
            self._stats.recorded.append(record)
        return record

    async def _serve(
        self,
        request: EmulatorRequest,
        request_id: str,
        record: RecordedRequest,
        endpoint: Endpoint,
        deployment: str | None,
        started: float,
    ) -> EmulatorResponse:
        config = self._config
        headers = {key.lower(): value for key, value in request.headers.items()}
        self._authenticate(headers, record.query)
        content_type = headers.get("content-type", "")
        deployment_model = None
        if deployment is not None:
            deployment_model = deployment if deployment in MODEL_SPECS else config.azure_model

        def parse() -> tuple[RawBody | None, Call | ApiError]:
            try:
                raw = decode_body(endpoint, content_type, request.body)
            except ApiError as error:
                return None, error
            try:
                return raw, interpret(
                    raw,
                    endpoint,
                    profile=config.profile,
                    deployment_model=deployment_model,
                    output_formats=renderable_formats(),
                )
            except ApiError as error:
                return raw, error

        if len(request.body) > _BIG_BODY:
            raw, outcome = await anyio.to_thread.run_sync(parse)
        else:
            raw, outcome = parse()
        if raw is not None:
            record.fields = dict(raw.fields)
            record.files = [
                RecordedFile(f.field, f.filename, f.content_type, f.sha256, len(f.data))
                for f in raw.files
            ]
        if isinstance(outcome, ApiError):
            raise outcome
        call = outcome
        rejection = self._admit(call)
        if rejection is not None:
            record.rate_limited = True
            raise self._throttle_error("429", rejection, call.request.model)

        fault, latency = self._draw()
        if fault != "ok":
            record.fault = fault
        if fault in ("429", "insufficient_quota"):
            self._count_fault(fault)
            raise self._throttle_error(fault)
        if fault in ("500", "502", "503"):
            self._count_fault(fault)
            await anyio.sleep(latency)
            raise self._server_error(fault)
        word = config.moderation_word
        if fault == "moderation" or (word and word.lower() in call.request.prompt.lower()):
            record.fault = "moderation"
            self._count_fault("moderation")
            raise self._moderation_error()

        with self._lock:
            self._stats.billed_requests += 1
            self._stats.billed_images += call.request.n
        record.billed = True
        record.images = call.request.n
        images = await self._generate(call, latency)
        if fault == "timeout":
            self._count_fault(fault)
            await anyio.sleep(config.hang_s)
        if fault in ("reset", "truncate"):
            self._count_fault(fault)
        body, media_type = self._success_body(call, images, request.origin)
        response_headers = self._headers(request_id, started, media_type)
        transport_fault = (
            "reset" if fault == "reset" else "truncate" if fault == "truncate" else None
        )
        return EmulatorResponse(200, response_headers, body, fault=transport_fault)

    def _authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        config = self._config
        if config.profile == "azure":
            if not query.get("api-version"):
                raise ApiError(404, "Resource not found", type=None, code="404")
            key = headers.get("api-key")
            bearer = _bearer(headers.get("authorization"))
            if not config.require_auth:
                return
            valid = (key or bearer) if config.api_key is None else config.api_key in (key, bearer)
            if not valid:
                raise ApiError(
                    401,
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                    "to provide a valid key for an active subscription and use a correct regional "
                    "API endpoint for your resource.",
                    type=None,
                    code="401",
                )
            return
        if not config.require_auth:
            return
        token = _bearer(headers.get("authorization"))
        if not token:
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if config.api_key is not None and token != config.api_key:
            raise ApiError(
                401,
                f"Incorrect API key provided: {_mask(token)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _admit(self, call: Call) -> Rejection | None:
        """Take the request's images and output tokens from the account's buckets, or refuse it
        (counted in ``stats.rate_limited``; nothing is billed)."""
        if self._limits is None:
            return None
        tokens = estimate_usage(call.concrete_request).output_image_tokens
        with self._lock:
            if self._limits is None:
                return None
            rejection = self._limits.admit(images=call.request.n, tokens=tokens, now=self._clock())
            if rejection is not None:
                self._stats.rate_limited += 1
        return rejection

    def _rate_limit_headers(self) -> tuple[tuple[str, str], ...]:
        with self._lock:
            return () if self._limits is None else self._limits.headers(self._clock())

    def _draw(self) -> tuple[str, float]:
        config = self._config
        with self._lock:
            if self._script:
                fault = self._script.popleft()
            else:
                fault = "ok"
                point = self._rng.random()
                for kind, rate in config.fault_rates():
                    if point < rate:
                        fault = (
                            self._rng.choice(("500", "502", "503"))
                            if kind == "server_error"
                            else kind
                        )
                        break
                    point -= rate
            if config.latency_distribution == "lognormal":
                mu = math.log(config.latency_p50_s)
                sigma = max(math.log(config.latency_p95_s) - mu, 0.0) / _LOGNORMAL_Z95
                latency = math.exp(self._rng.gauss(mu, sigma)) * config.latency_scale
            else:
                latency = config.latency_s
        return fault, latency

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._stats.faults[kind] += 1

    async def _generate(self, call: Call, latency: float) -> list[bytes]:
        """Render every image in worker threads while the latency elapses, so rendering is hidden
        inside the latency instead of adding to it."""
        specs = _render_specs(call)
        images: list[bytes] = [b""] * len(specs)

        async def render_one(index: int) -> None:
            images[index] = await anyio.to_thread.run_sync(render, specs[index])

        async with anyio.create_task_group() as group:
            for index in range(len(specs)):
                group.start_soon(render_one, index)
            await anyio.sleep(latency)
        return images

    def _success_body(self, call: Call, images: Sequence[bytes], origin: str) -> tuple[bytes, str]:
        request = call.request
        fmt = request.output_format
        size = f"{call.width}x{call.height}"
        usage = estimate_usage(call.concrete_request)
        if call.stream:
            return self._stream_body(call, images, size), "text/event-stream"
        encoded: list[str] = []
        data: Any
        if call.response_format == "url":
            data = [{"url": self._store_file(image, fmt, origin)} for image in images]
        else:
            encoded = [base64.b64encode(image).decode("ascii") for image in images]
            data = _B64_DATA_MARKER
        payload: dict[str, Any] = {
            "created": int(time.time()),
            "data": data,
            "background": call.background,
        }
        if fmt in _SCHEMA_FORMATS:
            payload["output_format"] = fmt
        payload["quality"] = call.quality
        if size in _SCHEMA_SIZES:
            payload["size"] = size
        payload["usage"] = _usage_json(usage)
        text = json.dumps(payload, separators=(",", ":"))
        if encoded:
            items = ",".join(f'{{"b64_json":"{item}"}}' for item in encoded)
            text = text.replace(json.dumps(_B64_DATA_MARKER), f"[{items}]", 1)
        return text.encode(), "application/json"

    def _stream_body(self, call: Call, images: Sequence[bytes], size: str) -> bytes:
        """Server-sent events like the real stream; partial images repeat the final image."""
        prefix = "image_edit" if call.endpoint == "edits" else "image_generation"
        single = estimate_usage(call.concrete_request.model_copy(update={"n": 1}))
        common = {
            "created_at": int(time.time()),
            "size": size if size in _SCHEMA_SIZES else "auto",
            "quality": call.quality,
            "background": call.background,
            "output_format": call.request.output_format,
        }
        chunks: list[str] = []
        for image in images:
            encoded = base64.b64encode(image).decode("ascii")
            for index in range(call.partial_images):
                event = {
                    "type": f"{prefix}.partial_image",
                    "b64_json": encoded,
                    **common,
                    "partial_image_index": index,
                }
                chunks.append(_sse(event))
            event = {
                "type": f"{prefix}.completed",
                "b64_json": encoded,
                **common,
                "usage": _usage_json(single),
            }
            chunks.append(_sse(event))
        return "".join(chunks).encode()

    def _store_file(self, data: bytes, fmt: str, origin: str) -> str:
        name = f"{secrets.token_hex(12)}.{EXTENSIONS[fmt]}"
        with self._lock:
            self._files[name] = (data, fmt)
            while len(self._files) > self._config.max_files:
                self._files.popitem(last=False)
        return f"{origin.rstrip('/')}/_emulator/files/{name}"

    def _headers(
        self, request_id: str, started: float, media_type: str
    ) -> tuple[tuple[str, str], ...]:
        headers = [
            ("content-type", media_type),
            ("x-request-id", request_id),
            ("openai-processing-ms", str(round((time.monotonic() - started) * 1000))),
        ]
        profile = self._config.profile
        limits = self._rate_limit_headers()
        if profile == "openai":
            headers.append(("openai-version", "2020-10-01"))
            if not any(key == "x-ratelimit-limit-requests" for key, _ in limits):
                headers += _UNLIMITED_HEADERS
        headers += limits
        if profile == "azure":
            headers.append(("apim-request-id", request_id))
        else:
            headers += [
                ("x-lumenfall-request-id", request_id),
                ("x-lumenfall-provider", "emulator"),
            ]
        return tuple(headers)

    def _error(self, error: ApiError, request_id: str, started: float) -> EmulatorResponse:
        if error.raw_body is not None:
            media_type, body = error.raw_body
        else:
            media_type, body = "application/json", json.dumps(error.body()).encode()
        headers = self._headers(request_id, started, media_type) + error.headers
        return EmulatorResponse(error.status, headers, body)

    def _throttle_error(
        self, kind: str, rejection: Rejection | None = None, model: str = ""
    ) -> ApiError:
        """A 429 (gateway quota: 402); ``rejection`` says which account limit refused the request,
        else it is an injected fault waiting ``retry_after_s``."""
        profile = self._config.profile
        if kind == "insufficient_quota":
            if profile == "gateway":
                return ApiError(
                    402,
                    "Insufficient balance: top up your account to continue.",
                    type="payment_required",
                    code="INSUFFICIENT_BALANCE",
                )
            return ApiError(
                429,
                "You exceeded your current quota, please check your plan and billing details. For "
                "more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                type="insufficient_quota",
                code="insufficient_quota",
            )
        if rejection is not None:
            wait = rejection.retry_after_s
            headers = retry_after_headers(wait)
        else:
            wait = self._config.retry_after_s
            headers = (
                ("retry-after", str(math.ceil(wait))),
                ("retry-after-ms", str(round(wait * 1000))),
            )
        if profile == "azure":
            return ApiError(
                429,
                "Requests to the Images_Generations_Create Operation have exceeded call rate limit of "
                f"your current pricing tier. Please retry after {math.ceil(wait)} seconds.",
                type=None,
                code="429",
                headers=headers,
            )
        if rejection is None:
            return ApiError(
                429,
                "Rate limit reached for images per minute (IPM): Limit 5, Used 5, Requested 1. "
                f"Please try again in {wait:g}s.",
                type="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        unit = "images per min (IPM)" if rejection.kind == "images" else "tokens per min (TPM)"
        return ApiError(
            429,
            f"Rate limit reached for {model} in organization {_ORGANIZATION} on {unit}: "
            f"Limit {format_number(rejection.per_minute)}, Used {rejection.used}, "
            f"Requested {rejection.requested}. Please try again in {format_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            type="requests" if rejection.kind == "images" else "tokens",
            code="rate_limit_exceeded",
            headers=headers,
        )

    def _server_error(self, kind: str) -> ApiError:
        gateway = self._config.profile == "gateway"
        if kind == "502":
            if gateway:
                return ApiError(
                    502,
                    "All providers failed to serve the request.",
                    type="server_error",
                    code="ALL_PROVIDERS_EXHAUSTED",
                )
            return ApiError(502, "Bad Gateway", type=None, raw_body=("text/html", _CLOUDFLARE_502))
        if kind == "503":
            return ApiError(
                503,
                "The engine is currently overloaded, please try again later.",
                type="server_error",
            )
        return ApiError(
            500,
            "The server had an error while processing your request. Sorry about that!",
            type="server_error",
        )

    def _moderation_error(self) -> ApiError:
        if self._config.profile == "azure":
            return ApiError(
                400,
                "Your request was rejected as a result of our safety system. Your prompt may contain "
                "text that is not allowed by our safety system.",
                type=None,
                param="prompt",
                code="contentFilter",
                extra={"inner_error": {"code": "ResponsibleAIPolicyViolation"}},
            )
        return ApiError(
            400,
            "Your request was rejected by the safety system. If you believe this is an error, "
            "contact us at help.openai.com and include the request ID.",
            type="image_generation_user_error",
            code="moderation_blocked",
            extra={"moderation_details": {"categories": ["emulated"]}},
        )

    def _control(self, request: EmulatorRequest, request_id: str) -> EmulatorResponse:
        """Control endpoints (no authentication: servers only listen on loopback)."""
        method = request.method.upper()
        path = request.path.rstrip("/")
        file_match = _FILE_ROUTE.fullmatch(path)
        try:
            if file_match and method in ("GET", "HEAD"):
                return self._download(file_match.group("name"), request_id)
            if path == "/_emulator/stats" and method == "GET":
                with self._lock:
                    payload = {
                        **self._stats.to_dict(),
                        "pending_faults": list(self._script),
                        "config": self._config.model_dump(exclude={"api_key"}),
                    }
                return _json_response(200, payload, request_id)
            if path == "/_emulator/clock" and method == "POST":
                advance = json.loads(request.body or b"{}").get("advance", 0)
                if not isinstance(advance, (int, float)) or advance < 0:
                    raise ValueError('the body must be {"advance": seconds >= 0}')
                self.advance_clock(float(advance))
                return _json_response(200, {"advanced_s": advance}, request_id)
            if path == "/_emulator/reset" and method == "POST":
                self.reset()
                return _json_response(200, {"ok": True}, request_id)
            if path == "/_emulator/script" and method == "POST":
                faults = json.loads(request.body or b"[]")
                if not isinstance(faults, list):
                    raise ValueError("the body must be a JSON list of fault kinds")
                self.script(faults)
                return _json_response(
                    200, {"pending_faults": list(self.pending_faults)}, request_id
                )
            if path == "/_emulator/config" and method == "POST":
                changes = json.loads(request.body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object of EmulatorConfig fields")
                config = self.configure(**changes)
                return _json_response(200, config.model_dump(exclude={"api_key"}), request_id)
        except (ValueError, ValidationError) as error:
            return _json_response(400, ApiError(400, str(error)).body(), request_id)
        return _json_response(
            404, ApiError(404, f"Invalid URL ({method} {request.path})").body(), request_id
        )

    def _download(self, name: str, request_id: str) -> EmulatorResponse:
        with self._lock:
            stored = self._files.get(name)
            if stored is not None:
                self._stats.file_downloads += 1
        if stored is None:
            return _json_response(
                404, ApiError(404, "File not found or expired.").body(), request_id
            )
        data, fmt = stored
        config = self._config
        media_type = config.file_content_type or CONTENT_TYPES[fmt]
        body = data + b"\0" * config.file_padding_bytes
        return EmulatorResponse(
            200, (("content-type", media_type), ("x-request-id", request_id)), body
        )


def _render_specs(call: Call) -> list[RenderSpec]:
    request = call.request
    edit = request if isinstance(request, EditRequest) else None
    inputs = (edit.images[0].data,) if edit else ()
    mask = edit.mask.data if edit and edit.mask else None
    return [
        RenderSpec(
            prompt=request.prompt,
            width=call.width,
            height=call.height,
            output_format=request.output_format,
            compression=request.output_compression,
            transparent=call.background == "transparent",
            inputs=inputs,
            mask=mask,
            index=index,
        )
        for index in range(request.n)
    ]


_RENDER_CACHE: OrderedDict[RenderSpec, bytes] = OrderedDict()
_RENDER_CACHE_LOCK = threading.Lock()
_RENDER_CACHE_SIZE = 8


def _render_cached(spec: RenderSpec) -> bytes:
    """Batches often repeat a prompt across lines; rendering is deterministic, so reuse it."""
    with _RENDER_CACHE_LOCK:
        cached = _RENDER_CACHE.get(spec)
        if cached is not None:
            _RENDER_CACHE.move_to_end(spec)
            return cached
    image = render(spec)
    with _RENDER_CACHE_LOCK:
        _RENDER_CACHE[spec] = image
        while len(_RENDER_CACHE) > _RENDER_CACHE_SIZE:
            _RENDER_CACHE.popitem(last=False)
    return image


def _json_response(status: int, payload: Any, request_id: str) -> EmulatorResponse:
    headers = (("content-type", "application/json"), ("x-request-id", request_id))
    return EmulatorResponse(status, headers, json.dumps(payload).encode())


def _sse(event: Mapping[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


def _usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_tokens_details": {
            "text_tokens": usage.input_text_tokens,
            "image_tokens": usage.input_image_tokens,
        },
        "output_tokens_details": {
            "image_tokens": usage.output_image_tokens,
            "text_tokens": usage.output_text_tokens,
        },
    }


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _mask(token: str) -> str:
    if len(token) < 12:
        return "*" * len(token)
    return f"{token[:3]}{'*' * (len(token) - 7)}{token[-4:]}"


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
