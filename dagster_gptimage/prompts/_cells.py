"""Cell coercion: one table cell, as any reader produced it, to the value a PromptRow holds.

Readers differ in what a cell is (CSV gives text, JSON Lines and Parquet give typed values, pandas
gives numpy scalars and NaN for missing), so every cell goes through the same rules here and a table
means the same thing whatever its format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from dagster_gptimage.errors import short_repr

__all__ = [
    "ABSENT",
    "INT_FIELDS",
    "coerce_param",
    "json_safe",
    "revision_cell",
    "text_cell",
]

INT_FIELDS = frozenset({"n", "output_compression"})
_LOWERCASE_FIELDS = frozenset(
    {"model", "size", "quality", "output_format", "background", "moderation", "input_fidelity"}
)
_UPPERCASE_FIELDS = frozenset({"resolution"})

Problem = tuple[str, str]
"""(what is wrong, how to fix it)"""


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
"""An empty override cell: the asset default applies."""


def text_cell(value: Any) -> tuple[str | None, str | None]:
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


def revision_cell(value: Any) -> tuple[str | None, Problem | None]:
    """(revision or None, problem) for a ``revision`` cell: text is kept (stripped), whole numbers
    become their digits (so ``2`` from JSON and ``"2"`` from CSV are one revision, and pandas' ``2.0``
    for an int column with gaps too); an empty cell is no revision."""
    value = _unwrap_scalar(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, str):
        return value.strip() or None, None
    number = _whole_number(value)
    if number is not None:
        return str(number), None
    return None, (
        f"revision={short_repr(value)} is neither text nor a whole number",
        "write revision as text or a whole number (e.g. 2), or leave it empty",
    )


def coerce_param(field: str, value: Any) -> tuple[Any, Problem | None]:
    """(override value or ABSENT, problem) for a request-field cell such as ``size`` or ``n``."""
    value = _unwrap_scalar(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ABSENT, None
    if isinstance(value, str) and not value.strip():
        return ABSENT, None
    if field in INT_FIELDS:
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


def _whole_number(value: Any) -> int | None:
    """``value`` as an int when it is a typed whole number (not a bool, not text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return None


def _as_int(value: Any) -> int | None:
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
    if isinstance(value, (bool, int, float)):
        return _whole_number(value)
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


def json_safe(value: Any) -> Any:
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
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return str(isoformat())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return json_safe(tolist())
    return str(value)
