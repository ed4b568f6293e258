"""A production-shaped deployment, every part real, on loopback.

A PostgreSQL 15 server (``dagster-postgres`` storage), ``dagster dev`` (webserver + daemon) with
the ``dagster.yaml`` of ``docs/production.md`` (``QueuedRunCoordinator``, run and tag limits, a
pool), SeaweedFS S3 for the images, and the emulator server with an account limit shared by every
run (``--images-per-minute``). One backfill of 60 partitions in runs of 10, launched through
GraphQL as the UI does, must end COMPLETED_SUCCESS with every partition materialized, never more
runs in progress than the limits allow, every image and sidecar on S3, and exactly one billed image
per partition. The setup lives in ``bench/production.py`` (the benchmark runs a larger case).

The share of 429 answers is reported and held to ``MAX_SHARE_429``. The issue's target (2 %) is
for a long backfill at steady state (``python -m bench ratelimit`` / ``production``); here six
short runs start one after another, each a new process whose client learns the limit from its first
answers (0-1.6 % measured since the governor keeps a reserve for processes it has not seen yet; 9 %
before that, 55 % before the adaptive client).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import production  # noqa: E402
from bench._services import ServiceUnavailable  # noqa: E402

pytestmark = pytest.mark.slow

MAX_SHARE_429 = 0.05
"""Six cold-starting run processes sharing one small burst; the steady-state target (0.02) is
checked by the benchmarks."""

SCENARIO = production.Scenario(
    "production_test",
    partitions=60,
    per_run=10,
    images_per_minute=120,
    burst=5,
    latency_s=0.05,
    timeout_s=200,
    max_retries=100,
)
"""A burst of 5, below a run's 8 first requests: the runs share the account's limit (with a client
that did not pace itself, every run met 429s; 100 retries of a 0.5 s ``retry-after`` outlasted the
contention where 30 lost 8 of 180 partitions of the benchmark at 60/min)."""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> production.Outcome:
    pytest.importorskip("dagster_postgres", reason="pip install dagster-postgres (dev extra)")
    pytest.importorskip("s3fs")
    try:
        result = production.run_scenario(
            SCENARIO, tmp_path_factory.mktemp("production"), progress=lambda _line: None
        )
    except ServiceUnavailable as missing:
        pytest.skip(str(missing))
    t0 = min((r.start for r in result.runs if r.start), default=0.0)
    print(
        f"\n{SCENARIO.label}: {len(result.runs)} runs, peak {result.peak_runs} in progress, "
        f"{result.stats['requests']} requests, {result.share_429:.1%} answered 429, "
        f"achieved {result.achieved_per_minute} images/min after the burst "
        f"(limit {SCENARIO.images_per_minute:g}), wall {result.wall_s:.1f} s\n"
        + "\n".join(
            f"  {r.run_id[:8]} {r.status} {(r.start or t0) - t0:.1f}..{(r.end or t0) - t0:.1f} s"
            for r in sorted(result.runs, key=lambda r: r.start or 0)
        )
    )
    return result


def test_the_documented_dagster_yaml_is_the_deployment(outcome: production.Outcome) -> None:
    text = production.production_dagster_yaml()
    assert "postgres_db" in text
    assert "QueuedRunCoordinator" in text
    limits = production.Limits.of(text)
    assert limits == outcome.limits
    assert limits.account_runs is not None
    assert limits.account_runs < limits.max_concurrent_runs, "the tag limit is the binding one"
    assert outcome.postgres_runs == len(outcome.runs), "runs are stored in PostgreSQL"


def test_every_partition_materializes_in_queued_runs(outcome: production.Outcome) -> None:
    runs = sorted(outcome.runs, key=lambda r: r.start or 0)
    context = f"{outcome.backfill_status}, runs {runs}\n{outcome.log_tail}"
    assert outcome.backfill_status == "COMPLETED_SUCCESS", context
    assert len(runs) == SCENARIO.partitions // SCENARIO.per_run, context
    assert {r.status for r in runs} == {"SUCCESS"}, context
    assert outcome.materialized == set(SCENARIO.keys), context
    assert outcome.failed == set(), context


def test_the_queue_never_exceeds_its_limits(outcome: production.Outcome) -> None:
    intervals = [(r.start, r.end) for r in outcome.runs]
    assert all(start is not None and end is not None for start, end in intervals), intervals
    assert outcome.peak_runs <= outcome.limits.runs, intervals
    assert outcome.limits.pool_default is None or outcome.peak_runs <= outcome.limits.pool_default
    assert outcome.peak_runs >= 2, f"runs did execute side by side: {intervals}"


def test_images_and_sidecars_are_on_s3(outcome: production.Outcome) -> None:
    assert outcome.stored == production.expected_store(SCENARIO)
    for key, sidecar in outcome.sidecars.items():
        assert sidecar["path"] == f"s3://{outcome.bucket_prefix}/{key}.jpg"
        assert sidecar["partition_key"] == key
        assert sidecar["cost_usd"] > 0


def test_each_image_is_paid_once_and_429s_are_reported(outcome: production.Outcome) -> None:
    stats = outcome.stats
    assert stats["billed_images"] == SCENARIO.partitions, "nothing paid twice, nothing lost"
    assert stats["requests"] == SCENARIO.partitions + stats["rate_limited"], stats["faults"]
    assert outcome.share_429 <= MAX_SHARE_429
    achieved = outcome.achieved_per_minute
    assert achieved is not None
    assert achieved <= SCENARIO.images_per_minute * 1.1, "the account limit held"
    assert achieved >= SCENARIO.images_per_minute * 0.7, (
        "the account's limit, not the machine, bounded the runs (else nothing was shared)"
    )
