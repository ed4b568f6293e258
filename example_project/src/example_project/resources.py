"""The example's resources: the OpenAI API when a key is set, the offline emulator otherwise.

Environment variables:

- ``GPTIMAGE_PROVIDER``: ``emulator`` (the default) or ``openai``. The real API is used only when
  asked for explicitly (``make demo REAL=1`` sets ``openai``): many developers export
  ``OPENAI_API_KEY`` in every shell, and a demo must not spend money by surprise.
- ``OPENAI_API_KEY``: the key for ``openai``, read through ``dg.EnvVar`` so it never appears in
  code, logs or the Dagster UI.
- ``GPTIMAGE_STORE_URL``: where images go (any fsspec URL); default ``<project>/gptimage_store``.
- ``GPTIMAGE_EMULATOR_LATENCY_SCALE``: emulator latency, as a fraction of the real API's
  (p50 59 s); default 0.01 so the demo shows realistic-looking latencies in about a second.
"""

import os
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_gptimage import GPTImageResource, ImageStore

EMULATOR_NAME = "example_project"


def project_root() -> Path:
    """The folder holding this project's pyproject.toml (the working directory when the package is
    not installed from its source tree)."""
    here = Path(__file__).resolve()
    for folder in here.parents:
        pyproject = folder / "pyproject.toml"
        if (folder / "src" / "example_project").is_dir() and pyproject.is_file():
            return folder
    return Path.cwd()


def store_url() -> str:
    return os.environ.get("GPTIMAGE_STORE_URL") or str(project_root() / "gptimage_store")


def provider() -> str:
    """``emulator`` unless ``GPTIMAGE_PROVIDER=openai`` asks for the real API (never decided by the
    mere presence of a key)."""
    chosen = os.environ.get("GPTIMAGE_PROVIDER", "").strip().lower() or "emulator"
    if chosen not in ("openai", "emulator"):
        raise ValueError(f"GPTIMAGE_PROVIDER={chosen!r}: use 'openai' or 'emulator'")
    if chosen == "openai" and not os.environ.get("OPENAI_API_KEY"):
        raise ValueError("GPTIMAGE_PROVIDER=openai needs OPENAI_API_KEY in the environment")
    return chosen


@cache
def _announce(message: str) -> None:
    dg.get_dagster_logger("example_project").info(message)


def gptimage_resource() -> GPTImageResource:
    if provider() == "openai":
        _announce(
            "example_project: using the OpenAI API (GPTIMAGE_PROVIDER=openai): images cost money"
        )
        return GPTImageResource(api_key=dg.EnvVar("OPENAI_API_KEY"), max_concurrency=4)
    _announce(
        "example_project: using the offline emulator (placeholder images, no cost); "
        "GPTIMAGE_PROVIDER=openai uses the real API"
    )
    scale = float(os.environ.get("GPTIMAGE_EMULATOR_LATENCY_SCALE", "0.01"))
    return GPTImageResource(
        provider="emulator",
        emulator_name=EMULATOR_NAME,
        emulator_options={"latency_distribution": "lognormal", "latency_scale": scale},
    )


def resources() -> dict[str, Any]:
    """Resource keys the image assets expect: ``gptimage`` and ``image_store``."""
    return {"gptimage": gptimage_resource(), "image_store": ImageStore(base_url=store_url())}
