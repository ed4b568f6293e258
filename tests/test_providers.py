"""Provider request shaping and response interpretation (pure functions, no I/O)."""

from __future__ import annotations

import email
import email.policy
import email.utils
import io
import json
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from PIL import Image

from dagster_gptimage import _providers as providers
from dagster_gptimage.errors import (
    AuthenticationError,
    GPTImageError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
)
from dagster_gptimage.models import EditRequest, GenerateRequest, InputImage

FAKE_KEY = "sk-test-PROVIDERS-0123456789abcdef"


def png(width: int = 64, height: int = 64, *, alpha: bool = False) -> bytes:
    image = Image.new(
        "RGBA" if alpha else "RGB", (width, height), (10, 200, 30, 0)[: 4 if alpha else 3]
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def input_image(name: str = "a.png", *, alpha: bool = False) -> InputImage:
    return InputImage(data=png(alpha=alpha), filename=name, content_type="image/png")


def settings(provider: Any = "openai", **kwargs: Any) -> providers.ProviderSettings:
    if provider == "azure":
        kwargs.setdefault("base_url", "https://res.openai.azure.com")
        kwargs.setdefault("azure_deployment", "img-deploy")
    if provider != "emulator":
        kwargs.setdefault("api_key", FAKE_KEY)
    return providers.ProviderSettings.create(provider, **kwargs)


@pytest.fixture(scope="module")
def openapi(reference_dir: Path) -> dict[str, Any]:
    return json.loads((reference_dir / "openai-images-openapi.json").read_text())


def schema_validator(openapi: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, with ``#/components/...`` refs resolvable."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": openapi["components"]}
    return jsonschema.Draft202012Validator(schema)


# --- settings ----------------------------------------------------------------------------------


def test_openai_defaults_and_repr_hides_key() -> None:
    s = settings("openai")
    assert s.base_url == "https://api.openai.com/v1"
    assert FAKE_KEY not in repr(s)
    assert FAKE_KEY not in str(s)


@pytest.mark.parametrize("provider", ["openai", "azure", "gateway"])
def test_missing_key_names_api_key_and_env_var(provider: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        providers.ProviderSettings.create(
            provider,  # type: ignore[arg-type]
            base_url="https://res.openai.azure.com",
            azure_deployment="d",
        )
    message = str(info.value)
    assert "api_key" in message
    assert "dg.EnvVar(" in message
    assert info.value.attempts == 0


def test_emulator_needs_no_key_and_sends_placeholder_bearer() -> None:
    s = settings("emulator")
    assert s.base_url == "http://emulator.localhost/v1"
    assert providers.auth_headers(s) == {"Authorization": "Bearer emulator"}


def test_azure_requires_base_url_and_deployment() -> None:
    with pytest.raises(ValueError, match="base_url is required"):
        providers.ProviderSettings.create("azure", api_key=FAKE_KEY, azure_deployment="d")
    with pytest.raises(ValueError, match="azure_deployment is required"):
        providers.ProviderSettings.create(
            "azure", api_key=FAKE_KEY, base_url="https://res.openai.azure.com"
        )


def test_unknown_provider_and_bad_scheme_are_refused() -> None:
    with pytest.raises(ValueError, match="not supported"):
        providers.ProviderSettings.create("bedrock", api_key=FAKE_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http"):
        providers.ProviderSettings.create("openai", api_key=FAKE_KEY, base_url="ftp://x/v1")


# --- URLs and headers --------------------------------------------------------------------------


def test_endpoint_urls_per_provider() -> None:
    assert (
        providers.endpoint_url(settings("openai"), "generations")
        == "https://api.openai.com/v1/images/generations"
    )
    assert (
        providers.endpoint_url(settings("gateway"), "edits")
        == "https://api.lumenfall.ai/openai/v1/images/edits"
    )
    assert (
        providers.endpoint_url(settings("emulator", base_url="http://127.0.0.1:8089/v1/"), "edits")
        == "http://127.0.0.1:8089/v1/images/edits"
    )


def test_azure_url_addresses_the_deployment_with_api_version() -> None:
    s = settings(
        "azure", base_url="https://res.openai.azure.com/openai/", azure_deployment="my img"
    )
    url = httpx.URL(providers.endpoint_url(s, "generations"))
    assert url.host == "res.openai.azure.com"
    assert url.path == "/openai/deployments/my img/images/generations"
    assert url.params["api-version"] == "2025-04-01-preview"
    assert providers.endpoint_url(s, "edits").split("?")[0].endswith("/images/edits")


def test_auth_headers_per_provider() -> None:
    assert providers.auth_headers(settings("openai")) == {"Authorization": f"Bearer {FAKE_KEY}"}
    assert providers.auth_headers(settings("gateway")) == {"Authorization": f"Bearer {FAKE_KEY}"}
    azure = providers.auth_headers(settings("azure"))
    assert azure == {"api-key": FAKE_KEY}


def test_base_headers_merge_user_headers() -> None:
    headers = providers.base_headers({"X-Team": "imaging"})
    assert headers["User-Agent"].startswith("dagster-gptimage/")
    assert headers["X-Team"] == "imaging"


# --- generation bodies -------------------------------------------------------------------------

GENERATION_CASES: list[dict[str, Any]] = [
    {},
    {"size": "1024x1536", "quality": "low", "n": 3},
    {"size": "3840x2160", "quality": "high", "output_format": "jpeg", "output_compression": 70},
    {"output_format": "webp", "moderation": "low", "user": "u-1", "background": "opaque"},
    {"model": "gpt-image-1", "background": "transparent", "size": "1536x1024"},
]


@pytest.mark.parametrize("provider", ["openai", "azure", "emulator"])
@pytest.mark.parametrize("params", GENERATION_CASES)
def test_generation_body_matches_openapi(
    openapi: dict[str, Any], provider: str, params: dict[str, Any]
) -> None:
    request = GenerateRequest(prompt="a lighthouse at dawn", **params)
    body = providers.generation_body(request, settings(provider))
    schema_validator(openapi, "CreateImageRequest").validate(body)
    properties = openapi["components"]["schemas"]["CreateImageRequest"]["properties"]
    assert set(body) <= set(properties)
    assert "response_format" not in body
    assert body["prompt"] == "a lighthouse at dawn"
    for key, value in params.items():
        if key != "model":
            assert body[key] == value
    if provider == "azure":
        assert "model" not in body
    else:
        assert body["model"] == request.model
    json.dumps(body)


def test_generation_body_omits_unset_optionals() -> None:
    body = providers.generation_body(GenerateRequest(prompt="p"), settings("openai"))
    assert body == {
        "prompt": "p",
        "model": "gpt-image-2",
        "n": 1,
        "size": "auto",
        "quality": "auto",
        "output_format": "png",
    }


def test_generation_body_never_sends_input_fidelity() -> None:
    body = providers.generation_body(
        GenerateRequest(prompt="p", model="gpt-image-1", input_fidelity="high"), settings("openai")
    )
    assert "input_fidelity" not in body


def test_gateway_body_has_response_format_aspect_ratio_and_resolution(
    openapi: dict[str, Any],
) -> None:
    request = GenerateRequest(prompt="p", size="16:9", resolution="4K", output_format="avif")
    body = providers.generation_body(request, settings("gateway"))
    assert body["response_format"] == "b64_json"
    assert body["aspect_ratio"] == "16:9"
    assert body["resolution"] == "4K"
    assert "size" not in body
    assert body["output_format"] == "avif"
    url_body = providers.generation_body(
        GenerateRequest(prompt="p", size="1024x1024", aspect_ratio="1:1"),
        settings("gateway", gateway_response_format="url"),
    )
    assert url_body["response_format"] == "url"
    assert url_body["size"] == "1024x1024"
    assert url_body["aspect_ratio"] == "1:1"
    gateway_only = {"aspect_ratio", "resolution"}
    properties = set(openapi["components"]["schemas"]["CreateImageRequest"]["properties"])
    assert set(url_body) - properties == {"aspect_ratio"}
    assert gateway_only.isdisjoint(properties)


def test_bad_gateway_response_format_is_refused() -> None:
    with pytest.raises(ValueError, match="gateway_response_format"):
        settings("gateway", gateway_response_format="base64")


# --- edit forms --------------------------------------------------------------------------------


def parse_multipart(data: dict[str, str], files: list[providers.FormFile]) -> list[EmailMessage]:
    """Encode with httpx exactly as the client does, then parse it back with the stdlib."""
    request = httpx.Request("POST", "https://x/images/edits", data=data, files=files)
    raw = request.read()
    head = f"Content-Type: {request.headers['content-type']}\r\nMIME-Version: 1.0\r\n\r\n"
    message = email.message_from_bytes(head.encode() + raw, policy=email.policy.HTTP)
    assert isinstance(message, EmailMessage)
    assert message.is_multipart()
    return list(message.iter_parts())  # type: ignore[attr-defined]


def form_as_object(parts: list[EmailMessage]) -> dict[str, Any]:
    """The multipart form as the JSON-ish object the OpenAPI schema describes."""
    obj: dict[str, Any] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        if part.get_filename():
            key = "image" if name == "image[]" else name
            if name == "image[]":
                obj.setdefault(key, []).append("<binary>")
            else:
                obj[key] = "<binary>"
        else:
            value: Any = part.get_content()
            if name in ("n", "output_compression", "partial_images"):
                value = int(value)
            obj[name] = value
    return obj


@pytest.mark.parametrize("provider", ["openai", "azure", "emulator"])
def test_single_image_edit_is_multipart_with_image_field(
    openapi: dict[str, Any], provider: str
) -> None:
    request = EditRequest(
        prompt="add a hat",
        images=(input_image("cat.png"),),
        mask=input_image("mask.png", alpha=True),
        model="gpt-image-1.5",
        input_fidelity="high",
        quality="medium",
        size="1024x1024",
    )
    data, files = providers.edit_form(request, settings(provider))
    parts = parse_multipart(data, files)
    names = [p.get_param("name", header="content-disposition") for p in parts]
    assert names.count("image") == 1
    assert "image[]" not in names
    assert names.count("mask") == 1
    obj = form_as_object(parts)
    properties = openapi["components"]["schemas"]["CreateImageEditRequest"]["properties"]
    assert set(obj) <= set(properties)
    schema_validator(openapi, "CreateImageEditRequest").validate(obj)
    assert obj["input_fidelity"] == "high"
    assert obj["n"] == 1
    assert "response_format" not in obj
    assert ("model" in obj) is (provider != "azure")
    image_part = next(
        p for p in parts if p.get_param("name", header="content-disposition") == "image"
    )
    assert image_part.get_filename() == "cat.png"
    assert image_part.get_content_type() == "image/png"
    assert image_part.get_payload(decode=True) == request.images[0].data


def test_several_images_are_repeated_image_brackets(openapi: dict[str, Any]) -> None:
    images = tuple(input_image(f"in{i}.png") for i in range(3))
    request = EditRequest(prompt="a gift basket", images=images)
    data, files = providers.edit_form(request, settings("openai"))
    assert all(isinstance(v, str) for v in data.values())
    parts = parse_multipart(data, files)
    image_parts = [
        p for p in parts if p.get_param("name", header="content-disposition") == "image[]"
    ]
    assert [p.get_filename() for p in image_parts] == ["in0.png", "in1.png", "in2.png"]
    assert [p.get_payload(decode=True) for p in image_parts] == [i.data for i in images]
    obj = form_as_object(parts)
    assert obj["image"] == ["<binary>"] * 3
    schema_validator(openapi, "CreateImageEditRequest").validate(obj)


def test_gateway_edit_form_carries_gateway_fields() -> None:
    request = EditRequest(prompt="p", images=(input_image(),), size="3:2", resolution="2K")
    data, _ = providers.edit_form(request, settings("gateway", gateway_response_format="url"))
    assert data["response_format"] == "url"
    assert data["aspect_ratio"] == "3:2"
    assert data["resolution"] == "2K"
    assert "size" not in data


# --- responses ---------------------------------------------------------------------------------


def test_images_body_parsing_is_tolerant() -> None:
    body = json.dumps(
        {
            "created": 1713833628,
            "data": [{"b64_json": "AAAA", "revised_prompt": "r", "future_field": 1}],
            "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
            "size": "2048x1152",
            "brand_new": {"x": [1, 2]},
        }
    ).encode()
    parsed = providers.parse_images_body(body)
    assert parsed.created == 1713833628
    assert parsed.data[0].b64_json == "AAAA"
    assert parsed.data[0].revised_prompt == "r"
    assert parsed.usage == {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    no_created = providers.parse_images_body(b'{"data": [{"url": "https://cdn/x.png"}]}')
    assert no_created.created is None
    assert no_created.data[0].url == "https://cdn/x.png"


def test_openapi_example_response_parses(openapi: dict[str, Any]) -> None:
    example = json.loads(openapi["components"]["schemas"]["ImagesResponse"]["x-oaiMeta"]["example"])
    schema_validator(openapi, "ImagesResponse").validate(example)
    parsed = providers.parse_images_body(json.dumps(example).encode())
    assert parsed.created == example["created"]
    assert parsed.data[0].b64_json == "..."


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"created": 1, "data": [{"b64_json": "AAA', "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"created": 1}', "no images"),
        (b'{"created": 1, "data": []}', "no images"),
        (b'{"created": 1, "data": [{"revised_prompt": "x"}]}', "neither"),
        (b'{"created": "yesterday", "data": [{"b64_json": "AA"}]}', "does not look like"),
    ],
)
def test_unusable_bodies_raise_value_error(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        providers.parse_images_body(body)


# --- errors ------------------------------------------------------------------------------------


def error_body(code: str | None, message: str = "boom", **extra: Any) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": extra.pop("type", None),
                "param": None,
                "code": code,
            }
        }
        | extra
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected", "retryable"),
    [
        (
            400,
            error_body("moderation_blocked", type="image_generation_user_error"),
            ModerationBlockedError,
            False,
        ),
        (400, error_body("contentFilter"), ModerationBlockedError, False),
        (400, error_body("content_policy_violation"), ModerationBlockedError, False),
        (400, error_body("invalid_value"), InvalidRequestError, False),
        (400, error_body("unknown_parameter"), InvalidRequestError, False),
        (404, error_body("model_not_found"), InvalidRequestError, False),
        (422, b'{"detail": "bad"}', InvalidRequestError, False),
        (401, error_body("invalid_api_key"), AuthenticationError, False),
        (403, error_body(None, type="permission_error"), AuthenticationError, False),
        (
            429,
            error_body("insufficient_quota", type="insufficient_quota"),
            QuotaExceededError,
            False,
        ),
        (429, error_body("rate_limit_exceeded"), RateLimitError, True),
        (402, error_body("INSUFFICIENT_BALANCE"), QuotaExceededError, False),
        (408, b"", ProviderError, True),
        (409, error_body("conflict"), ProviderError, True),
        (500, error_body("server_error"), ProviderError, True),
        (502, error_body("ALL_PROVIDERS_EXHAUSTED"), ProviderError, True),
        (503, b"<html>Service Unavailable</html>", ProviderError, True),
        (524, b"<html>A timeout occurred</html>", ProviderError, True),
    ],
)
def test_error_mapping_and_retry_verdicts(
    status: int, body: bytes, expected: type[GPTImageError], retryable: bool
) -> None:
    headers = {"x-request-id": "req_123"}
    error = providers.error_from_response(status, headers, body, "openai")
    assert type(error) is expected
    assert error.status_code == status
    assert error.request_id == "req_123"
    assert error.provider == "openai"
    assert error.message
    assert providers.is_retryable_error(error, headers) is retryable


def test_error_fields_come_from_the_body() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "Invalid size '1000x1000'.",
                "type": "invalid_request_error",
                "param": "size",
                "code": "invalid_value",
            }
        }
    ).encode()
    error = providers.error_from_response(400, {}, body, "openai")
    assert isinstance(error, InvalidRequestError)
    assert error.code == "invalid_value"
    assert error.param == "size"
    assert error.field == "size"
    assert str(error) == "Invalid size '1000x1000'. (status=400, code=invalid_value, param=size)"


