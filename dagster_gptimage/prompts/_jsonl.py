"""JSON Lines prompt tables: one JSON object per line; blank lines are skipped."""

from __future__ import annotations

import json
from typing import Any

from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import RowProblem

__all__ = ["parse_jsonl"]

_FIX = 'write one JSON object per line, e.g. {"key": "cat", "prompt": "a cat"}'


def parse_jsonl(text: str) -> Parsed:
    """Records of ``text``; a line that is not a JSON object is a problem of its row, so every bad
    line is reported at once."""
    records: list[dict[str, Any]] = []
    lines: list[int | None] = []
    problems: list[RowProblem] = []
    columns: dict[str, None] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        row_number = len(records) + 1
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            problem = f"line is not valid JSON ({exc.msg} at column {exc.colno})"
            problems.append(RowProblem(row_number, None, problem, _FIX, number))
            value = {}
        if not isinstance(value, dict):
            problem = f"line is a JSON {type(value).__name__}, not an object"
            problems.append(RowProblem(row_number, None, problem, _FIX, number))
            value = {}
        columns.update(dict.fromkeys(value))
        records.append(value)
        lines.append(number)
    return Parsed(records, tuple(columns), lines, problems)
