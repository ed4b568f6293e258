"""Turn an HTTP request body into a validated image request, or the 400 the real API would send.

Two stages, so the request log can show what arrived even when it is refused: :func:`decode_body`
reads JSON or multipart (stdlib ``email`` parser, so the in-process emulator needs no extra
dependency) into raw fields and files; :func:`interpret` applies the wire rules (unknown parameters,
types, enums, required fields) and then the project's own :mod:`dagster_gptimage.validation`, whose
messages name the field, the value and what is accepted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.parser
import email.policy
import hashlib
import json
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

from dagster_gptimage.errors import InvalidImageError, InvalidRequestError
from dagster_gptimage.models import (
    BACKGROUNDS,
    INPUT_FIDELITIES,
    MODEL_SPECS,
    MODERATIONS,
    PROVIDER_SPECS,
    QUALITIES,
    RESOLUTIONS,
    EditRequest,
    GenerateRequest,
    ImageRequest,
    InputImage,
    parse_size,
)
from dagster_gptimage.pricing import output_dimensions
from dagster_gptimage.validation import validate_request

from ._config import Profile

__all__ = [
    "ApiError",
    "Call",
    "Endpoint",
    "RawBody",
    "RawFile",
    "decode_body",
    "interpret",
    "read_call",
]

Endpoint = Literal["generations", "edits"]

_INPUT_CONTENT_TYPES = ("image/png", "image/jpeg", "image/webp")
_GENERATION_FIELDS = frozenset(
    {
        "prompt",
        "model",
        "n",
        "quality",
        "size",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "user",
        "stream",
        "partial_images",
    }
)
_EDIT_FIELDS = _GENERATION_FIELDS | {"input_fidelity"}
_GATEWAY_FIELDS = frozenset({"response_format", "aspect_ratio", "resolution"})
_INT_FIELDS = frozenset({"n", "output_compression", "partial_images"})
_BOOL_FIELDS = frozenset({"stream"})
_FILE_FIELDS = {"image": "image", "image[]": "image", "mask": "mask"}
_EDIT_DEFAULT_MODEL = "gpt-image-1.5"
_AUTO_SIZE = (1024, 1024)
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)", re.S)


class ApiError(Exception):
    """An error response in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        raw_body: tuple[str, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}
        self.headers = headers
        self.raw_body = raw_body
        """(media type, bytes) sent instead of the JSON body: proxies answer with HTML."""

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


@dataclass(frozen=True)
class RawFile:
    """An uploaded file as it arrived (``field`` is the form field or JSON path)."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes = dataclasses.field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class RawBody:
    """Fields and files of a request body before any rule is applied."""

    kind: Literal["json", "multipart"]
    fields: dict[str, Any]
    files: list[RawFile]


@dataclass(frozen=True)
class Call:
    """A request the emulator will serve: validated, with the output it must produce."""

    endpoint: Endpoint
    request: ImageRequest
    width: int
    height: int
    quality: str
    background: str
    response_format: Literal["b64_json", "url"]
    stream: bool
    partial_images: int

    @property
    def concrete_request(self) -> ImageRequest:
        """The request with the size and quality actually produced, for realistic usage."""
        return self.request.model_copy(
            update={
                "size": f"{self.width}x{self.height}",
                "quality": self.quality,
                "aspect_ratio": None,
                "resolution": None,
            }
        )


def _parse_error(message: str) -> ApiError:
    return ApiError(400, message)


def decode_body(endpoint: Endpoint, content_type: str, body: bytes) -> RawBody:
    """JSON for both endpoints; multipart/form-data for edits."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data" and endpoint == "edits":
        return _decode_multipart(content_type, body)
    if media_type == "application/json" or (media_type == "" and endpoint == "generations"):
        return _decode_json(endpoint, body)
    expected = (
        "multipart/form-data or application/json" if endpoint == "edits" else "application/json"
    )
    raise _parse_error(
        f"Invalid Content-Type header ({content_type or 'none'}), expected {expected}."
    )


def _decode_json(endpoint: Endpoint, body: bytes) -> RawBody:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise _parse_error(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
            "sent was not valid JSON.)"
        )
    files: list[RawFile] = []
    if endpoint == "edits":
        images = payload.pop("images", None)
        mask = payload.pop("mask", None)
        if images is not None:
            if not isinstance(images, list):
                raise _invalid_type("images", "an array", images)
            files.extend(_image_ref(f"images[{i}]", ref) for i, ref in enumerate(images))
        if mask is not None:
            files.append(_image_ref("mask", mask))
    return RawBody("json", payload, files)


