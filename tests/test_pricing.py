from __future__ import annotations

import io
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.models import MODEL_SPECS, EditRequest, GenerateRequest, InputImage, Usage
from dagster_gptimage.pricing import (
    DEFAULT_PRICES,
    ModelPrices,
    PriceTable,
    cost_of_usage,
    estimate_cost,
    estimate_input_tokens,
    estimate_output_tokens,
    estimate_usage,
    output_dimensions,
)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_default_prices() -> None:
    assert DEFAULT_PRICES["gpt-image-2"] == ModelPrices(
        text_input=5.00,
        cached_text_input=1.25,
        image_input=8.00,
        cached_image_input=2.00,
        text_output=10.00,
        image_output=30.00,
    )
    assert DEFAULT_PRICES["gpt-image-2-2026-04-21"] == DEFAULT_PRICES["gpt-image-2"]
    assert DEFAULT_PRICES["gpt-image-1.5"].image_output == 32.00
    assert DEFAULT_PRICES["gpt-image-1"].image_input == 10.00
    assert DEFAULT_PRICES["gpt-image-1"].text_output == 10.00
    assert DEFAULT_PRICES["gpt-image-1"].image_output == 40.00
    mini = DEFAULT_PRICES["gpt-image-1-mini"]
    assert (mini.text_input, mini.cached_text_input, mini.image_input) == (2.00, 0.20, 2.50)
    assert (mini.cached_image_input, mini.text_output, mini.image_output) == (0.25, 8.00, 8.00)


def test_every_known_model_has_a_price() -> None:
    assert set(MODEL_SPECS) <= set(DEFAULT_PRICES)


def test_cost_of_usage_applies_the_table() -> None:
    usage = Usage(
        input_text_tokens=1_000,
        input_image_tokens=2_000,
        cached_text_tokens=400,
        cached_image_tokens=500,
        output_image_tokens=7_024,
        output_text_tokens=100,
    )
    # gpt-image-2, by hand: 600*5 + 400*1.25 + 1500*8 + 500*2 + 100*10 + 7024*30 micro-USD
    expected = (3_000 + 500 + 12_000 + 1_000 + 1_000 + 210_720) / 1_000_000
    assert cost_of_usage(usage, DEFAULT_PRICES["gpt-image-2"]) == pytest.approx(expected)
    # gpt-image-1-mini: 600*2 + 400*0.2 + 1500*2.5 + 500*0.25 + 100*8 + 7024*8
    expected_mini = (1_200 + 80 + 3_750 + 125 + 800 + 56_192) / 1_000_000
    assert cost_of_usage(usage, DEFAULT_PRICES["gpt-image-1-mini"]) == pytest.approx(expected_mini)


def test_cost_of_nothing_is_zero() -> None:
    assert cost_of_usage(Usage(), DEFAULT_PRICES["gpt-image-2"]) == 0.0


def test_cached_counts_above_input_are_capped() -> None:
    usage = Usage(input_text_tokens=10, cached_text_tokens=50)
    assert cost_of_usage(usage, DEFAULT_PRICES["gpt-image-2"]) == pytest.approx(10 * 1.25 / 1e6)


def test_cost_from_api_usage() -> None:
    usage = Usage.from_api(
        {
            "input_tokens": 50,
            "output_tokens": 1756,
            "total_tokens": 1806,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
        }
    )
    assert cost_of_usage(usage, DEFAULT_PRICES["gpt-image-2"]) == pytest.approx(
        (10 * 5 + 40 * 8 + 1756 * 30) / 1e6
    )


def test_partial_override_merges_over_defaults() -> None:
    table = PriceTable({"gpt-image-2": {"image_output": 15.0}})
    prices = table.for_model("gpt-image-2")
    assert prices.image_output == 15.0
    assert prices.text_input == 5.00
    assert table.for_model("gpt-image-1") == DEFAULT_PRICES["gpt-image-1"]
    usage = Usage(output_image_tokens=1_000_000)
    assert cost_of_usage(usage, prices) == pytest.approx(15.0)
    assert PriceTable().for_model("gpt-image-2").image_output == 30.0, "defaults untouched"


def test_full_override_and_new_model() -> None:
    custom = ModelPrices(
        text_input=1,
        cached_text_input=1,
        image_input=1,
        cached_image_input=1,
        text_output=1,
        image_output=1,
    )
    table = PriceTable({"my-image-model": custom, "gpt-image-1": custom})
    assert table["my-image-model"] == custom
    assert table.for_model("gpt-image-1") == custom
    assert "my-image-model" in table
    assert len(table) == len(DEFAULT_PRICES) + 1


