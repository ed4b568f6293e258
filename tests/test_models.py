from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.models import (
    MODEL_SPECS,
    PRESET_SIZES,
    PROVIDER_SPECS,
    REQUEST_FIELDS,
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageParams,
    ImageResult,
    InputImage,
    Usage,
    parse_aspect_ratio,
    parse_size,
)


def _png(width: int = 8, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def _input(data: bytes | None = None) -> InputImage:
    return InputImage(data=data or _png(), filename="a.png", content_type="image/png")


def test_defaults() -> None:
    params = ImageParams()
    assert params.model == "gpt-image-2"
    assert params.size == "auto"
    assert params.quality == "auto"
    assert params.n == 1
    assert params.output_format == "png"
    for name in (
        "output_compression",
        "background",
        "moderation",
        "user",
        "input_fidelity",
        "aspect_ratio",
        "resolution",
    ):
        assert getattr(params, name) is None


def test_request_fields_are_exactly_the_params() -> None:
    assert set(REQUEST_FIELDS) == set(ImageParams.model_fields)
    assert len(REQUEST_FIELDS) == len(set(REQUEST_FIELDS))


def test_models_are_frozen() -> None:
    request = GenerateRequest(prompt="a cat")
    with pytest.raises(ValidationError):
        request.n = 2  # type: ignore[misc]
    assert hash(request) == hash(GenerateRequest(prompt="a cat"))


def test_requests_are_image_params() -> None:
    assert isinstance(GenerateRequest(prompt="x"), ImageParams)
    edit = EditRequest(prompt="x", images=(_input(),))
    assert isinstance(edit, ImageParams)
    assert edit.mask is None


def test_params_strips_prompt_and_images() -> None:
    request = GenerateRequest(prompt="x", size="1024x1024", n=2)
    params = request.params()
    assert type(params) is ImageParams
    assert params.size == "1024x1024"
    assert params.n == 2


def test_bad_literal_is_an_invalid_request_error_naming_field_and_accepted() -> None:
    with pytest.raises(InvalidRequestError) as info:
        GenerateRequest(prompt="x", quality="ultra")  # type: ignore[arg-type]
    error = info.value
    assert error.field == "quality"
    assert error.value == "ultra"
    assert "'low'" in str(error.accepted)
    assert "quality='ultra'" in str(error)
    assert "Accepted:" in str(error)
    assert isinstance(error.__cause__, ValidationError)


def test_unknown_field_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidRequestError) as info:
        GenerateRequest(prompt="x", stream=True)  # type: ignore[call-arg]
    assert info.value.field == "stream"
    assert "prompt" in tuple(info.value.accepted or ())
    assert "not a known field" in str(info.value)


def test_missing_prompt_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as info:
        GenerateRequest.model_validate({"size": "auto"})
    assert info.value.field == "prompt"
    assert "required" in str(info.value)


def test_wrong_type_n_is_refused_but_numeric_text_is_coerced() -> None:
    with pytest.raises(InvalidRequestError) as info:
        ImageParams(n="three")  # type: ignore[arg-type]
    assert info.value.field == "n"
    assert ImageParams(n="3").n == 3  # type: ignore[arg-type]


def test_edit_request_needs_input_images() -> None:
    with pytest.raises(InvalidRequestError) as info:
        EditRequest(prompt="x")  # type: ignore[call-arg]
    assert info.value.field == "images"


def test_parse_size() -> None:
    assert parse_size("auto") is None
    assert parse_size("1536x1024") == (1536, 1024)
    assert parse_size("16x3840") == (16, 3840)


@pytest.mark.parametrize(
    "size",
    [
        "",
        "1024",
        "1024X1024",
        "1024 x 1024",
        "0x1024",
        "01024x1024",
        "-16x16",
        "16:9",
        "\uff11\uff10x\uff11\uff10",
    ],
)
def test_parse_size_refuses_non_sizes(size: str) -> None:
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size(size)


def test_parse_aspect_ratio() -> None:
    assert parse_aspect_ratio("16:9") == (16, 9)
    for bad in ("16/9", "0:1", "16:", "auto", "1024x1024"):
        with pytest.raises(ValueError, match="W:H"):
            parse_aspect_ratio(bad)


@given(st.text(max_size=20))
def test_parse_size_only_raises_value_error(text: str) -> None:
    try:
        result = parse_size(text)
    except ValueError:
        return
    assert result is None or (result[0] > 0 and result[1] > 0)


