"""GPTImageClient against the emulator: in-process, and as a real HTTP server on 127.0.0.1.

The money invariant is checked throughout: the attempts the client reports as possibly billed are
exactly the requests the emulator billed.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from _httpfakes import FAKE_KEY, image_bytes, retry_waits
from PIL import Image

from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator, get_emulator, run_server_in_thread
from dagster_gptimage.errors import (
    AuthenticationError,
    GPTImageError,
    GPTImageTimeoutError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
)
from dagster_gptimage.resource import GPTImageResource

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_backoff_sleep")]


def emulated(emulator: Emulator | None = None, **kwargs: Any) -> GPTImageClient:
    return GPTImageClient(provider="emulator", emulator=emulator or Emulator(), **kwargs)


def mask_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (0, 0, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- in-process --------------------------------------------------------------------------------


async def test_emulator_provider_needs_no_key_and_renders_the_requested_size() -> None:
    emulator = Emulator()
    async with emulated(emulator) as client:
        assert client.emulator is emulator
        assert client.base_url == "http://emulator.localhost/v1"
        result = await client.generate("a lighthouse", size="1536x1024", quality="low")
    [image] = result.images
    assert (image.width, image.height, image.format) == (1536, 1024, "png")
    assert result.usage.output_image_tokens > 0
    assert result.cost_usd > 0
    assert result.request_id
    assert result.request_id.startswith("req_emu_")
    assert (result.attempts, result.possibly_billed_attempts) == (1, 1)
    assert emulator.stats.billed_requests == 1
    record = emulator.stats.last
    assert record is not None
    assert record.headers["authorization"] == "<redacted>"
    assert record.fields["model"] == "gpt-image-2"
    assert "response_format" not in record.fields
    assert record.outcome == "ok"


async def test_default_emulator_is_the_process_wide_one() -> None:
    client = GPTImageClient(provider="emulator")
    assert client.emulator is get_emulator("default")
    await client.aclose()


async def test_invalid_requests_never_reach_the_emulator() -> None:
    emulator = Emulator()
    client = emulated(emulator)
    for params in ({"size": "1000x1000"}, {"n": 0}, {"output_format": "bmp"}, {"quality": "ultra"}):
        with pytest.raises(InvalidRequestError):
            await client.generate("p", **params)
    with pytest.raises(InvalidRequestError):
        await client.edit("p", [image_bytes(64, 64)], mask=mask_png(32, 32))
    assert emulator.stats.requests == 0
    await client.aclose()


@pytest.mark.parametrize(
    ("script", "attempts", "billed"),
    [
        (["429", "500", "502", "503", "ok"], 5, 1),
        (["reset", "ok"], 2, 2),
        (["truncate", "truncate", "ok"], 3, 3),
        (["reset", "429", "truncate", "ok"], 4, 3),
    ],
)
async def test_scripted_faults_are_retried_and_billing_matches(
    script: list[str], attempts: int, billed: int
) -> None:
    emulator = Emulator()
    emulator.script(script)
    client = emulated(emulator)
    request = client.build_generate("p", size="1024x1024", quality="medium")
    result = await client.execute(request)
    assert (result.attempts, result.possibly_billed_attempts) == (attempts, billed)
    assert emulator.stats.requests == attempts
    assert emulator.stats.billed_requests == billed
    assert result.unconfirmed_cost_usd == pytest.approx(
        (billed - 1) * client.estimate_cost(request)
    )
    await client.aclose()


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("moderation", ModerationBlockedError), ("insufficient_quota", QuotaExceededError)],
)
async def test_final_emulator_errors(fault: str, expected: type[GPTImageError]) -> None:
    emulator = Emulator()
    emulator.script([fault, "ok"])
    client = emulated(emulator)
    with pytest.raises(expected) as info:
        await client.generate("p")
    assert (info.value.attempts, info.value.possibly_billed_attempts) == (1, 0)
    assert info.value.request_id
    assert emulator.stats.billed_requests == 0
    await client.aclose()


async def test_moderation_word_blocks_without_billing() -> None:
    emulator = Emulator(moderation_word="forbidden")
    client = emulated(emulator)
    with pytest.raises(ModerationBlockedError):
        await client.generate("a FORBIDDEN thing")
    assert emulator.stats.billed_requests == 0
    await client.aclose()


async def test_rate_limit_retry_after_from_the_emulator_is_honoured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="dagster_gptimage.client")
    emulator = Emulator(retry_after_s=3.25)
    emulator.script(["429", "ok"])
    client = emulated(emulator)
    result = await client.generate("p")
    assert result.attempts == 2
    assert retry_waits(caplog) == [3.25]
    await client.aclose()


async def test_rate_limit_retry_after_over_the_cap_gives_up() -> None:
    emulator = Emulator(retry_after_s=500)
    emulator.script(["429", "ok"])
    client = emulated(emulator, max_retry_wait_s=60)
    with pytest.raises(RateLimitError, match="max_retry_wait_s=60"):
        await client.generate("p")
    assert emulator.stats.requests == 1
    await client.aclose()


async def test_timeout_is_billed_and_final_by_default() -> None:
    emulator = Emulator(hang_s=30)
    emulator.script(["timeout", "ok"])
    client = emulated(emulator, timeout_s=0.2)
    with pytest.raises(GPTImageTimeoutError) as info:
        await client.generate("p")
    assert (info.value.attempts, info.value.possibly_billed_attempts) == (1, 1)
    assert info.value.cost_usd > 0
    assert emulator.stats.billed_requests == 1
    await client.aclose()


async def test_wrong_key_is_an_authentication_error() -> None:
    emulator = Emulator(api_key="the-right-key")
    client = emulated(emulator, api_key=FAKE_KEY)
    with pytest.raises(AuthenticationError) as info:
        await client.generate("p")
    assert info.value.attempts == 1
    assert FAKE_KEY not in str(info.value)
    ok_client = emulated(emulator, api_key="the-right-key")
    assert (await ok_client.generate("p")).attempts == 1
    await client.aclose()
    await ok_client.aclose()


async def test_edits_single_and_multiple_images_with_mask() -> None:
    emulator = Emulator()
    client = emulated(emulator)
    first = image_bytes(1024, 1024)
    result = await client.edit(
        "add a hat",
        [first],
        mask=mask_png(1024, 1024),
        model="gpt-image-1.5",
        input_fidelity="high",
    )
    assert (result.images[0].width, result.images[0].height) == (1024, 1024)
    record = emulator.stats.last
    assert record is not None
    assert [f.field for f in record.files] == ["image", "mask"]
    assert record.fields["input_fidelity"] == "high"
    await client.edit("combine", [image_bytes(64, 64), image_bytes(80, 80), image_bytes(96, 96)])
    record = emulator.stats.last
    assert record is not None
    assert [f.field for f in record.files] == ["image[]", "image[]", "image[]"]
    assert emulator.stats.billed_requests == 2
    await client.aclose()


async def test_azure_profile() -> None:
    emulator = Emulator(profile="azure")
    client = GPTImageClient(
        provider="azure",
        api_key=FAKE_KEY,
        base_url="http://emulator.localhost",
        azure_deployment="gpt-image-2",
        transport=emulator.transport(),
    )
    result = await client.generate("p", size="1024x1536", output_format="jpeg")
    assert (result.images[0].format, result.images[0].width) == ("jpeg", 1024)
    record = emulator.stats.last
    assert record is not None
    assert record.path == "/openai/deployments/gpt-image-2/images/generations"
    assert record.query["api-version"] == "2025-04-01-preview"
    assert record.headers["api-key"] == "<redacted>"
    assert "model" not in record.fields
    emulator.script(["moderation"])
    with pytest.raises(ModerationBlockedError) as info:
        await client.generate("p")
    assert info.value.code == "contentFilter"
    await client.aclose()


async def test_gateway_profile_url_mode_downloads_from_the_emulator() -> None:
    emulator = Emulator(profile="gateway")
    client = GPTImageClient(
        provider="gateway",
        api_key=FAKE_KEY,
        base_url="http://emulator.localhost/v1",
        gateway_response_format="url",
        transport=emulator.transport(),
    )
    result = await client.generate("p", size="16:9", resolution="1K", output_format="webp")
    [image] = result.images
    assert image.format == "webp"
    assert image.width > image.height
    assert emulator.stats.file_downloads == 1
    record = emulator.stats.last
    assert record is not None
    assert record.fields["response_format"] == "url"
    assert record.fields["aspect_ratio"] == "16:9"
    await client.aclose()


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"file_content_type": "text/html"}, "download_not_image"),
        ({"file_padding_bytes": 4 * 2**20}, "download_too_large"),
    ],
)
async def test_gateway_download_failures_are_billed(options: dict[str, Any], code: str) -> None:
    emulator = Emulator(profile="gateway", **options)
    client = GPTImageClient(
        provider="gateway",
        api_key=FAKE_KEY,
        base_url="http://emulator.localhost/v1",
        gateway_response_format="url",
        max_download_bytes=2**20,
        transport=emulator.transport(),
    )
    with pytest.raises(ProviderError) as info:
        await client.generate("p", size="1024x1024", quality="low")
    assert info.value.code == code
    assert info.value.possibly_billed_attempts == 1
    assert info.value.cost_usd > 0
    assert emulator.stats.billed_requests == 1
    await client.aclose()


async def test_random_faults_billing_invariant_under_concurrency() -> None:
    emulator = Emulator(
        server_error_rate=0.2,
        rate_limit_rate=0.1,
        reset_rate=0.1,
        truncate_rate=0.1,
        seed=7,
        retry_after_s=0.5,
    )
    client = emulated(emulator, max_retries=3, max_concurrency=4)
    outcomes = await asyncio.gather(
        *(client.generate(f"prompt {i}", size="1024x1024", quality="low") for i in range(40)),
        return_exceptions=True,
    )
    billed = attempts = 0
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException) or isinstance(outcome, GPTImageError)
        billed += outcome.possibly_billed_attempts  # type: ignore[union-attr]
        attempts += outcome.attempts  # type: ignore[union-attr]
    assert sum(not isinstance(o, BaseException) for o in outcomes) >= 30
    assert attempts == emulator.stats.requests
    assert billed == emulator.stats.billed_requests
    assert sum(emulator.stats.faults.values()) > 0
    await client.aclose()


def test_sync_twins_with_the_emulator() -> None:
    emulator = Emulator()
    with emulated(emulator) as client:
        assert client.generate_sync("p", size="1024x1024").images[0].width == 1024
        assert client.edit_sync("p", image_bytes(64, 64)).attempts == 1
    assert emulator.stats.billed_requests == 2


def test_resource_with_the_emulator_in_a_dagster_run() -> None:
    name = "test-client-emulator-resource"
    emulator = get_emulator(name)
    emulator.reset()

    @dg.asset
    async def picture(gptimage: GPTImageResource) -> tuple[int, int]:
        result = await gptimage.get_client().generate("a kite", size="1536x1024")
        return result.images[0].width, result.attempts

    outcome = dg.materialize(
        [picture],
        resources={
            "gptimage": GPTImageResource(
                provider="emulator", emulator_name=name, emulator_options={"retry_after_s": 0.1}
            )
        },
    )
    assert outcome.success
    assert outcome.output_for_node("picture") == (1536, 1)
    assert emulator.stats.billed_requests == 1
    assert emulator.config.retry_after_s == 0.1


# --- a real server on 127.0.0.1 ----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator()
    with run_server_in_thread(emulator) as base_url:
        yield emulator, base_url


def _tcp_connects(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name.startswith("httpcore") and "connect_tcp.complete" in r.getMessage()
    )


@pytest.mark.slow
async def test_real_server_generation_edit_and_faults(server: tuple[Emulator, str]) -> None:
    emulator, base_url = server
    assert base_url.startswith("http://127.0.0.1:")
    async with GPTImageClient(provider="emulator", base_url=base_url) as client:
        assert client.emulator is None
        result = await client.generate("p", size="1024x1024", quality="low")
        assert result.images[0].width == 1024
        edit = await client.edit("p", [image_bytes(64, 64), image_bytes(64, 64)])
        assert edit.images
        emulator.script(["reset", "truncate", "500", "ok"])
        retried = await client.generate("p")
    assert (retried.attempts, retried.possibly_billed_attempts) == (4, 3)
    assert emulator.stats.billed_requests == 2 + 3


@pytest.mark.slow
async def test_real_server_connection_reuse_and_concurrency(
    server: tuple[Emulator, str], caplog: pytest.LogCaptureFixture
) -> None:
    emulator, base_url = server
    caplog.set_level(logging.DEBUG, logger="httpcore")
    async with GPTImageClient(provider="emulator", base_url=base_url, max_concurrency=2) as client:
        for _ in range(3):
            await client.generate("p", size="1024x1024", quality="low")
        assert _tcp_connects(caplog) == 1
        emulator.configure(latency_s=0.05)
        await asyncio.gather(*(client.generate(f"p{i}", quality="low") for i in range(6)))
        assert _tcp_connects(caplog) <= 2
    assert emulator.stats.billed_requests == 9


@pytest.mark.slow
async def test_real_server_gateway_url_mode_over_loopback_http() -> None:
    emulator = Emulator(profile="gateway")
    with run_server_in_thread(emulator) as base_url:
        async with GPTImageClient(
            provider="gateway", api_key=FAKE_KEY, base_url=base_url, gateway_response_format="url"
        ) as client:
            result = await client.generate("p", size="1024x1024", quality="low")
    assert result.images[0].width == 1024
    assert emulator.stats.file_downloads == 1


@pytest.mark.slow
async def test_real_server_secrets_stay_out_of_logs_and_errors(
    server: tuple[Emulator, str], caplog: pytest.LogCaptureFixture
) -> None:
    emulator, base_url = server
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "dagster_gptimage", "stamina", "uvicorn"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    emulator.configure(api_key="expected-other-key")
    async with GPTImageClient(provider="openai", api_key=FAKE_KEY, base_url=base_url) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.generate("p")
        emulator.configure(api_key=FAKE_KEY)
        emulator.script(["503", "ok"])
        await client.generate("p")
    texts = [str(info.value), repr(info.value), repr(vars(info.value)), repr(client)]
    texts += [r.getMessage() + repr(r.args) + repr(vars(r)) for r in caplog.records]
    assert any("127.0.0.1" in text for text in texts)
    assert any("httpcore" in r.name for r in caplog.records)
    assert all(FAKE_KEY not in text for text in texts)
    assert all(FAKE_KEY not in repr(vars(record)) for record in emulator.stats.recorded)
