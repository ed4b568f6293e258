"""The emulator over real HTTP on 127.0.0.1 (uvicorn in a thread, and the CLI in a subprocess)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _dev_support import emulator_process
from _emulator_helpers import AUTH, GENERATE, assert_valid, decode_images, mask_bytes, png_bytes
from PIL import Image

from dagster_gptimage.emulator import Emulator, run_server_in_thread

pytestmark = pytest.mark.anyio


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def base_url(emulator: Emulator) -> Iterator[str]:
    with run_server_in_thread(emulator) as url:
        yield url


async def test_generation_over_http(emulator: Emulator, base_url: str, reference_dir: Path) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        response = await client.post(
            "/images/generations", json={**GENERATE, "size": "1536x1024", "n": 2}
        )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert_valid(reference_dir, "ImagesResponse", payload)
    assert [image.size for image in decode_images(payload)] == [(1536, 1024)] * 2
    assert response.headers["x-request-id"].startswith("req_emu_")
    assert emulator.stats.billed_images == 2


async def test_edit_over_http(emulator: Emulator, base_url: str, reference_dir: Path) -> None:
    files = [
        ("image[]", ("a.png", png_bytes(), "image/png")),
        ("image[]", ("b.png", png_bytes(color=(1, 2, 3)), "image/png")),
        ("mask", ("m.png", mask_bytes(), "image/png")),
    ]
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        response = await client.post(
            "/images/edits", data={"model": "gpt-image-1", "prompt": "watercolor"}, files=files
        )
    assert response.status_code == 200, response.text
    assert_valid(reference_dir, "ImagesResponse", response.json())
    recorded = emulator.stats.last
    assert recorded is not None
    assert [f.filename for f in recorded.files] == ["a.png", "b.png", "m.png"]


async def test_errors_and_throttling_over_http(emulator: Emulator, base_url: str) -> None:
    emulator.configure(retry_after_s=0.25)
    emulator.script(["429"])
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        limited = await client.post("/images/generations", json=GENERATE)
        invalid = await client.post("/images/generations", json={**GENERATE, "size": "10x10"})
    async with httpx.AsyncClient(base_url=base_url) as anonymous:
        unauthorized = await anonymous.post("/images/generations", json=GENERATE)
    assert (
        limited.status_code,
        limited.headers["retry-after-ms"],
        limited.headers["retry-after"],
    ) == (429, "250", "1")
    assert (invalid.status_code, invalid.json()["error"]["param"]) == (400, "size")
    assert unauthorized.status_code == 401
    assert all(r.headers["x-request-id"] for r in (limited, invalid, unauthorized))
    assert emulator.stats.billed_requests == 0


async def test_reset_drops_the_connection(emulator: Emulator, base_url: str) -> None:
    emulator.script(["reset", "ok"])
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        with pytest.raises(httpx.ReadError):
            await client.post("/images/generations", json=GENERATE)
        after = await client.post("/images/generations", json=GENERATE)
    assert after.status_code == 200
    assert emulator.stats.billed_requests == 2
    assert emulator.stats.faults["reset"] == 1


async def test_truncate_closes_mid_body(emulator: Emulator, base_url: str) -> None:
    emulator.script(["truncate"])
    async with (
        httpx.AsyncClient(base_url=base_url, headers=AUTH) as client,
        client.stream("POST", "/images/generations", json=GENERATE) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|complete message body"):
            await response.aread()
    assert emulator.stats.billed_requests == 1


async def test_timeout_fault_does_not_outlive_its_client(emulator: Emulator, base_url: str) -> None:
    emulator.configure(hang_s=600)
    emulator.script(["timeout"])
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/images/generations", json=GENERATE)
    assert emulator.stats.billed_requests == 1


async def test_gateway_url_points_at_the_server(reference_dir: Path) -> None:
    emulator = Emulator(profile="gateway")
    with run_server_in_thread(emulator) as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
            response = await client.post(
                "/images/generations", json={**GENERATE, "output_format": "jpeg"}
            )
            url = response.json()["data"][0]["url"]
            download = await client.get(url)
    assert_valid(reference_dir, "ImagesResponse", response.json())
    assert url.startswith(base_url.removesuffix("/v1") + "/_emulator/files/")
    assert download.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(download.content)).size == (1024, 1024)


async def test_azure_over_http() -> None:
    emulator = Emulator(profile="azure")
    with run_server_in_thread(emulator) as base_url:
        assert not base_url.endswith("/v1")
        async with httpx.AsyncClient(base_url=base_url, headers={"api-key": "k"}) as client:
            response = await client.post(
                "/openai/deployments/gpt-image-1/images/generations",
                params={"api-version": "2025-04-01-preview"},
                json={"prompt": "otter", "background": "transparent"},
            )
    assert response.status_code == 200, response.text
    assert decode_images(response.json())[0].mode == "RGBA"


async def test_control_endpoints_over_http(emulator: Emulator, base_url: str) -> None:
    origin = base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=origin, headers=AUTH) as client:
        await client.post("/_emulator/script", json=["503"])
        failed = await client.post("/v1/images/generations", json=GENERATE)
        stats = (await client.get("/_emulator/stats")).json()
        reset = await client.post("/_emulator/reset")
    assert failed.status_code == 503
    assert stats["faults"] == {"503": 1}
    assert stats["recorded"][0]["headers"]["authorization"] == "<redacted>"
    assert reset.json() == {"ok": True}
    assert emulator.stats.requests == 0


def test_server_refuses_non_loopback_hosts(emulator: Emulator) -> None:
    with (
        pytest.raises(ValueError, match="loopback"),
        run_server_in_thread(emulator, host="0.0.0.0"),
    ):
        pass


@pytest.mark.slow
def test_cli_serves_until_terminated() -> None:
    with emulator_process("--latency", "0", "--no-auth") as base_url:
        response = httpx.post(f"{base_url}/images/generations", json=GENERATE, timeout=30)
        assert response.status_code == 200
        assert decode_images(response.json())[0].size == (1024, 1024)