def test_model_specs() -> None:
    assert set(MODEL_SPECS) == {
        "gpt-image-2",
        "gpt-image-2-2026-04-21",
        "gpt-image-1.5",
        "gpt-image-1",
        "gpt-image-1-mini",
    }
    for name in ("gpt-image-2", "gpt-image-2-2026-04-21"):
        spec = MODEL_SPECS[name]
        assert spec.free_size
        assert not spec.transparent_background
        assert not spec.input_fidelity
    for name in ("gpt-image-1.5", "gpt-image-1"):
        spec = MODEL_SPECS[name]
        assert not spec.free_size
        assert spec.transparent_background
        assert spec.input_fidelity
    mini = MODEL_SPECS["gpt-image-1-mini"]
    assert (mini.free_size, mini.transparent_background, mini.input_fidelity) == (
        False,
        True,
        False,
    )
    assert PRESET_SIZES == ("1024x1024", "1536x1024", "1024x1536")


def test_provider_specs() -> None:
    openai, azure = PROVIDER_SPECS["openai"], PROVIDER_SPECS["azure"]
    gateway, emulator = PROVIDER_SPECS["gateway"], PROVIDER_SPECS["emulator"]
    assert (openai.max_n, openai.output_formats, openai.max_input_images) == (
        10,
        ("png", "jpeg", "webp"),
        16,
    )
    assert azure.output_formats == ("png", "jpeg")
    assert not azure.sends_model
    assert openai.sends_model
    assert not openai.sends_response_format
    assert gateway.max_n == 1
    assert set(gateway.output_formats) == {"png", "jpeg", "webp", "gif", "avif"}
    assert gateway.max_input_images == 10
    assert gateway.aspect_ratio_sizes
    assert gateway.sends_response_format
    assert not openai.aspect_ratio_sizes
    assert openai.max_input_image_bytes == 50 * 2**20
    assert openai.max_mask_bytes == 4 * 2**20
    for field in ("max_n", "output_formats", "max_input_images", "aspect_ratio_sizes"):
        assert getattr(emulator, field) == getattr(openai, field)


def test_input_image_hash_and_repr_hide_bytes() -> None:
    data = _png()
    image = _input(data)
    import hashlib

    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert "PNG" not in repr(image)
    assert str(len(data)) in repr(image)
    assert image == _input(data)
    assert pickle.loads(pickle.dumps(image)) == image


def test_generated_image() -> None:
    image = GeneratedImage(data=b"\x89PNG-ish" * 100, format="png", width=16, height=16)
    assert len(image.sha256) == 64
    assert "\\x89" not in repr(image)
    assert "bytes=800" in repr(image)


def test_image_result() -> None:
    result = ImageResult(
        images=(GeneratedImage(data=b"x", format="png", width=1, height=1),),
        usage=Usage(output_image_tokens=10),
        cost_usd=0.1,
        unconfirmed_cost_usd=0.0,
        latency_s=1.0,
        attempts=1,
        possibly_billed_attempts=1,
        request_id="req_1",
        model="gpt-image-2",
        provider="openai",
    )
    assert result.created is None
    assert pickle.loads(pickle.dumps(result)) == result


# --- Usage -----------------------------------------------------------------------------------------


def test_usage_totals() -> None:
    usage = Usage(
        input_text_tokens=10,
        input_image_tokens=20,
        output_image_tokens=300,
        output_text_tokens=4,
    )
    assert usage.input_tokens == 30
    assert usage.output_tokens == 304
    assert usage.total_tokens == 334
    assert (usage + usage).total_tokens == 668


def test_usage_from_full_api_object() -> None:
    usage = Usage.from_api(
        {
            "input_tokens": 50,
            "output_tokens": 1800,
            "total_tokens": 1850,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
            "output_tokens_details": {"image_tokens": 1756, "text_tokens": 44},
        }
    )
    assert usage == Usage(
        input_text_tokens=10,
        input_image_tokens=40,
        output_image_tokens=1756,
        output_text_tokens=44,
    )


def test_usage_output_without_details_is_image_tokens() -> None:
    usage = Usage.from_api(
        {
            "input_tokens": 12,
            "output_tokens": 196,
            "total_tokens": 208,
            "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
        }
    )
    assert usage.output_image_tokens == 196
    assert usage.output_text_tokens == 0
    assert usage.input_text_tokens == 12


def test_usage_from_nothing_is_zero() -> None:
    assert Usage.from_api(None) == Usage()
    assert Usage.from_api({}) == Usage()
    assert Usage.from_api("garbage") == Usage()  # type: ignore[arg-type]


