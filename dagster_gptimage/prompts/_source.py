"""Reading a prompt table's file: its format, its bytes at any fsspec URL, and the reader per format."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal, get_args

from dagster_gptimage.models import REQUEST_FIELDS
from dagster_gptimage.prompts._cells import INT_FIELDS
from dagster_gptimage.prompts._csv import parse_csv
from dagster_gptimage.prompts._jsonl import parse_jsonl
from dagster_gptimage.prompts._parquet import parse_parquet
from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import PromptTableError
from dagster_gptimage.prompts._row import REVISION_COLUMN
from dagster_gptimage.prompts._yaml import parse_yaml

__all__ = ["TableFormat", "detect_format", "parse", "read_bytes"]

TableFormat = Literal["csv", "jsonl", "parquet", "yaml"]

_FORMATS: tuple[str, ...] = get_args(TableFormat)
_EXTENSION_FORMATS: dict[str, TableFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".yaml": "yaml",
    ".yml": "yaml",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_YAML_TEXT_FIELDS = frozenset({REVISION_COLUMN, *REQUEST_FIELDS}) - INT_FIELDS
"""Columns YAML must not type: text request fields and the revision (``1.10`` is not ``1.1``)."""


def detect_format(url: str, given: str | None, source: str) -> TableFormat:
    """``given`` checked, else the format named by the extension (a compression suffix ignored)."""
    if given is not None:
        if given not in _FORMATS:
            raise PromptTableError(
                f"Unknown prompt table format {given!r} for {source!r}; use one of {', '.join(_FORMATS)}",
                source=source,
            )
        return given  # type: ignore[return-value]
    name = PurePath(url.split("?", 1)[0].split("#", 1)[0]).name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    ext = os.path.splitext(name)[1]
    if ext in _EXTENSION_FORMATS:
        return _EXTENSION_FORMATS[ext]
    known = ", ".join(_EXTENSION_FORMATS)
    hint = (
        " (for JSON use JSON Lines, one object per line, in a .jsonl file)"
        if ext == ".json"
        else ""
    )
    raise PromptTableError(
        f"Cannot tell the format of prompt table {source!r} from its extension {ext or '(none)'!r}; "
        f"use one of {known} or pass format= ({', '.join(_FORMATS)}){hint}",
        source=source,
    )


def read_bytes(url: str, storage_options: Mapping[str, Any], source: str) -> bytes:
    """The (decompressed) bytes at ``url``; errors name only ``source``, the redacted URL."""
    import fsspec

    try:
        with fsspec.open(url, "rb", compression="infer", **storage_options) as f:
            return f.read()  # type: ignore[union-attr]
    except FileNotFoundError:
        raise PromptTableError(
            f"Prompt table {source!r} does not exist: check the path or URL", source=source
        ) from None
    except (OSError, ValueError) as exc:
        raise PromptTableError(
            f"Could not read prompt table {source!r}: {type(exc).__name__}: {exc}", source=source
        ) from exc


def parse(data: bytes, fmt: TableFormat, source: str, *, text_columns: set[str]) -> Parsed:
    """The records of ``data`` read as ``fmt``; ``text_columns`` (key and prompt) stay text."""
    if fmt == "parquet":
        return parse_parquet(data, source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptTableError(
            f"Prompt table {source!r} is not UTF-8 text (byte {exc.start}): save it as UTF-8",
            source=source,
        ) from None
    if fmt == "csv":
        return parse_csv(text, source)
    if fmt == "jsonl":
        return parse_jsonl(text)
    return parse_yaml(text, source, text_columns | _YAML_TEXT_FIELDS)
