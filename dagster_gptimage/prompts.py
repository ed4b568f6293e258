"""Prompt tables: the rows that become image partitions.

A prompt table is a file (CSV, JSON Lines, Parquet or YAML, at any fsspec URL) or in-memory records
with a ``key`` column (the partition key, and so the image's file name) and a ``prompt`` column.
Columns named like a request field (``size``, ``quality``, ``n`` …) override the asset's defaults for
that row; every other column is kept as JSON-safe ``extra`` data for metadata and manifests.

Every problem in a table is reported at once, with its row number, key and fix, because a user
fixing a 500-row spreadsheet one error per Dagster reload would give up.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import math
import os
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from dagster_gptimage import validation
from dagster_gptimage.errors import GPTImageError, InvalidRequestError, short_repr
from dagster_gptimage.models import REQUEST_FIELDS, GenerateRequest, ImageParams, Provider

__all__ = [
    "MAX_KEY_LENGTH",
    "PromptRow",
    "PromptTable",
    "PromptTableError",
    "RowProblem",
    "TableFormat",
    "key_problem",
]

TableFormat = Literal["csv", "jsonl", "parquet", "yaml"]

MAX_KEY_LENGTH = 200

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

_INT_FIELDS = frozenset({"n", "output_compression"})
_LOWERCASE_FIELDS = frozenset(
    {"model", "size", "quality", "output_format", "background", "moderation", "input_fidelity"}
)
_UPPERCASE_FIELDS = frozenset({"resolution"})

# Characters refused in keys, with the reason a user needs to understand why.
_KEY_CHARACTER_REASONS: dict[str, str] = {
    "/": "keys become file names and '/' would create a folder",
    "\\": "keys become file names and '\\' is a folder separator on Windows",
    "|": "Dagster uses '|' to join multi-partition keys",
    ",": "Dagster uses ',' to separate keys in partition selections",
    "[": "Dagster reserves '[' and ']' in partition keys",
    "]": "Dagster reserves '[' and ']' in partition keys",
    ":": "':' is not allowed in file names on Windows",
    "*": "'*' is a wildcard in file systems and object stores",
    "?": "'?' is a wildcard in file systems and object stores",
    '"': "'\"' is not allowed in file names on Windows",
    "<": "'<' is not allowed in file names on Windows",
    ">": "'>' is not allowed in file names on Windows",
}
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)
_KEY_FIX = "use letters, digits, '-', '_' and single '.' (for example 'cat-01')"


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
        lines = [f"Prompt table {_label(source)} has {count} invalid {noun}:"]
        lines.extend(f"  - {p.describe()}" for p in problems)
        return cls("\n".join(lines), source=source, problems=problems)


class PromptRow(BaseModel):
    """One prompt: ``key`` (partition key), ``prompt``, per-row request-field overrides in ``params``
    (already coerced; absent means "use the asset default") and every other column in ``extra``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    prompt: str
    params: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    def image_params(self, defaults: ImageParams) -> ImageParams:
        """``defaults`` with this row's overrides applied.

        Raises InvalidRequestError (naming the field) when an override has the wrong type or value.
        """
        base = defaults.model_dump(include=set(REQUEST_FIELDS))
        return ImageParams.model_validate({**base, **self.params})


def key_problem(key: str) -> tuple[str, str] | None:
    """Why ``key`` cannot be a partition key (problem, fix), or None if it can.

    Keys become file names in every store and partition keys in Dagster, so they must be one safe path
    segment on Linux, macOS, Windows and object stores, and must avoid Dagster's reserved syntax.
    """
    if not key:
        return "key is empty", "give every row a unique, non-empty key such as 'cat-01'"
    if len(key) > MAX_KEY_LENGTH:
        return (
            f"key is {len(key)} characters long (at most {MAX_KEY_LENGTH} allowed)",
            "use a shorter key; keep long text in another column",
        )
    controls = sorted(
        {
            c
            for c in key
            if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS
        }
    )
    if controls:
        shown = ", ".join(f"U+{ord(c):04X}" for c in controls)
        return (
            f"key contains control or invisible characters ({shown})",
            "remove line breaks, tabs and other invisible characters from the key",
        )
    bad = [c for c in _KEY_CHARACTER_REASONS if c in key]
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        reasons = "; ".join(dict.fromkeys(_KEY_CHARACTER_REASONS[c] for c in bad))
        return f"key contains {shown} ({reasons})", _KEY_FIX
    if ".." in key:
        return "key contains '..' (a parent-folder reference in paths)", _KEY_FIX
    if key.startswith("."):
        return "key starts with '.' (hidden or relative file name)", _KEY_FIX
    if key.endswith("."):
        return "key ends with '.' (Windows drops trailing dots from file names)", _KEY_FIX
    if key.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        return f"key {key!r} is a reserved device name on Windows", "choose another key"
    return None


