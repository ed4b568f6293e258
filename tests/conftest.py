"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

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
