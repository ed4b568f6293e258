"""Parquet prompt tables: typed columns, read with pyarrow."""

from __future__ import annotations

import io

from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import PromptTableError

__all__ = ["parse_parquet"]


def parse_parquet(data: bytes, source: str) -> Parsed:
    """Records of the Parquet file ``data`` (Parquet has no line numbers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise PromptTableError(
            f"Prompt table {source!r} is not a readable Parquet file: {exc}", source=source
        ) from None
    records = table.to_pylist()
    return Parsed(records, tuple(table.column_names), [None] * len(records), [])
