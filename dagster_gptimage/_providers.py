"""Provider request shaping and response interpretation, with no I/O.

Everything that differs between OpenAI, Azure OpenAI, an OpenAI-compatible gateway and the emulator
lives here as plain functions over plain data, so the client's network code has a single path and
every provider difference can be unit tested without sockets.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import ipaddress
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict

try:
    import pybase64 as _pybase64
except ImportError:  # a platform without its wheel: the standard library decodes
    _pybase64 = None

from dagster_gptimage.errors import (
    AuthenticationError,
    GPTImageError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    is_retryable_answer,
)
from dagster_gptimage.models import (
    EditRequest,
    GenerateRequest,
    ImageParams,
    InputImage,
    Provider,
)
from dagster_gptimage.version import __version__

__all__ = [
    "DEFAULT_BASE_URLS",
    "MODERATION_CODES",
    "B64Text",
    "Endpoint",
    "ImagesAnswer",
    "ImagesBody",
    "ProviderSettings",
    "auth_headers",
    "check_download_url",
    "decode_b64",
    "edit_form",
    "edit_json_body",
    "endpoint_url",
    "error_from_response",
    "generation_body",
    "is_loopback_host",
    "is_retryable_error",
    "parse_images_answer",
    "parse_images_body",
    "parse_retry_after",
    "request_id_from",
    "should_retry_header",
]

Endpoint = Literal["generations", "edits"]
GatewayResponseFormat = Literal["b64_json", "url"]

DEFAULT_BASE_URLS: Mapping[str, str | None] = {
    "openai": "https://api.openai.com/v1",
    "azure": None,
    "gateway": "https://api.lumenfall.ai/openai/v1",
    "emulator": "http://emulator.localhost/v1",
}

EMULATOR_TOKEN = "emulator"
USER_AGENT = f"dagster-gptimage/{__version__}"

MODERATION_CODES = frozenset(
    {"moderation_blocked", "contentfilter", "content_filter", "content_policy_violation"}
)
_QUOTA_CODES = frozenset({"insufficient_quota", "insufficient_balance"})
_SNIPPET = 300


@dataclass(frozen=True)
class ProviderSettings:
    """Everything needed to address one provider. ``api_key`` is excluded from ``repr``."""

    provider: Provider
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    azure_deployment: str | None = None
    azure_api_version: str = "2025-04-01-preview"
    gateway_response_format: GatewayResponseFormat = "b64_json"

    @classmethod
    def create(
        cls,
        provider: Provider,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        azure_deployment: str | None = None,
        azure_api_version: str = "2025-04-01-preview",
        gateway_response_format: GatewayResponseFormat = "b64_json",
    ) -> ProviderSettings:
        """Check the combination up front so a misconfiguration fails before any request is built."""
        if provider not in DEFAULT_BASE_URLS:
            raise ValueError(
                f"provider={provider!r} is not supported. Accepted: {', '.join(DEFAULT_BASE_URLS)}"
            )
        if provider != "emulator" and not api_key:
            env = "AZURE_OPENAI_API_KEY" if provider == "azure" else "OPENAI_API_KEY"
            raise AuthenticationError(
                f"api_key is required for provider={provider!r}: pass it, e.g. "
                f'api_key=dg.EnvVar("{env}") on GPTImageResource, or api_key=os.environ["{env}"] '
                "on GPTImageClient",
                code="missing_api_key",
                provider=provider,
            )
        resolved = base_url or DEFAULT_BASE_URLS[provider]
        if not resolved:
            raise ValueError(
                "base_url is required for provider='azure': the resource endpoint, "
                "e.g. 'https://my-resource.openai.azure.com'"
            )
        resolved = resolved.rstrip("/")
        if provider == "azure":
            resolved = resolved.removesuffix("/openai")
            if not azure_deployment:
                raise ValueError(
                    "azure_deployment is required for provider='azure': the name of the image "
                    "model deployment in your Azure OpenAI resource"
                )
        if gateway_response_format not in ("b64_json", "url"):
            raise ValueError(
                f"gateway_response_format={gateway_response_format!r} is not accepted. "
                "Accepted: 'b64_json', 'url'"
            )
        scheme = urlsplit(resolved).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"base_url={resolved!r} must be an http(s) URL")
        return cls(
            provider=provider,
            base_url=resolved,
            api_key=api_key,
            azure_deployment=azure_deployment,
            azure_api_version=azure_api_version,
            gateway_response_format=gateway_response_format,
        )


def endpoint_url(settings: ProviderSettings, endpoint: Endpoint) -> str:
    """Azure addresses a deployment (model implied by it); everyone else a shared ``/images`` path."""
    if settings.provider == "azure":
        deployment = quote(settings.azure_deployment or "", safe="")
        version = quote(settings.azure_api_version, safe="")
        return (
            f"{settings.base_url}/openai/deployments/{deployment}/images/{endpoint}"
            f"?api-version={version}"
        )
    return f"{settings.base_url}/images/{endpoint}"


def auth_headers(settings: ProviderSettings) -> dict[str, str]:
    """Credentials are attached per request (never as client defaults) so that downloads of
    gateway image URLs, which may live on third-party hosts, can never carry the key."""
    if settings.provider == "azure":
        return {"api-key": settings.api_key or ""}
    token = settings.api_key or (EMULATOR_TOKEN if settings.provider == "emulator" else "")
    return {"Authorization": f"Bearer {token}"}


def base_headers(default_headers: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    headers.update(default_headers or {})
    return headers


def _param_fields(
    params: ImageParams, settings: ProviderSettings, *, edit: bool
) -> dict[str, str | int]:
    """Request fields in the provider's vocabulary.

    ``response_format`` goes only to gateways: OpenAI answers 400 ``unknown_parameter`` for GPT
    image models. A gateway size written as a ratio (``"16:9"``) is its ``aspect_ratio``.
    """
    fields: dict[str, str | int] = {}
    if settings.provider != "azure":
        fields["model"] = params.model
    fields["n"] = params.n
    aspect_ratio = params.aspect_ratio
    if ":" in params.size:
        aspect_ratio = aspect_ratio or params.size
    else:
        fields["size"] = params.size
    fields["quality"] = params.quality
    fields["output_format"] = params.output_format
    optional: dict[str, str | int | None] = {
        "output_compression": params.output_compression,
        "background": params.background,
        "moderation": params.moderation,
        "user": params.user,
    }
    if edit:
        optional["input_fidelity"] = params.input_fidelity
    if settings.provider == "gateway":
        optional["aspect_ratio"] = aspect_ratio
        optional["resolution"] = params.resolution
        optional["response_format"] = settings.gateway_response_format
    fields.update({k: v for k, v in optional.items() if v is not None})
    return fields


def generation_body(request: GenerateRequest, settings: ProviderSettings) -> dict[str, Any]:
    """JSON body for ``POST /images/generations``."""
    return {"prompt": request.prompt, **_param_fields(request, settings, edit=False)}


def edit_json_body(request: EditRequest, settings: ProviderSettings) -> dict[str, Any]:
    """JSON body for ``POST /images/edits`` with inputs as base64 data URLs: the shape a Batch API
    line needs, since a JSONL line cannot carry a multipart form."""

    def ref(image: InputImage) -> dict[str, str]:
        encoded = base64.b64encode(image.data).decode("ascii")
        return {"image_url": f"data:{image.content_type};base64,{encoded}"}

    body: dict[str, Any] = {"prompt": request.prompt, **_param_fields(request, settings, edit=True)}
    body["images"] = [ref(image) for image in request.images]
    if request.mask is not None:
        body["mask"] = ref(request.mask)
    return body


FormFile = tuple[str, tuple[str, bytes, str]]


def edit_form(
    request: EditRequest, settings: ProviderSettings
) -> tuple[dict[str, str], list[FormFile]]:
    """``(data, files)`` for httpx's multipart encoder.

    One input goes as ``image``; several as repeated ``image[]`` parts, as OpenAI's own curl and
    SDK examples send them. Numbers become decimal strings, as every form field is text.
    """
    data = {"prompt": request.prompt}
    data.update({k: str(v) for k, v in _param_fields(request, settings, edit=True).items()})
    name = "image" if len(request.images) == 1 else "image[]"
    files: list[FormFile] = [
        (name, (image.filename, image.data, image.content_type)) for image in request.images
    ]
    if request.mask is not None:
        mask = request.mask
        files.append(("mask", (mask.filename, mask.data, mask.content_type)))
    return data, files


# --- responses ---------------------------------------------------------------------------------


class ImageDatum(BaseModel):
    model_config = ConfigDict(extra="ignore")
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesBody(BaseModel):
    """The parts of an images response this package uses; anything else is ignored.

    ``created`` is the only field OpenAI marks required, but a body without it that still carries
    images is accepted: refusing it would make the client retry, and pay for, a usable answer.
    """

    model_config = ConfigDict(extra="ignore")
    created: int | None = None
    data: list[ImageDatum] = []
    usage: Any = None
    output_format: Any = None
    size: Any = None
    quality: Any = None
    background: Any = None


def parse_images_body(body: bytes) -> ImagesBody:
    """Parse a 2xx body; ``ValueError`` when it cannot have come from a complete, successful answer."""
    parsed = _validated(_json_object(body))
    _check_data(parsed, [datum.b64_json for datum in parsed.data])
    return parsed


B64Text = str | memoryview
"""The base64 text of one image as received: a view into the response body, or a str when the
body had to be parsed whole."""


@dataclass
class ImagesAnswer:
    """A parsed 2xx body whose base64 texts are kept apart: ``encoded[i]`` is ``data[i]``'s (None
    for a ``url`` item) and every ``body.data[i].b64_json`` is None."""

    body: ImagesBody
    encoded: list[B64Text | None]


_B64_KEY = b'"b64_json"'
_JSON_SPACE = b" \t\n\r"
_MARK = "\x00b64:"
"""Stands for a cut-out base64 text in the rest of the body; a NUL can only come from a ``\\u0000``
escape, which is refused in that rest (then the body is parsed whole)."""


def parse_images_answer(body: bytes) -> ImagesAnswer:
    """:func:`parse_images_body` without copying the images: each ``"b64_json": "..."`` text is cut
    out as a view into ``body`` and the small rest is parsed. A 4K image is a 16 MB body; parsing
    it whole makes a 16 MB str of the body and another of the base64 text, then bytes from that
    text again before decoding. Any text that is not plain (an escape) or that does not land in
    ``data[i].b64_json`` has the body parsed whole, so the answer is always the full parse's."""
    answer = _cut_answer(body)
    if answer is not None:
        return answer
    parsed = parse_images_body(body)
    encoded: list[B64Text | None] = [datum.b64_json for datum in parsed.data]
    for datum in parsed.data:
        datum.b64_json = None
    return ImagesAnswer(parsed, encoded)


