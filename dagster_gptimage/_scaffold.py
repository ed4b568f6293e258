"""What ``dg scaffold defs dagster_gptimage.GPTImageComponent <path>`` writes: a working defs.yaml
and a three-row prompt table beside it."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg

__all__ = ["GPTImageComponentScaffolder", "identifier", "scaffold_text"]


class GPTImageComponentScaffolder(dg.Scaffolder):
    """``dg scaffold defs dagster_gptimage.GPTImageComponent <path>``: a working defs.yaml (real
    API with a key, emulator without) and a three-row prompt table beside it."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        folder = Path(request.target_path)
        folder.mkdir(parents=True, exist_ok=True)
        name = identifier(folder.name) or "images"
        (folder / "defs.yaml").write_text(
            _SCAFFOLD_YAML.format(type_name=request.type_name, name=name), encoding="utf-8"
        )
        table = folder / "prompts.csv"
        if not table.exists():
            table.write_text(_SCAFFOLD_TABLE, encoding="utf-8")


def identifier(text: str) -> str:
    """A valid asset name made from ``text`` (a folder name, a mistyped name)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower()
    return f"images_{cleaned}" if cleaned[:1].isdigit() else cleaned


_SCAFFOLD_YAML = """\
type: {type_name}

attributes:
  # One image per row of the prompt table (columns: key, prompt, optional size/quality/...).
  # Paths are relative to this file; fsspec URLs (s3://..., gs://...) work too.
  name: {name}
  prompts: prompts.csv
  size: 1024x1024
  quality: low
  output_format: png
  # A run refuses to start, or stops starting requests, beyond this estimated spend (USD).
  max_cost_usd: 1.0

  # This pipeline's own client: the OpenAI API when OPENAI_API_KEY is set, otherwise the
  # offline emulator (placeholder images, no cost). Remove the block to use the project's
  # `gptimage` resource instead.
  resource:
    provider: auto
    api_key_env: OPENAI_API_KEY
    max_concurrency: 4

  # Where images and their sidecar JSON go (relative paths: to the project root). Remove the
  # block to use the project's `image_store` resource instead.
  store:
    base_url: gptimage_store

  # Edit steps downstream, partition by partition; `sources` defaults to the generation asset.
  edits:
    - name: {name}_watercolor
      prompt: Repaint this picture as a loose watercolor illustration
      quality: low
"""

_SCAFFOLD_TABLE = """\
key,prompt
lighthouse,A red and white lighthouse on a rocky coast at dawn
teapot,A blue ceramic teapot on a wooden table by a sunny window
bicycle,A vintage green bicycle leaning against a brick wall
"""


def scaffold_text(
    name: str = "images", type_name: str = "dagster_gptimage.GPTImageComponent"
) -> str:
    """The defs.yaml that ``dg scaffold defs`` writes (for docs and tests)."""
    return _SCAFFOLD_YAML.format(type_name=type_name, name=name)
