"""Prompt tables: the rows that become image partitions.

A prompt table is a file (CSV, JSON Lines, Parquet or YAML, at any fsspec URL) or in-memory records
with a ``key`` column (the partition key, and so the image's file name) and a ``prompt`` column.
Columns named like a request field (``size``, ``quality``, ``n`` …) override the asset's defaults for
that row; an optional ``revision`` column is part of the row's identity (change it to regenerate that
row's image); every other column is kept as JSON-safe ``extra`` data for metadata and manifests.

Every problem in a table is reported at once, with its row number, key and fix, because a user
fixing a 500-row spreadsheet one error per Dagster reload would give up.

Modules: ``_table`` (PromptTable), ``_row`` (PromptRow), ``_origin`` (TableOrigin), ``_problems``
(errors), ``_keys`` (key rules), ``_cells`` (cell coercion), ``_build`` (records and frames to
rows),
``_source`` (format detection, reading, dispatch) and one reader per format (``_csv``, ``_jsonl``,
``_parquet``, ``_yaml``).
"""

from dagster_gptimage.prompts._keys import MAX_KEY_LENGTH, key_problem
from dagster_gptimage.prompts._origin import TableOrigin
from dagster_gptimage.prompts._problems import PromptTableError, RowProblem
from dagster_gptimage.prompts._row import REVISION_COLUMN, PromptRow
from dagster_gptimage.prompts._source import TableFormat
from dagster_gptimage.prompts._table import PromptTable

__all__ = [
    "MAX_KEY_LENGTH",
    "REVISION_COLUMN",
    "PromptRow",
    "PromptTable",
    "PromptTableError",
    "RowProblem",
    "TableFormat",
    "TableOrigin",
    "key_problem",
]
