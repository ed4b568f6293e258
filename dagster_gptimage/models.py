"""Request and result types, and the model/provider capability tables.

Types are frozen pydantic models so a request can be fingerprinted, cached and shipped between
processes without changing under our feet. Constructing one with a value of the wrong type or an
unknown field raises :class:`~dagster_gptimage.errors.InvalidRequestError` (not pydantic's
``ValidationError``) naming the field, the value and what is accepted, so callers see a single
error type for every request problem. Provider- and model-specific rules live in
:mod:`dagster_gptimage.validation`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from dagster_gptimage.errors import InvalidRequestError, short_repr

__all__ = [
    "ASPECT_RATIO_LIMIT",
    "COMPRESSIBLE_FORMATS",
    "DEFAULT_FIELDS",
    "GENERATION_DEFAULT_FIELDS",
    "MAX_PROMPT_CHARS",
    "MODEL_SPECS",
    "PRESET_SIZES",
    "PROVIDER_SPECS",
    "REQUEST_FIELDS",
    "Background",
    "EditRequest",
    "GenerateRequest",
    "GeneratedImage",
    "GenerationDefaults",
    "ImageParams",
    "ImageRequest",
    "ImageResult",
    "InputFidelity",
    "InputImage",
    "ModelSpec",
    "Moderation",
    "OutputFormat",
    "Provider",
    "ProviderSpec",
    "Quality",
    "RequestDefaults",
    "Resolution",
    "Usage",
    "parse_aspect_ratio",
    "parse_size",
    "request_defaults",
]

Provider = Literal["openai", "azure", "gateway", "emulator"]
Quality = Literal["low", "medium", "high", "auto"]
OutputFormat = Literal["png", "jpeg", "webp", "gif", "avif"]
Background = Literal["transparent", "opaque", "auto"]
Moderation = Literal["low", "auto"]
InputFidelity = Literal["high", "low"]
Resolution = Literal["1K", "2K", "4K"]

PROVIDERS: tuple[str, ...] = get_args(Provider)
QUALITIES: tuple[str, ...] = get_args(Quality)
OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)
BACKGROUNDS: tuple[str, ...] = get_args(Background)
MODERATIONS: tuple[str, ...] = get_args(Moderation)
INPUT_FIDELITIES: tuple[str, ...] = get_args(InputFidelity)
RESOLUTIONS: tuple[str, ...] = get_args(Resolution)

MAX_PROMPT_CHARS = 32_000
PRESET_SIZES: tuple[str, ...] = ("1024x1024", "1536x1024", "1024x1536")
COMPRESSIBLE_FORMATS: tuple[str, ...] = ("jpeg", "webp", "avif")
"""Lossy formats for which ``output_compression`` means something."""
ASPECT_RATIO_LIMIT = 3.0
"""Width/height (and height/width) may not exceed this: the 1:3 .. 3:1 rule."""

_MiB = 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """What a GPT image model accepts. ``free_size``: any WxH within the gpt-image-2 rule, otherwise
    only :data:`PRESET_SIZES` (and "auto")."""

    name: str
    free_size: bool
    transparent_background: bool
    input_fidelity: bool


MODEL_SPECS: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "gpt-image-2", free_size=True, transparent_background=False, input_fidelity=False
        ),
        ModelSpec(
            "gpt-image-2-2026-04-21",
            free_size=True,
            transparent_background=False,
            input_fidelity=False,
        ),
        ModelSpec(
            "gpt-image-1.5", free_size=False, transparent_background=True, input_fidelity=True
        ),
        ModelSpec("gpt-image-1", free_size=False, transparent_background=True, input_fidelity=True),
        ModelSpec(
            "gpt-image-1-mini", free_size=False, transparent_background=True, input_fidelity=False
        ),
    )
}


@dataclass(frozen=True)
class ProviderSpec:
    """What a provider accepts on top of the model rules.

    ``aspect_ratio_sizes``: accepts ``size="W:H"``, ``aspect_ratio`` and ``resolution`` (gateways).
    ``sends_model``: the body carries ``model`` (Azure addresses a deployment instead).
    ``sends_response_format``: the body carries ``response_format`` (OpenAI rejects it).
    """

    name: str
    max_n: int
    output_formats: tuple[str, ...]
    max_input_images: int
    max_input_image_bytes: int = 50 * _MiB
    max_mask_bytes: int = 4 * _MiB
    aspect_ratio_sizes: bool = False
    sends_model: bool = True
    sends_response_format: bool = False
    input_formats: tuple[str, ...] = ("png", "jpeg", "webp")


_OPENAI = ProviderSpec(
    "openai", max_n=10, output_formats=("png", "jpeg", "webp"), max_input_images=16
)

PROVIDER_SPECS: Mapping[str, ProviderSpec] = {
    "openai": _OPENAI,
    "azure": ProviderSpec(
        "azure", max_n=10, output_formats=("png", "jpeg"), max_input_images=16, sends_model=False
    ),
    "gateway": ProviderSpec(
        "gateway",
        max_n=1,
        output_formats=("png", "jpeg", "webp", "gif", "avif"),
        max_input_images=10,
        aspect_ratio_sizes=True,
        sends_response_format=True,
    ),
    "emulator": ProviderSpec(
        "emulator", max_n=10, output_formats=_OPENAI.output_formats, max_input_images=16
    ),
}

_SIZE_RE = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})", re.ASCII)
_RATIO_RE = re.compile(r"([1-9][0-9]{0,4}):([1-9][0-9]{0,4})", re.ASCII)


def parse_size(size: str) -> tuple[int, int] | None:
    """``"auto"`` → None, ``"1536x1024"`` → (1536, 1024); anything else raises ValueError.

    Only the syntax is checked here; which sizes a model accepts is :mod:`validation`'s job."""
    if size == "auto":
        return None
    match = _SIZE_RE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise ValueError(f"size {short_repr(size)} is not 'auto' or 'WIDTHxHEIGHT'")
    return int(match.group(1)), int(match.group(2))


