"""Pure request validation: refuse, before any request is sent, what the provider would refuse.

A refused request costs nothing, but a request that reaches the provider and fails wastes a slot of
rate limit and a minute of latency, and a whole Dagster backfill may be built on it. So each rule of the
API contract is checked here and reported as an :class:`InvalidRequestError` naming the field, the
refused value and what would be accepted.

``provider=None`` applies the permissive union of all providers: Dagster definitions are checked at
load time, when the provider may not be known yet; the run validates again with the real provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster_gptimage.errors import InvalidImageError, InvalidRequestError, short_repr
from dagster_gptimage.images import ImageInfo, inspect_image
from dagster_gptimage.models import (
    ASPECT_RATIO_LIMIT,
    BACKGROUNDS,
    COMPRESSIBLE_FORMATS,
    INPUT_FIDELITIES,
    MAX_PROMPT_CHARS,
    MODEL_SPECS,
    MODERATIONS,
    OUTPUT_FORMATS,
    PRESET_SIZES,
    PROVIDER_SPECS,
    QUALITIES,
    RESOLUTIONS,
    EditRequest,
    ImageParams,
    ImageRequest,
    InputImage,
    ModelSpec,
    ProviderSpec,
    parse_aspect_ratio,
    parse_size,
)

__all__ = [
    "FREE_SIZE_MAX_PIXELS",
    "FREE_SIZE_MAX_SIDE",
    "FREE_SIZE_MIN_PIXELS",
    "FREE_SIZE_MULTIPLE",
    "provider_spec",
    "size_problems",
    "validate_params",
    "validate_prompt",
    "validate_request",
]

FREE_SIZE_MULTIPLE = 16
FREE_SIZE_MAX_SIDE = 3840
FREE_SIZE_MIN_PIXELS = 655_360
FREE_SIZE_MAX_PIXELS = 8_294_400

_FREE_SIZE_RULE = (
    f"WxH with both sides multiples of {FREE_SIZE_MULTIPLE}, the long side at most "
    f"{FREE_SIZE_MAX_SIDE}, an aspect ratio between 1:3 and 3:1 and "
    f"{FREE_SIZE_MIN_PIXELS:,} to {FREE_SIZE_MAX_PIXELS:,} pixels (e.g. '1024x1024', '1536x864', "
    "'3840x2160')"
)
_RATIO_RULE = "'W:H' with a ratio between 1:3 and 3:1 (e.g. '16:9')"

_UNION_SPEC = ProviderSpec(
    "any provider",
    max_n=max(spec.max_n for spec in PROVIDER_SPECS.values()),
    output_formats=tuple(
        fmt
        for fmt in OUTPUT_FORMATS
        if any(fmt in spec.output_formats for spec in PROVIDER_SPECS.values())
    ),
    max_input_images=max(spec.max_input_images for spec in PROVIDER_SPECS.values()),
    max_input_image_bytes=max(spec.max_input_image_bytes for spec in PROVIDER_SPECS.values()),
    max_mask_bytes=max(spec.max_mask_bytes for spec in PROVIDER_SPECS.values()),
    aspect_ratio_sizes=any(spec.aspect_ratio_sizes for spec in PROVIDER_SPECS.values()),
    input_formats=tuple(
        dict.fromkeys(fmt for spec in PROVIDER_SPECS.values() for fmt in spec.input_formats)
    ),
)

_INSPECT_CACHE: dict[str, ImageInfo] = {}
_INSPECT_CACHE_SIZE = 256


def provider_spec(provider: str | None) -> ProviderSpec:
    """The spec of ``provider``; for None, the permissive union of every provider."""
    if provider is None:
        return _UNION_SPEC
    spec = PROVIDER_SPECS.get(provider)
    if spec is None:
        raise InvalidRequestError(
            f"provider={short_repr(provider)} is not a known provider. Accepted: "
            f"{_listing(tuple(PROVIDER_SPECS))}",
            field="provider",
            value=provider,
            accepted=tuple(PROVIDER_SPECS),
        )
    return spec


def _listing(values: Sequence[Any]) -> str:
    return ", ".join(repr(value) for value in values)


def _reject(
    field: str,
    value: Any,
    problem: str | None,
    accepted: str | Sequence[Any],
    *,
    by: str | None = None,
) -> InvalidRequestError:
    text = accepted if isinstance(accepted, str) else _listing(accepted)
    message = f"{field}={short_repr(value)} is not accepted"
    if by:
        message += f" by {by}"
    if problem:
        message += f": {problem}"
    message += f". Accepted: {text}"
    return InvalidRequestError(message, field=field, value=value, accepted=accepted)


def _by_provider(spec: ProviderSpec) -> str:
    return f"the {spec.name} provider" if spec is not _UNION_SPEC else "any provider"


def validate_prompt(prompt: Any) -> None:
    """Non-empty text of at most 32,000 characters."""
    if not isinstance(prompt, str):
        raise _reject("prompt", prompt, "it is not text", "a non-empty string")
    if not prompt.strip():
        raise _reject("prompt", prompt, "it is empty", "a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _reject(
            "prompt",
            prompt,
            f"it is {len(prompt):,} characters long",
            f"at most {MAX_PROMPT_CHARS:,} characters",
        )


def size_problems(width: int, height: int) -> list[str]:
    """Why ``width``x``height`` breaks the gpt-image-2 free-size rule (empty list: it does not)."""
    problems = []
    if width % FREE_SIZE_MULTIPLE or height % FREE_SIZE_MULTIPLE:
        problems.append(f"both sides must be multiples of {FREE_SIZE_MULTIPLE}")
    if max(width, height) > FREE_SIZE_MAX_SIDE:
        problems.append(f"the long side must be at most {FREE_SIZE_MAX_SIDE}")
    if max(width, height) > ASPECT_RATIO_LIMIT * min(width, height):
        problems.append("the aspect ratio must be between 1:3 and 3:1")
    pixels = width * height
    if pixels < FREE_SIZE_MIN_PIXELS:
        problems.append(f"it has {pixels:,} pixels, fewer than {FREE_SIZE_MIN_PIXELS:,}")
    elif pixels > FREE_SIZE_MAX_PIXELS:
        problems.append(f"it has {pixels:,} pixels, more than {FREE_SIZE_MAX_PIXELS:,}")
    return problems


def _size_rule(model: ModelSpec, spec: ProviderSpec) -> str:
    rule = (
        f"'auto' or {_FREE_SIZE_RULE}" if model.free_size else f"'auto', {_listing(PRESET_SIZES)}"
    )
    if spec.aspect_ratio_sizes:
        rule += f", or (gateway only) {_RATIO_RULE}"
    return rule


def _check_ratio(field: str, value: str, model: ModelSpec, spec: ProviderSpec) -> None:
    accepted = _RATIO_RULE if field == "aspect_ratio" else _size_rule(model, spec)
    if not spec.aspect_ratio_sizes:
        raise _reject(
            field,
            value,
            "aspect ratios are a gateway feature",
            accepted if field == "size" else "None (gateway only)",
            by=_by_provider(spec),
        )
    try:
        width, height = parse_aspect_ratio(value)
    except ValueError:
        raise _reject(field, value, "it is not a 'W:H' aspect ratio", accepted) from None
    if max(width, height) > ASPECT_RATIO_LIMIT * min(width, height):
        raise _reject(field, value, "the ratio must be between 1:3 and 3:1", accepted)


def _check_size(params: ImageParams, model: ModelSpec, spec: ProviderSpec) -> None:
    size = params.size
    if not isinstance(size, str):
        raise _reject("size", size, "it is not text", _size_rule(model, spec), by=model.name)
    if size == "auto":
        return
    if ":" in size:
        _check_ratio("size", size, model, spec)
        if params.aspect_ratio is not None:
            raise _reject(
                "aspect_ratio",
                params.aspect_ratio,
                f"size={size!r} already gives the aspect ratio",
                "None when size is an aspect ratio",
            )
        return
    try:
        parsed = parse_size(size)
    except ValueError:
        raise _reject(
            "size", size, "it is not a size", _size_rule(model, spec), by=model.name
        ) from None
    if parsed is None:
        return
    if model.free_size:
        problems = size_problems(*parsed)
        if problems:
            raise _reject("size", size, "; ".join(problems), _size_rule(model, spec), by=model.name)
    elif size not in PRESET_SIZES:
        raise _reject(
            "size",
            size,
            "only preset sizes are supported (free sizes need gpt-image-2)",
            _size_rule(model, spec),
            by=model.name,
        )


def _check_choice(field: str, value: Any, choices: Sequence[Any], *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or value not in choices:
        raise _reject(field, value, None, tuple(choices))


def validate_params(params: ImageParams, *, provider: str | None, edit: bool) -> None:
    """Check every parameter against the model's and the provider's rules (``provider=None``: any
    provider). ``edit`` says whether the parameters are for the edits endpoint."""
    spec = provider_spec(provider)
    model = MODEL_SPECS.get(params.model) if isinstance(params.model, str) else None
    if model is None:
        raise _reject("model", params.model, "unknown model", tuple(MODEL_SPECS))

    _check_choice("quality", params.quality, QUALITIES, optional=False)
    _check_choice("background", params.background, BACKGROUNDS, optional=True)
    _check_choice("moderation", params.moderation, MODERATIONS, optional=True)
    _check_choice("input_fidelity", params.input_fidelity, INPUT_FIDELITIES, optional=True)
    _check_choice("resolution", params.resolution, RESOLUTIONS, optional=True)
    if params.user is not None and not isinstance(params.user, str):
        raise _reject("user", params.user, "it is not text", "a string or None")

    n = params.n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= spec.max_n:
        accepted = "1" if spec.max_n == 1 else f"an integer from 1 to {spec.max_n}"
        problem = "it returns one image per request" if spec.max_n == 1 else None
        raise _reject("n", n, problem, accepted, by=_by_provider(spec))

    _check_size(params, model, spec)

    fmt = params.output_format
    if fmt not in spec.output_formats:
        raise _reject("output_format", fmt, None, spec.output_formats, by=_by_provider(spec))

    _check_compression(params.output_compression, fmt, spec)
    _check_transparency(params, model, fmt)
    _check_input_fidelity(params, model, edit=edit)
    _check_gateway_shape(params, model, spec)


def _check_compression(compression: Any, fmt: str, spec: ProviderSpec) -> None:
    if compression is None:
        return
    lossy = tuple(f for f in COMPRESSIBLE_FORMATS if f in spec.output_formats)
    if isinstance(compression, bool) or not isinstance(compression, int):
        raise _reject("output_compression", compression, "it is not an integer", "0 to 100 or None")
    if not 0 <= compression <= 100:
        raise _reject("output_compression", compression, None, "0 to 100 or None")
    if fmt not in lossy:
        raise _reject(
            "output_compression",
            compression,
            f"it only applies to lossy formats, not output_format={fmt!r}",
            f"None, or 0 to 100 with output_format {' / '.join(lossy)}",
        )


def _check_transparency(params: ImageParams, model: ModelSpec, fmt: str) -> None:
    if params.background != "transparent":
        return
    if not model.transparent_background:
        supporting = tuple(m.name for m in MODEL_SPECS.values() if m.transparent_background)
        raise _reject(
            "background",
            "transparent",
            f"{model.name} does not support transparent backgrounds",
            f"'opaque', 'auto' or None; or a transparent-capable model: {_listing(supporting)}",
            by=model.name,
        )
    if fmt not in ("png", "webp"):
        raise _reject(
            "background",
            "transparent",
            f"output_format={fmt!r} has no alpha channel",
            "'transparent' only with output_format 'png' or 'webp'",
        )


def _check_input_fidelity(params: ImageParams, model: ModelSpec, *, edit: bool) -> None:
    if params.input_fidelity is None:
        return
    supporting = tuple(m.name for m in MODEL_SPECS.values() if m.input_fidelity)
    if not edit:
        raise _reject(
            "input_fidelity",
            params.input_fidelity,
            "it only applies to edits",
            "None for generations",
        )
    if not model.input_fidelity:
        raise _reject(
            "input_fidelity",
            params.input_fidelity,
            None,
            f"None; or 'high' / 'low' with {_listing(supporting)}",
            by=model.name,
        )


def _check_gateway_shape(params: ImageParams, model: ModelSpec, spec: ProviderSpec) -> None:
    """``aspect_ratio`` and ``resolution``, the gateway's way of asking for a shape."""
    if params.aspect_ratio is not None:
        if not isinstance(params.aspect_ratio, str):
            raise _reject("aspect_ratio", params.aspect_ratio, "it is not text", _RATIO_RULE)
        _check_ratio("aspect_ratio", params.aspect_ratio, model, spec)
        if params.size != "auto":
            raise _reject(
                "aspect_ratio",
                params.aspect_ratio,
                f"size={params.size!r} already fixes the shape",
                "None when size is WxH; or size='auto'",
            )
    if params.resolution is not None and not spec.aspect_ratio_sizes:
        raise _reject(
            "resolution",
            params.resolution,
            "resolution is a gateway feature",
            "None (gateway only)",
            by=_by_provider(spec),
        )


