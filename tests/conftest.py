"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import stamina
from dagster._core.test_utils import instance_for_test
from hypothesis import HealthCheck, settings

# Machines here are shared and noisy: no test may fail on time, so hypothesis's per-example
# deadline and its "data generation too slow" health check are off (what is generated is unchanged).
settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shared-machine")

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The API contract beside the project; a user's clone has none, so tests that need it skip."""
    if not (REFERENCE_DIR / "openai-images-openapi.json").is_file():
        pytest.skip(f"../shared/reference not present ({REFERENCE_DIR}): OpenAPI checks need it")
    return REFERENCE_DIR


@pytest.fixture
def no_backoff_sleep() -> Iterator[None]:
    """stamina's test mode zeroes every backoff but, with ``cap=True`` and a high cap, keeps the
    client's own attempt count, so attempt counting is tested honestly and nothing sleeps."""
    with stamina.set_testing(True, attempts=1000, cap=True):
        yield


@pytest.fixture(scope="module")
def aws_environment() -> Iterator[None]:
    """Keep any real AWS configuration of the machine out of the tests."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "unused-env-key")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "unused-env-secret")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def s3_endpoint(aws_environment: None) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, with any real AWS configuration of the machine kept out."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance on SQLite in ``tmp_path`` (files that need another kind define their
    own ``instance`` fixture, which takes precedence)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with instance_for_test(temp_dir=str(home)) as instance:
        yield instance