def test_non_json_error_body_gives_a_short_snippet() -> None:
    body = b"<html>" + b"x" * 5000 + b"</html>"
    error = providers.error_from_response(524, {}, body, "gateway")
    assert error.message.startswith("HTTP 524 from gateway: <html>xxx")
    assert len(error.message) < 400


def test_gateway_request_id_header_wins() -> None:
    headers = {"X-Lumenfall-Request-Id": "lf_1", "x-request-id": "req_2"}
    assert providers.request_id_from(headers, "gateway") == "lf_1"
    assert providers.request_id_from(headers, "openai") == "req_2"
    assert providers.request_id_from({"apim-request-id": "az_3"}, "azure") == "az_3"
    assert providers.request_id_from({}, "openai") is None


def test_x_should_retry_overrides_the_status_rule() -> None:
    server_error = providers.error_from_response(500, {}, b"", "openai")
    assert providers.is_retryable_error(server_error, {"x-should-retry": "false"}) is False
    bad_request = providers.error_from_response(400, {}, error_body("whatever"), "openai")
    assert providers.is_retryable_error(bad_request, {"X-Should-Retry": "true"}) is True
    assert providers.is_retryable_error(bad_request, {"x-should-retry": "maybe"}) is False


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "moderation_blocked"),
        (401, "invalid_api_key"),
        (429, "insufficient_quota"),
        (402, None),
    ],
)
def test_final_errors_stay_final_even_when_the_server_says_retry(
    status: int, code: str | None
) -> None:
    headers = {"x-should-retry": "true"}
    error = providers.error_from_response(status, headers, error_body(code), "openai")
    assert providers.is_retryable_error(error, headers) is False


