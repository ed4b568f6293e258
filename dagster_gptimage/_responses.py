"""A successful (2xx) answer turned into an :class:`~dagster_gptimage.models.ImageResult`.

The images are decoded (or downloaded from a gateway's URLs) and verified from their bytes, with a
preview thumbnail made from the same decoded pixels, and the attempt is priced from the usage it reports. A 2xx answer whose images are unusable was possibly
billed: it is counted before it is retried.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from dagster_gptimage import _providers as providers
from dagster_gptimage._billing import Tally
from dagster_gptimage._downloads import Downloader
from dagster_gptimage._retry import AttemptFailed
from dagster_gptimage.errors import InvalidImageError, ProviderError
from dagster_gptimage.images import PREVIEW_MAX_BYTES, PREVIEW_MAX_SIDE, inspect_image
from dagster_gptimage.models import GeneratedImage, ImageRequest, ImageResult, Provider, Usage
from dagster_gptimage.pricing import PriceTable, cost_of_usage

__all__ = ["Answer", "read_result"]

_log = logging.getLogger("dagster_gptimage.client")


@dataclass
class Answer:
    """One 2xx answer to ``request`` and what it cost so far (``cost``, of which ``unconfirmed``
    is an estimate)."""

    request: ImageRequest
    status: int
    tally: Tally
    estimate: float
    cost: float = 0.0
    unconfirmed: float = 0.0

    def possibly_billed(self, message: str, code: str) -> AttemptFailed:
        """The attempt's answer arrived but is unusable: counted as possibly billed, retried."""
        self.tally.billed(self.estimate)
        error = ProviderError(
            message, status_code=self.status, code=code, request_id=self.tally.request_id
        )
        return AttemptFailed(error, retry=True)


async def read_result(
    answer: Answer, body: bytes, prices: PriceTable, provider: Provider, downloads: Downloader
) -> ImageResult:
    """The result of a 2xx ``body``, or :class:`AttemptFailed` with its verdict."""
    try:
        parts = providers.parse_images_answer(body)
    except ValueError as exc:
        raise answer.possibly_billed(
            f"HTTP {answer.status} with an unusable body (possibly billed): {exc}",
            "invalid_response",
        ) from None
    # A 4K image's base64 text is 15 MB (a view into the body, or a str when the body was parsed
    # whole): drop each as soon as it is decoded, and the body with the last one.
    del body
    parsed, encoded = parts.body, parts.encoded

    usage_known = isinstance(parsed.usage, Mapping)
    usage = Usage.from_api(parsed.usage if usage_known else None)
    if usage_known:
        answer.cost = cost_of_usage(usage, prices.for_model(answer.request.model))
    else:
        answer.cost = answer.unconfirmed = answer.estimate

    images: list[GeneratedImage] = []
    for index, datum in enumerate(parsed.data):
        text, encoded[index] = encoded[index], None
        if text:
            data = _decoded(answer, text, index)
            del text
        else:
            data = await _downloaded(answer, downloads, datum.url or "", index)
        images.append(await _verified(answer, data, index, datum.revised_prompt))
    request, tally = answer.request, answer.tally
    if len(images) != request.n:
        _log.warning("asked for n=%d images, the provider returned %d", request.n, len(images))
    return ImageResult(
        images=tuple(images),
        usage=usage,
        cost_usd=answer.cost + tally.cost_usd,
        unconfirmed_cost_usd=answer.unconfirmed + tally.unconfirmed_cost_usd,
        latency_s=tally.elapsed(),
        attempts=tally.attempts,
        possibly_billed_attempts=tally.billed_failures + 1,
        request_id=tally.request_id,
        model=request.model,
        provider=provider,
        created=parsed.created,
        rate_limited_attempts=tally.rate_limited,
        rate_limit_wait_s=tally.rate_limit_wait_s,
    )


def _decoded(answer: Answer, text: providers.B64Text, index: int) -> bytes:
    try:
        return providers.decode_b64(text)
    except (binascii.Error, ValueError):
        raise answer.possibly_billed(
            f"data[{index}].b64_json is not valid base64 (possibly billed)", "invalid_response"
        ) from None


async def _downloaded(answer: Answer, downloads: Downloader, url: str, index: int) -> bytes:
    try:
        return await downloads.fetch(url, index)
    except ProviderError as error:
        # The provider generated (and billed) the image; only the download failed, and
        # generating again would bill again.
        answer.tally.billed_priced(answer.cost, answer.unconfirmed)
        error.request_id = error.request_id or answer.tally.request_id
        raise AttemptFailed(error, retry=False) from None


async def _verified(
    answer: Answer, data: bytes, index: int, revised_prompt: str | None
) -> GeneratedImage:
    try:
        info = await asyncio.to_thread(
            inspect_image,
            data,
            field=f"data[{index}]",
            preview_max_side=PREVIEW_MAX_SIDE,
            preview_max_bytes=PREVIEW_MAX_BYTES,
        )
    except InvalidImageError as exc:
        raise answer.possibly_billed(
            f"the provider returned an undecodable image (possibly billed): {exc}",
            "invalid_image",
        ) from None
    return GeneratedImage(
        data=data,
        format=info.format,
        width=info.width,
        height=info.height,
        revised_prompt=revised_prompt,
        preview=info.preview,
    )
