"""Helpers of the tests that run real processes: the emulator server, ``dagster dev`` projects and
the UI flow of ``scripts/ui_screenshots.py``."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
EMULATOR_AUTH = {"Authorization": "Bearer emulator"}


def load_ui() -> ModuleType:
    """``scripts/ui_screenshots.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location(
        "ui_screenshots", REPO_ROOT / "scripts" / "ui_screenshots.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ui_screenshots", module)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """``python -m dagster_gptimage.emulator --port 0 *args``; yields its base URL (…/v1)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_gptimage.emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass(frozen=True)
class EmulatorServer:
    """An emulator server process, read through its ``/_emulator/stats``."""

    base_url: str

    def stats(self) -> dict[str, Any]:
        origin = self.base_url.removesuffix("/v1")
        response = httpx.get(f"{origin}/_emulator/stats", headers=EMULATOR_AUTH, timeout=10)
        response.raise_for_status()
        return response.json()

    def by_endpoint(self) -> dict[str, int]:
        return dict(self.stats()["requests_by_endpoint"])


def dev_workspace(tmp: Path, defs: Path, location: str) -> tuple[Path, Path]:
    """A ``workspace.yaml`` loading ``defs`` as ``location``, and a DAGSTER_HOME without
    telemetry."""
    workspace = tmp / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {defs.name}\n"
        f"      location_name: {location}\n"
    )
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return workspace, home