# --- retry-after -------------------------------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert providers.parse_retry_after({"retry-after-ms": "2500", "retry-after": "9"}) == 2.5


def test_retry_after_seconds_and_http_date() -> None:
    assert providers.parse_retry_after({"Retry-After": "7"}) == 7.0
    assert providers.parse_retry_after({"retry-after": "1.5"}) == 1.5
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert providers.parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert providers.parse_retry_after({"retry-after": past}, now=now) == 0.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "soon"},
        {"retry-after-ms": "nan", "retry-after": ""},
        {"retry-after": "inf"},
    ],
)
def test_unusable_retry_after_is_none(headers: dict[str, str]) -> None:
    assert providers.parse_retry_after(headers) is None


def test_negative_retry_after_is_zero() -> None:
    assert providers.parse_retry_after({"retry-after": "-4"}) == 0.0
    assert providers.parse_retry_after({"retry-after-ms": "bad", "retry-after": "3"}) == 3.0


# --- download URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("emulator.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost.example.com", False),
        ("128.0.0.1", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert providers.is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("url", "insecure", "ok"),
    [
        ("https://cdn.example.com/a.png", False, True),
        ("http://cdn.example.com/a.png", False, False),
        ("http://cdn.example.com/a.png", True, True),
        ("http://127.0.0.1:8089/_emulator/files/1", False, True),
        ("http://[::1]:8089/f", False, True),
        ("http://emulator.localhost/_emulator/files/1", False, True),
        ("file:///etc/passwd", True, False),
        ("ftp://cdn.example.com/a.png", True, False),
        ("https:///nohost", False, False),
    ],
)
def test_check_download_url(url: str, insecure: bool, ok: bool) -> None:
    if ok:
        providers.check_download_url(url, allow_insecure=insecure)
    else:
        with pytest.raises(ProviderError):
            providers.check_download_url(url, allow_insecure=insecure)
