"""In-process httpx transport: the client talks to the emulator without a socket.

It reproduces what the wire would show the client, not a simplification of it:

- the request's read timeout is enforced (a custom transport bypasses httpcore, which normally
  does it): a response slower than the timeout raises ``httpx.ReadTimeout``;
- a "reset" fault raises ``httpx.ReadError`` (connection reset by peer) before any response;
- a "truncate" fault returns the status and headers with the full ``Content-Length``, then the
  body stream yields part of it and raises ``httpx.RemoteProtocolError``, which is what httpx
  raises when a server closes the connection mid-body.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx

from ._core import Emulator
from ._messages import EmulatorRequest, EmulatorResponse

__all__ = ["EmulatorTransport"]


class _TruncatedStream(httpx.AsyncByteStream):
    def __init__(self, body: bytes, expected: int) -> None:
        self._body = body
        self._expected = expected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._body
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body: "
            f"received {len(self._body)} bytes, expected {self._expected}"
        )


class _ChunkedStream(httpx.AsyncByteStream):
    """Streamed file content; ``fault`` breaks it where the chunks stop, as the wire would."""

    def __init__(self, chunks: Iterator[bytes], expected: int, fault: str | None) -> None:
        self._chunks = chunks
        self._expected = expected
        self._fault = fault

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        for chunk in self._chunks:
            received += len(chunk)
            yield chunk
        if self._fault == "reset":
            raise httpx.ReadError("[Errno 104] Connection reset by peer")
        if self._fault is not None:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                f"received {received} bytes, expected {self._expected}"
            )

    async def aclose(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class EmulatorTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=EmulatorTransport(emulator), base_url=...)``.

    Any host works; download URLs in gateway URL mode point at the host the client used
    (``http://emulator.localhost`` by default).
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def __repr__(self) -> str:
        return f"EmulatorTransport({self.emulator!r})"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        url = request.url
        port = f":{url.port}" if url.port is not None else ""
        emulated = EmulatorRequest(
            method=request.method,
            path=url.path,
            query=url.query.decode("ascii", "replace"),
            headers=dict(request.headers.items()),
            body=body,
            origin=f"{url.scheme}://{url.host}{port}",
        )
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        deadline = (
            anyio.fail_after(read_timeout) if read_timeout is not None else contextlib.nullcontext()
        )
        try:
            with deadline:
                response = await self.emulator.handle(emulated)
        except TimeoutError:
            raise httpx.ReadTimeout("The read operation timed out", request=request) from None
        return self._to_httpx(response, request)

    @staticmethod
    def _to_httpx(response: EmulatorResponse, request: httpx.Request) -> httpx.Response:
        if response.fault == "reset" and response.chunks is None:
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        headers = [*response.headers, ("content-length", str(response.content_length))]
        extensions = {"http_version": b"HTTP/1.1"}
        stream: httpx.SyncByteStream | httpx.AsyncByteStream
        if response.chunks is not None:
            stream = _ChunkedStream(response.chunks, response.content_length, response.fault)
        elif response.fault == "truncate":
            stream = _TruncatedStream(response.body[: len(response.body) // 2], len(response.body))
        else:
            stream = httpx.ByteStream(response.body)
        return httpx.Response(
            response.status,
            headers=headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )
