from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from PIL import Image

from dagster_gptimage.fingerprint import request_fingerprint
from dagster_gptimage.models import EditRequest, GenerateRequest, ImageParams, InputImage


def _image(color: tuple[int, int, int]) -> InputImage:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(out, format="PNG")
    return InputImage(data=out.getvalue(), filename="in.png", content_type="image/png")


RED, GREEN, BLUE = _image((255, 0, 0)), _image((0, 255, 0)), _image((0, 0, 255))

BASE = GenerateRequest(prompt="a lighthouse at dusk")

# One changed value per parameter: every ImageParams field must move the fingerprint.
CHANGES: dict[str, Any] = {
    "model": "gpt-image-1",
    "size": "1024x1024",
    "quality": "high",
    "n": 2,
    "output_format": "webp",
    "output_compression": 80,
    "background": "opaque",
    "moderation": "low",
    "user": "user-1",
    "input_fidelity": "high",
    "aspect_ratio": "16:9",
    "resolution": "2K",
}


def test_every_param_is_covered_by_the_test() -> None:
    assert set(CHANGES) == set(ImageParams.model_fields)


def test_fingerprint_is_a_sha256_hex_and_deterministic() -> None:
    fingerprint = request_fingerprint(BASE, emulated=False)
    assert len(fingerprint) == 64
    int(fingerprint, 16)
    assert request_fingerprint(GenerateRequest(prompt="a lighthouse at dusk"), emulated=False) == (
        fingerprint
    )


def test_known_value_is_stable_across_releases() -> None:
    """Changing the canonical form invalidates every user's image cache: bump the version knowingly."""
    canonical = (
        '{"emulated":false,"kind":"generate","params":{"aspect_ratio":null,"background":null,'
        '"input_fidelity":null,"model":"gpt-image-2","moderation":null,"n":1,'
        '"output_compression":null,"output_format":"png","quality":"auto","resolution":null,'
        '"size":"auto","user":null},"prompt":"a lighthouse at dusk","version":"1"}'
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    assert expected == "c799112bddf47fdb3cdf4a623395a8ffadcfe671355fb017248e3005bd76051f"
    assert request_fingerprint(BASE, emulated=False) == expected


@pytest.mark.parametrize(("field", "value"), sorted(CHANGES.items()))
def test_every_parameter_changes_the_fingerprint(field: str, value: Any) -> None:
    changed = BASE.model_copy(update={field: value})
    assert request_fingerprint(changed, emulated=False) != request_fingerprint(BASE, emulated=False)


def test_prompt_changes_the_fingerprint() -> None:
    for prompt in ("a lighthouse at dawn", "a lighthouse at dusk ", "A lighthouse at dusk"):
        other = GenerateRequest(prompt=prompt)
        assert request_fingerprint(other, emulated=False) != request_fingerprint(
            BASE, emulated=False
        )


def test_emulated_changes_the_fingerprint() -> None:
    assert request_fingerprint(BASE, emulated=True) != request_fingerprint(BASE, emulated=False)


def test_explicit_defaults_equal_implicit_defaults() -> None:
    explicit = GenerateRequest(
        prompt="a lighthouse at dusk", model="gpt-image-2", size="auto", quality="auto", n=1
    )
    assert request_fingerprint(explicit, emulated=False) == request_fingerprint(
        BASE, emulated=False
    )


def test_insensitive_to_dict_ordering() -> None:
    fields = {"prompt": "p", "size": "1024x1024", "quality": "low", "n": 2, "user": "u"}
    forward = GenerateRequest.model_validate(fields)
    backward = GenerateRequest.model_validate(dict(reversed(list(fields.items()))))
    assert request_fingerprint(forward, emulated=False) == request_fingerprint(
        backward, emulated=False
    )


def test_generate_and_edit_differ() -> None:
    edit = EditRequest(prompt=BASE.prompt, images=(RED,))
    assert request_fingerprint(edit, emulated=False) != request_fingerprint(BASE, emulated=False)


def test_edit_input_bytes_and_order_matter() -> None:
    def fp(images: tuple[InputImage, ...], mask: InputImage | None = None) -> str:
        return request_fingerprint(
            EditRequest(prompt="p", images=images, mask=mask), emulated=False
        )

    assert fp((RED,)) == fp((_image((255, 0, 0)),))
    assert fp((RED,)) != fp((GREEN,))
    assert fp((RED, GREEN)) != fp((GREEN, RED))
    assert fp((RED, GREEN)) != fp((RED, GREEN, BLUE))
    assert fp((RED,)) != fp((RED,), mask=BLUE)
    assert fp((RED,), mask=BLUE) != fp((RED,), mask=GREEN)


def test_filename_and_content_type_labels_do_not_matter() -> None:
    renamed = InputImage(data=RED.data, filename="other.png", content_type="image/png")
    first = EditRequest(prompt="p", images=(RED,))
    second = EditRequest(prompt="p", images=(renamed,))
    assert request_fingerprint(first, emulated=False) == request_fingerprint(second, emulated=False)


def test_unicode_and_surrogates_do_not_break_hashing() -> None:
    for prompt in ("猫と灯台 🐱", "lone surrogate \ud800"):
        assert len(request_fingerprint(GenerateRequest(prompt=prompt), emulated=False)) == 64


def test_no_revision_is_the_fingerprint_without_one() -> None:
    """Caches written before revisions existed stay valid: None adds nothing to the canonical form."""
    assert request_fingerprint(BASE, emulated=False, revision=None) == request_fingerprint(
        BASE, emulated=False
    )
    assert request_fingerprint(BASE, emulated=True, revision=None) == request_fingerprint(
        BASE, emulated=True
    )


def test_a_revision_changes_the_fingerprint() -> None:
    plain = request_fingerprint(BASE, emulated=False)
    revisions = ["1", "2", "v2", "", "01"]
    fingerprints = {request_fingerprint(BASE, emulated=False, revision=r) for r in revisions}
    assert len(fingerprints) == len(revisions), "every revision has its own fingerprint"
    assert plain not in fingerprints
    assert request_fingerprint(BASE, emulated=False, revision="2") == request_fingerprint(
        GenerateRequest(prompt="a lighthouse at dusk"), emulated=False, revision="2"
    )
    edit = EditRequest(prompt="p", images=(RED,))
    assert request_fingerprint(edit, emulated=False, revision="2") != request_fingerprint(
        edit, emulated=False
    )
