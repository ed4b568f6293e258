"""One prompt-table row: what becomes one image partition."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dagster_gptimage.models import REQUEST_FIELDS, ImageParams
from dagster_gptimage.prompts._cells import revision_cell

__all__ = ["REVISION_COLUMN", "PromptRow"]

REVISION_COLUMN = "revision"
"""The optional column whose value is part of a row's identity (not a request parameter)."""


class PromptRow(BaseModel):
    """One prompt: ``key`` (partition key), ``prompt``, per-row request-field overrides in ``params``
    (already coerced; absent means "use the asset default") and every other column in ``extra``.

    ``revision`` (the ``revision`` column: text, or a whole number kept as its digits) is part of
    the row's request fingerprint, so changing it regenerates exactly this row's image; None when
    the row has none.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    prompt: str
    params: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    revision: str | None = None

    @field_validator("revision", mode="before")
    @classmethod
    def _normalize_revision(cls, value: Any) -> str | None:
        revision, problem = revision_cell(value)
        if problem is not None:
            raise ValueError(problem[0])
        return revision

    def image_params(self, defaults: ImageParams) -> ImageParams:
        """``defaults`` with this row's overrides applied.

        Raises InvalidRequestError (naming the field) when an override has the wrong type or value.
        """
        base = defaults.model_dump(include=set(REQUEST_FIELDS))
        return ImageParams.model_validate({**base, **self.params})
