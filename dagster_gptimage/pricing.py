"""Prices, the cost of reported usage, and pre-flight token and cost estimates.

Prices are data, not code: providers change them, so :class:`PriceTable` merges user overrides
(partial per-model dicts allowed) over :data:`DEFAULT_PRICES`. Costs are computed from the usage a
response reports; estimates are used before a request (budgets) and for attempts that may have been
billed without reporting usage (a timeout, a dropped connection), so they lean high rather than low.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from dagster_gptimage.errors import InvalidRequestError, short_repr
from dagster_gptimage.models import (
    EditRequest,
    ImageRequest,
    Usage,
    parse_aspect_ratio,
    parse_size,
)

__all__ = [
    "AUTO_SIZE_FOR_ESTIMATES",
    "BATCH_DISCOUNT",
    "DEFAULT_PRICES",
    "ModelPrices",
    "PriceTable",
    "cost_of_usage",
    "estimate_cost",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "estimate_usage",
    "estimate_usage_per_image",
    "output_dimensions",
]

_PER_TOKEN = 1_000_000


_TOKEN_PRICES = (
    "text_input",
    "cached_text_input",
    "image_input",
    "cached_image_input",
    "text_output",
    "image_output",
)
BATCH_DISCOUNT = 0.5
"""OpenAI's Batch API price as a fraction of the standard price ("50 % off")."""


class ModelPrices(BaseModel):
    """USD per 1M tokens of each kind, and the Batch API's price as a fraction of them.

    ``batch_discount`` multiplies every price for requests sent through the Batch API (0.5: half
    price); override it per model when the provider's batch prices differ.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_input: float
    cached_text_input: float
    image_input: float
    cached_image_input: float
    text_output: float
    image_output: float
    batch_discount: float = BATCH_DISCOUNT

    def for_batch(self) -> ModelPrices:
        """The prices a Batch API line is charged (every token price times ``batch_discount``)."""
        scaled = {name: getattr(self, name) * self.batch_discount for name in _TOKEN_PRICES}
        return self.model_copy(update={**scaled, "batch_discount": 1.0})


def _prices(*values: float) -> ModelPrices:
    return ModelPrices(**dict(zip(_TOKEN_PRICES, values, strict=True)))


_GPT_IMAGE_2 = _prices(5.00, 1.25, 8.00, 2.00, 10.00, 30.00)

DEFAULT_PRICES: Mapping[str, ModelPrices] = {
    "gpt-image-2": _GPT_IMAGE_2,
    "gpt-image-2-2026-04-21": _GPT_IMAGE_2,
    "gpt-image-1.5": _prices(5.00, 1.25, 8.00, 2.00, 10.00, 32.00),
    # gpt-image-1 publishes no text-output price; text output is priced like its siblings.
    "gpt-image-1": _prices(5.00, 1.25, 10.00, 2.50, 10.00, 40.00),
    "gpt-image-1-mini": _prices(2.00, 0.20, 2.50, 0.25, 8.00, 8.00),
}
"""OpenAI's published standard (non-batch) prices, USD per 1M tokens."""