class PromptTable:
    """An ordered, validated collection of PromptRows with unique, path-safe keys.

    Build one with ``from_path``, ``from_records`` or ``from_dataframe``. Construction fails with one
    PromptTableError listing every bad row.
    """

    def __init__(
        self,
        rows: Iterable[PromptRow],
        *,
        description: str | None = None,
        source: str | None = None,
    ) -> None:
        self._rows = tuple(rows)
        self._source = source
        self._explicit_description = description
        self._url: str | None = None
        self._format: TableFormat | None = None
        self._storage_options: dict[str, Any] = {}
        self._key_column = "key"
        self._prompt_column = "prompt"
        self._columns: tuple[str, ...] = ()
        self._lines: tuple[int | None, ...] = (None,) * len(self._rows)
        problems = _key_problems([(i, None, row.key) for i, row in enumerate(self._rows, 1)])
        problems.extend(
            RowProblem(i, row.key, "prompt is empty", "write a prompt or delete the row")
            for i, row in enumerate(self._rows, 1)
            if not row.prompt.strip()
        )
        if problems:
            raise PromptTableError.from_problems(_sorted(problems), source=source)
        if not self._rows:
            raise PromptTableError(
                f"Prompt table {_label(source)} has no rows: add at least one row with a key and a prompt",
                source=source,
            )
        self._by_key = {row.key: row for row in self._rows}
        self._content_hash: str | None = None

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
        from dagster_gptimage.storage import check_url_has_no_credentials, redact_url

        raw = os.fspath(url)
        try:
            check_url_has_no_credentials(raw, what="Prompt table URL")
        except ValueError as exc:
            raise PromptTableError(str(exc), source=redact_url(raw)) from None
        resolved = _resolve_local(raw)
        source = redact_url(resolved)
        fmt = _detect_format(resolved, format, source)
        options = dict(storage_options or {})
        data = _read_bytes(resolved, options, source)
        records, columns, lines, problems = _parse(
            data, fmt, source, text_columns={key_column, prompt_column}
        )
        table = _build(
            records,
            columns,
            lines,
            problems,
            source=source,
            key_column=key_column,
            prompt_column=prompt_column,
            description=description,
            table_cls=cls,
        )
        table._url = resolved
        table._format = fmt
        table._storage_options = options
        return table

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
        return _build(
            rows,
            tuple(columns),
            [None] * len(rows),
            problems,
            source=source,
            key_column=key_column,
            prompt_column=prompt_column,
            description=description,
            table_cls=cls,
        )

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
        if hasattr(df, "to_dicts"):
            records = df.to_dicts()
        elif hasattr(df, "to_pylist"):
            records = df.to_pylist()
        elif hasattr(df, "to_dict"):
            records = df.to_dict("records")
        else:
            raise TypeError(
                f"from_dataframe expects a pandas/polars DataFrame or a pyarrow Table, got {type(df).__name__}"
            )
        return cls.from_records(
            records,
            key_column=key_column,
            prompt_column=prompt_column,
            description=description,
            source=source,
        )

    def reload(self) -> PromptTable:
        """Re-read the source file (the dynamic-partitions sensor calls this); tables built from
        in-memory records have nothing to re-read and return themselves."""
        if self._url is None:
            return self
        return type(self).from_path(
            self._url,
            format=self._format,
            storage_options=self._storage_options,
            key_column=self._key_column,
            prompt_column=self._prompt_column,
            description=self._explicit_description,
        )

    @property
    def rows(self) -> tuple[PromptRow, ...]:
        return self._rows

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(row.key for row in self._rows)

    @property
    def source(self) -> str | None:
        """Where the table came from, safe to show (no credentials, no query string)."""
        return self._source

    @property
    def format(self) -> TableFormat | None:
        return self._format

    @property
    def key_column(self) -> str:
        return self._key_column

    @property
    def prompt_column(self) -> str:
        return self._prompt_column

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
        """Columns kept as ``extra`` metadata."""
        skip = {self._key_column, self._prompt_column, *REQUEST_FIELDS}
        return tuple(c for c in self._columns if c not in skip)

    @property
    def description(self) -> str:
        if self._explicit_description:
            return self._explicit_description
        count = len(self._rows)
        noun = "prompt" if count == 1 else "prompts"
        return f"Images generated from {self._source or 'in-memory records'} ({count} {noun})"

    @property
    def content_hash(self) -> str:
        """sha256 of the rows in order (keys, prompts, overrides, extra): changes exactly when the
        table's content does, whatever the file format or column order."""
        if self._content_hash is None:
            payload = [row.model_dump(mode="json") for row in self._rows]
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
                f"no row with key {short_repr(key)} in prompt table {_label(self._source)}{hint}"
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
            raise PromptTableError.from_problems(problems, source=self._source)

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __repr__(self) -> str:
        return f"PromptTable(source={self._source!r}, rows={len(self._rows)})"


