"""Scripted httpx transports and canned API answers shared by the client and resource tests."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from dagster_gptimage.client import GPTImageClient

FAKE_KEY = "sk-test-FAKEKEY-4f1c9e0b7a6d5c3e2f1a0b9c8d7e6f5a"
USAGE = {
    "input_tokens": 50,
    "output_tokens": 196,
    "total_tokens": 246,
    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
}


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


Step = Callable[[httpx.Request], httpx.Response] | BaseException


def ok(
    *,
    images: list[bytes] | None = None,
    usage: dict[str, Any] | None = USAGE,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Step:
    def respond(_: httpx.Request) -> httpx.Response:
        data = [
            {"b64_json": base64.b64encode(b).decode(), "revised_prompt": None}
            for b in (images or [image_bytes()])
        ]
        body: dict[str, Any] = {"created": 1_700_000_000, "data": data, **(extra or {})}
        if usage is not None:
            body["usage"] = usage
        return httpx.Response(200, json=body, headers={"x-request-id": "req_ok", **(headers or {})})

    return respond


def fail(
    status: int,
    code: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    message: str = "nope",
) -> Step:
    def respond(_: httpx.Request) -> httpx.Response:
        body = {"error": {"message": message, "type": code, "param": None, "code": code}}
        return httpx.Response(
            status, json=body, headers={"x-request-id": f"req_{status}", **(headers or {})}
        )

    return respond


def raw(status: int, content: bytes, headers: dict[str, str] | None = None) -> Step:
    return lambda _: httpx.Response(status, content=content, headers=headers)


class _BreakingStream(httpx.AsyncByteStream):
    """A body that starts arriving and then the connection dies."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


def broken_body(status: int) -> Step:
    return lambda _: httpx.Response(status, stream=_BreakingStream(b'{"created": 1, "da'))


class Scripted(httpx.AsyncBaseTransport):
    """Answers POSTs from a script (the last step repeats) and GETs from ``downloads``; records
    every request and the most requests ever in flight at once."""

    def __init__(
        self,
        *steps: Step,
        downloads: dict[str, Step] | None = None,
        hold: int = 0,
    ) -> None:
        self.steps = list(steps)
        self.downloads = downloads or {}
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.hold = hold
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(self.hold):
                await asyncio.sleep(0)
            if request.method == "GET":
                step = self.downloads[str(request.url)]
            else:
                step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
            if isinstance(step, BaseException):
                raise step
            return step(request)
        finally:
            self.in_flight -= 1


def make_client(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> GPTImageClient:
    kwargs.setdefault("api_key", FAKE_KEY)
    return GPTImageClient(transport=transport, **kwargs)


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[float | None]:
    return [
        r.__dict__["gptimage_wait_s"]
        for r in caplog.records
        if r.name == "dagster_gptimage.client" and "gptimage_wait_s" in r.__dict__
    ]