def _cut_answer(body: bytes) -> ImagesAnswer | None:
    """The answer with its base64 texts cut out of ``body``; None when the whole body must be
    parsed (no plain text to cut, or the rest is refused: the full parse then says why)."""
    cut = _cut_b64(body)
    if cut is None:
        return None
    rest, spans = cut
    try:
        parsed = _validated(_json_object(rest))
    except ValueError:
        return None
    encoded = _placed(parsed, memoryview(body), spans)
    if encoded is None:
        return None
    _check_data(parsed, encoded)
    return ImagesAnswer(parsed, encoded)


def _cut_b64(body: bytes) -> tuple[bytes, list[tuple[int, int]]] | None:
    """``body`` with each plain ``"b64_json"`` string replaced by a mark (``_MARK`` and its index),
    and where each was; None when there is none or one has escapes."""
    spans: list[tuple[int, int]] = []
    pieces: list[bytes] = []
    done = 0
    at = body.find(_B64_KEY)
    while at != -1:
        start = _value_start(body, at + len(_B64_KEY))
        if body[start : start + 1] == b'"':
            end = body.find(b'"', start + 1)
            if end == -1 or body.find(b"\\", start + 1, end) != -1:
                return None
            pieces += [body[done : start + 1], json.dumps(f"{_MARK}{len(spans)}")[1:-1].encode()]
            spans.append((start + 1, end))
            done = end
        at = body.find(_B64_KEY, max(at + 1, done))
    if not spans:
        return None
    pieces.append(body[done:])
    if any(b"\\u0000" in piece.replace(b"\\\\", b"") for piece in pieces[::2]):
        return None
    return b"".join(pieces), spans


