"""The in-process emulator: API behaviour, validation, faults, billing, profiles, rendering."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _emulator_helpers import (
    AUTH,
    GENERATE,
    assert_valid,
    decode_images,
    mask_bytes,
    openapi_spec,
    parse_sse,
    png_bytes,
)
from PIL import Image
from pydantic import ValidationError

from dagster_gptimage.emulator import (
    FAULT_KINDS,
    IN_PROCESS_BASE_URL,
    Emulator,
    EmulatorConfig,
    EmulatorTransport,
    RenderSpec,
    get_emulator,
    render,
    renderable_formats,
)
from dagster_gptimage.emulator.__main__ import main as cli_main
from dagster_gptimage.models import GenerateRequest
from dagster_gptimage.pricing import estimate_usage

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def client_for(
    emulator: Emulator,
    base_url: str = IN_PROCESS_BASE_URL,
    headers: dict[str, str] | None = None,
    read_timeout: float = 30.0,
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=EmulatorTransport(emulator),
        base_url=base_url,
        headers=AUTH if headers is None else headers,
        timeout=read_timeout,
    ) as client:
        yield client


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


async def generate(emulator: Emulator, **body: Any) -> httpx.Response:
    async with client_for(emulator) as client:
        return await client.post("/images/generations", json={**GENERATE, **body})


def error_of(response: httpx.Response) -> dict[str, Any]:
    payload = response.json()
    assert set(payload["error"]) >= {"message", "type", "param", "code"}
    return payload["error"]


# --- successful generations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "size", "fmt", "size_field"),
    [
        ({}, (1024, 1024), "PNG", "1024x1024"),
        ({"size": "1536x1024", "quality": "low"}, (1536, 1024), "PNG", "1536x1024"),
        ({"size": "1536x864", "output_format": "jpeg"}, (1536, 864), "JPEG", None),
        (
            {"size": "1024x1536", "output_format": "webp", "output_compression": 40},
            (1024, 1536),
            "WEBP",
            "1024x1536",
        ),
        ({"size": "3840x2160", "quality": "medium"}, (3840, 2160), "PNG", None),
    ],
)
async def test_generation_returns_the_requested_image(
    emulator: Emulator,
    reference_dir: Path,
    body: dict[str, Any],
    size: tuple[int, int],
    fmt: str,
    size_field: str | None,
) -> None:
    response = await generate(emulator, **body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert_valid(reference_dir, "ImagesResponse", payload)
    (image,) = decode_images(payload)
    assert (image.format, image.size) == (fmt, size)
    assert payload.get("size") == size_field
    assert payload["output_format"] == body.get("output_format", "png")
    assert payload["quality"] == body.get("quality", "high")
    assert payload["background"] == "opaque"
    assert response.headers["x-request-id"].startswith("req_emu_")


async def test_usage_is_the_pricing_estimate_of_what_was_produced(emulator: Emulator) -> None:
    response = await generate(emulator, size="1536x1024", quality="medium", n=3)
    expected = estimate_usage(
        GenerateRequest.model_validate(
            {**GENERATE, "size": "1536x1024", "quality": "medium", "n": 3}
        )
    )
    usage = response.json()["usage"]
    assert usage["output_tokens"] == expected.output_tokens
    assert usage["input_tokens_details"] == {
        "text_tokens": expected.input_text_tokens,
        "image_tokens": expected.input_image_tokens,
    }
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_auto_quality_and_size_resolve_to_concrete_values(emulator: Emulator) -> None:
    payload = (await generate(emulator, size="auto", quality="auto")).json()
    assert (payload["size"], payload["quality"]) == ("1024x1024", "high")
    expected = estimate_usage(
        GenerateRequest.model_validate({**GENERATE, "size": "1024x1024", "quality": "high"})
    )
    assert payload["usage"]["output_tokens"] == expected.output_tokens


async def test_n_images_are_distinct_and_billed(emulator: Emulator) -> None:
    payload = (await generate(emulator, n=4, size="1024x1024")).json()
    digests = {hashlib.sha256(item["b64_json"].encode()).hexdigest() for item in payload["data"]}
    assert len(payload["data"]) == 4
    assert len(digests) == 4
    assert (emulator.stats.billed_requests, emulator.stats.billed_images) == (1, 4)


async def test_rendering_is_deterministic(emulator: Emulator) -> None:
    first = (await generate(emulator, n=2)).json()["data"]
    again = (await generate(Emulator(), n=2)).json()["data"]
    other = (await generate(emulator, prompt="A different prompt")).json()["data"]
    assert first == again
    assert other[0] != first[0]
    spec = RenderSpec("same", 1024, 1024, "png")
    assert render(spec) == render(spec)
    assert render(spec) != render(RenderSpec("same", 1024, 1024, "png", index=1))


async def test_transparent_background_gives_rgba(emulator: Emulator, reference_dir: Path) -> None:
    response = await generate(
        emulator, model="gpt-image-1.5", background="transparent", size="1024x1536"
    )
    payload = response.json()
    assert_valid(reference_dir, "ImagesResponse", payload)
    (image,) = decode_images(payload)
    assert (image.mode, payload["background"]) == ("RGBA", "transparent")
    assert image.getchannel("A").getextrema()[0] == 0


async def test_output_compression_changes_lossy_output(emulator: Emulator) -> None:
    high = (await generate(emulator, output_format="jpeg", output_compression=95)).json()
    low = (await generate(emulator, output_format="jpeg", output_compression=10)).json()
    assert len(base64.b64decode(low["data"][0]["b64_json"])) < len(
        base64.b64decode(high["data"][0]["b64_json"])
    )


async def test_openapi_generation_example_is_accepted(
    emulator: Emulator, reference_dir: Path
) -> None:
    body = {
        "model": "gpt-image-1.5",
        "prompt": "A cute baby sea otter",
        "n": 1,
        "size": "1024x1024",
    }
    response = await generate(emulator, **body)
    assert response.status_code == 200
    assert_valid(reference_dir, "ImagesResponse", response.json())


async def test_every_documented_generation_field_is_understood(
    emulator: Emulator, reference_dir: Path
) -> None:
    """Each CreateImageRequest property gets a GPT-image answer: accepted, or refused exactly where
    the real API refuses it for GPT image models (dall-e-only parameters)."""
    samples = {
        "prompt": "otter",
        "model": "gpt-image-1",
        "n": 2,
        "quality": "low",
        "output_format": "webp",
        "output_compression": {"output_compression": 50, "output_format": "jpeg"},
        "size": "1024x1024",
        "moderation": "low",
        "background": "opaque",
        "user": "user-1234",
        "stream": False,
        "partial_images": 0,
        "response_format": "b64_json",
        "style": "vivid",
    }
    dalle_only = {"response_format", "style"}
    properties = set(
        openapi_spec(reference_dir)["components"]["schemas"]["CreateImageRequest"]["properties"]
    )
    assert properties <= set(samples), properties - set(samples)
    for name in sorted(properties - {"prompt", "model"}):
        sample = samples[name]
        body = sample if isinstance(sample, dict) else {name: sample}
        response = await generate(emulator, model="gpt-image-1", **body)
        if name in dalle_only:
            assert (response.status_code, error_of(response)["code"]) == (
                400,
                "unknown_parameter",
            ), name
        else:
            assert response.status_code == 200, (name, response.text)


# --- edits --------------------------------------------------------------------------------


async def edit(
    emulator: Emulator, files: list[tuple[str, tuple[str, bytes, str]]], **fields: Any
) -> httpx.Response:
    data = {"model": "gpt-image-1.5", "prompt": "Make it a watercolor", **fields}
    async with client_for(emulator) as client:
        return await client.post(
            "/images/edits", data={k: str(v) for k, v in data.items()}, files=files
        )


async def test_edit_single_image(emulator: Emulator, reference_dir: Path) -> None:
    source = png_bytes(color=(10, 200, 10))
    response = await edit(emulator, [("image", ("in.png", source, "image/png"))], size="1024x1024")
    assert response.status_code == 200, response.text
    payload = response.json()
    assert_valid(reference_dir, "ImagesResponse", payload)
    (image,) = decode_images(payload)
    assert image.size == (1024, 1024)
    assert payload["usage"]["input_tokens_details"]["image_tokens"] > 0
    recorded = emulator.stats.last
    assert recorded is not None
    assert recorded.endpoint == "edits"
    assert [(f.field, f.filename, f.content_type, f.sha256, f.size) for f in recorded.files] == [
        ("image", "in.png", "image/png", hashlib.sha256(source).hexdigest(), len(source))
    ]
    assert recorded.fields["prompt"] == "Make it a watercolor"


async def test_edit_output_shows_its_input(emulator: Emulator) -> None:
    files_green = [("image", ("in.png", png_bytes(color=(0, 255, 0)), "image/png"))]
    files_red = [("image", ("in.png", png_bytes(color=(255, 0, 0)), "image/png"))]
    (green,) = decode_images((await edit(emulator, files_green)).json())
    (red,) = decode_images((await edit(emulator, files_red)).json())
    center = (512, 700)
    green_px, red_px = green.convert("RGB").getpixel(center), red.convert("RGB").getpixel(center)
    assert isinstance(green_px, tuple)
    assert isinstance(red_px, tuple)
    assert green_px[1] > red_px[1]
    assert red_px[0] > green_px[0]


async def test_edit_multiple_images_and_mask(emulator: Emulator, reference_dir: Path) -> None:
    files = [
        ("image[]", ("a.png", png_bytes(color=(255, 0, 0)), "image/png")),
        ("image[]", ("b.png", png_bytes((512, 512), (0, 0, 255)), "image/png")),
        ("mask", ("mask.png", mask_bytes(), "image/png")),
    ]
    response = await edit(emulator, files, n=2, input_fidelity="high")
    assert response.status_code == 200, response.text
    payload = response.json()
    assert_valid(reference_dir, "ImagesResponse", payload)
    images = decode_images(payload)
    assert len(images) == 2
    right = images[0].convert("RGB").getpixel((900, 512))
    assert right == (255, 0, 0), "the opaque half of the mask keeps the first image"
    recorded = emulator.stats.last
    assert recorded is not None
    assert [f.field for f in recorded.files] == ["image[]", "image[]", "mask"]
    assert emulator.stats.billed_images == 2


async def test_edit_json_with_data_url(emulator: Emulator, reference_dir: Path) -> None:
    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    async with client_for(emulator) as client:
        response = await client.post(
            "/images/edits",
            json={"model": "gpt-image-2", "prompt": "watercolor", "images": [{"image_url": url}]},
        )
        remote = await client.post(
            "/images/edits",
            json={
                "model": "gpt-image-2",
                "prompt": "x",
                "images": [{"image_url": "https://example.com/a.png"}],
            },
        )
    assert response.status_code == 200, response.text
    assert_valid(reference_dir, "ImagesResponse", response.json())
    assert (remote.status_code, error_of(remote)["param"]) == (400, "images[0].image_url")


@pytest.mark.parametrize(
    ("files", "fields", "param", "code"),
    [
        (
            [("mask", ("m.png", mask_bytes(), "image/png"))],
            {},
            "image",
            "missing_required_parameter",
        ),
        ([("image", ("a.txt", b"hello", "text/plain"))], {}, "image", "invalid_value"),
        ([("image", ("a.png", b"not a png", "image/png"))], {}, "image", "invalid_image_file"),
        (
            [
                ("image", ("a.png", png_bytes(), "image/png")),
                ("mask", ("m.png", mask_bytes((512, 512)), "image/png")),
            ],
            {},
            "mask",
            "invalid_value",
        ),
        (
            [
                ("image", ("a.png", png_bytes(), "image/png")),
                ("mask", ("m.png", png_bytes(), "image/png")),
            ],
            {},
            "mask",
            "invalid_image_file",
        ),
        (
            [("image", ("a.png", png_bytes(), "image/png"))],
            {"model": "gpt-image-2", "input_fidelity": "high"},
            "input_fidelity",
            "invalid_value",
        ),
        ([("picture", ("a.png", png_bytes(), "image/png"))], {}, "picture", "unknown_parameter"),
    ],
)
async def test_edit_rejections(
    emulator: Emulator, files: list[Any], fields: dict[str, Any], param: str, code: str
) -> None:
    response = await edit(emulator, files, **fields)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert emulator.stats.billed_requests == 0


async def test_edit_openapi_multipart_example_is_accepted(
    emulator: Emulator, reference_dir: Path
) -> None:
    example = openapi_spec(reference_dir)["paths"]["/images/edits"]["post"]["requestBody"][
        "content"
    ]["multipart/form-data"]["examples"]["multipart_edit"]["value"]
    fields = {key: value for key, value in example.items() if key != "image"}
    response = await edit(emulator, [("image", ("in.png", png_bytes(), "image/png"))], **fields)
    assert response.status_code == 200, response.text


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"response_format": "b64_json"}, "response_format", "unknown_parameter"),
        ({"aspect_ratio": "16:9"}, "aspect_ratio", "unknown_parameter"),
        ({"resolution": "4K"}, "resolution", "unknown_parameter"),
        ({"input_fidelity": "high"}, "input_fidelity", "unknown_parameter"),
        ({"size": "1000x1000"}, "size", "invalid_value"),
        ({"size": "4096x4096"}, "size", "invalid_value"),
        ({"size": "1536x864", "model": "gpt-image-1"}, "size", "invalid_value"),
        ({"n": 11}, "n", "invalid_value"),
        ({"n": "2"}, "n", "invalid_type"),
        ({"quality": "ultra"}, "quality", "invalid_value"),
        ({"output_format": "gif"}, "output_format", "invalid_value"),
        ({"output_compression": 50}, "output_compression", "invalid_value"),
        ({"background": "transparent"}, "background", "invalid_value"),
        ({"model": "dall-e-3"}, "model", "invalid_value"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": "x" * 32_001}, "prompt", "invalid_value"),
        ({"partial_images": 4}, "partial_images", "integer_above_max_value"),
    ],
)
async def test_invalid_generation_requests(
    emulator: Emulator, body: dict[str, Any], param: str, code: str
) -> None:
    response = await generate(emulator, **body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert response.headers["x-request-id"].startswith("req_emu_")
    assert emulator.stats.billed_requests == 0


async def test_missing_required_fields(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        no_prompt = await client.post("/images/generations", json={"model": "gpt-image-2"})
        no_model = await client.post("/images/generations", json={"prompt": "otter"})
        not_json = await client.post(
            "/images/generations", content=b"{nope", headers={"content-type": "application/json"}
        )
    assert (no_prompt.status_code, error_of(no_prompt)["code"]) == (
        400,
        "missing_required_parameter",
    )
    assert (no_model.status_code, error_of(no_model)["param"]) == (400, "model")
    assert "dall-e-2" in error_of(no_model)["message"]
    assert not_json.status_code == 400
    assert "JSON" in error_of(not_json)["message"]
    async with client_for(emulator) as client:
        urlencoded = await client.post(
            "/images/edits", data={"prompt": "x", "model": "gpt-image-1"}
        )
    assert urlencoded.status_code == 400
    assert "multipart/form-data" in error_of(urlencoded)["message"]


async def test_unknown_routes_are_404(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        wrong_path = await client.post("/images/variations", json=GENERATE)
        wrong_method = await client.get("/images/generations")
    assert wrong_path.status_code == wrong_method.status_code == 404
    assert error_of(wrong_method)["message"] == "Invalid URL (GET /v1/images/generations)"
    assert emulator.stats.requests_by_endpoint["other"] == 2


async def test_route_without_v1_prefix_is_served(emulator: Emulator) -> None:
    async with client_for(emulator, base_url="http://emulator.localhost") as client:
        response = await client.post("/images/generations", json=GENERATE)
    assert response.status_code == 200


# --- authentication ---------------------------------------------------------------------------


async def test_authentication(emulator: Emulator) -> None:
    async with client_for(emulator, headers={}) as client:
        missing = await client.post("/images/generations", json=GENERATE)
    assert missing.status_code == 401
    emulator.configure(api_key="sk-right-key-0000")
    async with client_for(
        emulator, headers={"Authorization": "Bearer sk-wrong-key-1234"}
    ) as client:
        wrong = await client.post("/images/generations", json=GENERATE)
    async with client_for(
        emulator, headers={"Authorization": "Bearer sk-right-key-0000"}
    ) as client:
        right = await client.post("/images/generations", json=GENERATE)
    assert (wrong.status_code, error_of(wrong)["code"]) == (401, "invalid_api_key")
    assert "sk-wrong-key-1234" not in wrong.text
    assert right.status_code == 200
    relaxed = Emulator(require_auth=False)
    async with client_for(relaxed, headers={}) as client:
        assert (await client.post("/images/generations", json=GENERATE)).status_code == 200
    assert emulator.stats.billed_requests == 1


async def test_recorded_requests_redact_credentials(emulator: Emulator) -> None:
    async with client_for(
        emulator, headers={"Authorization": "Bearer sk-secret", "api-key": "k2", "x-trace": "t"}
    ) as client:
        await client.post("/images/generations", json=GENERATE)
    recorded = emulator.stats.last
    assert recorded is not None
    assert recorded.headers["authorization"] == "<redacted>"
    assert recorded.headers["api-key"] == "<redacted>"
    assert recorded.headers["x-trace"] == "t"
    assert "sk-secret" not in json.dumps(emulator.stats.to_dict())


# --- moderation and faults ----------------------------------------------------------------------


async def test_moderation_word_blocks_without_billing() -> None:
    emulator = Emulator(moderation_word="forbidden")
    response = await generate(emulator, prompt="Something FORBIDDEN here")
    error = error_of(response)
    assert response.status_code == 400
    assert (error["code"], error["type"]) == ("moderation_blocked", "image_generation_user_error")
    assert emulator.stats.billed_requests == 0
    assert emulator.stats.faults["moderation"] == 1


async def test_rate_limit_fault(emulator: Emulator) -> None:
    emulator.configure(retry_after_s=2.5)
    emulator.script(["429"])
    response = await generate(emulator)
    assert response.status_code == 429
    assert error_of(response)["code"] == "rate_limit_exceeded"
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("3", "2500")
    assert emulator.stats.billed_requests == 0


@pytest.mark.parametrize(
    ("fault", "status", "code", "media_type"),
    [
        ("insufficient_quota", 429, "insufficient_quota", "application/json"),
        ("500", 500, None, "application/json"),
        ("502", 502, None, "text/html"),
        ("503", 503, None, "application/json"),
        ("moderation", 400, "moderation_blocked", "application/json"),
    ],
)
async def test_error_faults_are_not_billed(
    emulator: Emulator, fault: str, status: int, code: str | None, media_type: str
) -> None:
    emulator.script([fault])
    response = await generate(emulator)
    assert response.status_code == status
    assert response.headers["content-type"] == media_type
    assert response.headers["x-request-id"].startswith("req_emu_")
    if media_type == "application/json":
        assert error_of(response)["code"] == code
    assert emulator.stats.faults[fault] == 1
    assert emulator.stats.billed_requests == 0


async def test_reset_raises_read_error_and_is_billed(emulator: Emulator) -> None:
    emulator.script(["reset"])
    with pytest.raises(httpx.ReadError):
        await generate(emulator, n=2)
    assert (emulator.stats.billed_requests, emulator.stats.billed_images) == (1, 2)
    assert emulator.stats.faults["reset"] == 1


async def test_truncate_sends_headers_then_breaks_the_body(emulator: Emulator) -> None:
    emulator.script(["truncate"])
    async with (
        client_for(emulator) as client,
        client.stream("POST", "/images/generations", json=GENERATE) as response,
    ):
        assert response.status_code == 200
        expected = int(response.headers["content-length"])
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    assert expected > 1000
    assert emulator.stats.billed_requests == 1
    assert emulator.stats.faults["truncate"] == 1


async def test_timeout_fault_hits_the_client_read_timeout_and_is_billed(emulator: Emulator) -> None:
    emulator.configure(hang_s=60)
    emulator.script(["timeout"])
    async with client_for(emulator, read_timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/images/generations", json=GENERATE)
    assert emulator.stats.billed_requests == 1
    assert emulator.stats.faults["timeout"] == 1
    recorded = emulator.stats.last
    assert recorded is not None
    assert recorded.outcome == "cancelled"


async def test_slow_generation_hits_the_read_timeout() -> None:
    emulator = Emulator(latency_s=30)
    async with client_for(emulator, read_timeout=0.1) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/images/generations", json=GENERATE)
    assert emulator.stats.billed_requests == 1


async def test_script_is_a_fifo_consumed_before_rates(emulator: Emulator) -> None:
    emulator.configure(rate_limit_rate=1.0)
    emulator.script(["500", "ok", "503"])
    assert emulator.pending_faults == ("500", "ok", "503")
    statuses = [(await generate(emulator)).status_code for _ in range(4)]
    assert statuses == [500, 200, 503, 429]
    assert emulator.pending_faults == ()


async def test_invalid_requests_do_not_consume_the_script(emulator: Emulator) -> None:
    emulator.script(["503"])
    assert (await generate(emulator, size="7x7")).status_code == 400
    assert emulator.pending_faults == ("503",)


async def test_script_rejects_unknown_kinds(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emulator.script(["418"])
    assert set(FAULT_KINDS) >= {"429", "reset", "truncate", "timeout", "moderation"}


async def test_fault_rates_are_seeded() -> None:
    async def statuses(seed: int) -> list[int]:
        emulator = Emulator(seed=seed, rate_limit_rate=0.3, server_error_rate=0.3)
        return [
            (await generate(emulator, size="1024x1024", quality="low")).status_code
            for _ in range(12)
        ]

    first = await statuses(1)
    assert first == await statuses(1)
    assert set(first) > {200}
    assert set(first) <= {200, 429, 500, 502, 503}


def test_lognormal_latency_matches_the_observed_percentiles() -> None:
    emulator = Emulator(latency_distribution="lognormal", latency_scale=0.5, seed=11)
    draws = sorted(emulator._draw()[1] for _ in range(4000))
    p50, p95 = draws[len(draws) // 2], draws[int(len(draws) * 0.95)]
    assert 0.5 * 59 * 0.9 < p50 < 0.5 * 59 * 1.1
    assert 0.5 * 143 * 0.85 < p95 < 0.5 * 143 * 1.15


def test_config_rejects_rates_above_one() -> None:
    with pytest.raises(ValidationError, match="may not exceed 1"):
        EmulatorConfig(rate_limit_rate=0.6, reset_rate=0.6)
    with pytest.raises(ValidationError):
        Emulator(latency_s=-1)


async def test_billing_counters_and_reset(emulator: Emulator) -> None:
    emulator.script(["429", "reset", "truncate", "500", "ok"])
    for _ in range(5):
        with contextlib.suppress(httpx.TransportError):
            async with client_for(emulator) as client:
                response = await client.post("/images/generations", json={**GENERATE, "n": 2})
                await response.aread()
    stats = emulator.stats
    assert stats.requests == 5
    assert stats.requests_by_endpoint["generations"] == 5
    assert (stats.billed_requests, stats.billed_images) == (3, 6)
    assert dict(stats.faults) == {"429": 1, "reset": 1, "truncate": 1, "500": 1}
    assert [r.outcome for r in stats.recorded] == ["error", "reset", "truncate", "error", "ok"]
    emulator.script(["500"])
    emulator.reset()
    assert (
        emulator.stats.requests,
        emulator.stats.billed_requests,
        len(emulator.stats.recorded),
    ) == (0, 0, 0)
    assert emulator.pending_faults == ()


async def test_concurrent_requests_are_all_counted() -> None:
    emulator = Emulator(latency_distribution="lognormal", latency_scale=0.0005)
    async with client_for(emulator) as client:
        results: list[int] = []

        async def one(index: int) -> None:
            response = await client.post(
                "/images/generations", json={**GENERATE, "prompt": f"otter {index}"}
            )
            results.append(response.status_code)

        async with anyio.create_task_group() as group:
            for index in range(16):
                group.start_soon(one, index)
    assert results == [200] * 16
    assert emulator.stats.billed_requests == 16
    assert len({r.request_id for r in emulator.stats.recorded}) == 16


# --- streaming ------------------------------------------------------------------------------------


async def test_streaming_events_follow_the_schema(emulator: Emulator, reference_dir: Path) -> None:
    async with client_for(emulator) as client:
        response = await client.post(
            "/images/generations", json={**GENERATE, "stream": True, "partial_images": 2}
        )
    assert response.headers["content-type"] == "text/event-stream"
    events = parse_sse(response.text)
    assert [e["type"] for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert_valid(reference_dir, "ImageGenPartialImageEvent", events[0])
    assert_valid(reference_dir, "ImageGenCompletedEvent", events[-1])
    image = Image.open(io.BytesIO(base64.b64decode(events[-1]["b64_json"])))
    assert image.size == (1024, 1024)


# --- Azure profile --------------------------------------------------------------------------------


AZURE_BASE = "https://myres.openai.azure.com/openai/deployments/gpt-image-2"


async def test_azure_profile(reference_dir: Path) -> None:
    emulator = Emulator(profile="azure", moderation_word="forbidden")
    async with client_for(
        emulator, base_url=AZURE_BASE, headers={"api-key": "azure-key"}
    ) as client:
        params = {"api-version": "2025-04-01-preview"}
        ok = await client.post(
            "/images/generations", params=params, json={"prompt": "otter", "size": "1024x1536"}
        )
        with_model = await client.post(
            "/images/generations", params=params, json={"prompt": "otter", "model": "x"}
        )
        no_version = await client.post("/images/generations", json={"prompt": "otter"})
        webp = await client.post(
            "/images/generations", params=params, json={"prompt": "otter", "output_format": "webp"}
        )
        blocked = await client.post(
            "/images/generations", params=params, json={"prompt": "forbidden thing"}
        )
        edited = await client.post(
            "/images/edits",
            params=params,
            data={"prompt": "watercolor"},
            files=[("image", ("a.png", png_bytes(), "image/png"))],
        )
    async with client_for(emulator, base_url=AZURE_BASE, headers={}) as client:
        no_key = await client.post("/images/generations", params=params, json={"prompt": "otter"})
    assert ok.status_code == 200, ok.text
    assert_valid(reference_dir, "ImagesResponse", ok.json())
    assert decode_images(ok.json())[0].size == (1024, 1536)
    assert ok.headers["apim-request-id"] == ok.headers["x-request-id"]
    assert with_model.status_code == 200
    assert no_version.status_code == 404
    assert (webp.status_code, error_of(webp)["param"]) == (400, "output_format")
    assert (blocked.status_code, error_of(blocked)["code"]) == (400, "contentFilter")
    assert edited.status_code == 200, edited.text
    assert no_key.status_code == 401
    assert emulator.stats.billed_requests == 3


async def test_azure_deployment_name_picks_the_model() -> None:
    emulator = Emulator(profile="azure", azure_model="gpt-image-1")
    base = "http://emulator.localhost/openai/deployments/my-deployment"
    async with client_for(emulator, base_url=base, headers={"api-key": "k"}) as client:
        response = await client.post(
            "/images/generations",
            params={"api-version": "v"},
            json={"prompt": "x", "size": "1536x864"},
        )
    assert (response.status_code, error_of(response)["param"]) == (400, "size")


# --- gateway profile ------------------------------------------------------------------------------


async def test_gateway_url_mode_and_download(reference_dir: Path) -> None:
    emulator = Emulator(profile="gateway")
    async with client_for(emulator) as client:
        response = await client.post(
            "/images/generations", json={**GENERATE, "output_format": "webp"}
        )
        payload = response.json()
        assert_valid(reference_dir, "ImagesResponse", payload)
        url = payload["data"][0]["url"]
        assert url.startswith("http://emulator.localhost/_emulator/files/")
        download = await client.get(url)
        missing = await client.get("http://emulator.localhost/_emulator/files/0123abcd.png")
    assert response.headers["x-lumenfall-request-id"] == response.headers["x-request-id"]
    assert download.headers["content-type"] == "image/webp"
    image = Image.open(io.BytesIO(download.content))
    assert (image.format, image.size) == ("WEBP", (1024, 1024))
    assert missing.status_code == 404
    assert emulator.stats.file_downloads == 1
    assert emulator.stats.requests == 1


async def test_gateway_b64_aspect_ratio_and_extra_formats(reference_dir: Path) -> None:
    emulator = Emulator(profile="gateway")
    formats = sorted({"gif", "avif"} & renderable_formats())
    async with client_for(emulator) as client:
        wide = await client.post(
            "/images/generations",
            json={
                **GENERATE,
                "response_format": "b64_json",
                "aspect_ratio": "16:9",
                "resolution": "2K",
            },
        )
        extra = [
            await client.post(
                "/images/generations",
                json={**GENERATE, "response_format": "b64_json", "output_format": fmt},
            )
            for fmt in formats
        ]
        two = await client.post("/images/generations", json={**GENERATE, "n": 2})
    assert wide.status_code == 200, wide.text
    assert_valid(reference_dir, "ImagesResponse", wide.json())
    assert decode_images(wide.json())[0].size == (2048, 1152)
    for fmt, response in zip(formats, extra, strict=True):
        assert response.status_code == 200, response.text
        assert "output_format" not in response.json()
        assert decode_images(response.json())[0].format == fmt.upper()
    assert (two.status_code, error_of(two)["param"]) == (400, "n")


async def test_gateway_quota_is_402() -> None:
    emulator = Emulator(profile="gateway")
    emulator.script(["insufficient_quota", "502"])
    quota = await generate(emulator)
    bad_gateway = await generate(emulator)
    assert (quota.status_code, error_of(quota)["code"]) == (402, "INSUFFICIENT_BALANCE")
    assert (bad_gateway.status_code, error_of(bad_gateway)["code"]) == (
        502,
        "ALL_PROVIDERS_EXHAUSTED",
    )


async def test_gateway_download_can_misbehave() -> None:
    emulator = Emulator(profile="gateway", file_content_type="text/html", file_padding_bytes=10_000)
    async with client_for(emulator) as client:
        url = (await client.post("/images/generations", json=GENERATE)).json()["data"][0]["url"]
        download = await client.get(url)
    image_size = len(render(RenderSpec(GENERATE["prompt"], 1024, 1024, "png")))
    assert download.headers["content-type"] == "text/html"
    assert len(download.content) == image_size + 10_000


# --- control endpoints, registry, CLI --------------------------------------------------------------


async def test_control_endpoints_in_process(emulator: Emulator) -> None:
    async with client_for(emulator, base_url="http://emulator.localhost", headers={}) as client:
        scripted = await client.post("/_emulator/script", json=["429", "ok"])
        bad = await client.post("/_emulator/script", json=["nope"])
        configured = await client.post(
            "/_emulator/config", json={"latency_s": 0.0, "moderation_word": "zzz"}
        )
        bad_config = await client.post("/_emulator/config", json={"no_such": 1})
        stats = (await client.get("/_emulator/stats")).json()
        await client.post("/_emulator/reset")
    assert scripted.json() == {"pending_faults": ["429", "ok"]}
    assert bad.status_code == bad_config.status_code == 400
    assert configured.json()["moderation_word"] == "zzz"
    assert "api_key" not in configured.json()
    assert stats["pending_faults"] == ["429", "ok"]
    assert emulator.pending_faults == ()
    assert emulator.config.moderation_word == "zzz"


def test_get_emulator_is_a_process_wide_registry() -> None:
    name = f"test-registry-{id(object())}"
    first = get_emulator(name, latency_s=0.0)
    again = get_emulator(name, moderation_word="blocked")
    assert first is again
    assert again.config.moderation_word == "blocked"
    assert get_emulator(name).config.moderation_word == "blocked"
    assert get_emulator(f"{name}-other") is not first


def test_cli_builds_the_configured_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}

    def fake_serve(emulator: Emulator, host: str, port: int, *, log_level: str) -> None:
        served.update(emulator=emulator, host=host, port=port)

    monkeypatch.setattr("dagster_gptimage.emulator.__main__.serve", fake_serve)
    cli_main(
        [
            "--port",
            "9999",
            "--profile",
            "gateway",
            "--latency-distribution",
            "lognormal",
            "--latency-scale",
            "0.01",
            "--rate-limit-rate",
            "0.2",
            "--moderation-word",
            "nope",
            "--seed",
            "3",
            "--no-auth",
            "--script",
            "429,reset",
        ]
    )
    emulator = served["emulator"]
    assert (served["host"], served["port"]) == ("127.0.0.1", 9999)
    config = emulator.config
    assert (config.profile, config.latency_distribution, config.latency_scale) == (
        "gateway",
        "lognormal",
        0.01,
    )
    assert (config.rate_limit_rate, config.moderation_word, config.seed, config.require_auth) == (
        0.2,
        "nope",
        3,
        False,
    )
    assert emulator.pending_faults == ("429", "reset")
    with pytest.raises(SystemExit):
        cli_main(["--host", "0.0.0.0"])
