"""YAML prompt tables: a list of rows, or a mapping with a ``rows:`` list.

Text columns are read from the raw scalar so that YAML 1.1's implicit typing cannot turn
``key: no`` into False, ``key: 007`` into 7 or ``aspect_ratio: 16:9`` into 969.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from dagster_gptimage.prompts._parsed import Parsed
from dagster_gptimage.prompts._problems import PromptTableError, RowProblem

__all__ = ["parse_yaml"]


def parse_yaml(text: str, source: str, text_columns: Set[str]) -> Parsed:
    """Records of ``text``; ``text_columns`` are kept as written (never typed by YAML)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PromptTableError(
                f"Prompt table {source!r} is empty: write a list of rows with key and prompt",
                source=source,
            )
        records: list[dict[str, Any]] = []
        lines: list[int | None] = []
        problems: list[RowProblem] = []
        columns: dict[str, None] = {}
        for node in _yaml_items(root, source):
            row_number = len(records) + 1
            line = node.start_mark.line + 1
            record = _yaml_record(loader, node, text_columns, row_number, line, problems)
            columns.update(dict.fromkeys(record))
            records.append(record)
            lines.append(line)
        return Parsed(records, tuple(columns), lines, problems)
    except yaml.YAMLError as exc:
        raise PromptTableError(
            f"Prompt table {source!r} is not valid YAML: {exc}", source=source
        ) from None
    finally:
        loader.dispose()


def _yaml_record(
    loader: Any,
    node: Any,
    text_columns: Set[str],
    row_number: int,
    line: int,
    problems: list[RowProblem],
) -> dict[str, Any]:
    """One row's record; its problems are appended to ``problems``."""
    import yaml

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
        return record
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
    return record


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
