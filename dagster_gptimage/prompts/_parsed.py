"""What every format reader hands to the row builder."""

from __future__ import annotations

from typing import Any, NamedTuple

from dagster_gptimage.prompts._problems import RowProblem

__all__ = ["Parsed"]


class Parsed(NamedTuple):
    """Raw records in file order, every column seen (first-seen order), each record's file line
    (None when the format has none) and the rows a reader could not read at all."""

    records: list[dict[str, Any]]
    columns: tuple[str, ...]
    lines: list[int | None]
    problems: list[RowProblem]
