"""CSV prompt tables: a header naming the columns, one row per line (quoted cells may span lines)."""

from __future__ import annotations

import csv
import io
from typing import Any

from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import PromptTableError, RowProblem

__all__ = ["parse_csv"]


def parse_csv(text: str, source: str) -> Parsed:
    """Records of ``text``; empty cells are None ("use the default") and blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _header(next(reader, None), source)
    records: list[dict[str, Any]] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []
    line = reader.line_num
    for cells in reader:
        start = line + 1
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        row_number = len(records) + 1
        if len(cells) > len(columns):
            problems.append(
                RowProblem(
                    row_number,
                    None,
                    f"row has {len(cells)} cells but the header names {len(columns)} columns",
                    "quote cells that contain commas, or add the missing column names to the header",
                    start,
                )
            )
        record = {
            col: (cell if cell.strip() else None)
            for col, cell in zip(columns, cells, strict=False)
            if col  # unnamed trailing columns (e.g. from a trailing comma) carry nothing
        }
        records.append(record)
        lines.append(start)
    return Parsed(records, tuple(c for c in columns if c), lines, problems)


def _header(header: list[str] | None, source: str) -> list[str]:
    if header is None or not any(cell.strip() for cell in header):
        raise PromptTableError(
            f"Prompt table {source!r} is empty: the first line must name the columns (e.g. key,prompt)",
            source=source,
        )
    columns = [cell.strip() for cell in header]
    duplicates = sorted({c for c in columns if columns.count(c) > 1 and c})
    if duplicates:
        raise PromptTableError(
            f"Prompt table {source!r} names column(s) {', '.join(map(repr, duplicates))} more than once: "
            "rename them so every column is unique",
            source=source,
        )
    return columns
