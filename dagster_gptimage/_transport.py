"""HTTP transport of the client: per-event-loop pools and limits, and one bounded exchange.

asyncio primitives and connection pools belong to one event loop, and a client may be used from
several (its sync face's private loop, the caller's, successive ``asyncio.run`` calls), so every
loop gets its own :class:`LoopState`, dropped when the loop is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from dagster_gptimage import _providers as providers
from dagster_gptimage import _retry
from dagster_gptimage._accounts import AccountLimiter, Ticket
from dagster_gptimage._billing import Tally
from dagster_gptimage._bytebudget import ByteBudget
from dagster_gptimage.errors import RateLimitError

__all__ = [
    "BODY_SLOTS",
    "HELD_BODY_BYTES",
    "LoopPools",
    "LoopState",
    "PoolSettings",
    "Prepared",
    "send",
]

BODY_SLOTS = 2
"""Responses parsed and decoded at once per event loop. Decoding is CPU-bound, so more would not
make a small machine faster, and each decode of a 4K PNG holds its 15 MB of base64 text, an 11 MB
image and a 33 MB bitmap. Gateway URL downloads run in their response's slot."""

HELD_BODY_BYTES = 64 * 2**20
"""Response bytes held in memory at once per event loop: bodies read and waiting for a decode slot
or being decoded. A request's HTTP slot (``max_concurrency``) is free as soon as its body is in
hand, so the next request starts while the answer is decoded; the bodies beyond this bound wait in
their sockets instead, still holding their HTTP slot (a backfill's answers often arrive together:
16 bodies of 1024x1024 PNGs, 2 MB each, fit; of 4K PNGs, 15 MB each, four). A body larger than
the bound is read alone; one of unknown length counts as the whole bound."""


@dataclass(frozen=True)
class Prepared:
    """An HTTP request body, built once per logical call and sent by every attempt."""

    url: str
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: list[providers.FormFile] | None = None


@dataclass
class LoopState:
    """Per-event-loop resources: asyncio primitives and connection pools cannot cross loops."""

    loop: weakref.ReferenceType[asyncio.AbstractEventLoop]
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    limiter: AsyncLimiter | None
    held: ByteBudget
    """Bytes of response bodies in hand, up to ``HELD_BODY_BYTES``."""
    decoding: asyncio.Semaphore
    """Answers being parsed and decoded, up to ``BODY_SLOTS``."""


@dataclass(frozen=True)
class PoolSettings:
    transport: httpx.AsyncBaseTransport | None
    max_concurrency: int
    images_per_minute: float | None
    timeout_s: float
    connect_timeout_s: float
    trust_env: bool