def _value_start(body: bytes, index: int) -> int:
    """Where the value after a key ending at ``index`` starts (``len(body)`` if it is no key)."""
    index = _after_space(body, index)
    if body[index : index + 1] != b":":
        return len(body)
    return _after_space(body, index + 1)


def _after_space(body: bytes, index: int) -> int:
    while index < len(body) and body[index] in _JSON_SPACE:
        index += 1
    return index


def _placed(
    parsed: ImagesBody, view: memoryview, spans: list[tuple[int, int]]
) -> list[B64Text | None] | None:
    """Each datum's base64 text (its cut-out view, or its str); None unless every cut-out text is
    some datum's ``b64_json``, once."""
    marks = {f"{_MARK}{index}": span for index, span in enumerate(spans)}
    encoded: list[B64Text | None] = []
    for datum in parsed.data:
        text, datum.b64_json = datum.b64_json, None
        span = marks.pop(text, None) if text is not None else None
        if span is not None:
            encoded.append(view[span[0] : span[1]])
        elif text is not None and text.startswith(_MARK):
            return None
        else:
            encoded.append(text)
    return encoded if not marks else None


def _json_object(body: bytes) -> Any:
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"response body is not JSON ({len(body)} bytes): {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"response body is a JSON {type(raw).__name__}, not an object")
    return raw


def _validated(raw: Any) -> ImagesBody:
    try:
        return ImagesBody.model_validate(raw)
    except Exception as exc:
        raise ValueError(f"response body does not look like an images response: {exc}") from None