def _image_ref(path: str, ref: Any) -> RawFile:
    """JSON edits reference images by URL or file id; offline, only data URLs can be served."""
    if not isinstance(ref, dict) or set(ref) - {"image_url", "file_id"} or len(ref) != 1:
        raise ApiError(
            400,
            f"Invalid '{path}': provide exactly one of 'image_url' or 'file_id'.",
            param=path,
            code="invalid_value",
        )
    if "file_id" in ref:
        raise ApiError(
            400,
            f"Invalid '{path}.file_id': the emulator has no Files API; send a data URL in "
            "'image_url' or use multipart uploads.",
            param=f"{path}.file_id",
            code="invalid_value",
        )
    url = ref["image_url"]
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise ApiError(
            400,
            f"Invalid '{path}.image_url': the emulator runs offline and only accepts base64 data "
            "URLs (data:image/png;base64,...).",
            param=f"{path}.image_url",
            code="invalid_value",
        )
    try:
        data = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            f"Invalid '{path}.image_url': the data URL is not valid base64.",
            param=f"{path}.image_url",
            code="invalid_value",
        ) from None
    return RawFile(path, None, match.group("type"), data)


def _decode_multipart(content_type: str, body: bytes) -> RawBody:
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _parse_error("Could not parse the multipart form body of your request.")
    fields: dict[str, Any] = {}
    files: list[RawFile] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise _parse_error("Each part of a multipart form body needs a name.")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None or name in _FILE_FIELDS:
            declared = part.get("content-type")
            files.append(
                RawFile(name, filename, part.get_content_type() if declared else None, data)
            )
        else:
            try:
                fields[name] = data.decode(part.get_content_charset() or "utf-8")
            except (UnicodeDecodeError, LookupError):
                raise _parse_error(f"Form field '{name}' is not valid UTF-8 text.") from None
    return RawBody("multipart", fields, files)


def _invalid_type(name: str, expected: str, value: Any) -> ApiError:
    got = {
        bool: "a boolean",
        int: "an integer",
        float: "a decimal",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), "null" if value is None else type(value).__name__)
    return ApiError(
        400,
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.",
        param=name,
        code="invalid_type",
    )