def _inspect(image: InputImage, field: str) -> ImageInfo:
    """Decode an input once per process: validation runs at build time and again before sending."""
    key = image.sha256
    info = _INSPECT_CACHE.get(key)
    if info is None:
        info = inspect_image(image.data, field=field)
        if len(_INSPECT_CACHE) >= _INSPECT_CACHE_SIZE:
            _INSPECT_CACHE.pop(next(iter(_INSPECT_CACHE)), None)
        _INSPECT_CACHE[key] = info
    return info


def _check_input_image(image: Any, field: str, spec: ProviderSpec) -> ImageInfo:
    if not isinstance(image, InputImage):
        raise _reject(
            field, image, "it is not an InputImage", "an InputImage (see load_input_image)"
        )
    size = len(image.data)
    if size > spec.max_input_image_bytes:
        raise _reject(
            field,
            f"{image.filename} ({size:,} bytes)",
            "the file is too large",
            f"at most {spec.max_input_image_bytes:,} bytes",
            by=_by_provider(spec),
        )
    info = _inspect(image, field)
    if info.format not in spec.input_formats:
        raise InvalidImageError(
            f"{field}={image.filename!r} is a {info.format} image, which is not accepted by "
            f"{_by_provider(spec)}. Accepted: {_listing(spec.input_formats)}",
            field=field,
            value=info.format,
            accepted=spec.input_formats,
        )
    if image.content_type != info.content_type:
        raise _reject(
            f"{field}.content_type",
            image.content_type,
            f"the bytes are a {info.format} image",
            repr(info.content_type),
        )
    return info


