"""Key rules: a row's key is its partition key in Dagster and its file name in every store.

So a key must be one safe path segment on Linux, macOS, Windows and object stores, must avoid
Dagster's reserved partition syntax, and must differ from every other key by more than letter case.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from dagster_gptimage.prompts._problems import RowProblem

__all__ = ["KEY_FIX", "MAX_KEY_LENGTH", "key_problem", "key_problems"]

MAX_KEY_LENGTH = 200

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
KEY_FIX = "use letters, digits, '-', '_' and single '.' (for example 'cat-01')"


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
        return f"key contains {shown} ({reasons})", KEY_FIX
    if ".." in key:
        return "key contains '..' (a parent-folder reference in paths)", KEY_FIX
    if key.startswith("."):
        return "key starts with '.' (hidden or relative file name)", KEY_FIX
    if key.endswith("."):
        return "key ends with '.' (Windows drops trailing dots from file names)", KEY_FIX
    if key.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        return f"key {key!r} is a reserved device name on Windows", "choose another key"
    return None


def key_problems(keyed: Sequence[tuple[int, int | None, str]]) -> list[RowProblem]:
    """Problems of the (row, line, key) triples: unsafe keys, duplicates, case-only differences."""
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
