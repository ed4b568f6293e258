"""Downloads of the image URLs a gateway may answer with (``response_format="url"``).

The URL may live on any host, so it is fetched without credentials, over https (or loopback), with
a size cap, following a few redirects. Transport hiccups are retried: fetching again costs nothing,
whereas generating again would bill again.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urljoin

import httpx

from dagster_gptimage import _providers as providers
from dagster_gptimage import _retry
from dagster_gptimage.errors import ProviderError

__all__ = ["Downloader"]

_DOWNLOAD_ATTEMPTS = 3
_MAX_REDIRECTS = 5
_STAMINA_JITTER_S = 1.0


class _RetryableDownload(Exception):
    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Downloader:
    """Fetches ``data[index].url`` of one response with ``http`` (the loop's pool)."""

    http: httpx.AsyncClient
    max_bytes: int
    allow_insecure: bool

    async def fetch(self, url: str, index: int) -> bytes:
        """The image bytes; ``ProviderError`` when they cannot be had."""
        if url.startswith("data:"):
            return _decode_data_url(url, index)
        try:
            async for attempt in _retry.attempts(
                _RetryableDownload, _DOWNLOAD_ATTEMPTS, wait_jitter=_STAMINA_JITTER_S
            ):
                with attempt:
                    return await self._fetch_once(url, index)
        except _RetryableDownload as exc:
            raise exc.error from None
        raise AssertionError("unreachable: stamina yields at least one attempt")

    async def _fetch_once(self, url: str, index: int) -> bytes:
        for _hop in range(_MAX_REDIRECTS + 1):
            providers.check_download_url(url, allow_insecure=self.allow_insecure)
            request = self.http.build_request("GET", url, headers={"Accept": "image/*"})
            # Bounded by the body slot of the response that named the URL, not by the requests in
            # flight: waiting for one of those while holding a body slot could deadlock.
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise _RetryableDownload(_failed(index, exc)) from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return await self._read_body(response, index)
            finally:
                await response.aclose()
        raise ProviderError(
            f"downloading data[{index}] failed: more than {_MAX_REDIRECTS} redirects",
            code="download_failed",
        )

    async def _read_body(self, response: httpx.Response, index: int) -> bytes:
        _check_response(response, index, self.max_bytes)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ProviderError(
                        f"data[{index}] exceeds max_download_bytes={self.max_bytes}; "
                        "download aborted",
                        code="download_too_large",
                    )
                chunks.append(chunk)
        except httpx.TransportError as exc:
            raise _RetryableDownload(_failed(index, exc)) from None
        return b"".join(chunks)


def _check_response(response: httpx.Response, index: int, cap: int) -> None:
    """Refuse, before reading the body, what cannot be the image (or what is too large)."""
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
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ProviderError(
            f"data[{index}] is {int(declared)} bytes, over max_download_bytes={cap}",
            code="download_too_large",
        )


def _failed(index: int, exc: httpx.TransportError) -> ProviderError:
    return ProviderError(
        f"downloading data[{index}] failed: {type(exc).__name__}: {exc}", code="download_failed"
    )


def _decode_data_url(url: str, index: int) -> bytes:
    header, _, payload = url.partition(",")
    try:
        if header.endswith(";base64"):
            return providers.decode_b64(payload)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise ProviderError(
            f"data[{index}] is a malformed data: URL", code="invalid_response"
        ) from None
