"""Batch input lines, custom ids, file splitting and result-line parsing (pure)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagster_gptimage import _batchfile as bf
from dagster_gptimage._providers import ProviderSettings
from dagster_gptimage.errors import InvalidRequestError, ModerationBlockedError, ProviderError
from dagster_gptimage.fingerprint import request_fingerprint
from dagster_gptimage.models import EditRequest, GenerateRequest, InputImage, Usage
from dagster_gptimage.pricing import DEFAULT_PRICES, cost_of_usage

OPENAI = ProviderSettings.create("openai", api_key="sk-test-BATCHFILE-0123456789")
FP = "a" * 64


def item(key: str, prompt: str = "A lighthouse", **params: object) -> bf.BatchItem:
    request = GenerateRequest(prompt=prompt, quality="low", size="1024x1024", **params)  # type: ignore[arg-type]
    return bf.BatchItem(key, request, request_fingerprint(request, emulated=False))


@given(st.text(max_size=600), st.text(alphabet="0123456789abcdef", min_size=1, max_size=64))
def test_custom_id_round_trips_any_key(key: str, fingerprint: str) -> None:
    custom_id = bf.encode_custom_id(key, fingerprint)
    decoded = bf.decode_custom_id(custom_id)
    assert decoded.fingerprint == fingerprint
    assert len(custom_id) <= 512
    assert decoded.partition_key in (key, None)
    assert decoded.key_sha256 == bf.decode_custom_id(bf.encode_custom_id(key, "f")).key_sha256


def test_long_keys_are_hashed_and_resolved_through_the_index() -> None:
    long_key = "région/" * 200
    items = [item(long_key), item("short|key with spaces"), item("")]
    index = bf.custom_id_index(items)
    decoded = bf.decode_custom_id(items[0].custom_id)
    assert decoded.partition_key is None
    assert index[items[0].custom_id].partition_key == long_key
    assert bf.decode_custom_id(items[1].custom_id).partition_key == "short|key with spaces"
    assert bf.decode_custom_id(items[2].custom_id).partition_key == ""
    with pytest.raises(ValueError, match="twice"):
        bf.custom_id_index([items[1], items[1]])


@pytest.mark.parametrize("custom_id", ["c1", "g1-abc", "g2-abc-kxyz", "g1-abc-q12", "g1-abc-k%%%"])
def test_foreign_custom_ids_are_refused(custom_id: str) -> None:
    with pytest.raises(ValueError):
        bf.decode_custom_id(custom_id)


def test_generation_and_edit_lines() -> None:
    generation = json.loads(bf.batch_line(item("k1", moderation="low"), OPENAI))
    assert generation["method"] == "POST"
    assert generation["url"] == "/v1/images/generations"
    assert generation["body"]["prompt"] == "A lighthouse"
    assert generation["body"]["moderation"] == "low"
    assert bf.decode_custom_id(generation["custom_id"]).partition_key == "k1"
    image = InputImage(data=b"\x89PNG fake", filename="a.png", content_type="image/png")
    edit_request = EditRequest(prompt="Watercolour", images=(image,), mask=image)
    edit = json.loads(bf.batch_line(bf.BatchItem("k2", edit_request, FP), OPENAI))
    assert edit["url"] == "/v1/images/edits"
    ref = edit["body"]["images"][0]["image_url"]
    assert base64.b64decode(ref.removeprefix("data:image/png;base64,")) == image.data
    assert edit["body"]["mask"]["image_url"] == ref
    gateway = ProviderSettings.create("gateway", api_key="sk-x")
    with pytest.raises(ValueError, match="OpenAI"):
        bf.batch_line(item("k"), gateway)


def test_files_split_by_lines_bytes_and_endpoint() -> None:
    image = InputImage(data=b"\x89PNG fake", filename="a.png", content_type="image/png")
    edits = [
        bf.BatchItem(f"e{i}", EditRequest(prompt=f"edit {i}", images=(image,)), FP)
        for i in range(3)
    ]
    generations = [item(f"g{i}", f"prompt {i}") for i in range(7)]
    files = list(bf.batch_files([*generations[:4], *edits, *generations[4:]], OPENAI, max_lines=3))
    by_endpoint = [(f.endpoint, f.lines) for f in files]
    assert by_endpoint == [
        ("/v1/images/generations", 3),
        ("/v1/images/edits", 3),
        ("/v1/images/generations", 3),
        ("/v1/images/generations", 1),
    ]
    for batch_file in files:
        assert batch_file.size == len(batch_file.content)
        assert batch_file.content.count(b"\n") == batch_file.lines
    line_size = len(bf.batch_line(generations[0], OPENAI))
    by_bytes = list(bf.batch_files(generations, OPENAI, max_bytes=line_size * 2 + 5))
    assert all(f.size <= line_size * 2 + 5 for f in by_bytes)
    assert sum(f.lines for f in by_bytes) == 7
    with pytest.raises(ValueError, match="more than an input file may hold"):
        list(bf.batch_files(generations, OPENAI, max_bytes=10))
    with pytest.raises(ValueError, match="twice"):
        list(bf.batch_files([generations[0], generations[0]], OPENAI))


def _line(custom_id: str, response: object, error: object = None) -> bytes:
    return json.dumps(
        {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": error}
    ).encode()


def test_success_lines_carry_images_and_usage_priced_at_batch_rate() -> None:
    payload = base64.b64encode(b"image-bytes").decode()
    usage = {
        "input_tokens": 10,
        "output_tokens": 1000,
        "total_tokens": 1010,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
    }
    body = {"created": 1, "data": [{"b64_json": payload}], "usage": usage}
    result = bf.parse_result_line(
        _line("c1", {"status_code": 200, "request_id": "req_1", "body": body})
    )
    assert isinstance(result, bf.LineSuccess)
    assert result.images() == [b"image-bytes"]
    assert result.usage == Usage(input_text_tokens=10, output_image_tokens=1000)
    prices = DEFAULT_PRICES["gpt-image-2"]
    assert result.cost(prices) == pytest.approx(cost_of_usage(result.usage, prices) / 2)
    assert result.request_id == "req_1"


@pytest.mark.parametrize(
    ("response", "error", "reason", "kind", "retryable"),
    [
        (
            {
                "status_code": 400,
                "request_id": "r",
                "body": {"error": {"message": "no", "code": "moderation_blocked"}},
            },
            None,
            "moderation",
            ModerationBlockedError,
            False,
        ),
        (
            {"status_code": 400, "body": {"error": {"message": "bad", "param": "size"}}},
            None,
            "invalid",
            InvalidRequestError,
            False,
        ),
        (
            {"status_code": 500, "body": {"error": {"message": "oops", "type": "server_error"}}},
            None,
            "provider error",
            ProviderError,
            True,
        ),
        (None, {"code": "batch_expired", "message": "late"}, "expired", ProviderError, True),
        (None, {"code": "batch_cancelled", "message": "stop"}, "cancelled", ProviderError, True),
        ({"status_code": 200, "body": {"data": []}}, None, "provider error", ProviderError, True),
    ],
)
def test_failure_lines_map_to_reasons(
    response: object, error: object, reason: str, kind: type, retryable: bool
) -> None:
    result = bf.parse_result_line(_line("c9", response, error))
    assert isinstance(result, bf.LineFailure)
    assert (result.reason, result.retryable) == (reason, retryable)
    assert isinstance(result.error, kind)
    assert result.billed is (response is not None and response.get("status_code") == 200)  # type: ignore[union-attr]


def test_garbage_lines_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        bf.parse_result_line(b"{truncated")
    with pytest.raises(ValueError, match="custom_id"):
        bf.parse_result_line(b'{"response": null}')
