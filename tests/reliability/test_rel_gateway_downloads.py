"""Gateway URL mode: the generated image is fetched from a URL the gateway returns.

The fetch must refuse plain http off this machine (loopback is allowed, for tests), bodies over the
size cap, and anything that is not an image; each refusal is a billed failure (the image was
generated) that is never re-generated behind the user's back, and an asset partition hit by it
fails without storing anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from _reliability import (
    SIZE,
    audit_local,
    failure_metadata,
    materialized_partitions,
    prompt_table,
    run_range,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator, run_server_in_thread
from dagster_gptimage.errors import ProviderError
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

KEY = "gateway-reliability-key"


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(profile="gateway")
    with run_server_in_thread(emulator) as url:
        yield emulator, url


@pytest.fixture
def emulator(gateway: tuple[Emulator, str]) -> Emulator:
    emulator = gateway[0]
    emulator.configure(file_content_type=None, file_padding_bytes=0)
    emulator.reset()
    return emulator


def _client(base_url: str, **options: object) -> GPTImageClient:
    return GPTImageClient(
        provider="gateway",
        api_key=KEY,
        base_url=base_url,
        gateway_response_format="url",
        max_retries=2,
        **options,  # type: ignore[arg-type]
    )


def _assert_billed_once(error: ProviderError, emulator: Emulator) -> None:
    assert error.possibly_billed_attempts == 1
    assert error.cost_usd > 0
    assert emulator.stats.requests == 1  # generated once, never again
    assert emulator.stats.billed_requests == 1


def test_loopback_http_download_works_over_a_real_socket(
    gateway: tuple[Emulator, str], emulator: Emulator
) -> None:
    with _client(gateway[1]) as client:
        result = client.generate_sync("a harbour", size=SIZE)
    assert (result.images[0].width, result.images[0].height) == (1024, 640)
    assert emulator.stats.file_downloads == 1
    assert result.possibly_billed_attempts == 1


@pytest.mark.parametrize("host", ["images.example.com", "203.0.113.7", "localhost.example.com"])
def test_plain_http_off_this_machine_is_refused(host: str) -> None:
    emulator = Emulator(profile="gateway")
    client = _client(f"http://{host}/v1", transport=emulator.transport())
    with client, pytest.raises(ProviderError) as raised:
        client.generate_sync("a harbour", size=SIZE)
    assert raised.value.code == "insecure_image_url"
    assert host in str(raised.value)
    assert emulator.stats.file_downloads == 0
    _assert_billed_once(raised.value, emulator)

    # Over https the same host is fine; so is plain http when explicitly allowed.
    for base, options in (
        (f"https://{host}/v1", {}),
        (f"http://{host}/v1", {"allow_insecure_downloads": True}),
    ):
        with _client(base, transport=emulator.transport(), **options) as other:
            assert other.generate_sync("a harbour", size=SIZE).images


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(padding=st.integers(min_value=0, max_value=3 * 2**20), under=st.integers(1, 2**20))
def test_bodies_over_the_cap_are_refused(
    gateway: tuple[Emulator, str], emulator: Emulator, padding: int, under: int
) -> None:
    emulator.reset()
    emulator.configure(file_padding_bytes=0)
    with _client(gateway[1]) as client:
        image = client.generate_sync("a harbour", size=SIZE).images[0].data
    emulator.reset()
    emulator.configure(file_padding_bytes=padding)
    cap = max(1, len(image) + padding - under)
    with (
        _client(gateway[1], max_download_bytes=cap) as client,
        pytest.raises(ProviderError) as raised,
    ):
        client.generate_sync("a harbour", size=SIZE)
    assert raised.value.code == "download_too_large"
    assert str(cap) in str(raised.value)
    _assert_billed_once(raised.value, emulator)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content_type=st.one_of(
        st.sampled_from(
            [
                "text/html",
                "application/json",
                "application/octet-stream",
                "text/plain; charset=utf-8",
            ]
        ),
        st.from_regex(r"(text|application|video|audio)/[a-z0-9.+-]{1,20}", fullmatch=True),
    )
)
def test_non_image_content_types_are_refused(
    gateway: tuple[Emulator, str], emulator: Emulator, content_type: str
) -> None:
    emulator.reset()
    emulator.configure(file_content_type=content_type)
    with _client(gateway[1]) as client, pytest.raises(ProviderError) as raised:
        client.generate_sync("a harbour", size=SIZE)
    assert raised.value.code == "download_not_image"
    _assert_billed_once(raised.value, emulator)


def test_a_refused_download_fails_its_partition_and_stores_nothing(
    gateway: tuple[Emulator, str],
    emulator: Emulator,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_RELIABILITY_KEY", KEY)
    table = prompt_table(3)
    asset = image_generation_asset(name="gateway_urls", prompts=table, size=SIZE)
    resources = {
        "gptimage": GPTImageResource(
            provider="gateway",
            api_key=dg.EnvVar("GATEWAY_RELIABILITY_KEY"),
            base_url=gateway[1],
            gateway_response_format="url",
        ),
        "image_store": ImageStore(base_url=str(tmp_path / "store")),
    }
    emulator.configure(file_content_type="text/html")

    result = run_range([asset], resources, table.keys, instance)

    assert not result.success
    failed = failure_metadata(result)
    assert set(failed) == set(table.keys)
    for details in failed.values():
        assert details["reason"] == "provider error"
        assert "not an image" in details["message"]
        assert details["possibly_billed_attempts"] == 1
        assert details["attempts"] == 1
    assert emulator.stats.billed_requests == 3
    assert materialized_partitions(instance, asset.key) == set()
    audit = audit_local(tmp_path / "store" / "gateway_urls")
    assert audit.keys == set()
    assert audit.others == []