class LoopPools:
    """The :class:`LoopState` of every event loop that used the client (thread-safe)."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.states: dict[int, LoopState] = {}
        self._lock = threading.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    def state(self) -> LoopState:
        """The running loop's state, created on first use (dropping those of closed loops)."""
        loop = asyncio.get_running_loop()
        key = id(loop)
        with self._lock:
            state = self.states.get(key)
            if state is not None and state.loop() is loop:
                return state
            for other_key, other in list(self.states.items()):
                other_loop = other.loop()
                if other_loop is None or other_loop.is_closed():
                    del self.states[other_key]
            state = self.states[key] = self._new_state(loop)
            return state

    def _new_state(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        s = self.settings
        # Gateway URL downloads need connections beside the requests in flight.
        limits = httpx.Limits(
            max_connections=s.max_concurrency + BODY_SLOTS,
            max_keepalive_connections=s.max_concurrency + BODY_SLOTS,
        )
        http = httpx.AsyncClient(
            transport=s.transport,
            limits=limits,
            timeout=httpx.Timeout(s.timeout_s, connect=s.connect_timeout_s),
            headers={"User-Agent": providers.USER_AGENT},
            follow_redirects=False,
            trust_env=s.trust_env,
        )
        limiter = AsyncLimiter(s.images_per_minute, 60) if s.images_per_minute else None
        return LoopState(
            loop=weakref.ref(loop),
            http=http,
            semaphore=asyncio.Semaphore(s.max_concurrency),
            limiter=limiter,
            held=ByteBudget(HELD_BODY_BYTES),
            decoding=asyncio.Semaphore(BODY_SLOTS),
        )

    def pop(self, loop: asyncio.AbstractEventLoop) -> LoopState | None:
        with self._lock:
            state = self.states.get(id(loop))
            if state is not None and state.loop() is loop:
                del self.states[id(loop)]
                return state
            return None

    def close_orphans(self) -> None:
        """Drop pools whose loop is gone; close those on a loop that is running in this thread."""
        with self._lock:
            states = list(self.states.items())
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for key, state in states:
            loop = state.loop()
            if loop is None or loop.is_closed():
                with self._lock:
                    self.states.pop(key, None)
            elif loop is running:
                with self._lock:
                    self.states.pop(key, None)
                task = loop.create_task(state.http.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)


@dataclass(frozen=True)
class Gate:
    """The account's rate-limit governor and how long one call may wait for it in all."""

    account: AccountLimiter
    max_wait_s: float


async def send(
    state: LoopState,
    prepared: Prepared,
    headers: Mapping[str, str],
    images: int,
    tally: Tally,
    failure: Callable[[httpx.TransportError, bool], _retry.AttemptFailed],
    body_slot: contextlib.AsyncExitStack,
    gate: Gate,
) -> tuple[int, httpx.Headers, bytes, Ticket]:
    """One HTTP exchange under the concurrency bound, the explicit cap and the account's
    rate-limit governor (``images`` long); a transport failure becomes ``failure(exc, sent)``,
    ``sent`` telling whether the server may have started generating. The HTTP slot
    (``max_concurrency``) is held from before sending until the body is in hand, and no longer:
    the body's bytes are held in ``state.held`` (entered on ``body_slot``, released when the caller
    is done with the answer). The caller reports the answer on the returned ticket."""
    async with state.semaphore:
        if state.limiter is not None:
            await state.limiter.acquire(min(float(images), state.limiter.max_rate))
        await _pass_gate(gate, images, tally)
        ticket = gate.account.ticket(images)
        tally.start_attempt()
        http_request = state.http.build_request(
            "POST",
            prepared.url,
            json=prepared.json,
            data=prepared.data,
            files=prepared.files,
            headers=dict(headers),
        )
        try:
            response = await state.http.send(http_request, stream=True)
        except BaseException as exc:
            gate.account.abandoned(ticket)
            if isinstance(exc, httpx.TransportError):
                raise failure(exc, True) from None
            raise
        try:
            await body_slot.enter_async_context(state.held.hold(_body_size(response)))
            body = await response.aread()
        except BaseException as exc:
            gate.account.abandoned(ticket)
            if isinstance(exc, httpx.TransportError):
                raise failure(exc, response.is_success) from None
            raise
        finally:
            await response.aclose()
        return response.status_code, response.headers, body, ticket


def _body_size(response: httpx.Response) -> int:
    """The body's declared length; unknown (chunked, or a bad header) counts as the whole bound."""
    try:
        return int(response.headers.get("content-length", ""))
    except ValueError:
        return HELD_BODY_BYTES


async def _pass_gate(gate: Gate, images: int, tally: Tally) -> None:
    """Wait for the account's governor, within what is left of the call's rate-limit budget."""
    budget = gate.max_wait_s - tally.rate_limit_wait_s
    try:
        waited = await gate.account.acquire(images, budget_s=budget, exempt_pause=tally.pause)
    except TimeoutError as exc:
        wait = float(exc.args[0]) if exc.args else budget
        tally.rate_limit_wait_s += max(0.0, min(wait, budget))
        raise _retry.AttemptFailed(
            RateLimitError(
                f"gave up waiting for the provider's rate limit: this request would have waited "
                f"{tally.rate_limit_wait_s + max(0.0, wait - budget):.0f}s in all, more than "
                f"max_rate_limit_wait_s={gate.max_wait_s:g} (raise it, or lower the load on "
                "this account)",
                code="rate_limit_wait_exceeded",
            ),
            retry=False,
        ) from None
    tally.rate_limit_wait_s += waited