def test_new_model_needs_every_price() -> None:
    with pytest.raises(InvalidRequestError, match="image_output"):
        PriceTable({"my-image-model": {"text_input": 1.0}})


def test_unknown_price_field_and_bad_values_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="image_outptu"):
        PriceTable({"gpt-image-2": {"image_outptu": 1.0}})
    with pytest.raises(InvalidRequestError, match="not a number"):
        PriceTable({"gpt-image-2": {"image_output": "cheap"}})  # type: ignore[dict-item]
    with pytest.raises(InvalidRequestError, match="negative"):
        PriceTable({"gpt-image-2": {"image_output": -1.0}})


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(InvalidRequestError) as info:
        PriceTable().for_model("dall-e-3")
    assert info.value.field == "model"
    assert "gpt-image-1-mini" in str(info.value)
    assert set(info.value.accepted or ()) == set(DEFAULT_PRICES)


def test_price_table_is_a_read_only_mapping() -> None:
    table = PriceTable()
    assert dict(table) == dict(DEFAULT_PRICES)
    with pytest.raises(TypeError):
        table["gpt-image-2"] = DEFAULT_PRICES["gpt-image-1"]  # type: ignore[index]
    assert PriceTable(table).as_dict() == table.as_dict()
    assert table.as_dict()["gpt-image-2"]["image_output"] == 30.0


# --- estimates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quality", "published"), [("low", 0.006), ("medium", 0.053), ("high", 0.211)]
)
def test_gpt_image_2_estimates_match_published_examples(quality: Any, published: float) -> None:
    request = GenerateRequest(
        prompt="A cute baby sea otter " * 5, size="1024x1024", quality=quality
    )
    estimate = estimate_cost(request)
    assert abs(estimate - published) <= 0.2 * published, estimate


def test_output_token_table() -> None:
    assert estimate_output_tokens("gpt-image-2", 1024, 1024, "low") == 196
    assert estimate_output_tokens("gpt-image-2", 1024, 1024, "medium") == 1756
    assert estimate_output_tokens("gpt-image-2", 1024, 1024, "high") == 7024
    assert estimate_output_tokens("gpt-image-2", 1024, 1024, "auto") == 7024
    assert abs(estimate_output_tokens("gpt-image-2", 3840, 2160, "high") - 13_342) < 100
    assert estimate_output_tokens("gpt-image-1", 1024, 1024, "high") == 4160
    assert estimate_output_tokens("gpt-image-1-mini", 1536, 1024, "low") == 408
    assert estimate_output_tokens("gpt-image-1.5", 1024, 1536, "medium") == 1584
    assert estimate_output_tokens("gpt-image-1", 1536, 1024, "high") == 6240


@given(
    st.sampled_from(sorted(MODEL_SPECS)),
    st.integers(512, 3840),
    st.integers(512, 3840),
    st.integers(1, 200),
)
def test_output_tokens_grow_with_pixels_and_quality(
    model: str, width: int, height: int, extra: int
) -> None:
    low = estimate_output_tokens(model, width, height, "low")
    medium = estimate_output_tokens(model, width, height, "medium")
    high = estimate_output_tokens(model, width, height, "high")
    assert 0 < low < medium < high
    assert estimate_output_tokens(model, width + extra, height, "high") >= high


def test_input_token_estimate() -> None:
    assert estimate_input_tokens("") == (0, 0)
    assert estimate_input_tokens("abcde") == (2, 0)
    # 1024x1024: 4 tiles; 1536x1024: 6 tiles; 100x100: 1 tile
    assert estimate_input_tokens("", [(1024, 1024)]) == (0, 65 + 129 * 4)
    assert estimate_input_tokens("", [(1536, 1024), (100, 100)]) == (0, 65 + 129 * 6 + 65 + 129)


def test_output_dimensions() -> None:
    assert output_dimensions(GenerateRequest(prompt="x")) == (1536, 1024)
    assert output_dimensions(GenerateRequest(prompt="x", size="2048x1152")) == (2048, 1152)
    assert output_dimensions(GenerateRequest(prompt="x", size="16:9")) == (1024, 576)
    assert output_dimensions(GenerateRequest(prompt="x", size="9:16", resolution="4K")) == (
        2160,
        3840,
    )
    assert output_dimensions(GenerateRequest(prompt="x", aspect_ratio="1:1", resolution="2K")) == (
        2048,
        2048,
    )


def test_estimate_usage_for_generation() -> None:
    request = GenerateRequest(prompt="x" * 40, size="1024x1024", quality="medium", n=3)
    usage = estimate_usage(request)
    assert usage.input_text_tokens == 10
    assert usage.input_image_tokens == 0
    assert usage.output_image_tokens == 3 * 1756
    assert usage.output_text_tokens == 0


