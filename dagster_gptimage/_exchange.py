"""One attempt of a call, end to end: prepare, send, judge the answer, read the result.

:class:`Exchange` holds what every attempt of a client needs (where to send, the headers with the
key, how to judge failures, prices and download limits); the client drives the attempts with its
retry policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from dagster_gptimage import _providers as providers
from dagster_gptimage import _responses, _retry, _transport
from dagster_gptimage._billing import Tally
from dagster_gptimage._downloads import Downloader
from dagster_gptimage.errors import GPTImageError, RateLimitError
from dagster_gptimage.models import EditRequest, ImageRequest, ImageResult
from dagster_gptimage.pricing import PriceTable
from dagster_gptimage.settings import ClientSettings

__all__ = ["Exchange"]


@dataclass(frozen=True)
class Exchange:
    """The fixed part of every attempt of one client; the key stays out of its ``repr``."""

    settings: ClientSettings
    provider: providers.ProviderSettings
    prices: PriceTable
    headers: dict[str, str] = field(repr=False)

    def prepare(self, request: ImageRequest) -> _transport.Prepared:
        """The HTTP body of ``request``, built once and sent by every attempt."""
        if isinstance(request, EditRequest):
            data, files = providers.edit_form(request, self.provider)
            url = providers.endpoint_url(self.provider, "edits")
            return _transport.Prepared(url=url, data=data, files=files)
        return _transport.Prepared(
            url=providers.endpoint_url(self.provider, "generations"),
            json=providers.generation_body(request, self.provider),
        )

    def scrubbed(self, error: GPTImageError) -> GPTImageError:
        """Remove the key from provider-supplied text: some proxies echo the credential back."""
        key = self.provider.api_key
        if key:
            error.message = error.message.replace(key, "***")
            error.args = (error.message,)
            if error.param:
                error.param = error.param.replace(key, "***")
            if error.code:
                error.code = error.code.replace(key, "***")
        return error

    async def attempt(
        self,
        state: _transport.LoopState,
        request: ImageRequest,
        prepared: _transport.Prepared,
        tally: Tally,
        estimate: float,
        body_slot: contextlib.AsyncExitStack,
        gate: _transport.Gate,
        on_answer: Callable[[], None] | None = None,
    ) -> ImageResult:
        """One HTTP attempt. Its HTTP slot is free once the body is in hand; a 2xx body is then
        decoded in a decode slot (``BODY_SLOTS``), and its bytes stay counted in
        ``HELD_BODY_BYTES``, until ``body_slot`` releases both when the attempt is over.
        ``on_answer`` is called when a 2xx body is in hand, before it is decoded. Failures raise
        :class:`~dagster_gptimage._retry.AttemptFailed` with their verdict."""
        s = self.settings

        def failure(exc: httpx.TransportError, sent: bool) -> _retry.AttemptFailed:
            return _retry.transport_failure(
                exc,
                tally,
                estimate,
                sent=sent,
                base_url=self.provider.base_url,
                timeout_s=s.timeout_s,
                retry_on_timeout=s.retry_on_timeout,
            )

        headers = {**self.headers, **providers.auth_headers(self.provider)}
        status, answer_headers, body, ticket = await _transport.send(
            state, prepared, headers, request.n, tally, failure, body_slot, gate
        )
        tally.request_id = providers.request_id_from(answer_headers, s.provider) or tally.request_id
        if 200 <= status < 300:
            gate.account.answered(ticket, answer_headers)
        else:
            error = providers.error_from_response(status, answer_headers, body, s.provider)
            verdict = _retry.answer_failure(
                self.scrubbed(error), answer_headers, max_retry_wait_s=s.max_retry_wait_s
            )
            if isinstance(error, RateLimitError) and verdict.retry:
                tally.rate_limited += 1
                tally.pause, wait = gate.account.refused(ticket, answer_headers, verdict.wait_s)
                raise _retry.AttemptFailed(error, retry=True, wait_s=wait, rate_limited=True)
            if isinstance(error, RateLimitError):
                tally.rate_limited += 1
                gate.account.refused(ticket, answer_headers, None)
            else:
                gate.account.answered(ticket, answer_headers)
            raise verdict
        if on_answer is not None:
            on_answer()
        await body_slot.enter_async_context(state.decoding)
        downloads = Downloader(state.http, s.max_download_bytes, s.allow_insecure_downloads)
        answer = _responses.Answer(request, status, tally, estimate)
        return await _responses.read_result(answer, body, self.prices, s.provider, downloads)
