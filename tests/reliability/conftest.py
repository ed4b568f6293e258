"""Fixtures of the reliability suite: a persistent SQLite Dagster home per test, fast retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dagster_gptimage import _retry as retry_module


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME with the default SQLite storages, as a deployment has (not in-memory)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the client's exponential backoff (0.5 s doubling, up to 8 s) to milliseconds.

    A provider's ``retry-after`` is still honoured as given (the emulator's ``retry_after_s``),
    unlike ``stamina.set_testing``, which would zero it too.
    """
    monkeypatch.setattr(retry_module, "_WAIT_INITIAL_S", 0.005)
    monkeypatch.setattr(retry_module, "_WAIT_MAX_S", 0.02)
    monkeypatch.setattr(retry_module, "_WAIT_JITTER_S", 0.005)