def test_estimate_usage_for_edit_counts_input_images() -> None:
    image = InputImage(data=_png(1024, 1024), filename="a.png", content_type="image/png")
    request = EditRequest(prompt="x" * 8, images=(image, image), size="1024x1024", quality="low")
    usage = estimate_usage(request)
    assert usage.input_text_tokens == 2
    assert usage.input_image_tokens == 2 * (65 + 129 * 4)
    assert usage.output_image_tokens == 196


def test_estimate_cost_multiplies_by_n() -> None:
    one = GenerateRequest(prompt="a red bicycle", size="1024x1536", quality="high")
    four = one.model_copy(update={"n": 4})
    assert estimate_cost(four) == pytest.approx(4 * estimate_cost(one))
    assert estimate_cost(four) >= cost_of_usage(estimate_usage(four), DEFAULT_PRICES["gpt-image-2"])


def test_estimate_cost_uses_the_price_table() -> None:
    request = GenerateRequest(prompt="x", size="1024x1024", quality="high")
    cheap = PriceTable({"gpt-image-2": {"image_output": 3.0, "text_input": 0.0}})
    assert estimate_cost(request, cheap) == pytest.approx(7024 * 3.0 / 1e6)
    assert estimate_cost(request) == pytest.approx((1 * 5 + 7024 * 30) / 1e6)


def test_estimate_cost_for_unpriced_model_errors() -> None:
    request = GenerateRequest(prompt="x").model_copy(update={"model": "future-model"})
    with pytest.raises(InvalidRequestError, match="gpt-image-2"):
        estimate_cost(request)


def test_auto_is_estimated_at_least_as_high_as_any_preset() -> None:
    auto = estimate_cost(GenerateRequest(prompt="x"))
    for size in ("1024x1024", "1536x1024", "1024x1536"):
        for quality in ("low", "medium", "high"):
            fixed = GenerateRequest(prompt="x", size=size, quality=quality)  # type: ignore[arg-type]
            assert auto >= estimate_cost(fixed) or math.isclose(auto, estimate_cost(fixed))


# --- batch rates ---------------------------------------------------------------------------------


def test_batch_rate_is_half_by_default_and_overridable_per_model() -> None:
    usage = Usage(input_text_tokens=1_000, cached_text_tokens=200, output_image_tokens=10_000)
    prices = DEFAULT_PRICES["gpt-image-2"]
    assert prices.batch_discount == 0.5
    assert cost_of_usage(usage, prices, batch=True) == pytest.approx(
        cost_of_usage(usage, prices) / 2
    )
    table = PriceTable({"gpt-image-1": {"batch_discount": 0.4}})
    custom = table.for_model("gpt-image-1")
    assert cost_of_usage(usage, custom, batch=True) == pytest.approx(
        cost_of_usage(usage, custom) * 0.4
    )
    assert custom.for_batch().image_output == pytest.approx(40.0 * 0.4)
    assert table.for_model("gpt-image-2").batch_discount == 0.5
    with pytest.raises(InvalidRequestError, match="batch_discount"):
        PriceTable({"gpt-image-2": {"batch_discount": 1.5}})


def test_batch_estimate_is_half_the_standard_estimate() -> None:
    request = GenerateRequest(prompt="A lighthouse", size="1024x1024", quality="high")
    assert estimate_cost(request, batch=True) == pytest.approx(estimate_cost(request) / 2)


def test_preflight_estimate_of_assets_matches_the_runs_own_estimates() -> None:
    from dagster_gptimage import (
        GPTImageClient,
        PromptTable,
        estimate_asset_cost,
        image_edit_asset,
        image_generation_asset,
    )

    table = PromptTable.from_records(
        [
            {"key": "a", "prompt": "a kite", "quality": "high"},
            {"key": "b", "prompt": "a boat"},
            {"key": "c", "prompt": "a tree", "size": "1024x1536"},
        ]
    )
    base = image_generation_asset(name="pre_base", prompts=table, size="1024x1024", quality="low")
    edit = image_edit_asset(name="pre_edit", sources=[base], prompt="ink it", size="1024x1024")
    estimate = estimate_asset_cost([base, edit])
    client = GPTImageClient(provider="emulator")
    expected = sum(
        client.estimate_cost(
            client.build_generate(
                row.prompt, **{"size": "1024x1024", "quality": "low", **row.params}
            )
        )
        for row in table
    )
    assert estimate.by_asset["pre_base"] == (3, pytest.approx(expected))
    images, cost = estimate.by_asset["pre_edit"]
    assert images == 3
    assert cost > 0
    assert estimate.images == 6
    assert estimate.cost_usd == pytest.approx(expected + cost)
    assert estimate_asset_cost([base], partition_keys=["a"]).images == 1