def _check_mask(mask: Any, first: ImageInfo, spec: ProviderSpec) -> None:
    if not isinstance(mask, InputImage):
        raise _reject(
            "mask", mask, "it is not an InputImage", "an InputImage (see load_input_image)"
        )
    size = len(mask.data)
    if size > spec.max_mask_bytes:
        raise _reject(
            "mask",
            f"{mask.filename} ({size:,} bytes)",
            "the file is too large",
            f"a PNG of at most {spec.max_mask_bytes:,} bytes",
        )
    info = _inspect(mask, "mask")
    if info.format != "png":
        raise InvalidImageError(
            f"mask={mask.filename!r} is a {info.format} image. Accepted: a PNG with an alpha channel",
            field="mask",
            value=info.format,
            accepted="a PNG with an alpha channel",
        )
    if mask.content_type != "image/png":
        raise _reject("mask.content_type", mask.content_type, "the bytes are a PNG", "'image/png'")
    if not info.has_alpha:
        raise InvalidImageError(
            f"mask={mask.filename!r} ({info.mode}) has no alpha channel; transparent pixels mark "
            "where the edit goes. Accepted: a PNG with an alpha channel",
            field="mask",
            value=info.mode,
            accepted="a PNG with an alpha channel",
        )
    if (info.width, info.height) != (first.width, first.height):
        raise _reject(
            "mask",
            f"{info.width}x{info.height}",
            "the mask must have the size of the first image",
            f"{first.width}x{first.height}",
        )


def validate_request(request: ImageRequest, *, provider: str | None) -> None:
    """Check a whole request: parameters, prompt and, for edits, every input image and the mask
    (fully decoded, so a corrupt file fails here rather than at the provider)."""
    edit = isinstance(request, EditRequest)
    validate_params(request, provider=provider, edit=edit)
    validate_prompt(request.prompt)
    if not isinstance(request, EditRequest):
        return
    spec = provider_spec(provider)
    images = request.images
    if not 1 <= len(images) <= spec.max_input_images:
        raise _reject(
            "images",
            f"{len(images)} images",
            None,
            f"1 to {spec.max_input_images} images",
            by=_by_provider(spec),
        )
    infos = [
        _check_input_image(image, f"images[{index}]", spec) for index, image in enumerate(images)
    ]
    if request.mask is not None:
        _check_mask(request.mask, infos[0], spec)