def parse_aspect_ratio(ratio: str) -> tuple[int, int]:
    """``"16:9"`` → (16, 9); anything else raises ValueError."""
    match = _RATIO_RE.fullmatch(ratio) if isinstance(ratio, str) else None
    if match is None:
        raise ValueError(f"aspect ratio {short_repr(ratio)} is not 'W:H'")
    return int(match.group(1)), int(match.group(2))


def _describe_accepted(error: Mapping[str, Any]) -> str | None:
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        return str(ctx["expected"])
    kind = error.get("type", "")
    if kind.startswith("int"):
        return "an integer"
    if kind.startswith("string"):
        return "a string"
    if kind.startswith("bytes"):
        return "bytes"
    return None


def _as_invalid_request(
    model: type[BaseModel], error: ValidationError, data: Any
) -> InvalidRequestError:
    problems = error.errors(include_url=False)
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"]) or model.__name__
    lines = []
    for problem in problems:
        loc = ".".join(str(part) for part in problem["loc"]) or model.__name__
        accepted = _describe_accepted(problem)
        if problem["type"] == "extra_forbidden":
            fields = ", ".join(name for name in model.model_fields)
            line = f"{loc} is not a known field of {model.__name__}. Accepted: {fields}"
        elif problem["type"] == "missing":
            line = f"{loc} is required by {model.__name__}"
        else:
            line = f"{loc}={short_repr(problem.get('input'))} is not accepted"
            if "expected" not in (problem.get("ctx") or {}):
                line += f": {problem['msg']}"
            if accepted:
                line += f". Accepted: {accepted}"
        lines.append(line)
    message = lines[0] if len(lines) == 1 else "; ".join(lines)
    first_accepted: Any = _describe_accepted(first)
    if first["type"] == "extra_forbidden":
        first_accepted = tuple(model.model_fields)
    return InvalidRequestError(
        message,
        field=field,
        value=None if first["type"] == "missing" else first.get("input"),
        accepted=first_accepted,
    )


