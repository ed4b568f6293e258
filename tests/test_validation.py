from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from dagster_gptimage.errors import InvalidImageError, InvalidRequestError
from dagster_gptimage.models import (
    MODEL_SPECS,
    PRESET_SIZES,
    EditRequest,
    GenerateRequest,
    ImageParams,
    InputImage,
    parse_size,
)
from dagster_gptimage.validation import (
    FREE_SIZE_MAX_PIXELS,
    FREE_SIZE_MAX_SIDE,
    FREE_SIZE_MIN_PIXELS,
    provider_spec,
    size_problems,
    validate_params,
    validate_prompt,
    validate_request,
)

PROVIDERS: list[Any] = ["openai", "azure", "gateway", "emulator", None]


def _image_bytes(
    width: int = 64, height: int = 64, *, mode: str = "RGB", fmt: str = "PNG", alpha: int = 255
) -> bytes:
    color: Any = (200, 100, 50, alpha) if mode == "RGBA" else (200, 100, 50)
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, format=fmt)
    return out.getvalue()


def _input(
    data: bytes | None = None, *, name: str = "in.png", ctype: str = "image/png"
) -> InputImage:
    return InputImage(
        data=data if data is not None else _image_bytes(), filename=name, content_type=ctype
    )


def _mask(width: int = 64, height: int = 64) -> InputImage:
    return _input(_image_bytes(width, height, mode="RGBA", alpha=0), name="mask.png")


def _gen(**kwargs: Any) -> GenerateRequest:
    kwargs.setdefault("prompt", "a lighthouse at dusk")
    return GenerateRequest(**kwargs)


def _edit(**kwargs: Any) -> EditRequest:
    kwargs.setdefault("prompt", "make it night")
    kwargs.setdefault("images", (_input(),))
    return EditRequest(**kwargs)


def _refused(request: Any, provider: Any = "openai") -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        validate_request(request, provider=provider)
    error = info.value
    assert error.field, "every refusal names its field"
    assert error.accepted, "every refusal says what is accepted"
    assert "Accepted:" in str(error)
    assert error.status_code is None
    return error


def _refused_field(request: Any, provider: Any) -> str | None:
    """The field a refusal names, None when accepted; any other exception propagates."""
    try:
        validate_request(request, provider=provider)
    except InvalidRequestError as error:
        return error.field
    return None


# --- accepted requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_defaults_are_valid_everywhere(provider: Any) -> None:
    validate_request(_gen(), provider=provider)
    validate_request(_edit(), provider=provider)


@pytest.mark.parametrize("model", sorted(MODEL_SPECS))
@pytest.mark.parametrize("size", ["auto", *PRESET_SIZES])
def test_presets_and_auto_are_valid_for_every_model(model: str, size: str) -> None:
    validate_request(_gen(model=model, size=size), provider="openai")


def test_a_full_valid_request() -> None:
    request = _gen(
        model="gpt-image-1",
        size="1536x1024",
        quality="high",
        n=4,
        output_format="webp",
        output_compression=80,
        background="transparent",
        moderation="low",
        user="user-1234",
    )
    validate_request(request, provider="openai")


# --- model & prompt --------------------------------------------------------------------------------


def test_unknown_model_lists_known_models() -> None:
    error = _refused(_gen(model="dall-e-3"))
    assert error.field == "model"
    assert error.value == "dall-e-3"
    assert tuple(error.accepted or ()) == tuple(MODEL_SPECS)
    assert "gpt-image-1-mini" in str(error)


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_refused(prompt: str) -> None:
    error = _refused(_gen(prompt=prompt))
    assert error.field == "prompt"
    assert "empty" in str(error)


def test_prompt_length_limit() -> None:
    validate_request(_gen(prompt="x" * 32_000), provider="openai")
    error = _refused(_gen(prompt="y" * 32_001))
    assert error.field == "prompt"
    assert "32,001" in str(error)
    assert "32,000" in str(error)
    assert len(str(error)) < 400, "the prompt itself is truncated in the message"


def test_non_text_prompt_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="prompt"):
        validate_prompt(42)


# --- n ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "n", "ok"),
    [
        ("openai", 10, True),
        ("openai", 11, False),
        ("openai", 0, False),
        ("openai", -1, False),
        ("azure", 10, True),
        ("emulator", 10, True),
        ("gateway", 1, True),
        ("gateway", 2, False),
        (None, 10, True),
        (None, 11, False),
    ],
)
def test_n_per_provider(provider: Any, n: int, ok: bool) -> None:
    request = _gen(n=n)
    if ok:
        validate_request(request, provider=provider)
    else:
        error = _refused(request, provider)
        assert error.field == "n"
        assert error.value == n


