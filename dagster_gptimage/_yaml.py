"""Where a component's declaration lives: its defs.yaml's folder and source positions.

Paths in the YAML resolve relative to that folder, and every problem becomes a
:class:`GPTImageComponentError` naming the file and line, the field (``attributes.x.y``), the
problem and the fix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_gptimage.models import PRESET_SIZES
from dagster_gptimage.prompts import PromptTable, PromptTableError, TableFormat

__all__ = ["GPTImageComponentError", "YamlSite"]

_SIZE_EXAMPLES = ", ".join(PRESET_SIZES)
_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


class GPTImageComponentError(ValueError):
    """A GPTImageComponent declaration that cannot work. The message names the file (and line), the
    field and the fix."""


class YamlSite:
    """One component declaration's defs.yaml: resolves its paths and words its errors."""

    def __init__(self, name: str, context: dg.ComponentLoadContext) -> None:
        self.name = name
        self.folder = Path(context.path)
        self.tree = _source_tree(context)

    def fail(
        self, path: Sequence[str | int], problem: str, fix: str, *, show_source: bool = True
    ) -> GPTImageComponentError:
        """An error naming the file and line, the field (``attributes.x.y``), the problem and the
        fix, with the YAML around the line unless it may hold a secret (``show_source=False``)."""
        location = ".".join(str(part) for part in ["attributes", *path])
        first_line = problem.strip().splitlines()[0] if problem.strip() else problem
        where = f"GPTImageComponent {self.name!r}: {location}"
        snippet = ""
        if self.tree is not None:
            try:
                source = self.tree.source_error(
                    yaml_path=["attributes", *path],
                    inline_error_message=_clip(first_line, 100),
                    value_error=True,
                )
                where = f"{source.file_name}:{source.start_line_no} - {location}"
                snippet = f"\n{source.snippet}" if show_source else ""
            except Exception:
                where = f"{self.tree.position.filename} - {location}"
        message = f"{where}: {problem.strip()}{snippet}\nFix: {fix}"
        return GPTImageComponentError(message)

    def location(self, value: str) -> str:
        """Paths in the YAML are relative to the defs.yaml's folder; URLs stay as they are."""
        if "://" in value or "::" in value or os.path.isabs(os.path.expanduser(value)):
            return os.path.expanduser(value)
        return str((self.folder / value).resolve())

    def table(
        self,
        path: Sequence[str | int],
        value: str,
        fmt: TableFormat | None,
        key_column: str,
        prompt_column: str,
    ) -> PromptTable:
        url = self.location(value)
        try:
            return PromptTable.from_path(
                url, format=fmt, key_column=key_column, prompt_column=prompt_column
            )
        except PromptTableError as error:
            raise self.fail(path, str(error), self._table_fix(error, url, value)) from None

    def _table_fix(self, error: PromptTableError, url: str, value: str) -> str:
        text = str(error)
        if "does not exist" in text:
            hint = ""
            if "://" not in url:
                nearby = sorted(
                    p.name
                    for p in Path(url).parent.glob("*")
                    if p.suffix.lower()
                    in (".csv", ".jsonl", ".ndjson", ".parquet", ".yaml", ".yml")
                    and p.name not in ("defs.yaml", "defs.yml")
                )
                close = difflib.get_close_matches(Path(url).name, nearby, n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
                elif nearby:
                    hint = f" (tables there: {', '.join(nearby[:5])})"
            return (
                f"point it at an existing table{hint}: a path relative to {self.folder} or an "
                "fsspec URL such as s3://bucket/prompts.csv"
            )
        if error.problems:
            return f"correct the rows listed above in {value}"
        if "missing the required" in text:
            return (
                f"add the column to {value}, or name your columns with key_column / prompt_column"
            )
        if "format" in text:
            return "use a .csv, .jsonl, .parquet or .yaml file, or set prompts_format"
        return f"fix {value} as the message says"

    def schema_violation(
        self, schema: Mapping[str, Any], raw: Mapping[str, Any]
    ) -> GPTImageComponentError | None:
        """The first violation of the YAML schema in ``raw`` as a component error (None when the
        schema finds nothing: a template rendered to a bad value; Dagster's own message then
        stands, as it does without ``jsonschema``, which comes with ``dg`` but is not a dependency
        of Dagster)."""
        try:
            import jsonschema
        except ImportError:
            return None

        validator = jsonschema.Draft202012Validator(schema)
        violations = sorted(
            validator.iter_errors(dict(raw)), key=lambda e: [str(p) for p in e.absolute_path]
        )
        if not violations:
            return None
        violation = violations[0]
        path = list(violation.absolute_path)
        fix = "change the value as the message says"
        if violation.validator == "enum":
            allowed = [v for v in violation.validator_value if v is not None]
            fix = f"use one of: {', '.join(map(str, allowed))}"
        elif violation.validator == "pattern" and path and path[-1] == "size":
            fix = f"use auto or WIDTHxHEIGHT, e.g. {_SIZE_EXAMPLES} (W:H on gateways)"
        elif violation.validator == "type":
            fix = f"write a value of type {violation.validator_value} (no templates here)"
        elif violation.validator in _BOUNDS:
            fix = f"use a value {_BOUNDS[violation.validator]} {violation.validator_value}"
        elif violation.validator == "additionalProperties":
            fix = "remove the unknown field (see docs/yaml-reference.md for the known ones)"
        elif violation.validator == "required":
            fix = "add the missing field"
        return self.fail(path, violation.message, fix)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source_tree(context: dg.ComponentLoadContext) -> Any:
    """The defs.yaml's source positions (file, lines), when the component came from YAML."""
    decl = getattr(context, "component_decl", None)
    source = getattr(decl, "source_tree", None)
    tree = getattr(source, "source_position_tree", None)
    return tree if tree is not None else context.resolution_context.source_position_tree
