"""The gallery in a real browser: headless Debian Chromium (Playwright) opens a gallery built from
emulator runs and served over HTTP, as a reviewer would. Thumbnails must load, search must filter,
an edit must lead to its source, prompts must stay text, and cards must render in chunks.

The flow lives in ``scripts/gallery_screenshot.py`` (which also regenerates
``docs/screenshots/gallery.png``); screenshots taken here go to a tmp folder.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from PIL import Image

from dagster_gptimage import ImageRecord, ImageStore, build_gallery

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]


def _load_script() -> ModuleType:
    name = "gallery_screenshot"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


shots = _load_script()


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    reason = shots.browser_available()
    if reason:
        pytest.skip(f"browser check skipped: {reason}")
    with shots.chromium_page() as page:
        yield page


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shots.browser_available():
        pytest.skip(f"browser check skipped: {shots.browser_available()}")
    return shots.build_demo(tmp_path_factory.mktemp("gallery") / "store")


@pytest.fixture(scope="module")
def served(demo: Any) -> Iterator[str]:
    with shots.serve(demo.store) as base:
        yield f"{base}/{shots.GALLERY}/index.html"


def _cards(page: Any) -> list[dict[str, str]]:
    return page.evaluate(
        """() => [...document.querySelectorAll('#grid .card')].map(c => ({
             key: c.dataset.key, prompt: c.querySelector('.prompt').textContent,
             target: c.classList.contains('target') ? 'yes' : ''}))"""
    )


def test_thumbnails_load_and_link_to_full_images(
    served: str, browser_page: Any, tmp_path: Path
) -> None:
    page = browser_page
    page.goto(served)
    visible = shots.wait_for_thumbnails(page)
    assert len(visible) >= 5
    assert all(img["naturalWidth"] > 0 and img["naturalHeight"] > 0 for img in visible)
    assert all(img["src"].startswith("thumbs/") for img in visible)
    assert "16 of 16" in page.inner_text("#status")
    assert "$" in page.inner_text("header")

    href = page.get_attribute("#grid .card .thumb", "href")
    assert href is not None
    assert href.startswith("../product_shots/")
    full = httpx.get(served.rsplit("/", 1)[0] + "/" + href, timeout=10)
    assert full.status_code == 200
    with Image.open(io.BytesIO(full.content)) as image:
        assert image.size == (1024, 640)

    out = page.screenshot(path=str(tmp_path / "gallery.png"))
    assert len(out) > 50_000


def test_search_filters_cards(served: str, browser_page: Any) -> None:
    page = browser_page
    page.goto(served)
    shots.wait_for_thumbnails(page)
    page.fill("#search", "teapot")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes(' of ')")
    page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 2")
    cards = _cards(page)
    assert sorted(c["key"] for c in cards) == [
        "product_shots/glass-teapot",
        "product_shots_lifestyle/glass-teapot",
    ]
    assert "showing 2 of 16" in page.inner_text("#status")

    page.fill("#search", "sunlit oak")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('showing 8 ')"
    )
    assert all("sunlit oak" in c["prompt"] for c in _cards(page))

    page.fill("#search", "")
    page.select_option("#asset", "product_shots")
    page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 8")
    assert all(c["key"].startswith("product_shots/") for c in _cards(page))


def test_edit_links_to_its_source(served: str, browser_page: Any) -> None:
    page = browser_page
    page.goto(served)
    shots.wait_for_thumbnails(page)
    page.select_option("#asset", "product_shots_lifestyle")
    page.wait_for_function("() => document.querySelectorAll('#grid .card').length === 8")
    edit = page.locator('.card[data-key="product_shots_lifestyle/desk-lamp"]')
    source_link = edit.locator(".lineage.from a.src")
    assert source_link.inner_text().strip() == "product_shots/desk-lamp"
    source_thumb = source_link.locator("img")
    source_thumb.scroll_into_view_if_needed()
    page.wait_for_function(
        """() => { const i = document.querySelector(
             '.card[data-key="product_shots_lifestyle/desk-lamp"] .lineage.from img');
             return i.complete && i.naturalWidth > 0; }"""
    )

    source_link.click()
    target = page.locator('.card[data-key="product_shots/desk-lamp"]')
    target.wait_for(state="visible")
    assert "target" in (target.get_attribute("class") or "")
    assert page.evaluate("location.hash") == f"#{target.get_attribute('id')}"
    # The asset filter hid the source: following the link cleared it.
    assert page.input_value("#asset") == ""
    box = target.bounding_box()
    assert box is not None
    assert 0 <= box["y"] < shots.VIEWPORT["height"]
    # The source card lists the edit back.
    assert "product_shots_lifestyle/desk-lamp" in target.locator(".lineage.edits").inner_text()


def _png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(out, "PNG")
    return out.getvalue()


def test_prompts_stay_text_and_cards_render_in_chunks(browser_page: Any, tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    evil = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    n = 150
    for i in range(n):
        prompt = evil if i == 0 else f"swatch number {i}"
        store.write_image(
            ["swatches"],
            f"s{i:03d}",
            _png((i, 255 - i, 128)),
            "png",
            ImageRecord(fingerprint="f", prompt=prompt, model="gpt-image-2", provider="emulator"),
        )
    result = build_gallery(store, ["swatches"], str(tmp_path / "store" / "gallery"))
    page = browser_page
    page.goto(Path(result.url).as_uri())
    shots.wait_for_thumbnails(page)

    assert page.evaluate("typeof window.pwned") == "undefined"
    first = page.locator('.card[data-key="swatches/s000"] .prompt')
    assert first.inner_text() == evil
    chunk = json.loads(page.inner_text("#gallery-data"))["chunk"]
    assert len(_cards(page)) == chunk < n
    for _ in range(20):
        if len(_cards(page)) == n:
            break
        page.mouse.wheel(0, 20_000)
        page.wait_for_timeout(150)
    assert len(_cards(page)) == n