def _label(source: str | None) -> str:
    return repr(source) if source else "(in-memory records)"


def _sorted(problems: list[RowProblem]) -> list[RowProblem]:
    return sorted(problems, key=lambda p: p.row)


def _resolve_local(url: str) -> str:
    """Make local relative paths absolute so that ``reload`` from a daemon reads the same file."""
    if "://" in url or "::" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def _detect_format(url: str, given: str | None, source: str) -> TableFormat:
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


def _read_bytes(url: str, storage_options: dict[str, Any], source: str) -> bytes:
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


_Parsed = tuple[list[dict[str, Any]], tuple[str, ...], list[int | None], list[RowProblem]]


def _parse(data: bytes, fmt: TableFormat, source: str, *, text_columns: set[str]) -> _Parsed:
    if fmt == "parquet":
        return _parse_parquet(data, source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptTableError(
            f"Prompt table {source!r} is not UTF-8 text (byte {exc.start}): save it as UTF-8",
            source=source,
        ) from None
    if fmt == "csv":
        return _parse_csv(text, source)
    if fmt == "jsonl":
        return _parse_jsonl(text)
    return _parse_yaml(text, source, text_columns | (set(REQUEST_FIELDS) - _INT_FIELDS))


def _parse_csv(text: str, source: str) -> _Parsed:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
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
    return records, tuple(c for c in columns if c), lines, problems


def _parse_jsonl(text: str) -> _Parsed:
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
            problems.append(
                RowProblem(
                    row_number,
                    None,
                    f"line is not valid JSON ({exc.msg} at column {exc.colno})",
                    'write one JSON object per line, e.g. {"key": "cat", "prompt": "a cat"}',
                    number,
                )
            )
            value = {}
        if not isinstance(value, dict):
            problems.append(
                RowProblem(
                    row_number,
                    None,
                    f"line is a JSON {type(value).__name__}, not an object",
                    'write one JSON object per line, e.g. {"key": "cat", "prompt": "a cat"}',
                    number,
                )
            )
            value = {}
        columns.update(dict.fromkeys(value))
        records.append(value)
        lines.append(number)
    return records, tuple(columns), lines, problems


def _parse_parquet(data: bytes, source: str) -> _Parsed:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise PromptTableError(
            f"Prompt table {source!r} is not a readable Parquet file: {exc}", source=source
        ) from None
    records = table.to_pylist()
    return records, tuple(table.column_names), [None] * len(records), []


def _parse_yaml(text: str, source: str, text_columns: set[str]) -> _Parsed:
    """YAML rows, reading text columns from the raw scalar so that YAML 1.1's implicit typing cannot
    turn ``key: no`` into False, ``key: 007`` into 7 or ``aspect_ratio: 16:9`` into 969."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PromptTableError(
                f"Prompt table {source!r} is empty: write a list of rows with key and prompt",
                source=source,
            )
        items = _yaml_items(root, source)
        records: list[dict[str, Any]] = []
        lines: list[int | None] = []
        problems: list[RowProblem] = []
        columns: dict[str, None] = {}
        for node in items:
            row_number = len(records) + 1
            line = node.start_mark.line + 1
            record: dict[str, Any] = {}
            if not isinstance(node, yaml.MappingNode):
                problems.append(
                    RowProblem(
                        row_number,
                        None,
                        "row is not a mapping",
                        "write each row as 'key: ...' and 'prompt: ...' lines under a '- '",
                        line,
                    )
                )
            else:
                for key_node, value_node in node.value:
                    column = str(loader.construct_object(key_node, deep=True)).strip()
                    if column in record:
                        problems.append(
                            RowProblem(
                                row_number,
                                None,
                                f"column {column!r} appears twice in this row",
                                "keep one value per column",
                                line,
                            )
                        )
                    record[column] = _yaml_value(loader, value_node, column in text_columns)
            columns.update(dict.fromkeys(record))
            records.append(record)
            lines.append(line)
        return records, tuple(columns), lines, problems
    except yaml.YAMLError as exc:
        raise PromptTableError(
            f"Prompt table {source!r} is not valid YAML: {exc}", source=source
        ) from None
    finally:
        loader.dispose()


def _yaml_items(root: Any, source: str) -> list[Any]:
    import yaml

    if isinstance(root, yaml.SequenceNode):
        return list(root.value)
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if getattr(key_node, "value", None) == "rows":
                if isinstance(value_node, yaml.SequenceNode):
                    return list(value_node.value)
                break
        found = [str(getattr(k, "value", k)) for k, _ in root.value]
        raise PromptTableError(
            f"Prompt table {source!r} must be a YAML list of rows or a mapping with a 'rows:' list "
            f"(found keys: {', '.join(found) or 'none'})",
            source=source,
        )
    raise PromptTableError(
        f"Prompt table {source!r} must be a YAML list of rows or a mapping with a 'rows:' list",
        source=source,
    )


def _yaml_value(loader: Any, node: Any, as_text: bool) -> Any:
    import yaml

    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:null":
            return None
        if as_text:
            return node.value
    return loader.construct_object(node, deep=True)


def _build(
    records: list[dict[str, Any]],
    columns: tuple[str, ...],
    lines: Sequence[int | None],
    problems: list[RowProblem],
    *,
    source: str | None,
    key_column: str,
    prompt_column: str,
    description: str | None,
    table_cls: type[PromptTable],
) -> PromptTable:
    if key_column == prompt_column:
        raise PromptTableError(
            f"key_column and prompt_column are both {key_column!r}: they must name different columns",
            source=source,
        )
    if not records and not problems:
        raise PromptTableError(
            f"Prompt table {_label(source)} has no rows: add at least one row with a key and a prompt",
            source=source,
        )
    missing = [c for c in (key_column, prompt_column) if c not in columns]
    if missing and columns:
        raise PromptTableError(
            _missing_columns_message(missing, columns, source, key_column=key_column),
            source=source,
        )

    broken = {p.row for p in problems}
    row_level: list[RowProblem] = []
    rows: list[PromptRow] = []
    keyed: list[tuple[int, int | None, str]] = []
    for i, record in enumerate(records, 1):
        if i in broken:
            continue
        line = lines[i - 1]
        key, key_error = _text_cell(record.get(key_column))
        prompt, prompt_error = _text_cell(record.get(prompt_column))
        row_problems: list[RowProblem] = []
        if key_error:
            row_problems.append(RowProblem(i, None, f"key {key_error}", _KEY_FIX, line))
        elif not key:
            row_problems.append(
                RowProblem(
                    i,
                    None,
                    f"key is missing (column {key_column!r} is empty)",
                    "give every row a unique, non-empty key such as 'cat-01'",
                    line,
                )
            )
        else:
            keyed.append((i, line, key))
        if prompt_error:
            row_problems.append(
                RowProblem(i, key, f"prompt {prompt_error}", "write the prompt as text", line)
            )
        elif not prompt:
            row_problems.append(
                RowProblem(i, key, "prompt is empty", "write a prompt or delete the row", line)
            )
        params: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for column, value in record.items():
            if column in (key_column, prompt_column):
                continue
            if column in REQUEST_FIELDS:
                coerced, error = _coerce_param(column, value)
                if error:
                    row_problems.append(RowProblem(i, key, error[0], error[1], line))
                elif coerced is not _ABSENT:
                    params[column] = coerced
            else:
                extra[column] = _json_safe(value)
        row_level.extend(row_problems)
        if not row_problems and key is not None and prompt is not None:
            rows.append(PromptRow(key=key, prompt=prompt, params=params, extra=extra))
    problems = [*problems, *_key_problems(keyed), *row_level]
    if problems:
        raise PromptTableError.from_problems(_sorted(problems), source=source)
    table = table_cls(rows, description=description, source=source)
    table._lines = tuple(lines)
    table._key_column = key_column
    table._prompt_column = prompt_column
    table._columns = columns
    return table


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
        f"Prompt table {_label(source)} is missing the required {noun} {', '.join(parts)}; "
        f"columns found: {found}. Every row needs a unique key and a prompt "
        "(use key_column=/prompt_column= if your columns have other names)."
    )


def _key_problems(keyed: Sequence[tuple[int, int | None, str]]) -> list[RowProblem]:
    problems: list[RowProblem] = []
    first_seen: dict[str, int] = {}
    folded_seen: dict[str, tuple[int, str]] = {}
    for row, line, key in keyed:
        issue = key_problem(key)
        if issue:
            problems.append(RowProblem(row, key, issue[0], issue[1], line))
            continue
        if key in first_seen:
            problems.append(
                RowProblem(
                    row,
                    key,
                    f"duplicate key (also used by row {first_seen[key]})",
                    "give every row a unique key",
                    line,
                )
            )
            continue
        first_seen[key] = row
        folded = key.casefold()
        if folded in folded_seen:
            other_row, other_key = folded_seen[folded]
            problems.append(
                RowProblem(
                    row,
                    key,
                    f"key differs from {other_key!r} (row {other_row}) only by letter case, "
                    "so both would be the same file on macOS and Windows",
                    "make keys differ by more than letter case",
                    line,
                )
            )
            continue
        folded_seen[folded] = (row, key)
    return problems


def _text_cell(value: Any) -> tuple[str | None, str | None]:
    """(stripped text or None, error) for key and prompt cells; whole numbers become their digits so
    integer ids from Parquet or JSON work as keys."""
    value = _unwrap_scalar(value)
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, f"must be text, got {value!r}"
    if isinstance(value, float):
        if math.isnan(value):
            return None, None
        if value.is_integer():
            value = int(value)
    if isinstance(value, (int, float, Decimal)):
        return str(value), None
    if isinstance(value, str):
        return value.strip(), None
    return None, f"must be text, got a {type(value).__name__}"


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


def _coerce_param(field: str, value: Any) -> tuple[Any, tuple[str, str] | None]:
    value = _unwrap_scalar(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _ABSENT, None
    if isinstance(value, str) and not value.strip():
        return _ABSENT, None
    if field in _INT_FIELDS:
        number = _as_int(value)
        if number is None:
            return None, (
                f"{field}={short_repr(value)} is not a whole number",
                f"write {field} as a whole number (e.g. 2) or leave it empty for the default",
            )
        return number, None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, (
            f"{field}={short_repr(value)} is not text",
            f"write {field} as text or leave it empty for the default",
        )
    text = str(value).strip()
    if field in _LOWERCASE_FIELDS:
        text = text.lower()
    elif field in _UPPERCASE_FIELDS:
        text = text.upper()
    return text, None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if number.is_integer() else None
    return None


def _unwrap_scalar(value: Any) -> Any:
    """numpy / pandas scalars → Python values (``.item()``), without importing either library."""
    if value is not None and not isinstance(value, (str, bytes, int, float)):
        item = getattr(value, "item", None)
        if callable(item) and not isinstance(value, (Mapping, list, tuple)):
            try:
                return item()
            except (TypeError, ValueError):
                return value
    return value


def _json_safe(value: Any) -> Any:
    """A JSON-serializable rendering of a cell: NaN → None, dates → ISO text, bytes → size note."""
    value = _unwrap_scalar(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return str(isoformat())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _json_safe(tolist())
    return str(value)


def _fix_for(exc: InvalidRequestError) -> str:
    if exc.field == "prompt":
        return "edit the prompt in this row"
    if exc.field:
        return f"change {exc.field} in this row or in the asset defaults"
    return "change this row or the asset defaults"
