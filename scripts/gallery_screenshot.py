"""See the image gallery as a reviewer sees it: build one from real runs, open it in Chromium.

Materializes the example project's product shots and their lifestyle edits on the offline emulator
(``dg.materialize``, a throw-away store), builds the gallery with ``image_gallery_asset``, serves
the store over HTTP on loopback (as a bucket or static host would) and opens the page in headless
Debian Chromium driven by Playwright. Used by ``tests/test_gallery_browser.py`` and, to regenerate
the screenshot of the docs::

    python scripts/gallery_screenshot.py --out docs/screenshots/gallery.png

Needs ``/usr/bin/chromium`` (``make browser-deps``) and the ``playwright`` Python package; never
downloads a browser.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg

from dagster_gptimage import (
    GPTImageResource,
    ImageStore,
    PromptTable,
    image_edit_asset,
    image_gallery_asset,
    image_generation_asset,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCTS = REPO_ROOT / "example_project" / "src" / "example_project" / "data" / "products.csv"
VIEWPORT = {"width": 1440, "height": 1000}
GALLERY = "image_gallery"


def _load_ui() -> ModuleType:
    """``scripts/ui_screenshots.py``: where Chromium is and how it is launched."""
    name = "ui_screenshots"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def browser_available() -> str | None:
    """Why the browser check cannot run here, or None when it can."""
    return _load_ui().browser_available()


@dataclass
class DemoGallery:
    store: Path
    page: Path
    """``index.html`` of the gallery, inside ``store``."""
    generation: str
    edit: str


def build_demo(store: Path, *, emulator_name: str = "gallery-screenshot") -> DemoGallery:
    """Product shots and their lifestyle edits made on the emulator, and their gallery."""
    rows = PromptTable.from_path(PRODUCTS).rows[:8]
    table = PromptTable.from_records([{"key": row.key, "prompt": row.prompt} for row in rows])
    shots = image_generation_asset(
        name="product_shots", prompts=table, size="1024x640", quality="low", output_format="webp"
    )
    lifestyle = image_edit_asset(
        name="product_shots_lifestyle",
        sources=[shots],
        prompt="Place this exact product on a sunlit oak kitchen counter",
        quality="low",
        output_format="webp",
    )
    gallery = image_gallery_asset(name=GALLERY, assets=[shots, lifestyle], title="Product shots")
    resources = {
        "gptimage": GPTImageResource(provider="emulator", emulator_name=emulator_name),
        "image_store": ImageStore(base_url=str(store)),
    }
    instance = dg.DagsterInstance.ephemeral()
    keys = table.keys
    tags = {
        "dagster/asset_partition_range_start": keys[0],
        "dagster/asset_partition_range_end": keys[-1],
    }
    run = dg.materialize([shots, lifestyle], resources=resources, instance=instance, tags=tags)
    if not run.success:
        raise RuntimeError("materializing the demo images failed")
    built = dg.materialize(
        [shots, lifestyle, gallery], resources=resources, instance=instance, selection=[gallery.key]
    )
    if not built.success:
        raise RuntimeError("building the gallery failed")
    return DemoGallery(
        store=store,
        page=store / GALLERY / "index.html",
        generation="product_shots",
        edit="product_shots_lifestyle",
    )


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on a free loopback port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ui = _load_ui()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(ui.CHROMIUM), headless=True, args=list(ui.CHROMIUM_ARGS)
        )
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


VISIBLE_THUMBNAILS_JS = """() => [...document.querySelectorAll('.card .thumb img')]
  .filter(img => { const r = img.getBoundingClientRect();
                   return r.bottom > 0 && r.top < window.innerHeight; })
  .map(img => ({src: img.getAttribute('src'), complete: img.complete,
                naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}))"""


def wait_for_thumbnails(page: Any, timeout_ms: int = 30_000) -> list[dict[str, Any]]:
    """The thumbnails in the viewport, once every one of them has loaded (or the timeout)."""
    page.wait_for_function(
        f"() => {{ const v = ({VISIBLE_THUMBNAILS_JS})(); "
        "return v.length > 0 && v.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=timeout_ms,
    )
    return page.evaluate(VISIBLE_THUMBNAILS_JS)


def screenshot(demo: DemoGallery, out: Path) -> Path:
    """A screenshot of the demo gallery's first screen, served over HTTP."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with serve(demo.store) as base, chromium_page() as page:
        page.goto(f"{base}/{GALLERY}/index.html")
        wait_for_thumbnails(page)
        page.screenshot(path=str(out))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs/screenshots/gallery.png")
    args = parser.parse_args(argv)
    reason = browser_available()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gptimage-gallery-") as tmp:
        demo = build_demo(Path(tmp) / "store")
        print(f"wrote {screenshot(demo, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
