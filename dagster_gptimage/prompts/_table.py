"""PromptTable: the ordered, validated rows that become image partitions."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dagster_gptimage import validation
from dagster_gptimage.errors import InvalidRequestError, short_repr
from dagster_gptimage.models import REQUEST_FIELDS, GenerateRequest, ImageParams, Provider
from dagster_gptimage.prompts._build import build_rows, frame_records, parse_mappings
from dagster_gptimage.prompts._keys import key_problems
from dagster_gptimage.prompts._origin import TableOrigin
from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import (
    PromptTableError,
    RowProblem,
    label,
    no_rows_error,
    sorted_problems,
)
from dagster_gptimage.prompts._row import REVISION_COLUMN, PromptRow
from dagster_gptimage.prompts._source import TableFormat, parse, read_bytes

__all__ = ["PromptTable"]


class PromptTable:
    """An ordered, validated collection of PromptRows with unique, path-safe keys.

    Build one with ``from_path``, ``from_records`` or ``from_dataframe``. Construction fails with one
    PromptTableError listing every bad row. ``origin`` records where the table came from (and so how
    ``reload`` reads it again); ``columns`` and ``lines`` are the columns seen and each row's line in
    its file, for messages.
    """

    def __init__(
        self,
        rows: Iterable[PromptRow],
        *,
        description: str | None = None,
        source: str | None = None,
        origin: TableOrigin | None = None,
        columns: Sequence[str] = (),
        lines: Sequence[int | None] | None = None,
    ) -> None:
        if origin is None:
            origin = TableOrigin(source=source)
        elif source is not None and source != origin.source:
            raise ValueError("give the table's source in origin= or in source=, not both")
        self._rows = tuple(rows)
        self._origin = origin
        self._explicit_description = description
        self._columns = tuple(columns)
        self._lines = tuple(lines) if lines is not None else (None,) * len(self._rows)
        if len(self._lines) != len(self._rows):
            raise ValueError(f"{len(self._lines)} lines given for {len(self._rows)} rows")
        problems = key_problems([(i, None, row.key) for i, row in enumerate(self._rows, 1)])
        problems.extend(
            RowProblem(i, row.key, "prompt is empty", "write a prompt or delete the row")
            for i, row in enumerate(self._rows, 1)
            if not row.prompt.strip()
        )
        if problems:
            raise PromptTableError.from_problems(sorted_problems(problems), source=self.source)
        if not self._rows:
            raise no_rows_error(self.source)
        self._by_key = {row.key: row for row in self._rows}
        self._content_hash: str | None = None  # computed on first use

    @classmethod
    def from_path(
        cls,
        url: str | os.PathLike[str],
        *,
        format: TableFormat | None = None,
        storage_options: Mapping[str, Any] | None = None,
        key_column: str = "key",
        prompt_column: str = "prompt",
        description: str | None = None,
    ) -> PromptTable:
        """Read a prompt table from a local path or any fsspec URL (``s3://``, ``memory://`` …).

        The format comes from the extension (.csv, .jsonl/.ndjson, .parquet/.pq, .yaml/.yml, optionally
        compressed, e.g. .csv.gz) unless ``format`` is given. ``storage_options`` (credentials) go to
        fsspec and are never shown.
        """
        origin = TableOrigin(
            url=os.fspath(url),
            format=format,
            storage_options=storage_options or {},
            key_column=key_column,
            prompt_column=prompt_column,
        )
        return cls.from_origin(origin, description=description)

    @classmethod
    def from_origin(cls, origin: TableOrigin, *, description: str | None = None) -> PromptTable:
        """Read the file ``origin`` names, the way it says (``reload`` reads a table again so)."""
        if origin.url is None or origin.format is None:
            raise ValueError("the origin names no file to read (in-memory records)")
        source = origin.source or ""
        data = read_bytes(origin.url, origin.storage_options, source)
        parsed = parse(data, origin.format, source, text_columns=set(origin.text_columns))
        return cls._built(parsed, origin, description)

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        key_column: str = "key",
        prompt_column: str = "prompt",
        description: str | None = None,
        source: str | None = None,
    ) -> PromptTable:
        """Build a table from mappings (``source`` is only a label for messages and the description)."""
        origin = TableOrigin(source=source, key_column=key_column, prompt_column=prompt_column)
        return cls._built(parse_mappings(records), origin, description)

    @classmethod
    def from_dataframe(
        cls,
        df: Any,
        *,
        key_column: str = "key",
        prompt_column: str = "prompt",
        description: str | None = None,
        source: str | None = None,
    ) -> PromptTable:
        """Build a table from a pandas or polars DataFrame or a pyarrow Table (duck-typed: no pandas
        dependency). Missing values (None, NaN) mean "use the default"."""
        return cls.from_records(
            frame_records(df),
            key_column=key_column,
            prompt_column=prompt_column,
            description=description,
            source=source,
        )

    @classmethod
    def _built(cls, parsed: Parsed, origin: TableOrigin, description: str | None) -> PromptTable:
        rows = build_rows(
            parsed,
            source=origin.source,
            key_column=origin.key_column,
            prompt_column=origin.prompt_column,
        )
        return cls(
            rows,
            description=description,
            origin=origin,
            columns=parsed.columns,
            lines=parsed.lines,
        )

    def reload(self) -> PromptTable:
        """Re-read the source file (the dynamic-partitions sensor calls this); tables built from
        in-memory records have nothing to re-read and return themselves."""
        if self._origin.url is None:
            return self
        return type(self).from_origin(self._origin, description=self._explicit_description)

    @property
    def origin(self) -> TableOrigin:
        """Where the table came from and how it was read (never shows credentials)."""
        return self._origin

    @property
    def rows(self) -> tuple[PromptRow, ...]:
        return self._rows

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(row.key for row in self._rows)

    @property
    def source(self) -> str | None:
        """Where the table came from, safe to show (no credentials, no query string)."""
        return self._origin.source

    @property
    def format(self) -> TableFormat | None:
        return self._origin.format

    @property
    def key_column(self) -> str:
        return self._origin.key_column

    @property
    def prompt_column(self) -> str:
        return self._origin.prompt_column

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column seen, in first-seen order."""
        return self._columns

    @property
    def param_columns(self) -> tuple[str, ...]:
        """Columns that override request fields."""
        return tuple(c for c in self._columns if c in REQUEST_FIELDS)

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """Columns kept as ``extra`` metadata (not key, prompt, request fields or revision)."""
        skip = {self.key_column, self.prompt_column, REVISION_COLUMN, *REQUEST_FIELDS}
        return tuple(c for c in self._columns if c not in skip)

    @property
    def description(self) -> str:
        if self._explicit_description:
            return self._explicit_description
        count = len(self._rows)
        noun = "prompt" if count == 1 else "prompts"
        return f"Images generated from {self.source or 'in-memory records'} ({count} {noun})"

    @property
    def content_hash(self) -> str:
        """sha256 of the rows in order (keys, prompts, overrides, extra, revisions): changes exactly
        when the table's content does, whatever the file format or column order."""
        if self._content_hash is None:
            payload = [_row_content(row) for row in self._rows]
            text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._content_hash = hashlib.sha256(text.encode()).hexdigest()
        return self._content_hash

    def row(self, key: str) -> PromptRow:
        try:
            return self._by_key[key]
        except KeyError:
            close = difflib.get_close_matches(key, self._by_key, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"no row with key {short_repr(key)} in prompt table {label(self.source)}{hint}"
            ) from None

    def validate(
        self,
        defaults: ImageParams,
        *,
        provider: Provider | None = None,
        edit: bool = False,
    ) -> None:
        """Check every row's request (``defaults`` + the row's overrides) with the foundation's rules.

        ``provider=None`` is the permissive union used at definition load time. For edit tables only
        the parameters and prompt are checked: input images are loaded later. Raises one
        PromptTableError listing every failing row.
        """
        problems: list[RowProblem] = []
        for i, row in enumerate(self._rows, 1):
            try:
                params = row.image_params(defaults)
                if edit:
                    validation.validate_params(params, provider=provider, edit=True)
                    validation.validate_prompt(row.prompt)
                else:
                    request = GenerateRequest(prompt=row.prompt, **params.model_dump())
                    validation.validate_request(request, provider=provider)
            except InvalidRequestError as exc:
                problems.append(
                    RowProblem(i, row.key, exc.message, _fix_for(exc), self._lines[i - 1])
                )
        if problems:
            raise PromptTableError.from_problems(problems, source=self.source)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __repr__(self) -> str:
        return f"PromptTable(source={self.source!r}, rows={len(self._rows)})"


def _row_content(row: PromptRow) -> dict[str, Any]:
    """A row as hashed: without ``revision`` when it has none, so tables without revisions keep
    the content hash they had before the column existed."""
    content = row.model_dump(mode="json")
    if content.get("revision") is None:
        content.pop("revision", None)
    return content


def _fix_for(exc: InvalidRequestError) -> str:
    if exc.field == "prompt":
        return "edit the prompt in this row"
    if exc.field:
        return f"change {exc.field} in this row or in the asset defaults"
    return "change this row or the asset defaults"