def test_gateway_n_message_explains() -> None:
    error = _refused(_gen(n=2), "gateway")
    assert "one image per request" in str(error)
    assert error.accepted == "1"


def test_bool_n_is_refused() -> None:
    error = _refused(_gen().model_copy(update={"n": True}))
    assert error.field == "n"


# --- size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", ["1536x864", "3840x2160", "2160x3840", "1024x1024", "768x2304", "2048x2048", "816x816"]
)
def test_gpt_image_2_free_sizes(size: str) -> None:
    validate_request(_gen(size=size), provider="openai")
    validate_request(_gen(model="gpt-image-2-2026-04-21", size=size), provider="azure")


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ("1000x1000", "multiples of 16"),
        ("4096x2048", "at most 3840"),
        ("3840x1024", "between 1:3 and 3:1"),
        ("800x800", "fewer than 655,360"),
        ("3840x2176", "more than 8,294,400"),
        ("3840x3840", "more than 8,294,400"),
    ],
)
def test_gpt_image_2_free_size_rules(size: str, reason: str) -> None:
    error = _refused(_gen(size=size))
    assert error.field == "size"
    assert error.value == size
    assert reason in str(error)
    assert "gpt-image-2" in str(error)


def test_free_size_message_lists_every_broken_rule() -> None:
    error = _refused(_gen(size="4000x1000"))
    text = str(error)
    assert "multiples of 16" in text
    assert "at most 3840" in text
    assert "between 1:3 and 3:1" in text


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1.5", "gpt-image-1-mini"])
def test_older_models_take_presets_only(model: str) -> None:
    error = _refused(_gen(model=model, size="1536x864"))
    assert error.field == "size"
    assert "1024x1536" in str(error)
    assert model in str(error)


@pytest.mark.parametrize("size", ["big", "1024", "1024*1024", "1024X1024", " 1024x1024", ""])
def test_unparseable_size(size: str) -> None:
    error = _refused(_gen(size=size))
    assert error.field == "size"
    assert error.value == size


def test_aspect_ratio_sizes_are_gateway_only() -> None:
    validate_request(_gen(size="16:9"), provider="gateway")
    validate_request(_gen(size="1:3"), provider=None)
    for provider in ("openai", "azure", "emulator"):
        error = _refused(_gen(size="16:9"), provider)
        assert error.field == "size"
        assert "gateway" in str(error)


@pytest.mark.parametrize("size", ["4:1", "1:4", "0:1", "16:", "a:b"])
def test_bad_aspect_ratio_sizes(size: str) -> None:
    error = _refused(_gen(size=size), "gateway")
    assert error.field == "size"


@given(
    st.integers(min_value=1, max_value=240).map(lambda k: k * 16),
    st.integers(min_value=1, max_value=240).map(lambda k: k * 16),
)
def test_every_accepted_free_size_renders_valid_dimensions(width: int, height: int) -> None:
    request = _gen(size=f"{width}x{height}")
    try:
        validate_request(request, provider="openai")
    except InvalidRequestError:
        assert size_problems(width, height)
        return
    parsed = parse_size(request.size)
    assert parsed == (width, height)
    assert width % 16 == 0
    assert height % 16 == 0
    assert max(width, height) <= FREE_SIZE_MAX_SIDE
    assert max(width, height) <= 3 * min(width, height)
    assert FREE_SIZE_MIN_PIXELS <= width * height <= FREE_SIZE_MAX_PIXELS
    Image.new("RGB", (width, height)).close()


@given(st.integers(min_value=-10, max_value=10**7), st.integers(min_value=-10, max_value=10**7))
def test_random_sizes_only_raise_invalid_request(width: int, height: int) -> None:
    for separator in ("x", ":"):
        request = _gen(size=f"{width}{separator}{height}")
        assert _refused_field(request, None) in (None, "size")


@given(st.text(max_size=30))
def test_random_size_text_only_raises_invalid_request(size: str) -> None:
    assume(size != "auto")
    for model in ("gpt-image-2", "gpt-image-1"):
        assert _refused_field(_gen(size=size, model=model), "gateway") in (None, "size")


