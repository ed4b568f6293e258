"""The failure profile observed on a real gateway (83 % success), replayed against the emulator.

300 partitions, 17 % of requests failing (429 with retry-after, 500/502/503, connection resets and
truncated bodies after generation), lognormal latency scaled down: every partition must end stored
and materialized, the store must hold nothing partial or orphaned, and the attempts and
possibly-billed attempts recorded per partition must add up to what the provider saw and billed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import dagster as dg
import pytest
from _reliability import (
    SIZE,
    assert_local_store_consistent,
    emulator_resources,
    materialized_partitions,
    metadata_value,
    prompt_table,
    run_materializations,
    run_range,
)

from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.models import Usage
from dagster_gptimage.pricing import cost_of_usage

FAULTS = {
    "rate_limit_rate": 0.04,
    "server_error_rate": 0.05,
    "reset_rate": 0.04,
    "truncate_rate": 0.04,
}
RETRY_AFTER_S = 0.02


@pytest.mark.slow
@pytest.mark.usefixtures("fast_backoff")
def test_observed_failure_profile_loses_nothing_and_counts_every_billed_attempt(
    tmp_path: Path, instance: dg.DagsterInstance, caplog: pytest.LogCaptureFixture
) -> None:
    n = 300
    table = prompt_table(n)
    asset = image_generation_asset(
        name="failure_profile", prompts=table, size=SIZE, output_format="jpeg"
    )
    resources, emulator = emulator_resources(
        tmp_path / "store",
        resource={"max_concurrency": 32, "max_retries": 8},
        emulator={
            "latency_distribution": "lognormal",
            "latency_scale": 0.0005,
            "retry_after_s": RETRY_AFTER_S,
            "seed": 17,
            **FAULTS,
        },
    )
    assert math.isclose(sum(FAULTS.values()), 0.17)

    # 429 waits are logged one by one at debug level (warnings aggregate them).
    with caplog.at_level(logging.DEBUG, logger="dagster_gptimage.client"):
        result = run_range([asset], resources, table.keys, instance)

    assert result.success
    stats = emulator.stats
    faults = stats.faults
    assert {"429", "reset", "truncate"} <= set(faults), faults
    assert {"500", "502", "503"} & set(faults), faults
    failed_attempts = sum(faults.values())
    assert failed_attempts > 0.1 * stats.requests
    assert stats.requests == n + failed_attempts

    # Dagster recorded every partition, each with its own metadata.
    assert materialized_partitions(instance, asset.key) == set(table.keys)
    mats = run_materializations(instance, result.run_id)
    assert set(mats) == set(table.keys)
    assert not any(metadata_value(m, "cached") for m in mats.values())

    # The store holds one complete image and its sidecar per partition, nothing else.
    sidecars = assert_local_store_consistent(tmp_path / "store" / "failure_profile", table.keys)

    # Attempts and possibly-billed attempts add up to what the provider saw and billed.
    assert sum(s["attempts"] for s in sidecars.values()) == stats.requests
    assert sum(s["possibly_billed_attempts"] for s in sidecars.values()) == stats.billed_requests
    assert stats.billed_requests == n + faults["reset"] + faults["truncate"]
    assert sum(metadata_value(m, "attempts") for m in mats.values()) == stats.requests
    assert (
        sum(metadata_value(m, "possibly_billed_attempts") for m in mats.values())
        == stats.billed_requests
    )

    # A possibly-billed failed attempt is priced at the request's estimate, on top of the usage of
    # the attempt that succeeded: the bill says what the faults may have cost.
    client = resources["gptimage"].get_client()
    for key, sidecar in sidecars.items():
        request = client.build_generate(table.row(key).prompt, size=SIZE, output_format="jpeg")
        usage_cost = cost_of_usage(
            Usage(**sidecar["usage"]), client.prices.for_model(sidecar["model"])
        )
        extra = (sidecar["possibly_billed_attempts"] - 1) * client.estimate_cost(request)
        assert math.isclose(sidecar["cost_usd"], usage_cost + extra, rel_tol=1e-9), key

    # A 429 was retried after the provider's retry-after, not the exponential backoff.
    retries = [record.getMessage() for record in caplog.records]
    rate_limited = [message for message in retries if "status=429" in message]
    assert rate_limited
    assert all(f"in {RETRY_AFTER_S:g}s" in message for message in rate_limited)