class PriceTable(Mapping[str, ModelPrices]):
    """Immutable mapping model → :class:`ModelPrices`: the defaults with ``prices`` merged over them.

    An override may be a full :class:`ModelPrices`, or a dict of some of its fields (merged over the
    model's default prices). A model without defaults needs every field.
    """

    def __init__(self, prices: Mapping[str, ModelPrices | Mapping[str, float]] | None = None):
        table = dict(DEFAULT_PRICES)
        for model, override in (prices or {}).items():
            table[model] = _merge(model, table.get(model), override)
        self._table: Mapping[str, ModelPrices] = table

    def __getitem__(self, model: str) -> ModelPrices:
        return self._table[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"PriceTable({sorted(self._table)})"

    def for_model(self, model: str) -> ModelPrices:
        """Prices of ``model``; an unknown model is an :class:`InvalidRequestError` listing the known."""
        prices = self._table.get(model)
        if prices is None:
            known = tuple(self._table)
            raise InvalidRequestError(
                f"model={short_repr(model)} has no price. Accepted: {', '.join(known)} "
                "(or add it with prices={model: {...every price field...}})",
                field="model",
                value=model,
                accepted=known,
            )
        return prices

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Plain JSON-safe copy, e.g. for run metadata."""
        return {model: prices.model_dump() for model, prices in self._table.items()}


def _price_error(model: str, message: str, value: object) -> InvalidRequestError:
    return InvalidRequestError(
        message, field=f"prices.{model}", value=value, accepted=tuple(ModelPrices.model_fields)
    )


def _merge(
    model: str, base: ModelPrices | None, override: ModelPrices | Mapping[str, Any]
) -> ModelPrices:
    if isinstance(override, ModelPrices):
        return override
    if not isinstance(override, Mapping):
        raise _price_error(
            model,
            f"prices[{model!r}]={short_repr(override)} is not a mapping of prices. Accepted: "
            f"a dict with some of {', '.join(ModelPrices.model_fields)}",
            override,
        )
    unknown = sorted(set(override) - set(ModelPrices.model_fields))
    if unknown:
        raise _price_error(
            model,
            f"prices[{model!r}] has unknown fields {unknown}. Accepted: "
            f"{', '.join(ModelPrices.model_fields)}",
            dict(override),
        )
    merged = {**(base.model_dump() if base else {}), **override}
    missing = [name for name in _TOKEN_PRICES if name not in merged]
    if missing:
        raise _price_error(
            model,
            f"prices[{model!r}] is missing {', '.join(missing)}: {model} has no default prices, so "
            f"every field is needed. Accepted: a dict with {', '.join(_TOKEN_PRICES)}",
            dict(override),
        )
    try:
        prices = ModelPrices(**merged)
    except (ValidationError, InvalidRequestError) as error:
        raise InvalidRequestError(
            f"prices[{model!r}]={short_repr(dict(override))} has a value that is not a number. "
            "Accepted: USD per 1M tokens as numbers",
            field=f"prices.{model}",
            value=dict(override),
            accepted="numbers (USD per 1M tokens)",
        ) from error
    negative = [name for name, value in prices.model_dump().items() if value < 0]
    if negative:
        raise InvalidRequestError(
            f"prices[{model!r}] has negative prices for {', '.join(negative)}. Accepted: numbers >= 0",
            field=f"prices.{model}",
            value=dict(override),
            accepted="numbers >= 0",
        )
    if prices.batch_discount > 1:
        raise InvalidRequestError(
            f"prices[{model!r}].batch_discount={prices.batch_discount:g} would make batches dearer "
            "than standard requests. Accepted: a fraction between 0 and 1 (0.5: half price)",
            field=f"prices.{model}.batch_discount",
            value=prices.batch_discount,
            accepted="0 <= batch_discount <= 1",
        )
    return prices


def cost_of_usage(usage: Usage, prices: ModelPrices, *, batch: bool = False) -> float:
    """USD cost of ``usage``: each token kind at its price, cached input at the cached price.

    Cached counts are part of the input counts (see :class:`Usage`), so only the uncached remainder is
    charged at the full input price. ``batch=True`` prices a Batch API line (``batch_discount``).
    """
    if batch:
        prices = prices.for_batch()
    cached_text = min(usage.cached_text_tokens, usage.input_text_tokens)
    cached_image = min(usage.cached_image_tokens, usage.input_image_tokens)
    micro_usd = (
        (usage.input_text_tokens - cached_text) * prices.text_input
        + cached_text * prices.cached_text_input
        + (usage.input_image_tokens - cached_image) * prices.image_input
        + cached_image * prices.cached_image_input
        + usage.output_text_tokens * prices.text_output
        + usage.output_image_tokens * prices.image_output
    )
    return micro_usd / _PER_TOKEN


_OUTPUT_TOKENS_1024: Mapping[str, Mapping[str, int]] = {
    "gpt-image-2": {"low": 196, "medium": 1756, "high": 7024},
    "gpt-image-1": {"low": 272, "medium": 1056, "high": 4160},
}
_OUTPUT_FAMILY = {
    "gpt-image-2": "gpt-image-2",
    "gpt-image-2-2026-04-21": "gpt-image-2",
    "gpt-image-1.5": "gpt-image-1",
    "gpt-image-1": "gpt-image-1",
    "gpt-image-1-mini": "gpt-image-1",
}
_SIZE_EXPONENT = {"gpt-image-2": 0.31, "gpt-image-1": 1.0}
_REFERENCE_PIXELS = 1024 * 1024
AUTO_SIZE_FOR_ESTIMATES = (1536, 1024)
"""``size="auto"`` is estimated as the largest preset: the provider picks, the budget must not lose."""
_RESOLUTION_LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 3840}


def estimate_output_tokens(model: str, width: int, height: int, quality: str) -> int:
    """Estimated output image tokens for one ``width`` x ``height`` image.

    Per-quality token counts at 1024x1024, scaled by ``(pixels / 1024²) ** exponent``:

    - gpt-image-2: low 196, medium 1,756, high 7,024 (these reproduce the published $0.006 / $0.053 /
      $0.211 per image at $30/1M); exponent 0.31, fitted to the community measurement of ≈13,342
      tokens for 3840x2160 high: tokens grow much more slowly than pixels.
    - gpt-image-1 family (1, 1.5, 1-mini): OpenAI's published 272 / 1,056 / 4,160; exponent 1, which
      reproduces the published 408 / 1,584 / 6,240 for the 1536x1024 and 1024x1536 presets.

    ``quality="auto"`` is estimated as high, so budgets stay conservative. Unknown models are
    estimated like gpt-image-2.
    """
    family = _OUTPUT_FAMILY.get(model, "gpt-image-2")
    per_quality = _OUTPUT_TOKENS_1024[family]
    base = per_quality.get(quality, per_quality["high"])
    scale = (max(width, 1) * max(height, 1) / _REFERENCE_PIXELS) ** _SIZE_EXPONENT[family]
    return max(round(base * scale), 1)


def estimate_input_tokens(prompt: str, images: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
    """Estimated (text, image) input tokens.

    Text: about 4 characters per token (English prose; the API does not publish its tokenizer for
    image models). Images: ``65 + 129 * tiles`` per input, tiles of 512x512 covering it, the tile
    scheme OpenAI documents for image inputs to its vision models. Both are estimates: real usage
    (which replaces them once a response arrives) also depends on ``input_fidelity``.
    """
    text = math.ceil(len(prompt) / 4)
    image = sum(65 + 129 * math.ceil(w / 512) * math.ceil(h / 512) for w, h in images)
    return text, image


def output_dimensions(request: Any) -> tuple[int, int]:
    """The (width, height) to estimate for: the requested size; for ``"auto"`` the largest preset;
    for a gateway aspect ratio the ratio at its ``resolution`` (long side 1K=1024, 2K=2048,
    4K=3840; 1K when unset)."""
    size = getattr(request, "size", "auto")
    ratio = (
        size if isinstance(size, str) and ":" in size else getattr(request, "aspect_ratio", None)
    )
    if isinstance(size, str) and ":" not in size:
        try:
            parsed = parse_size(size)
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed
        if ratio is None:
            return AUTO_SIZE_FOR_ESTIMATES
    try:
        rw, rh = parse_aspect_ratio(ratio) if ratio else (3, 2)
    except ValueError:
        return AUTO_SIZE_FOR_ESTIMATES
    long_side = _RESOLUTION_LONG_SIDE.get(getattr(request, "resolution", None) or "1K", 1024)
    if rw >= rh:
        return long_side, max(round(long_side * rh / rw), 1)
    return max(round(long_side * rw / rh), 1), long_side


def _input_dimensions(request: ImageRequest) -> list[tuple[int, int]]:
    if not isinstance(request, EditRequest):
        return []
    from dagster_gptimage.images import read_size

    dims = []
    for index, image in enumerate(request.images):
        try:
            dims.append(read_size(image.data, field=f"images[{index}]"))
        except InvalidRequestError:
            dims.append((1024, 1024))
    return dims


def estimate_usage_per_image(request: ImageRequest) -> Usage:
    """Estimated usage of a request for a single image (``n`` ignored)."""
    width, height = output_dimensions(request)
    text, image = estimate_input_tokens(request.prompt, _input_dimensions(request))
    return Usage(
        input_text_tokens=text,
        input_image_tokens=image,
        output_image_tokens=estimate_output_tokens(request.model, width, height, request.quality),
    )


def estimate_usage(request: ImageRequest) -> Usage:
    """Realistic usage for a whole request, as a provider would report it: the input once, the output
    tokens of each of the ``n`` images. The emulator reports this."""
    single = estimate_usage_per_image(request)
    return single.model_copy(
        update={"output_image_tokens": single.output_image_tokens * max(request.n, 1)}
    )


def estimate_cost(
    request: ImageRequest, prices: PriceTable | None = None, *, batch: bool = False
) -> float:
    """Pre-flight USD estimate of ``request``: the single-image cost times ``n``.

    Input is counted once per image rather than once per request, so for ``n > 1`` this is slightly
    above ``cost_of_usage(estimate_usage(request))``: spend checks must not undershoot.
    ``batch=True`` estimates it as a Batch API line.
    """
    table = prices if prices is not None else PriceTable()
    single = cost_of_usage(
        estimate_usage_per_image(request), table.for_model(request.model), batch=batch
    )
    return single * max(request.n, 1)