class _FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _raise_invalid_request(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(data)
        except ValidationError as error:
            raise _as_invalid_request(cls, error, data) from error


class ImageParams(_FrozenModel):
    """Every request parameter except the prompt and input images.

    This is the one declaration of request parameters: prompt-table columns, the asset factories'
    keyword arguments, the component's YAML fields and its edit steps all derive from it (see
    :data:`REQUEST_FIELDS` and :class:`RequestDefaults`), so a new parameter is added here only.
    """

    model: str = Field(
        default="gpt-image-2",
        description="gpt-image-2, gpt-image-1.5, gpt-image-1 or gpt-image-1-mini.",
    )
    size: str = Field(
        default="auto",
        description=(
            "auto or WxH (gpt-image-2: any multiple of 16 up to 3840 per side; older models: "
            f"{', '.join(PRESET_SIZES)}); W:H aspect ratios on gateways (sent as aspect_ratio)."
        ),
    )
    quality: Quality = Field(default="auto", description="low, medium, high or auto.")
    n: int = Field(default=1, description="Images per request (image assets need 1).")
    output_format: OutputFormat = Field(
        default="png", description="png, jpeg, webp (gif and avif on some gateways)."
    )
    output_compression: int | None = Field(
        default=None,
        description="0-100, jpeg/webp only.",
        json_schema_extra={"minimum": 0, "maximum": 100},
    )
    background: Background | None = Field(
        default=None, description="transparent needs png/webp and a model other than gpt-image-2."
    )
    moderation: Moderation | None = Field(default=None, description="low or auto.")
    user: str | None = Field(default=None, description="End-user id passed to the provider.")
    input_fidelity: InputFidelity | None = Field(
        default=None, description="Edits only: how closely to keep the input images (high, low)."
    )
    aspect_ratio: str | None = Field(default=None, description="Gateways only: W:H.")
    resolution: Resolution | None = Field(default=None, description="Gateways only: 1K, 2K, 4K.")

    def params(self) -> ImageParams:
        """Only the parameters, without prompt or images (for defaults, tables and fingerprints)."""
        return ImageParams.model_validate(self.model_dump(include=set(REQUEST_FIELDS)))


REQUEST_FIELDS: tuple[str, ...] = tuple(ImageParams.model_fields)
"""Request parameters a prompt table may override per row (every :class:`ImageParams` field)."""

DEFAULT_FIELDS: tuple[str, ...] = tuple(f for f in REQUEST_FIELDS if f not in ("model", "n"))
"""Request parameters an asset may default (``model`` is chosen apart, ``n`` is always 1)."""


def _defaults_model(name: str, names: tuple[str, ...], doc: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for field in names:
        info = ImageParams.model_fields[field]
        fields[field] = (
            info.annotation | None,  # type: ignore[operator]
            Field(
                default=None,
                description=info.description,
                json_schema_extra=info.json_schema_extra,
            ),
        )
    return create_model(name, __doc__=doc, __module__=__name__, **fields)


RequestDefaults = _defaults_model(
    "RequestDefaults",
    DEFAULT_FIELDS,
    "Asset-level request defaults (``None``: not set, so a row or the model decides). Derived "
    "from :class:`ImageParams`; the base of the component's edit steps.",
)
"""Every :data:`DEFAULT_FIELDS` parameter as an optional field, with ImageParams' descriptions."""

GENERATION_DEFAULT_FIELDS: tuple[str, ...] = tuple(
    f for f in DEFAULT_FIELDS if f != "input_fidelity"
)
"""Request parameters a generation asset may default (``input_fidelity`` is for edits only)."""

GenerationDefaults = _defaults_model(
    "GenerationDefaults",
    GENERATION_DEFAULT_FIELDS,
    "The request defaults of a generation: :class:`RequestDefaults` without the edit-only "
    "``input_fidelity``. Derived from :class:`ImageParams`; the base of the component.",
)
"""Every :data:`GENERATION_DEFAULT_FIELDS` parameter as an optional field."""


def request_defaults(what: str, *, edit: bool, model: str | None, **given: Any) -> dict[str, Any]:
    """The defaults an asset factory was given: only set ones, each a known request parameter.

    An unknown name or an edit-only parameter on a generation raises naming it and the accepted
    names, before anything else happens.
    """
    accepted = DEFAULT_FIELDS if edit else GENERATION_DEFAULT_FIELDS
    unknown = sorted(name for name in given if name not in accepted)
    if unknown:
        raise InvalidRequestError(
            f"{what}: unknown request parameter(s) {', '.join(unknown)}"
            + (" (input_fidelity applies to edits only)" if "input_fidelity" in unknown else ""),
            field=unknown[0],
            value=given[unknown[0]],
            accepted=accepted,
        )
    return {name: value for name, value in {"model": model, **given}.items() if value is not None}


class GenerateRequest(ImageParams):
    """A text-to-image request (``POST /images/generations``)."""

    prompt: str


class InputImage(_FrozenModel):
    """An image sent to the edits endpoint. ``content_type`` matches the decoded format, which
    :func:`dagster_gptimage.images.load_input_image` guarantees."""

    data: bytes = Field(repr=False)
    filename: str
    content_type: str

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def __repr__(self) -> str:
        return (
            f"InputImage(filename={self.filename!r}, content_type={self.content_type!r}, "
            f"bytes={len(self.data)}, sha256={self.sha256[:12]}…)"
        )


class EditRequest(ImageParams):
    """An image-edit request (``POST /images/edits``): the prompt applied to ``images``; ``mask``
    (PNG, transparent where the edit goes) applies to the first image."""

    prompt: str
    images: tuple[InputImage, ...]
    mask: InputImage | None = None


ImageRequest = GenerateRequest | EditRequest


def _count(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        return max(int(value), 0)
    if isinstance(value, str):
        try:
            return max(int(value.strip()), 0)
        except ValueError:
            return 0
    return 0


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    details = usage.get(key)
    return details if isinstance(details, Mapping) else None


class Usage(BaseModel):
    """Token usage of one request (all images of it).

    Cached counts are the part of the matching input counts that the provider served from cache
    (OpenAI's convention elsewhere: ``cached_tokens`` is a subset of the input tokens). OpenAI does not
    document cached counts for images, so they are 0 unless the provider reports them.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    input_text_tokens: int = 0
    input_image_tokens: int = 0
    cached_text_tokens: int = 0
    cached_image_tokens: int = 0
    output_image_tokens: int = 0
    output_text_tokens: int = 0

    @property
    def input_tokens(self) -> int:
        return self.input_text_tokens + self.input_image_tokens

    @property
    def output_tokens(self) -> int:
        return self.output_image_tokens + self.output_text_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            **{name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields}
        )

    @classmethod
    def from_api(cls, usage_json: Mapping[str, Any] | None) -> Usage:
        """Read a response's ``usage`` object without ever failing on its shape.

        Missing or malformed counts are 0 and unknown fields are ignored. When the split is missing,
        output tokens are image tokens (OpenAI omits ``output_tokens_details`` for image-only output),
        and unsplit input tokens are counted as image tokens: they are the pricier kind, so cost is not
        underestimated. Cached counts are read from ``input_tokens_details.cached_tokens_details``
        or, unsplit, from ``input_tokens_details.cached_tokens`` (text first).
        """
        if not isinstance(usage_json, Mapping):
            return cls()
        input_total = _count(usage_json.get("input_tokens"))
        output_total = _count(usage_json.get("output_tokens"))

        in_details = _details(usage_json, "input_tokens_details") or {}
        in_text = in_details.get("text_tokens")
        in_image = in_details.get("image_tokens")
        if in_text is not None and in_image is not None:
            input_text, input_image = _count(in_text), _count(in_image)
        elif in_text is not None:
            input_text = _count(in_text)
            input_image = max(input_total - input_text, 0)
        elif in_image is not None:
            input_image = _count(in_image)
            input_text = max(input_total - input_image, 0)
        else:
            input_text, input_image = 0, input_total

        cached_details = _details(in_details, "cached_tokens_details")
        if cached_details is not None:
            cached_text = _count(cached_details.get("text_tokens"))
            cached_image = _count(cached_details.get("image_tokens"))
        else:
            cached = _count(in_details.get("cached_tokens"))
            cached_text = min(cached, input_text)
            cached_image = cached - cached_text
        cached_text = min(cached_text, input_text)
        cached_image = min(cached_image, input_image)

        out_details = _details(usage_json, "output_tokens_details") or {}
        out_text_raw = out_details.get("text_tokens")
        out_image_raw = out_details.get("image_tokens")
        output_text = _count(out_text_raw)
        if out_image_raw is not None:
            output_image = _count(out_image_raw)
        else:
            output_image = max(output_total - output_text, 0)

        return cls(
            input_text_tokens=input_text,
            input_image_tokens=input_image,
            cached_text_tokens=cached_text,
            cached_image_tokens=cached_image,
            output_image_tokens=output_image,
            output_text_tokens=output_text,
        )


class GeneratedImage(BaseModel):
    """One decoded image of a response."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    format: str
    width: int
    height: int
    revised_prompt: str | None = None
    preview: bytes | None = Field(default=None, repr=False)
    """A small thumbnail made from the pixels decoded to verify the image (see
    :func:`~dagster_gptimage.images.make_preview`), so nothing decodes the image again for it."""

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def __repr__(self) -> str:
        return (
            f"GeneratedImage(format={self.format!r}, width={self.width}, height={self.height}, "
            f"bytes={len(self.data)}, sha256={self.sha256[:12]}…)"
        )


class ImageResult(BaseModel):
    """The outcome of one request, including what it cost.

    ``cost_usd`` is the usage cost plus an estimate for every other attempt that may have been billed;
    ``unconfirmed_cost_usd`` is that estimated part. ``possibly_billed_attempts`` includes the
    successful one. ``rate_limited_attempts`` counts the attempts the provider refused with a
    rate-limit 429 (included in ``attempts``, never billed) and ``rate_limit_wait_s`` the time the
    request waited for the provider's rate limit (pacing before sending and waits after 429s).
    """

    model_config = ConfigDict(frozen=True)

    images: tuple[GeneratedImage, ...]
    usage: Usage
    cost_usd: float
    unconfirmed_cost_usd: float = 0.0
    latency_s: float
    attempts: int
    possibly_billed_attempts: int
    request_id: str | None
    model: str
    provider: Provider
    created: int | None = None
    rate_limited_attempts: int = 0
    rate_limit_wait_s: float = 0.0
