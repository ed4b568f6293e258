"""GPTImageClient against scripted httpx transports: shaping, retries, billing, concurrency."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _httpfakes import (
    FAKE_KEY,
    USAGE,
    Scripted,
    Step,
    broken_body,
    fail,
    image_bytes,
    make_client,
    ok,
    raw,
    retry_waits,
)
from PIL import Image

from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import (
    AuthenticationError,
    GPTImageError,
    GPTImageTimeoutError,
    InvalidImageError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
)
from dagster_gptimage.models import GenerateRequest, Usage
from dagster_gptimage.pricing import PriceTable, cost_of_usage

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_backoff_sleep")]


# --- success path ------------------------------------------------------------------------------


async def test_generate_success_reads_everything_from_the_bytes() -> None:
    jpeg = image_bytes(80, 32, "JPEG")
    transport = Scripted(ok(images=[jpeg], extra={"size": "1024x1024", "future": {"x": 1}}))
    client = make_client(transport)
    result = await client.generate("a red fox", size="1024x1024", quality="low")
    [image] = result.images
    assert (image.format, image.width, image.height) == ("jpeg", 80, 32)
    assert image.data == jpeg
    assert result.usage.input_text_tokens == 50
    assert result.usage.output_image_tokens == 196
    expected = cost_of_usage(result.usage, client.prices.for_model("gpt-image-2"))
    assert result.cost_usd == pytest.approx(expected)
    assert result.cost_usd > 0
    assert result.unconfirmed_cost_usd == 0
    assert (result.attempts, result.possibly_billed_attempts) == (1, 1)
    assert result.request_id == "req_ok"
    assert result.created == 1_700_000_000
    assert (result.provider, result.model) == ("openai", "gpt-image-2")
    assert result.latency_s >= 0
    [request] = transport.requests
    assert str(request.url) == "https://api.openai.com/v1/images/generations"
    assert request.headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert request.headers["user-agent"].startswith("dagster-gptimage/")
    body = json.loads(transport.bodies[0])
    assert body == {
        "prompt": "a red fox",
        "model": "gpt-image-2",
        "n": 1,
        "size": "1024x1024",
        "quality": "low",
        "output_format": "png",
    }
    await client.aclose()


async def test_several_images_and_revised_prompts() -> None:
    def respond(_: httpx.Request) -> httpx.Response:
        data = [
            {
                "b64_json": base64.b64encode(image_bytes(32 + 16 * i, 32)).decode(),
                "revised_prompt": f"r{i}",
            }
            for i in range(3)
        ]
        return httpx.Response(200, json={"created": 5, "data": data, "usage": USAGE})

    client = make_client(Scripted(respond))
    result = await client.generate("p", n=3)
    assert [i.width for i in result.images] == [32, 48, 64]
    assert [i.revised_prompt for i in result.images] == ["r0", "r1", "r2"]
    await client.aclose()


async def test_missing_usage_is_priced_by_estimate_and_marked_unconfirmed() -> None:
    client = make_client(Scripted(ok(usage=None)))
    request = client.build_generate("p", quality="medium", size="1024x1024")
    result = await client.execute(request)
    estimate = client.estimate_cost(request)
    assert estimate > 0
    assert result.cost_usd == pytest.approx(estimate)
    assert result.unconfirmed_cost_usd == pytest.approx(estimate)
    assert result.usage == Usage()
    await client.aclose()


async def test_price_overrides_are_used() -> None:
    prices = {"gpt-image-2": {"image_output": 1000.0, "text_input": 0.0}}
    client = make_client(Scripted(ok()), prices=prices)
    assert isinstance(client.prices, PriceTable)
    result = await client.generate("p")
    assert result.cost_usd == pytest.approx(196 * 1000.0 / 1_000_000)
    await client.aclose()


async def test_edit_is_multipart_with_image_and_mask(tmp_path: Any) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(image_bytes(64, 64))
    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(buffer, format="PNG")
    transport = Scripted(ok())
    client = make_client(transport)
    result = await client.edit("add a hat", [source], mask=buffer.getvalue(), size="1024x1024")
    assert result.images[0].format == "png"
    [request] = transport.requests
    assert str(request.url).endswith("/images/edits")
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = transport.bodies[0]
    assert b'name="image"; filename="photo.png"' in body
    assert b'name="mask"; filename=' in body
    assert b'name="prompt"\r\n\r\nadd a hat' in body
    assert b"image[]" not in body
    await client.aclose()


# --- validation before spend -------------------------------------------------------------------


async def test_invalid_requests_send_nothing() -> None:
    transport = Scripted(ok())
    client = make_client(transport)
    with pytest.raises(InvalidRequestError) as info:
        client.build_generate("p", size="1000x1000")
    assert info.value.field == "size"
    with pytest.raises(InvalidRequestError):
        client.build_generate("p", sizee="1024x1024")
    with pytest.raises(InvalidRequestError):
        client.build_generate("")
    with pytest.raises(InvalidRequestError):
        await client.execute(GenerateRequest(prompt="p", model="dall-e-3"))
    with pytest.raises(InvalidRequestError):
        await client.generate("p", n=11)
    with pytest.raises(InvalidRequestError):
        await client.generate("p", background="transparent")
    with pytest.raises(InvalidImageError):
        await client.edit("p", [b"definitely not an image"])
    with pytest.raises(InvalidRequestError):
        client.execute_sync(GenerateRequest(prompt="p", size="16:9"))
    with pytest.raises(InvalidRequestError):
        client.generate_sync("p", output_compression=50)
    assert transport.requests == []
    client.close()


async def test_validation_uses_the_clients_provider() -> None:
    transport = Scripted(ok())
    azure = make_client(
        transport, provider="azure", base_url="https://r.openai.azure.com", azure_deployment="d"
    )
    with pytest.raises(InvalidRequestError) as info:
        await azure.generate("p", output_format="webp")
    assert info.value.field == "output_format"
    gateway = make_client(transport, provider="gateway")
    with pytest.raises(InvalidRequestError):
        await gateway.generate("p", n=2)
    assert transport.requests == []


# --- retries and billing -----------------------------------------------------------------------


async def test_server_errors_are_retried_and_not_billed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dagster_gptimage.client")
    transport = Scripted(fail(500), fail(502), fail(503), ok())
    client = make_client(transport)
    result = await client.generate("p")
    assert (result.attempts, result.possibly_billed_attempts) == (4, 1)
    assert result.unconfirmed_cost_usd == 0
    assert len(transport.requests) == 4
    assert retry_waits(caplog) == [None, None, None]
    await client.aclose()


async def test_retry_after_ms_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dagster_gptimage.client")
    transport = Scripted(
        fail(429, "rate_limit_exceeded", headers={"retry-after-ms": "2500", "retry-after": "9"}),
        fail(429, "rate_limit_exceeded", headers={"retry-after": "7"}),
        ok(),
    )
    client = make_client(transport)
    result = await client.generate("p")
    assert result.attempts == 3
    assert retry_waits(caplog) == [2.5, 7.0]
    await client.aclose()


async def test_retry_after_beyond_the_cap_gives_up() -> None:
    transport = Scripted(fail(429, "rate_limit_exceeded", headers={"retry-after": "300"}), ok())
    client = make_client(transport, max_retry_wait_s=120)
    with pytest.raises(RateLimitError) as info:
        await client.generate("p")
    assert info.value.attempts == 1
    assert "max_retry_wait_s=120" in str(info.value)
    assert "300s" in str(info.value)
    assert len(transport.requests) == 1


async def test_retries_exhausted_raise_with_counts() -> None:
    transport = Scripted(fail(503, "overloaded"))
    client = make_client(transport, max_retries=2)
    with pytest.raises(ProviderError) as info:
        await client.generate("p")
    error = info.value
    assert (error.attempts, error.possibly_billed_attempts, error.cost_usd) == (3, 0, 0.0)
    assert error.status_code == 503
    assert error.request_id == "req_503"
    assert error.provider == "openai"
    assert len(transport.requests) == 3


async def test_rate_limit_exhausted_is_rate_limit_error() -> None:
    # A 429 does not use max_retries: the call waits for the rate limit within
    # max_rate_limit_wait_s (1.5 s: one default 1 s wait after a 429 without retry-after).
    client = make_client(
        Scripted(fail(429, "rate_limit_exceeded")), max_retries=1, max_rate_limit_wait_s=1.5
    )
    with pytest.raises(RateLimitError) as info:
        await client.generate("p")
    assert info.value.attempts == 2


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (fail(400, "moderation_blocked"), ModerationBlockedError),
        (fail(400, "contentFilter"), ModerationBlockedError),
        (fail(400, "invalid_value"), InvalidRequestError),
        (fail(404, "not_found"), InvalidRequestError),
        (fail(422, "unprocessable"), InvalidRequestError),
        (fail(401, "invalid_api_key"), AuthenticationError),
        (fail(403, "forbidden"), AuthenticationError),
        (fail(429, "insufficient_quota"), QuotaExceededError),
        (fail(402, "INSUFFICIENT_BALANCE"), QuotaExceededError),
        (fail(500, headers={"x-should-retry": "false"}), ProviderError),
        (
            fail(400, "moderation_blocked", headers={"x-should-retry": "true"}),
            ModerationBlockedError,
        ),
    ],
)
async def test_final_errors_are_never_retried(step: Step, expected: type[GPTImageError]) -> None:
    transport = Scripted(step, ok())
    client = make_client(transport)
    with pytest.raises(expected) as info:
        await client.generate("p")
    assert type(info.value) is expected
    assert (info.value.attempts, info.value.possibly_billed_attempts) == (1, 0)
    assert info.value.cost_usd == 0
    assert len(transport.requests) == 1


async def test_x_should_retry_true_retries_a_400() -> None:
    transport = Scripted(fail(400, "whatever", headers={"x-should-retry": "true"}), ok())
    result = await make_client(transport).generate("p")
    assert result.attempts == 2


async def test_408_and_409_are_retried() -> None:
    result = await make_client(Scripted(fail(408), fail(409), ok())).generate("p")
    assert result.attempts == 3


async def test_read_timeout_is_billed_and_not_retried_by_default() -> None:
    transport = Scripted(httpx.ReadTimeout("timed out"), ok())
    client = make_client(transport)
    request = client.build_generate("p", quality="high")
    with pytest.raises(GPTImageTimeoutError) as info:
        await client.execute(request)
    error = info.value
    assert (error.attempts, error.possibly_billed_attempts) == (1, 1)
    assert error.cost_usd == pytest.approx(client.estimate_cost(request))
    assert "billed" in str(error)
    assert "retry_on_timeout" in str(error)
    assert len(transport.requests) == 1


async def test_read_timeout_retry_counts_the_possibly_billed_attempt() -> None:
    transport = Scripted(httpx.ReadTimeout("timed out"), ok())
    client = make_client(transport, retry_on_timeout=True)
    request = client.build_generate("p", quality="high")
    result = await client.execute(request)
    estimate = client.estimate_cost(request)
    usage_cost = cost_of_usage(result.usage, client.prices.for_model("gpt-image-2"))
    assert (result.attempts, result.possibly_billed_attempts) == (2, 2)
    assert result.unconfirmed_cost_usd == pytest.approx(estimate)
    assert result.cost_usd == pytest.approx(usage_cost + estimate)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.WriteError("broken pipe")],
)
async def test_failures_before_sending_are_retried_and_not_billed(exc: Exception) -> None:
    result = await make_client(Scripted(exc, ok())).generate("p")
    assert (result.attempts, result.possibly_billed_attempts) == (2, 1)
    assert result.unconfirmed_cost_usd == 0


@pytest.mark.parametrize(
    "step",
    [
        httpx.ReadError("Connection reset by peer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        broken_body(200),
        raw(200, b'{"created": 1, "data": [{"b64_json": "iVBO'),
        raw(200, b"<html>gateway says hi</html>"),
        raw(200, b'{"created": 1, "data": [{"b64_json": "not base64!!"}]}'),
        raw(
            200,
            json.dumps(
                {"created": 1, "data": [{"b64_json": base64.b64encode(b"GIF89a garbage").decode()}]}
            ).encode(),
        ),
        raw(200, b'{"created": 1, "data": []}'),
    ],
)
async def test_possibly_billed_failures_are_counted_then_retried(step: Step) -> None:
    transport = Scripted(step, ok())
    client = make_client(transport)
    request = client.build_generate("p")
    result = await client.execute(request)
    estimate = client.estimate_cost(request)
    assert (result.attempts, result.possibly_billed_attempts) == (2, 2)
    assert result.unconfirmed_cost_usd == pytest.approx(estimate)
    usage_cost = cost_of_usage(result.usage, client.prices.for_model("gpt-image-2"))
    assert result.cost_usd == pytest.approx(usage_cost + estimate)


async def test_possibly_billed_failures_exhausted_carry_their_cost() -> None:
    transport = Scripted(raw(200, b"{truncated"))
    client = make_client(transport, max_retries=2)
    request = client.build_generate("p")
    with pytest.raises(ProviderError) as info:
        await client.execute(request)
    error = info.value
    assert (error.attempts, error.possibly_billed_attempts) == (3, 3)
    assert error.cost_usd == pytest.approx(3 * client.estimate_cost(request))


async def test_broken_error_body_is_retried_without_billing() -> None:
    result = await make_client(Scripted(broken_body(503), ok())).generate("p")
    assert (result.attempts, result.possibly_billed_attempts) == (2, 1)


async def test_misconfiguration_transport_errors_are_final() -> None:
    transport = Scripted(httpx.UnsupportedProtocol("no"), ok())
    with pytest.raises(ProviderError):
        await make_client(transport).generate("p")
    assert len(transport.requests) == 1


async def test_max_retries_zero_means_one_attempt() -> None:
    transport = Scripted(fail(500), ok())
    with pytest.raises(ProviderError) as info:
        await make_client(transport, max_retries=0).generate("p")
    assert info.value.attempts == 1


# --- concurrency and rate limits ---------------------------------------------------------------


async def test_in_flight_requests_never_exceed_max_concurrency() -> None:
    transport = Scripted(ok(), hold=20)
    client = make_client(transport, max_concurrency=3)
    results = await asyncio.gather(*(client.generate(f"p{i}") for i in range(12)))
    assert len(results) == 12
    assert transport.max_in_flight == 3
    await client.aclose()


async def test_concurrency_bound_includes_retries() -> None:
    transport = Scripted(*([fail(500)] * 10), ok(), hold=10)
    client = make_client(transport, max_concurrency=2, max_retries=10)
    await asyncio.gather(*(client.generate(f"p{i}") for i in range(6)))
    assert transport.max_in_flight == 2
    assert len(transport.requests) == 16


async def test_rate_limiter_acquires_one_token_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiolimiter import AsyncLimiter

    acquired: list[tuple[float, float]] = []
    original = AsyncLimiter.acquire

    async def spy(self: AsyncLimiter, amount: float = 1) -> None:
        acquired.append((self.max_rate, amount))
        await original(self, amount)

    monkeypatch.setattr(AsyncLimiter, "acquire", spy)
    client = make_client(Scripted(fail(500), ok()), images_per_minute=30)
    await client.generate("p", n=4)
    assert acquired == [(30, 4.0), (30, 4.0)]
    no_limit = make_client(Scripted(ok()))
    await no_limit.generate("p")
    assert len(acquired) == 2


async def test_one_http_client_per_loop_is_reused() -> None:
    client = make_client(Scripted(ok()))
    await client.generate("a")
    first = client._state().http
    await client.generate("b")
    assert client._state().http is first
    assert len(client._states) == 1
    await client.aclose()
    assert client._states == {}
    assert first.is_closed


# --- sync twins --------------------------------------------------------------------------------


def test_sync_twins_from_plain_code() -> None:
    transport = Scripted(ok())
    client = make_client(transport)
    result = client.generate_sync("p")
    assert result.images[0].width == 64
    request = client.build_generate("q")
    assert client.execute_sync(request).attempts == 1
    edit = client.edit_sync("e", [image_bytes(64, 64)])
    assert edit.images
    background = client._background
    assert background is not None
    assert background.thread.is_alive()
    client.close()
    assert not background.thread.is_alive()
    assert background.loop.is_closed()
    assert client._background is None
    assert client.generate_sync("again").attempts == 1
    client.close()


async def test_sync_twins_inside_a_running_loop() -> None:
    """As in Jupyter: the calling thread already runs a loop."""
    asyncio.get_running_loop()
    with make_client(Scripted(ok())) as client:
        result = client.generate_sync("p")
        assert result.attempts == 1
        background = client._background
        assert background is not None
        assert background.thread is not threading.current_thread()
        await client.generate("on the caller's loop too")
        http = client._state().http
    assert not background.thread.is_alive()
    for _ in range(10):
        await asyncio.sleep(0)
    assert http.is_closed
    assert client._states == {}


def test_forgotten_client_stops_its_thread() -> None:
    client = make_client(Scripted(ok()))
    client.generate_sync("p")
    background = client._background
    assert background is not None
    del client
    gc.collect()
    assert not background.thread.is_alive()


def test_sync_errors_propagate_with_counts() -> None:
    with make_client(Scripted(fail(500)), max_retries=1) as client:
        with pytest.raises(ProviderError) as info:
            client.generate_sync("p")
        assert info.value.attempts == 2


def test_client_survives_several_event_loops() -> None:
    client = make_client(Scripted(ok()))

    async def once() -> int:
        return (await client.generate("p")).attempts

    assert asyncio.run(once()) == 1
    assert asyncio.run(once()) == 1
    assert len(client._states) <= 2
    client.close()
    assert client._states == {}


async def test_async_context_manager_closes_pools() -> None:
    async with make_client(Scripted(ok())) as client:
        await client.generate("p")
        http = client._state().http
    assert http.is_closed


# --- secrets -----------------------------------------------------------------------------------


async def test_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "dagster_gptimage", "stamina"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    echo = f"Incorrect API key provided: {FAKE_KEY}"
    transport = Scripted(fail(500, message=echo), fail(401, "invalid_api_key", message=echo))
    client = make_client(transport)
    assert FAKE_KEY not in repr(client)
    assert FAKE_KEY not in str(client)
    with pytest.raises(AuthenticationError) as info:
        await client.generate("p")
    error = info.value
    texts = [str(error), repr(error), error.message, str(error.args), str(vars(error))]
    assert all(FAKE_KEY not in text for text in texts)
    assert "***" in error.message
    assert error.__cause__ is None
    logged = [r.getMessage() + repr(r.args) + repr(vars(r)) for r in caplog.records]
    assert any("api.openai.com" in line for line in logged)
    assert all(FAKE_KEY not in line for line in logged)
    assert transport.requests[0].headers["authorization"] == f"Bearer {FAKE_KEY}"
    await client.aclose()


# --- providers ---------------------------------------------------------------------------------


async def test_azure_request_shape() -> None:
    transport = Scripted(ok())
    client = make_client(
        transport,
        provider="azure",
        base_url="https://res.openai.azure.com/",
        azure_deployment="gpt-image",
        azure_api_version="2025-04-01-preview",
    )
    await client.generate("p", output_format="jpeg")
    [request] = transport.requests
    assert str(request.url) == (
        "https://res.openai.azure.com/openai/deployments/gpt-image/images/generations"
        "?api-version=2025-04-01-preview"
    )
    assert request.headers["api-key"] == FAKE_KEY
    assert "authorization" not in request.headers
    assert "model" not in json.loads(transport.bodies[0])
    await client.aclose()


def test_missing_key_and_bad_options_fail_at_construction() -> None:
    with pytest.raises(AuthenticationError, match="api_key"):
        GPTImageClient(provider="openai")
    with pytest.raises(ValueError, match="azure_deployment"):
        GPTImageClient(provider="azure", api_key=FAKE_KEY, base_url="https://r.openai.azure.com")
    with pytest.raises(ValueError, match="max_concurrency"):
        GPTImageClient(api_key=FAKE_KEY, max_concurrency=0)
    with pytest.raises(ValueError, match="max_retries"):
        GPTImageClient(api_key=FAKE_KEY, max_retries=-1)


CDN = "https://cdn.example.com/img/1.png"


def download(
    content: bytes | None = None,
    *,
    status: int = 200,
    content_type: str = "image/png",
    headers: dict[str, str] | None = None,
    stream: httpx.AsyncByteStream | None = None,
) -> Step:
    def respond(_: httpx.Request) -> httpx.Response:
        all_headers = {"content-type": content_type, **(headers or {})}
        if stream is not None:
            return httpx.Response(status, headers=all_headers, stream=stream)
        return httpx.Response(status, headers=all_headers, content=content or b"")

    return respond


def url_response(url: str = CDN, usage: dict[str, Any] | None = USAGE) -> Step:
    body: dict[str, Any] = {"created": 1, "data": [{"url": url}]}
    if usage is not None:
        body["usage"] = usage
    return lambda _: httpx.Response(200, json=body, headers={"x-lumenfall-request-id": "lf_1"})


async def test_gateway_downloads_url_images_without_credentials() -> None:
    png = image_bytes(40, 40)
    transport = Scripted(url_response(), downloads={CDN: download(png)})
    client = make_client(transport, provider="gateway", gateway_response_format="url")
    result = await client.generate("p", size="16:9", resolution="1K")
    assert result.images[0].data == png
    assert result.request_id == "lf_1"
    post, get = transport.requests
    body = json.loads(transport.bodies[0])
    assert body["response_format"] == "url"
    assert body["aspect_ratio"] == "16:9"
    assert body["resolution"] == "1K"
    assert "size" not in body
    assert post.headers["authorization"] == f"Bearer {FAKE_KEY}"
    assert get.method == "GET"
    assert "authorization" not in get.headers
    assert "api-key" not in get.headers
    await client.aclose()


async def test_gateway_default_is_b64_json() -> None:
    transport = Scripted(ok())
    client = make_client(transport, provider="gateway")
    await client.generate("p")
    assert json.loads(transport.bodies[0])["response_format"] == "b64_json"


class _EndlessStream(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.chunks_sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.chunks_sent += 1
            yield b"\0" * 1024


@pytest.mark.parametrize(
    ("url", "step", "code"),
    [
        ("http://cdn.example.com/a.png", download(image_bytes()), "insecure_image_url"),
        (CDN, download(b"<html/>", content_type="text/html"), "download_not_image"),
        (CDN, download(b"x" * 10, headers={"content-length": "999999"}), "download_too_large"),
        (CDN, download(status=404), "download_failed"),
        (
            CDN,
            download(status=302, headers={"location": "http://evil.example.com/a.png"}),
            "insecure_image_url",
        ),
    ],
)
async def test_failed_downloads_are_billed_and_final(url: str, step: Step, code: str) -> None:
    transport = Scripted(url_response(url), ok(), downloads={url: step})
    client = make_client(transport, provider="gateway", max_download_bytes=4096)
    with pytest.raises(ProviderError) as info:
        await client.generate("p")
    error = info.value
    assert error.code == code
    assert (error.attempts, error.possibly_billed_attempts) == (1, 1)
    usage_cost = cost_of_usage(Usage.from_api(USAGE), client.prices.for_model("gpt-image-2"))
    assert error.cost_usd == pytest.approx(usage_cost)
    assert error.request_id == "lf_1"
    assert len(transport.posts) == 1


async def test_streamed_download_is_aborted_past_the_cap() -> None:
    stream = _EndlessStream()
    transport = Scripted(url_response(), downloads={CDN: download(stream=stream)})
    client = make_client(transport, provider="gateway", max_download_bytes=8 * 1024)
    with pytest.raises(ProviderError, match="max_download_bytes"):
        await client.generate("p")
    assert 8 <= stream.chunks_sent <= 10


async def test_download_failure_without_usage_costs_the_estimate() -> None:
    transport = Scripted(url_response(usage=None), downloads={CDN: download(status=410)})
    client = make_client(transport, provider="gateway")
    request = client.build_generate("p")
    with pytest.raises(ProviderError) as info:
        await client.execute(request)
    assert info.value.cost_usd == pytest.approx(client.estimate_cost(request))


async def test_loopback_http_and_insecure_opt_in_are_allowed() -> None:
    png = image_bytes(16, 16)
    local = "http://127.0.0.1:8089/_emulator/files/1"
    remote = "http://cdn.example.com/a.png"
    transport = Scripted(
        url_response(local),
        url_response(remote),
        downloads={local: download(png), remote: download(png)},
    )
    client = make_client(transport, provider="gateway")
    assert (await client.generate("p")).images[0].data == png
    insecure = make_client(transport, provider="gateway", allow_insecure_downloads=True)
    assert (await insecure.generate("p")).images[0].data == png


async def test_download_redirects_and_transient_failures() -> None:
    png = image_bytes(24, 24)
    final = "https://cdn2.example.com/x.png"
    attempts: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        if len(attempts) == 1:
            raise httpx.ReadError("reset")
        if len(attempts) == 2:
            return httpx.Response(503)
        return httpx.Response(200, headers={"content-type": "image/png"}, content=png)

    transport = Scripted(
        url_response(),
        downloads={CDN: download(status=307, headers={"location": final}), final: flaky},
    )
    client = make_client(transport, provider="gateway")
    result = await client.generate("p")
    assert result.images[0].data == png
    assert len(attempts) == 3
    assert (result.attempts, result.possibly_billed_attempts) == (1, 1)


async def test_data_urls_are_decoded_inline() -> None:
    png = image_bytes(8, 8)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    transport = Scripted(url_response(data_url))
    result = await make_client(transport, provider="gateway").generate("p")
    assert result.images[0].data == png
    assert len(transport.requests) == 1


async def test_repr_shows_configuration_only() -> None:
    client = make_client(Scripted(ok()), model="gpt-image-1")
    text = repr(client)
    assert "gpt-image-1" in text
    assert "https://api.openai.com/v1" in text
    assert FAKE_KEY not in text
