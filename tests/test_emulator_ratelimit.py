"""The emulator's account rate limits: bucket arithmetic, OpenAI's 429 and headers, sharing."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from _emulator_helpers import AUTH, GENERATE, openapi_spec

from dagster_gptimage.emulator import (
    IN_PROCESS_BASE_URL,
    IN_PROCESS_ORIGIN,
    Emulator,
    EmulatorTransport,
    get_emulator,
    run_server_in_thread,
)
from dagster_gptimage.emulator.__main__ import main as cli_main
from dagster_gptimage.emulator._ratelimit import (
    AccountLimits,
    TokenBucket,
    format_duration,
    retry_after_headers,
)

pytestmark = pytest.mark.anyio
RATE_HEADERS = ("limit", "remaining", "reset")


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limits(**options: Any) -> AccountLimits:
    settings: dict[str, Any] = {
        "images_per_minute": None,
        "images_burst": None,
        "tokens_per_minute": None,
        "tokens_burst": None,
        "now": 0.0,
    }
    return AccountLimits(**{**settings, **options})


def rate_headers(response: httpx.Response, suffix: str = "requests") -> tuple[str, ...]:
    return tuple(response.headers[f"x-ratelimit-{name}-{suffix}"] for name in RATE_HEADERS)


async def post(emulator: Emulator, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(
        transport=EmulatorTransport(emulator), base_url=IN_PROCESS_BASE_URL, headers=AUTH
    ) as client:
        return await client.post("/images/generations", json={**GENERATE, **(body or {})}, **kwargs)


# --- pure bucket arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (7.188, "7.188s"),
        (59.5, "59.5s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (61.5, "1m1.5s"),
        (3723.0, "1h2m3s"),
    ],
)
def test_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("wait", "expected"),
    [(0.75, ("1", "750")), (2.0, ("2", "2000")), (2.0004, ("3", "2001")), (0.0, ("0", "0"))],
)
def test_retry_after_rounds_up(wait: float, expected: tuple[str, str]) -> None:
    assert retry_after_headers(wait) == (
        ("retry-after", expected[0]),
        ("retry-after-ms", expected[1]),
    )


def test_bucket_refills_continuously_up_to_its_burst() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=3, now=0.0)
    bucket.take(3)
    assert (bucket.remaining, bucket.used, bucket.reset_s) == (0, 3, 3.0)
    bucket.refill(0.5)
    assert (bucket.level, bucket.remaining, bucket.wait_for(1)) == (0.5, 0, 0.5)
    bucket.refill(2.0)
    assert (bucket.remaining, bucket.wait_for(1), bucket.reset_s) == (2, 0.0, 1.0)
    bucket.refill(100.0)
    assert (bucket.level, bucket.reset_s) == (3.0, 0.0)
    bucket.refill(50.0)  # a clock read out of order never drains the bucket
    assert bucket.level == 3.0


def test_admission_refuses_with_the_exact_wait_and_takes_nothing() -> None:
    account = limits(images_per_minute=60, images_burst=2)
    assert account.admit(images=1, tokens=0, now=0.0) is None
    assert account.admit(images=1, tokens=0, now=0.0) is None
    refused = account.admit(images=1, tokens=0, now=0.25)
    assert refused is not None
    assert (refused.kind, refused.per_minute, refused.used, refused.requested) == (
        "images",
        60,
        2,
        1,
    )
    assert refused.retry_after_s == pytest.approx(0.75)
    assert account.admit(images=1, tokens=0, now=0.9) is not None
    assert account.admit(images=1, tokens=0, now=1.0) is None  # refusals took nothing
    assert account.admit(images=2, tokens=0, now=1.5) is not None


def test_the_longest_wait_among_short_buckets_is_reported() -> None:
    account = limits(
        images_per_minute=60, images_burst=1, tokens_per_minute=6000, tokens_burst=1000
    )
    assert account.admit(images=1, tokens=1000, now=0.0) is None
    refused = account.admit(images=1, tokens=1000, now=0.0)
    assert refused is not None
    assert (refused.kind, refused.requested, refused.retry_after_s) == ("tokens", 1000, 10.0)
    after_images = account.admit(images=1, tokens=100, now=1.0)  # 100 tokens refilled by now
    assert after_images is None
    assert account.buckets["tokens"].remaining == 0


def test_a_request_larger_than_the_burst_waits_for_a_full_bucket() -> None:
    account = limits(images_per_minute=30, images_burst=2)
    assert account.admit(images=1, tokens=0, now=0.0) is None
    refused = account.admit(images=4, tokens=0, now=0.0)
    assert refused is not None
    assert refused.retry_after_s == 2.0
    assert account.admit(images=4, tokens=0, now=2.0) is None
    assert account.buckets["images"].remaining == 0


def test_a_greedy_client_gets_exactly_the_limit_after_the_burst() -> None:
    account = limits(images_per_minute=240, images_burst=20)
    now, admitted = 0.0, 0
    while now < 600:
        refused = account.admit(images=1, tokens=0, now=now)
        if refused is None:
            admitted += 1
        else:
            now += refused.retry_after_s
    assert admitted == pytest.approx(20 + 240 * 10, abs=1)


def test_headers_report_each_configured_bucket() -> None:
    assert limits(images_per_minute=5).headers(0.0) == (
        ("x-ratelimit-limit-requests", "5"),
        ("x-ratelimit-remaining-requests", "5"),
        ("x-ratelimit-reset-requests", "0s"),
    )
    account = limits(images_per_minute=7.5, tokens_per_minute=600_000, tokens_burst=20_000)
    assert account.admit(images=1, tokens=15_000, now=0.0) is None
    assert dict(account.headers(0.5)) == {
        "x-ratelimit-limit-requests": "7.5",
        "x-ratelimit-remaining-requests": "6",
        "x-ratelimit-reset-requests": "7.5s",
        "x-ratelimit-limit-tokens": "600000",
        "x-ratelimit-remaining-tokens": "10000",
        "x-ratelimit-reset-tokens": "1s",
    }


# --- the emulator, in-process ---------------------------------------------------------------


async def test_images_limit_answers_openai_429_with_headers_and_bills_nothing() -> None:
    clock = FakeClock()
    emulator = Emulator(images_per_minute=60, images_burst=2, clock=clock)
    first, second = await post(emulator), await post(emulator)
    clock.advance(0.25)
    limited = await post(emulator)
    assert (first.status_code, second.status_code, limited.status_code) == (200, 200, 429)
    assert rate_headers(first) == ("60", "1", "1s")
    assert rate_headers(second) == ("60", "0", "2s")
    assert rate_headers(limited) == ("60", "0", "1.75s")
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("1", "750")
    assert limited.json() == {
        "error": {
            "message": "Rate limit reached for gpt-image-2 in organization org-emulator on images "
            "per min (IPM): Limit 60, Used 2, Requested 1. Please try again in 750ms. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert limited.headers["x-request-id"].startswith("req_emu_")
    stats = emulator.stats
    assert (stats.requests, stats.billed_requests, stats.billed_images) == (3, 2, 2)
    assert (stats.rate_limited, dict(stats.faults)) == (1, {})
    last = stats.last
    assert last is not None
    assert (last.status, last.billed, last.rate_limited, last.outcome) == (
        429,
        False,
        True,
        "error",
    )
    clock.advance(0.75)
    assert (await post(emulator)).status_code == 200
    assert emulator.stats.billed_requests == 3


async def test_n_images_count_against_the_images_limit() -> None:
    emulator = Emulator(images_per_minute=60, images_burst=3, clock=FakeClock())
    assert (await post(emulator, {"n": 2})).status_code == 200
    limited = await post(emulator, {"n": 2})
    assert limited.status_code == 429
    assert "Used 2, Requested 2. Please try again in 1s." in limited.json()["error"]["message"]
    assert emulator.stats.billed_images == 2


async def test_tokens_limit_counts_image_output_tokens() -> None:
    usage = (await post(Emulator())).json()["usage"]
    cost = usage["output_tokens_details"]["image_tokens"]
    assert cost > 0
    emulator = Emulator(tokens_per_minute=cost * 60, tokens_burst=cost, clock=FakeClock())
    ok = await post(emulator)
    limited = await post(emulator)
    assert (ok.status_code, limited.status_code) == (200, 429)
    assert rate_headers(ok, "tokens") == (str(cost * 60), "0", "1s")
    assert rate_headers(limited, "tokens") == (str(cost * 60), "0", "1s")
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert (
        f"tokens per min (TPM): Limit {cost * 60}, Used {cost}, Requested {cost}."
        in (error["message"])
    )
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("1", "1000")
    assert (emulator.stats.rate_limited, emulator.stats.billed_requests) == (1, 1)


async def test_every_answer_carries_the_headers_and_only_valid_requests_count() -> None:
    emulator = Emulator(images_per_minute=60, images_burst=1, clock=FakeClock())
    invalid = await post(emulator, {"size": "7x7"})
    async with httpx.AsyncClient(
        transport=EmulatorTransport(emulator), base_url=IN_PROCESS_BASE_URL
    ) as anonymous:
        unauthorized = await anonymous.post("/images/generations", json=GENERATE)
    emulator.script(["500"])
    failed = await post(emulator)
    assert (invalid.status_code, unauthorized.status_code, failed.status_code) == (400, 401, 500)
    assert rate_headers(invalid) == rate_headers(unauthorized) == ("60", "1", "0s")
    assert rate_headers(failed) == ("60", "0", "1s")  # admitted, then the server failed
    emulator.script(["500"])
    limited = await post(emulator)
    assert limited.status_code == 429
    assert emulator.pending_faults == ("500",)  # a refused request consumes no scripted fault
    assert (emulator.stats.rate_limited, emulator.stats.faults["500"]) == (1, 1)


async def test_without_limits_the_openai_profile_keeps_its_generous_headers() -> None:
    response = await post(Emulator())
    assert rate_headers(response) == ("250", "249", "240ms")
    assert "x-ratelimit-limit-tokens" not in response.headers


async def test_azure_and_gateway_profiles_report_limits_too() -> None:
    azure = Emulator(profile="azure", images_per_minute=6, images_burst=1, clock=FakeClock())
    async with httpx.AsyncClient(transport=EmulatorTransport(azure), headers=AUTH) as client:
        url = f"{IN_PROCESS_BASE_URL.removesuffix('/v1')}/openai/deployments/gpt-image-2/images/"
        params = {"api-version": "2025-04-01-preview"}
        ok = await client.post(f"{url}generations", params=params, json=GENERATE)
        limited = await client.post(f"{url}generations", params=params, json=GENERATE)
    assert (ok.status_code, limited.status_code) == (200, 429)
    assert limited.json()["error"]["code"] == "429"
    assert "retry after 10 seconds" in limited.json()["error"]["message"]
    assert rate_headers(limited) == ("6", "0", "10s")
    gateway = Emulator(profile="gateway", images_per_minute=6, clock=FakeClock())
    assert rate_headers(await post(gateway)) == ("6", "5", "10s")


async def test_configure_and_reset_start_full_buckets() -> None:
    clock = FakeClock()
    emulator = Emulator(images_per_minute=60, images_burst=1, clock=clock)
    assert (await post(emulator)).status_code == 200
    assert (await post(emulator)).status_code == 429
    emulator.configure(latency_s=0.0)  # unrelated settings leave the buckets as they are
    assert (await post(emulator)).status_code == 429
    emulator.configure(images_burst=2)
    assert rate_headers(await post(emulator)) == ("60", "1", "1s")
    emulator.reset()
    assert emulator.stats.rate_limited == 0
    assert rate_headers(await post(emulator)) == ("60", "1", "1s")
    emulator.configure(images_per_minute=None)
    assert rate_headers(await post(emulator)) == ("250", "249", "240ms")


async def test_two_clients_of_one_named_emulator_share_the_account() -> None:
    name = "ratelimit-shared"
    get_emulator(name, images_per_minute=1, images_burst=3)
    get_emulator(name).reset()
    first, second = get_emulator(name).transport(), get_emulator(name).transport()
    statuses: list[int] = []
    for transport in (first, second, first, second):
        async with httpx.AsyncClient(
            transport=transport, base_url=IN_PROCESS_BASE_URL, headers=AUTH
        ) as client:
            statuses.append((await client.post("/images/generations", json=GENERATE)).status_code)
    assert statuses == [200, 200, 200, 429]
    assert (get_emulator(name).stats.billed_images, get_emulator(name).stats.rate_limited) == (3, 1)
    get_emulator(name, images_per_minute=None, images_burst=None)


async def test_control_stats_count_rate_limited_answers() -> None:
    emulator = Emulator(images_per_minute=60, images_burst=1, clock=FakeClock())
    await post(emulator)
    await post(emulator)
    async with httpx.AsyncClient(
        transport=EmulatorTransport(emulator), base_url=IN_PROCESS_BASE_URL
    ) as client:
        stats = (await client.get(f"{IN_PROCESS_ORIGIN}/_emulator/stats")).json()
    assert (stats["requests"], stats["billed_requests"], stats["rate_limited"]) == (2, 1, 1)
    assert [r["rate_limited"] for r in stats["recorded"]] == [False, True]
    assert all(r["received_at"] > 1e9 for r in stats["recorded"])
    assert stats["config"]["images_per_minute"] == 60


def test_cli_flags_set_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Emulator] = {}
    monkeypatch.setattr(
        "dagster_gptimage.emulator.__main__.serve",
        lambda emulator, *args, **kwargs: served.update(emulator=emulator),
    )
    cli_main(
        [
            "--images-per-minute",
            "240",
            "--images-burst",
            "20",
            "--tokens-per-minute",
            "100000",
            "--tokens-burst",
            "8000",
            "--max-recorded",
            "5000",
        ]
    )
    config = served["emulator"].config
    assert (config.images_per_minute, config.images_burst) == (240, 20)
    assert (config.tokens_per_minute, config.tokens_burst, config.max_recorded) == (
        100_000,
        8000,
        5000,
    )
    with pytest.raises(SystemExit):
        cli_main(["--images-per-minute", "0"])


async def test_error_body_matches_the_reference_error_schema(reference_dir: Path) -> None:
    schemas = openapi_spec(reference_dir)["components"]["schemas"]
    names = [name for name in schemas if re.fullmatch(r"(Error|ErrorResponse|ApiError)", name)]
    if not names:
        pytest.skip(
            "openai-images-openapi.json has no error schema; the 429 body's shape is asserted "
            "field by field in test_images_limit_answers_openai_429_with_headers_and_bills_nothing"
        )
    emulator = Emulator(images_per_minute=1, images_burst=1)
    await post(emulator)
    body = (await post(emulator)).json()
    schema = {"$ref": f"#/components/schemas/{names[0]}", "components": {"schemas": schemas}}
    jsonschema.validate(body if names[0] == "ErrorResponse" else body["error"], schema)


# --- over HTTP ------------------------------------------------------------------------------


async def test_headers_and_429_over_http() -> None:
    clock = FakeClock()
    emulator = Emulator(images_per_minute=120, images_burst=1, clock=clock)
    with run_server_in_thread(emulator) as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
            ok = await client.post("/images/generations", json=GENERATE)
            limited = await client.post("/images/generations", json=GENERATE)
    assert (ok.status_code, limited.status_code) == (200, 429)
    assert rate_headers(ok) == rate_headers(limited) == ("120", "0", "500ms")
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("1", "500")
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert (emulator.stats.billed_requests, emulator.stats.rate_limited) == (1, 1)


_CLIENT_PROCESS = textwrap.dedent(
    """
    import json, sys, httpx
    body = {"model": "gpt-image-2", "prompt": "A lighthouse", "quality": "low"}
    statuses = [
        httpx.post(sys.argv[1] + "/images/generations", json=body, timeout=30).status_code
        for _ in range(3)
    ]
    print(json.dumps(statuses))
    """
)


def test_processes_talking_to_one_server_share_the_account() -> None:
    emulator = Emulator(images_per_minute=1, images_burst=4, require_auth=False)
    with run_server_in_thread(emulator) as base_url:
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _CLIENT_PROCESS, base_url], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    statuses = [status for output in outputs for status in json.loads(output)]
    assert sorted(statuses) == [200, 200, 200, 200, 429, 429]
    stats = emulator.stats
    assert (stats.requests, stats.billed_images, stats.rate_limited) == (6, 4, 2)
    assert math.isclose(stats.rate_limited / stats.requests, 1 / 3)