# --- output format & compression -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "fmt", "ok"),
    [
        ("openai", "png", True),
        ("openai", "jpeg", True),
        ("openai", "webp", True),
        ("openai", "gif", False),
        ("openai", "avif", False),
        ("emulator", "webp", True),
        ("emulator", "gif", False),
        ("azure", "jpeg", True),
        ("azure", "webp", False),
        ("gateway", "gif", True),
        ("gateway", "avif", True),
        (None, "avif", True),
    ],
)
def test_output_format_per_provider(provider: Any, fmt: str, ok: bool) -> None:
    request = _gen(output_format=fmt)
    if ok:
        validate_request(request, provider=provider)
    else:
        error = _refused(request, provider)
        assert error.field == "output_format"
        assert "png" in tuple(error.accepted or ())


@pytest.mark.parametrize(
    ("fmt", "compression", "provider", "ok"),
    [
        ("jpeg", 0, "openai", True),
        ("webp", 100, "openai", True),
        ("avif", 50, "gateway", True),
        ("png", 50, "openai", False),
        ("gif", 50, "gateway", False),
        ("jpeg", 101, "openai", False),
        ("jpeg", -1, "openai", False),
    ],
)
def test_output_compression(fmt: str, compression: int, provider: str, ok: bool) -> None:
    request = _gen(output_format=fmt, output_compression=compression)
    if ok:
        validate_request(request, provider=provider)
    else:
        assert _refused(request, provider).field == "output_compression"


def test_compression_on_png_explains_lossy_only() -> None:
    assert "lossy" in str(_refused(_gen(output_compression=80)))


# --- background, input_fidelity --------------------------------------------------------------------


def test_transparent_background_rules() -> None:
    for model in ("gpt-image-2", "gpt-image-2-2026-04-21"):
        error = _refused(_gen(model=model, background="transparent"))
        assert error.field == "background"
        assert "gpt-image-1" in str(error)
    validate_request(_gen(model="gpt-image-1", background="transparent"), provider="openai")
    validate_request(
        _gen(model="gpt-image-1-mini", background="transparent", output_format="webp"),
        provider="openai",
    )
    error = _refused(_gen(model="gpt-image-1", background="transparent", output_format="jpeg"))
    assert error.field == "background"
    assert "png" in str(error)
    validate_request(_gen(background="opaque", output_format="jpeg"), provider="openai")


def test_input_fidelity_rules() -> None:
    error = _refused(_gen(model="gpt-image-1", input_fidelity="high"))
    assert error.field == "input_fidelity"
    assert "edits" in str(error)
    for model in ("gpt-image-1", "gpt-image-1.5"):
        validate_request(_edit(model=model, input_fidelity="high"), provider="openai")
    for model in ("gpt-image-2", "gpt-image-1-mini"):
        error = _refused(_edit(model=model, input_fidelity="low"))
        assert error.field == "input_fidelity"
        assert "gpt-image-1.5" in str(error)


# --- gateway-only fields ---------------------------------------------------------------------------


def test_aspect_ratio_and_resolution_are_gateway_only() -> None:
    validate_request(_gen(aspect_ratio="16:9", resolution="2K"), provider="gateway")
    validate_request(_gen(aspect_ratio="16:9", resolution="4K"), provider=None)
    for provider in ("openai", "azure", "emulator"):
        assert _refused(_gen(aspect_ratio="16:9"), provider).field == "aspect_ratio"
        assert _refused(_gen(resolution="1K"), provider).field == "resolution"


def test_aspect_ratio_conflicts() -> None:
    error = _refused(_gen(size="1024x1024", aspect_ratio="16:9"), "gateway")
    assert error.field == "aspect_ratio"
    error = _refused(_gen(size="16:9", aspect_ratio="4:3"), "gateway")
    assert error.field == "aspect_ratio"
    assert _refused(_gen(aspect_ratio="5:1"), "gateway").field == "aspect_ratio"
    assert _refused(_gen(aspect_ratio="wide"), "gateway").field == "aspect_ratio"


# --- values that bypassed pydantic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quality", "ultra"),
        ("background", "clear"),
        ("moderation", "off"),
        ("resolution", "8K"),
        ("output_format", "bmp"),
        ("size", 1024),
        ("user", 12),
        ("output_compression", "high"),
    ],
)
def test_values_smuggled_past_pydantic_are_still_refused(field: str, value: Any) -> None:
    request = _gen(output_format="jpeg").model_copy(update={field: value})
    assert _refused(request, None).field == field