def test_usage_tolerates_unknown_and_malformed_fields() -> None:
    usage = Usage.from_api(
        {
            "input_tokens": "7",
            "output_tokens": None,
            "surprise": {"nested": [1, 2]},
            "input_tokens_details": "nope",
            "output_tokens_details": {"image_tokens": -5, "future": 1},
        }
    )
    assert usage.input_image_tokens == 7
    assert usage.output_image_tokens == 0
    assert usage.output_text_tokens == 0


def test_usage_partial_input_split_gives_the_rest_to_the_other_kind() -> None:
    usage = Usage.from_api({"input_tokens": 100, "input_tokens_details": {"text_tokens": 30}})
    assert (usage.input_text_tokens, usage.input_image_tokens) == (30, 70)
    usage = Usage.from_api({"input_tokens": 100, "input_tokens_details": {"image_tokens": 30}})
    assert (usage.input_text_tokens, usage.input_image_tokens) == (70, 30)


def test_usage_reads_cached_tokens() -> None:
    split = Usage.from_api(
        {
            "input_tokens": 100,
            "input_tokens_details": {
                "text_tokens": 60,
                "image_tokens": 40,
                "cached_tokens_details": {"text_tokens": 20, "image_tokens": 10},
            },
        }
    )
    assert (split.cached_text_tokens, split.cached_image_tokens) == (20, 10)
    unsplit = Usage.from_api(
        {
            "input_tokens": 100,
            "input_tokens_details": {"text_tokens": 60, "image_tokens": 40, "cached_tokens": 70},
        }
    )
    assert (unsplit.cached_text_tokens, unsplit.cached_image_tokens) == (60, 10)


def test_usage_model_ignores_extra_fields() -> None:
    assert Usage.model_validate({"input_text_tokens": 3, "foo": 1}).input_text_tokens == 3


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
_usage_keys = st.sampled_from(
    [
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "input_tokens_details",
        "output_tokens_details",
        "text_tokens",
        "image_tokens",
        "cached_tokens",
        "cached_tokens_details",
    ]
)


@given(st.dictionaries(_usage_keys, _json | st.dictionaries(_usage_keys, _json), max_size=6))
def test_usage_from_api_never_fails_and_never_goes_negative(usage_json: dict[str, Any]) -> None:
    usage = Usage.from_api(usage_json)
    for name in Usage.model_fields:
        assert getattr(usage, name) >= 0
    assert usage.cached_text_tokens <= usage.input_text_tokens
    assert usage.cached_image_tokens <= usage.input_image_tokens


def test_usage_from_the_openapi_example(reference_dir: Path) -> None:
    spec = json.loads((reference_dir / "openai-images-openapi.json").read_text())
    example = json.loads(spec["components"]["schemas"]["ImagesResponse"]["x-oaiMeta"]["example"])
    usage = Usage.from_api(example["usage"])
    assert usage.input_text_tokens == example["usage"]["input_tokens_details"]["text_tokens"]
    assert usage.input_image_tokens == example["usage"]["input_tokens_details"]["image_tokens"]
    assert usage.output_image_tokens == example["usage"]["output_tokens"]
    assert usage.total_tokens == example["usage"]["total_tokens"]


def test_request_parameters_are_declared_once() -> None:
    """Adding a field to ImageParams is the whole change: table columns, the factories' keyword
    arguments, the component's YAML fields and its edit steps all derive from it."""
    from dagster_gptimage.component import EditStep, GPTImageComponent
    from dagster_gptimage.models import (
        DEFAULT_FIELDS,
        REQUEST_FIELDS,
        GenerationDefaults,
        ImageParams,
        RequestDefaults,
    )

    assert tuple(ImageParams.model_fields) == REQUEST_FIELDS
    assert set(DEFAULT_FIELDS) == set(REQUEST_FIELDS) - {"model", "n"}
    assert set(RequestDefaults.model_fields) == set(DEFAULT_FIELDS)
    assert set(GenerationDefaults.model_fields) == set(DEFAULT_FIELDS) - {"input_fidelity"}
    yaml_fields = set(GPTImageComponent.model().model_fields)
    assert set(GenerationDefaults.model_fields) <= yaml_fields
    assert set(RequestDefaults.model_fields) <= set(EditStep.model().model_fields)
    for name in DEFAULT_FIELDS:
        assert RequestDefaults.model_fields[name].description == (
            ImageParams.model_fields[name].description
        )
