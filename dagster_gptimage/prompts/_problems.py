"""What is wrong with a prompt table: one RowProblem per bad cell, gathered into one error.

Every problem is reported at once, with its row number, key and fix, because a user fixing a
500-row spreadsheet one error per Dagster reload would give up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dagster_gptimage.errors import GPTImageError, short_repr

__all__ = ["PromptTableError", "RowProblem", "label", "no_rows_error", "sorted_problems"]


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row: where (1-based row, plus the file line when it differs), which key,
    what is wrong and how to fix it."""

    row: int
    key: str | None
    problem: str
    fix: str
    line: int | None = None

    def describe(self) -> str:
        where = f"row {self.row}"
        if self.line is not None and self.line != self.row:
            where += f" (line {self.line})"
        if self.key is not None:
            where += f", key {short_repr(self.key)}"
        return f"{where}: {self.problem} — fix: {self.fix}"


class PromptTableError(GPTImageError, ValueError):
    """A prompt table cannot be used as written.

    ``problems`` lists every bad row (empty for table-level problems such as a missing column);
    ``source`` names the file (credentials and query strings removed) or is None for in-memory records.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        problems: Sequence[RowProblem] = (),
    ) -> None:
        super().__init__(message)
        self.source = source
        self.problems = tuple(problems)

    @classmethod
    def from_problems(
        cls, problems: Sequence[RowProblem], *, source: str | None
    ) -> PromptTableError:
        count = len({p.row for p in problems})
        noun = "row" if count == 1 else "rows"
        lines = [f"Prompt table {label(source)} has {count} invalid {noun}:"]
        lines.extend(f"  - {p.describe()}" for p in problems)
        return cls("\n".join(lines), source=source, problems=problems)


def label(source: str | None) -> str:
    """How messages name a table."""
    return repr(source) if source else "(in-memory records)"


def sorted_problems(problems: Iterable[RowProblem]) -> list[RowProblem]:
    return sorted(problems, key=lambda p: p.row)


def no_rows_error(source: str | None) -> PromptTableError:
    return PromptTableError(
        f"Prompt table {label(source)} has no rows: add at least one row with a key and a prompt",
        source=source,
    )
