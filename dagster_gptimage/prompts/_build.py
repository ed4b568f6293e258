"""Building PromptRows from the records a reader produced, gathering every problem at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from dagster_gptimage.models import REQUEST_FIELDS
from dagster_gptimage.prompts._cells import (
    ABSENT,
    coerce_param,
    json_safe,
    revision_cell,
    text_cell,
)
from dagster_gptimage.prompts._keys import KEY_FIX, key_problems
from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import (
    PromptTableError,
    RowProblem,
    label,
    no_rows_error,
    sorted_problems,
)
from dagster_gptimage.prompts._row import REVISION_COLUMN, PromptRow

__all__ = ["build_rows", "frame_records", "parse_mappings"]


def build_rows(
    parsed: Parsed, *, source: str | None, key_column: str, prompt_column: str
) -> list[PromptRow]:
    """The rows of ``parsed``, or one PromptTableError listing every bad row."""
    _check_columns(parsed, source, key_column=key_column, prompt_column=prompt_column)
    broken = {p.row for p in parsed.problems}
    row_level: list[RowProblem] = []
    rows: list[PromptRow] = []
    keyed: list[tuple[int, int | None, str]] = []
    for i, record in enumerate(parsed.records, 1):
        if i in broken:
            continue
        line = parsed.lines[i - 1]
        row, key, problems = _build_row(i, line, record, key_column, prompt_column)
        if key is not None:
            keyed.append((i, line, key))
        row_level.extend(problems)
        if row is not None:
            rows.append(row)
    problems = [*parsed.problems, *key_problems(keyed), *row_level]
    if problems:
        raise PromptTableError.from_problems(sorted_problems(problems), source=source)
    return rows


def parse_mappings(records: Iterable[Any]) -> Parsed:
    """In-memory records as a reader would hand them over; a non-mapping is its row's problem."""
    problems: list[RowProblem] = []
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    for i, record in enumerate(records, 1):
        if not isinstance(record, Mapping):
            problems.append(
                RowProblem(
                    i,
                    None,
                    f"row is a {type(record).__name__}, not a mapping",
                    "give every record as a dict of column -> value",
                )
            )
            rows.append({})
            continue
        row = {str(k): v for k, v in record.items()}
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return Parsed(rows, tuple(columns), [None] * len(rows), problems)


def frame_records(df: Any) -> list[Any]:
    """The rows of a pandas or polars DataFrame or a pyarrow Table, duck-typed (no pandas import)."""
    if hasattr(df, "to_dicts"):
        return df.to_dicts()
    if hasattr(df, "to_pylist"):
        return df.to_pylist()
    if hasattr(df, "to_dict"):
        return df.to_dict("records")
    raise TypeError(
        f"from_dataframe expects a pandas/polars DataFrame or a pyarrow Table, got {type(df).__name__}"
    )


def _check_columns(
    parsed: Parsed, source: str | None, *, key_column: str, prompt_column: str
) -> None:
    if key_column == prompt_column:
        raise PromptTableError(
            f"key_column and prompt_column are both {key_column!r}: they must name different columns",
            source=source,
        )
    if not parsed.records and not parsed.problems:
        raise no_rows_error(source)
    missing = [c for c in (key_column, prompt_column) if c not in parsed.columns]
    if missing and parsed.columns:
        raise PromptTableError(
            _missing_columns_message(missing, parsed.columns, source, key_column=key_column),
            source=source,
        )


def _build_row(
    i: int, line: int | None, record: Mapping[str, Any], key_column: str, prompt_column: str
) -> tuple[PromptRow | None, str | None, list[RowProblem]]:
    """(the row if its cells are valid, its key if it has a usable one, its problems)."""
    key, key_error = text_cell(record.get(key_column))
    prompt, prompt_error = text_cell(record.get(prompt_column))
    problems: list[RowProblem] = []
    keyed: str | None = None
    if key_error:
        problems.append(RowProblem(i, None, f"key {key_error}", KEY_FIX, line))
    elif not key:
        problems.append(
            RowProblem(
                i,
                None,
                f"key is missing (column {key_column!r} is empty)",
                "give every row a unique, non-empty key such as 'cat-01'",
                line,
            )
        )
    else:
        keyed = key
    if prompt_error:
        problems.append(
            RowProblem(i, key, f"prompt {prompt_error}", "write the prompt as text", line)
        )
    elif not prompt:
        problems.append(
            RowProblem(i, key, "prompt is empty", "write a prompt or delete the row", line)
        )
    params: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    revision: str | None = None
    for column, value in record.items():
        if column in (key_column, prompt_column):
            continue
        if column == REVISION_COLUMN:
            revision, error = revision_cell(value)
        elif column in REQUEST_FIELDS:
            coerced, error = coerce_param(column, value)
            if error is None and coerced is not ABSENT:
                params[column] = coerced
        else:
            extra[column], error = json_safe(value), None
        if error:
            problems.append(RowProblem(i, key, error[0], error[1], line))
    if problems or key is None or prompt is None:
        return None, keyed, problems
    row = PromptRow(key=key, prompt=prompt, params=params, extra=extra, revision=revision)
    return row, keyed, problems


def _missing_columns_message(
    missing: list[str], columns: tuple[str, ...], source: str | None, *, key_column: str
) -> str:
    parts = []
    for column in missing:
        close = difflib.get_close_matches(column, columns, n=1, cutoff=0.5)
        option = "key_column" if column == key_column else "prompt_column"
        hint = (
            f" (did you mean {close[0]!r}? then rename it or pass {option}={close[0]!r})"
            if close
            else ""
        )
        parts.append(f"{column!r}{hint}")
    found = ", ".join(map(repr, columns)) or "none"
    noun = "column" if len(missing) == 1 else "columns"
    return (
        f"Prompt table {label(source)} is missing the required {noun} {', '.join(parts)}; "
        f"columns found: {found}. Every row needs a unique key and a prompt "
        "(use key_column=/prompt_column= if your columns have other names)."
    )