def _check_data(parsed: ImagesBody, encoded: Sequence[B64Text | None]) -> None:
    if not parsed.data:
        raise ValueError("response body has no images in 'data'")
    for index, (datum, text) in enumerate(zip(parsed.data, encoded, strict=True)):
        if not text and not datum.url:
            raise ValueError(f"data[{index}] has neither 'b64_json' nor 'url'")


def decode_b64(text: B64Text) -> bytes:
    """``base64.b64decode(text, validate=True)``: the same texts pass (the standard alphabet with
    its padding) with the same bytes; ``ValueError`` (``binascii.Error``) for the others.

    pybase64 decodes with SIMD, ~30x faster (20 ms -> 0.6 ms for a 4K image); what it refuses is
    decoded the standard way, so that a text the standard library accepts is never refused. The
    standard way takes a view without copying it (``strict_mode`` is what ``validate`` means on
    Python >= 3.11)."""
    if _pybase64 is not None:
        try:
            return _pybase64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)
    return base64.b64decode(text, validate=True)


def request_id_from(headers: Mapping[str, str], provider: Provider | str | None) -> str | None:
    names = ["x-request-id", "apim-request-id"]
    if provider == "gateway":
        names.insert(0, "x-lumenfall-request-id")
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        if lowered.get(name):
            return lowered[name]
    return None


def _error_payload(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """``(message, type, code, param)`` from the many shapes error bodies come in."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, None, None, None
    if not isinstance(raw, dict):
        return None, None, None, None
    error = raw.get("error", raw)
    if isinstance(error, str):
        return error, None, None, None
    if not isinstance(error, dict):
        return None, None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return None if value is None or isinstance(value, (dict, list)) else str(value)

    message = text("message") or text("detail")
    return message, text("type"), text("code"), text("param")


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    return text[:_SNIPPET] + ("…" if len(text) > _SNIPPET else "")


def error_from_response(
    status: int, headers: Mapping[str, str], body: bytes, provider: Provider | str | None
) -> GPTImageError:
    """Map a non-2xx answer onto the exception hierarchy (retry decisions are separate)."""
    message, err_type, code, param = _error_payload(body)
    request_id = request_id_from(headers, provider)
    if not message:
        snippet = _snippet(body)
        message = f"HTTP {status} from {provider}" + (f": {snippet}" if snippet else "")
    kwargs: dict[str, Any] = {
        "status_code": status,
        "code": code or err_type,
        "param": param,
        "request_id": request_id,
        "provider": provider,
    }
    codes = {c.lower() for c in (code, err_type) if c}
    if status in (400, 403) and codes & MODERATION_CODES:
        return ModerationBlockedError(message, **kwargs)
    if status == 402 or (status == 429 and codes & _QUOTA_CODES):
        return QuotaExceededError(message, **kwargs)
    if status in (401, 403):
        return AuthenticationError(message, **kwargs)
    if status == 429:
        return RateLimitError(message, **kwargs)
    if status in (408, 409) or status >= 500:
        return ProviderError(message, **kwargs)
    return InvalidRequestError(message, field=param, **kwargs)


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """The server's own verdict (``x-should-retry``), which the official SDKs obey."""
    for key, value in headers.items():
        if key.lower() == "x-should-retry":
            value = value.strip().lower()
            if value == "true":
                return True
            if value == "false":
                return False
    return None


def is_retryable_error(error: GPTImageError, headers: Mapping[str, str]) -> bool:
    """Whether a non-2xx answer is worth another attempt (decided by
    :func:`~dagster_gptimage.errors.is_retryable_answer`, with the server's header as its hint)."""
    return is_retryable_answer(error, should_retry_header(headers))


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, then ``retry-after`` (seconds or an
    HTTP date). ``None`` when absent or unparsable; never negative."""
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None:
            return None
        value = moment.timestamp() - (time.time() if now is None else now)
    return max(value, 0.0) if math.isfinite(value) else None


# --- downloads ---------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """Hosts that cannot leave this machine, where plain http is harmless."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_download_url(url: str, *, allow_insecure: bool) -> None:
    """Refuse image URLs that could be tampered with in transit (plain http off-machine) or that
    are not web URLs at all (``file:``, ``ftp:``…). Raises ``ProviderError``."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        if allow_insecure or is_loopback_host(parts.hostname):
            return
        raise ProviderError(
            f"refusing to download the generated image over plain http from {parts.hostname!r}: "
            "only https (or a loopback host) is allowed unless allow_insecure_downloads=True",
            code="insecure_image_url",
        )
    raise ProviderError(
        f"the provider returned an image URL with unsupported scheme {parts.scheme!r}",
        code="unsupported_image_url",
    )