def _coerce(name: str, value: Any, kind: Literal["json", "multipart"]) -> Any:
    if name in _INT_FIELDS:
        if kind == "multipart" and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _invalid_type(name, "an integer", value)
    if name in _BOOL_FIELDS:
        if kind == "multipart" and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        raise _invalid_type(name, "a boolean", value)
    if not isinstance(value, str):
        raise _invalid_type(name, "a string", value)
    return value


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _check_enum(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ApiError(
            400,
            f"Invalid value: '{value}'. Supported values are: {_supported(choices)}.",
            param=name,
            code="invalid_value",
        )


def _wire_param(field_name: str, kind: Literal["json", "multipart"]) -> str:
    """validation names inputs ``images[i]``; on the wire they are ``image`` (multipart)."""
    root = field_name.split(".", 1)[0]
    if root.startswith("images"):
        return "image" if kind == "multipart" else root
    return root


def read_call(
    endpoint: Endpoint,
    content_type: str,
    body: bytes,
    *,
    profile: Profile,
    deployment_model: str | None,
    output_formats: frozenset[str],
) -> tuple[RawBody | None, Call | ApiError]:
    """Both stages without raising: the raw body (None when it cannot be decoded) and the call or
    the error refusing it, so the caller can log what arrived either way."""
    try:
        raw = decode_body(endpoint, content_type, body)
    except ApiError as error:
        return None, error
    try:
        return raw, interpret(
            raw,
            endpoint,
            profile=profile,
            deployment_model=deployment_model,
            output_formats=output_formats,
        )
    except ApiError as error:
        return raw, error


def interpret(
    raw: RawBody,
    endpoint: Endpoint,
    *,
    profile: Profile,
    deployment_model: str | None,
    output_formats: frozenset[str],
) -> Call:
    """Apply the API's rules to ``raw``; raise :class:`ApiError` exactly where the API would."""
    _check_names(raw, endpoint, profile)
    values = _checked_values(raw, profile, output_formats)
    partial_images = values.pop("partial_images", 0)
    _check_partial_images(partial_images)
    stream = values.pop("stream", False)
    response_format = values.pop("response_format", "url" if profile == "gateway" else "b64_json")
    _fill_model(values, endpoint, profile, deployment_model)

    request = _build_request(raw, endpoint, values, profile)
    width, height = _output_size(request)
    quality = "high" if request.quality == "auto" else request.quality
    background = "transparent" if request.background == "transparent" else "opaque"
    return Call(
        endpoint=endpoint,
        request=request,
        width=width,
        height=height,
        quality=quality,
        background=background,
        response_format=response_format,
        stream=stream,
        partial_images=partial_images,
    )


def _check_names(raw: RawBody, endpoint: Endpoint, profile: Profile) -> None:
    """Unknown parameters and file fields are refused before any value is looked at."""
    allowed = _EDIT_FIELDS if endpoint == "edits" else _GENERATION_FIELDS
    if profile == "gateway":
        allowed = allowed | _GATEWAY_FIELDS
    for name in raw.fields:
        if name not in allowed and not (profile == "azure" and name == "model"):
            raise ApiError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    for upload in raw.files:
        if raw.kind == "multipart" and upload.field not in _FILE_FIELDS:
            raise ApiError(
                400,
                f"Unknown parameter: '{upload.field}'.",
                param=upload.field,
                code="unknown_parameter",
            )


def _checked_values(
    raw: RawBody, profile: Profile, output_formats: frozenset[str]
) -> dict[str, Any]:
    """The non-null fields, coerced to their wire types, with every enum value checked."""
    values = {
        name: _coerce(name, value, raw.kind)
        for name, value in raw.fields.items()
        if value is not None
    }
    spec = PROVIDER_SPECS[profile]
    formats = tuple(fmt for fmt in spec.output_formats if fmt in output_formats)
    for name, choices in (
        ("quality", QUALITIES),
        ("background", BACKGROUNDS),
        ("moderation", MODERATIONS),
        ("input_fidelity", INPUT_FIDELITIES),
        ("resolution", RESOLUTIONS),
        ("response_format", ("url", "b64_json")),
        ("output_format", formats),
    ):
        if name in values:
            _check_enum(name, values[name], choices)
    return values


def _check_partial_images(partial_images: int) -> None:
    if not 0 <= partial_images <= 3:
        above = partial_images > 3
        bound = "above maximum" if above else "below minimum"
        raise ApiError(
            400,
            f"Invalid 'partial_images': integer {bound} value. Expected a value between 0 and 3, "
            f"but got {partial_images} instead.",
            param="partial_images",
            code="integer_above_max_value" if above else "integer_below_min_value",
        )


def _fill_model(
    values: dict[str, Any], endpoint: Endpoint, profile: Profile, deployment_model: str | None
) -> None:
    """Require a prompt, and set the model as the provider decides it (Azure: the deployment's;
    edits without one: the API's default)."""
    if "prompt" not in values:
        raise ApiError(
            400,
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if profile == "azure":
        values.pop("model", None)
        values["model"] = deployment_model
    elif "model" not in values:
        if endpoint == "generations":
            raise ApiError(
                400,
                "Missing parameter 'model': without it the real API uses dall-e-2, which the emulator "
                f"does not imitate. Send one of {_supported(tuple(MODEL_SPECS))}.",
                param="model",
                code="invalid_value",
            )
        values["model"] = _EDIT_DEFAULT_MODEL


def _build_request(
    raw: RawBody, endpoint: Endpoint, values: dict[str, Any], profile: Profile
) -> ImageRequest:
    try:
        if endpoint == "generations":
            request: ImageRequest = GenerateRequest(**values)
        else:
            images, mask = _input_images(raw)
            request = EditRequest(**values, images=images, mask=mask)
        validate_request(request, provider=profile)
    except InvalidImageError as error:
        param = _wire_param(error.field or "image", raw.kind)
        raise ApiError(400, error.message, param=param, code="invalid_image_file") from None
    except InvalidRequestError as error:
        param = _wire_param(error.field, raw.kind) if error.field else None
        raise ApiError(400, error.message, param=param, code="invalid_value") from None
    return request


def _input_images(raw: RawBody) -> tuple[tuple[InputImage, ...], InputImage | None]:
    images: list[InputImage] = []
    mask: InputImage | None = None
    for upload in raw.files:
        is_mask = upload.field == "mask"
        param = "mask" if is_mask else ("image" if raw.kind == "multipart" else upload.field)
        accepted = ("image/png",) if is_mask else _INPUT_CONTENT_TYPES
        content_type = upload.content_type
        if content_type is None or content_type not in accepted:
            raise ApiError(
                400,
                f"Invalid file '{param}': unsupported mimetype ('{upload.content_type}'). Supported "
                f"file formats are {_supported(accepted)}.",
                param=param,
                code="invalid_value",
            )
        image = InputImage(
            data=upload.data,
            filename=upload.filename or f"{param}.{content_type.split('/')[1]}",
            content_type=content_type,
        )
        if is_mask:
            mask = image
        else:
            images.append(image)
    if not images:
        param = "image" if raw.kind == "multipart" else "images"
        raise ApiError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return tuple(images), mask


def _output_size(request: ImageRequest) -> tuple[int, int]:
    """ "auto" renders 1024x1024; gateway aspect ratios use the estimate's own rule (pricing)."""
    size = request.size
    if ":" in size or request.aspect_ratio is not None:
        return output_dimensions(request)
    parsed = parse_size(size)
    if parsed is None and request.resolution is not None:
        return output_dimensions(request.model_copy(update={"aspect_ratio": "1:1"}))
    return parsed or _AUTO_SIZE