def test_unknown_provider() -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_params(ImageParams(), provider="dalle-cloud", edit=False)
    assert info.value.field == "provider"
    assert "openai" in tuple(info.value.accepted or ())


def test_provider_none_is_the_union() -> None:
    union = provider_spec(None)
    assert union.max_n == 10
    assert union.max_input_images == 16
    assert union.aspect_ratio_sizes
    assert set(union.output_formats) == {"png", "jpeg", "webp", "gif", "avif"}


def test_validate_params_alone() -> None:
    validate_params(ImageParams(size="2048x1152"), provider="openai", edit=False)
    with pytest.raises(InvalidRequestError):
        validate_params(ImageParams(input_fidelity="high"), provider="openai", edit=False)


# --- edits: input images and mask ------------------------------------------------------------------


def test_edit_image_count_per_provider() -> None:
    error = _refused(_edit(images=()))
    assert error.field == "images"
    sixteen = tuple(_input() for _ in range(16))
    validate_request(_edit(images=sixteen), provider="openai")
    assert _refused(_edit(images=(*sixteen, _input()))).field == "images"
    assert "1 to 10" in str(_refused(_edit(images=sixteen[:11]), "gateway"))
    validate_request(_edit(images=sixteen[:10]), provider="gateway")


def test_edit_accepts_png_jpeg_webp() -> None:
    images = (
        _input(),
        _input(_image_bytes(fmt="JPEG"), name="b.jpg", ctype="image/jpeg"),
        _input(_image_bytes(fmt="WEBP"), name="c.webp", ctype="image/webp"),
    )
    validate_request(_edit(images=images), provider="openai")


def test_edit_refuses_gif_input() -> None:
    gif = _input(_image_bytes(fmt="GIF"), name="a.gif", ctype="image/gif")
    with pytest.raises(InvalidImageError) as info:
        validate_request(_edit(images=(_input(), gif)), provider="openai")
    assert info.value.field == "images[1]"
    assert "gif" in str(info.value)


def test_edit_refuses_corrupt_input_naming_it() -> None:
    corrupt = _input(_image_bytes(256, 256)[:-200])
    with pytest.raises(InvalidImageError) as info:
        validate_request(_edit(images=(_input(), corrupt)), provider="openai")
    assert info.value.field == "images[1]"


def test_edit_refuses_non_image_bytes() -> None:
    with pytest.raises(InvalidImageError) as info:
        validate_request(_edit(images=(_input(b"not an image at all"),)), provider="openai")
    assert info.value.field == "images[0]"


def test_edit_refuses_oversized_input_before_decoding() -> None:
    huge = _input(b"\0" * (50 * 2**20 + 1))
    error = _refused(_edit(images=(huge,)))
    assert error.field == "images[0]"
    assert "52,428,800" in str(error)


def test_edit_refuses_mislabelled_content_type() -> None:
    jpeg = _input(_image_bytes(fmt="JPEG"), name="b.png", ctype="image/png")
    error = _refused(_edit(images=(jpeg,)))
    assert error.field == "images[0].content_type"
    assert "image/jpeg" in str(error)


def test_mask_rules() -> None:
    validate_request(_edit(mask=_mask()), provider="openai")
    error = _refused(_edit(mask=_mask(32, 64)))
    assert error.field == "mask"
    assert "64x64" in str(error)
    no_alpha = _input(_image_bytes(), name="mask.png")
    with pytest.raises(InvalidImageError, match="alpha") as info:
        validate_request(_edit(mask=no_alpha), provider="openai")
    assert info.value.field == "mask"
    jpeg = _input(_image_bytes(fmt="JPEG"), name="mask.jpg", ctype="image/jpeg")
    with pytest.raises(InvalidImageError, match="PNG") as info:
        validate_request(_edit(mask=jpeg), provider="openai")
    assert info.value.field == "mask"
    huge = _input(b"\0" * (4 * 2**20 + 1), name="mask.png")
    assert _refused(_edit(mask=huge)).field == "mask"


def test_mask_is_checked_against_the_first_image() -> None:
    second = _input(_image_bytes(32, 32))
    validate_request(_edit(images=(_input(), second), mask=_mask()), provider="openai")
    assert _refused(_edit(images=(second, _input()), mask=_mask())).field == "mask"


def test_palette_mask_with_transparency_counts_as_alpha() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).convert("P").save(out, format="PNG", transparency=0)
    validate_request(_edit(mask=_input(out.getvalue(), name="mask.png")), provider="openai")
