"""Where a prompt table came from: an immutable value the table keeps to be read again."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dagster_gptimage._urls import check_url_has_no_credentials, redact_url, resolve_local
from dagster_gptimage.prompts._problems import PromptTableError
from dagster_gptimage.prompts._source import TableFormat, detect_format

__all__ = ["TableOrigin"]


@dataclass(frozen=True)
class TableOrigin:
    """Where a prompt table came from and how it was read: enough to read it again.

    ``url`` is None for in-memory records (there is nothing to re-read). Given a ``url``, the origin
    refuses credentials in it, makes a local path absolute (a daemon re-reading it resolves the same
    file), takes ``source`` (the label shown in messages) from the redacted URL unless given, and
    ``format`` from the extension unless given. ``url`` and ``storage_options`` never appear in the
    repr: a presigned URL carries its signature in the query string, options carry credentials.
    """

    source: str | None = None
    url: str | None = field(default=None, repr=False)
    format: TableFormat | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)
    key_column: str = "key"
    prompt_column: str = "prompt"

    def __post_init__(self) -> None:
        object.__setattr__(self, "storage_options", MappingProxyType(dict(self.storage_options)))
        if self.url is None:
            return
        raw = os.fspath(self.url)
        try:
            check_url_has_no_credentials(raw, what="Prompt table URL")
        except ValueError as exc:
            raise PromptTableError(str(exc), source=redact_url(raw)) from None
        url = resolve_local(raw)
        source = self.source if self.source is not None else redact_url(url)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "format", detect_format(url, self.format, source))

    @property
    def text_columns(self) -> frozenset[str]:
        """Columns every reader keeps as text."""
        return frozenset({self.key_column, self.prompt_column})
