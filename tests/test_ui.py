"""The Dagster UI, seen as a user sees it.

``dagster dev`` on loopback, the example's image assets materialized through the UI's GraphQL API,
their pages opened in headless Chromium: the partition view must show each image's cost, latency,
tokens, path and a preview that actually loads. The flow lives in ``scripts/ui_screenshots.py``
(which also regenerates ``docs/screenshots``); screenshots taken here go to a tmp folder.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

import pytest
from _dev_support import load_ui
from PIL import Image

from dagster_gptimage._metadata import INLINE_MARKDOWN_LIMIT, preview_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]


ui = load_ui()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _preview_size(markdown: str) -> tuple[int, int]:
    payload = markdown.split(";base64,", 1)[1].rstrip(")")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        return image.size


def test_smooth_image_keeps_full_preview_size() -> None:
    ramp = Image.linear_gradient("L").resize((1024, 1024))
    image = Image.merge("RGB", (ramp, ramp.rotate(90), Image.new("L", ramp.size, 128)))
    markdown = preview_markdown(_png(image)).value
    assert markdown.startswith("![preview](data:image/")
    assert len(markdown) < INLINE_MARKDOWN_LIMIT
    assert max(_preview_size(markdown)) == 128


def test_detailed_image_shrinks_its_preview_to_render_inline() -> None:
    """Photos compress worse than the emulator's gradients: at 128 px their Markdown passes the
    UI's inline limit and would hide behind "[Show Markdown]"; the preview shrinks instead."""
    noise = Image.frombytes("RGB", (1024, 768), random.Random(7).randbytes(1024 * 768 * 3))
    markdown = preview_markdown(_png(noise)).value
    assert len(markdown) < INLINE_MARKDOWN_LIMIT
    width, height = _preview_size(markdown)
    assert 32 <= max(width, height) < 128
    assert abs(width / height - 1024 / 768) < 0.1


def test_js_number_matches_javascript_formatting() -> None:
    assert ui.js_number(0.0) == "0"
    assert ui.js_number(0.005435) == "0.005435"
    assert ui.js_number(1e-7) == "1e-7"
    assert ui.js_number(2.0) == "2"


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = ui.browser_available()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    tmp = tmp_path_factory.mktemp("ui")
    return ui.tour(home=tmp / "dagster_home", workdir=tmp, screenshots=tmp / "screenshots")


def _assert_shows_record(view: Any, sidecar: dict[str, Any]) -> None:
    for key, value in ui.expected_texts(sidecar).items():
        assert key in view.text, f"{key} label missing from {view.url}"
        assert value in view.text, f"{key}={value!r} not shown on {view.url}"


def _assert_preview_loaded(view: Any) -> None:
    assert view.preview_images, f"no data: image on {view.url}"
    preview = view.preview_images[0]
    assert preview["alt"] == "preview"
    assert preview["complete"]
    assert preview["naturalWidth"] > 0
    assert preview["naturalHeight"] > 0
    assert preview["width"] > 0, "preview not displayed inline"
    assert preview["height"] > 0, "preview not displayed inline"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_partition_view_shows_cost_latency_tokens_path_and_preview(tour: Any) -> None:
    generation = tour.generation
    view = tour.views["partition"]
    sidecar = tour.sidecars["/".join(generation.path)]
    assert sidecar["partition_key"] == generation.partition_keys[0]
    assert not sidecar["sources"]
    _assert_shows_record(view, sidecar)
    _assert_preview_loaded(view)
    assert view.screenshot is not None
    assert view.screenshot.stat().st_size > 10_000
    assert REPO_ROOT / "docs" not in view.screenshot.parents


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_edit_partition_view_shows_its_sources(tour: Any) -> None:
    if tour.edit is None:
        pytest.skip("the workspace has no edit of the generation asset")
    view = tour.views["edit_partition"]
    sidecar = tour.sidecars["/".join(tour.edit.path)]
    assert [source["asset_key"] for source in sidecar["sources"]] == [list(tour.generation.path)]
    _assert_shows_record(view, sidecar)
    _assert_preview_loaded(view)
    assert "sources" in view.text


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_overview_shows_latest_materialization_with_preview(tour: Any) -> None:
    view = tour.views["overview"]
    assert "cost_usd" in view.text
    assert "latency_s" in view.text
    _assert_preview_loaded(view)
    assert all(run_id for run_id in tour.runs.values())
    lineage = tour.views["lineage"]
    assert lineage.screenshot is not None
    assert tour.generation.path[-1] in lineage.text
    if tour.edit is not None:
        assert tour.edit.path[-1] in lineage.text
