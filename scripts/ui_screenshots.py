"""See the Dagster UI as a user sees it: materialize image assets, open their pages in Chromium.

Starts ``dagster dev -w workspace.yaml`` on 127.0.0.1 (a free port, a throw-away ``DAGSTER_HOME``
and image store, no ``OPENAI_API_KEY`` so the example uses the emulator), materializes the example's
image assets through Dagster's GraphQL API (one run per asset over its whole partition range, the run
a single-run backfill launches), then opens the asset pages in headless Debian Chromium driven by
Playwright and reads what the page actually renders: the metadata text and the preview ``<img>``.

Used by ``tests/test_ui.py`` and, to regenerate the screenshots of the docs::

    python scripts/ui_screenshots.py --out docs/screenshots

Needs ``/usr/bin/chromium`` (``make browser-deps``) and the ``playwright`` Python package; never
downloads a browser (no ``playwright install``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from dagster_gptimage._metadata import LATENCY_DECIMALS

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("GPTIMAGE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1440, "height": 1350}
"""Tall enough for the whole metadata table of a partition, preview included."""
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
_FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class UIError(RuntimeError):
    """Something a user would have seen go wrong (the UI did not start, a run failed …)."""


# --- a workspace to look at ------------------------------------------------------------------

_FALLBACK_DEFS = '''
"""A small image pipeline on the emulator (used when the repository has no workspace.yaml)."""
import dagster as dg
from dagster_gptimage import (
    GPTImageResource, ImageStore, PromptTable, image_edit_asset, image_generation_asset,
)

prompts = PromptTable.from_records(
    [
        {"key": "mug", "prompt": "A ceramic mug on a wooden table, soft morning light"},
        {"key": "lamp", "prompt": "A brass desk lamp in a dark study", "quality": "medium"},
        {"key": "bike", "prompt": "A red bicycle leaning on a white wall"},
    ],
    description="Three product shots",
)
product_shots = image_generation_asset(
    name="product_shots", prompts=prompts, size="1024x768", quality="low", output_format="webp"
)
product_shots_night = image_edit_asset(
    name="product_shots_night", sources=[product_shots], prompt="Same scene at night",
    size="1024x768", quality="low",
)
defs = dg.Definitions(
    assets=[product_shots, product_shots_night],
    resources={"gptimage": GPTImageResource(provider="emulator"), "image_store": ImageStore()},
)
'''


def workspace_file(tmp: Path) -> Path:
    """The repository's ``workspace.yaml`` (the example project), else a small one in ``tmp``."""
    own = REPO_ROOT / "workspace.yaml"
    if own.is_file():
        return own
    defs = tmp / "ui_defs.py"
    defs.write_text(textwrap.dedent(_FALLBACK_DEFS))
    workspace = tmp / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {defs.name}\n"
        f"      location_name: ui_defs\n"
    )
    return workspace


# --- dagster dev -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dagster_executable() -> str:
    beside = Path(sys.executable).with_name("dagster")
    return str(beside) if beside.exists() else "dagster"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop ``dagster dev`` and its children (webserver, daemon, code server, run workers): they
    share the process group started for it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def dagster_dev(
    workspace: Path,
    home: Path,
    *,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 180.0,
) -> Iterator[str]:
    """Run ``dagster dev`` on loopback until the ``with`` block ends; yields the UI's base URL once
    every code location has loaded. No provider key reaches it: the example uses the emulator."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), **(extra_env or {})}
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):
        env.pop(name, None)
    command = [
        _dagster_executable(),
        "dev",
        "-w",
        str(workspace),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workspace.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_loaded(base_url, process, log_path, timeout_s)
        yield base_url
    finally:
        _stop(process)


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_LOCATIONS = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def _wait_until_loaded(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UIError(f"dagster dev exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            data = graphql(base_url, _LOCATIONS, timeout_s=5)
            entries = data["workspaceOrError"]["locationEntries"]
            errors = [
                f"{entry['name']}: {entry['locationOrLoadError']['message']}"
                for entry in entries
                if (entry.get("locationOrLoadError") or {}).get("__typename") == "PythonError"
            ]
            if errors:
                raise UIError("code location failed to load:\n" + "\n".join(errors))
            if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                return
            last = f"locations {[(e['name'], e['loadStatus']) for e in entries]}"
        except (httpx.HTTPError, KeyError, TypeError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.5)
    raise UIError(
        f"dagster dev did not load within {timeout_s:g}s ({last}):\n{_log_tail(log_path)}"
    )


def graphql(
    base_url: str, query: str, variables: Mapping[str, Any] | None = None, *, timeout_s: float = 60
) -> dict[str, Any]:
    response = httpx.post(
        f"{base_url}/graphql",
        json={"query": query, "variables": dict(variables or {})},
        timeout=timeout_s,
    )
    response.raise_for_status()
    payload = response.json()
    if payload.get("errors"):
        raise UIError(f"GraphQL errors: {json.dumps(payload['errors'])[:2000]}")
    return payload["data"]


# --- materializing through the UI's API ------------------------------------------------------

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""
"""What the UI sends to launch a backfill of partitions."""


@dataclass(frozen=True)
class ImageAsset:
    path: tuple[str, ...]
    location: str
    repository: str
    job: str
    partition_keys: tuple[str, ...]
    upstream: tuple[tuple[str, ...], ...]
    group: str = "default"

    @property
    def url_path(self) -> str:
        return "/".join(quote(part, safe="") for part in self.path)


_ASSETS = """
query {
  assetNodes {
    assetKey { path }
    kinds
    jobNames
    isPartitioned
    partitionKeysByDimension { name partitionKeys }
    dependencyKeys { path }
    groupName
    repository { name location { name } }
  }
}
"""


def image_assets(base_url: str) -> list[ImageAsset]:
    """Statically partitioned image assets, upstream first."""
    found: dict[tuple[str, ...], ImageAsset] = {}
    for node in graphql(base_url, _ASSETS)["assetNodes"]:
        keys = [
            key
            for dim in node.get("partitionKeysByDimension") or []
            for key in dim["partitionKeys"]
        ]
        if "image" not in (node.get("kinds") or []) or not node["isPartitioned"] or not keys:
            continue
        jobs = [name for name in node["jobNames"] if name.startswith("__ASSET_JOB")]
        path = tuple(node["assetKey"]["path"])
        found[path] = ImageAsset(
            path=path,
            location=node["repository"]["location"]["name"],
            repository=node["repository"]["name"],
            job=(jobs or node["jobNames"])[0],
            partition_keys=tuple(keys),
            upstream=tuple(tuple(dep["path"]) for dep in node["dependencyKeys"]),
            group=node.get("groupName") or "default",
        )
    ordered: list[ImageAsset] = []
    placed: set[tuple[str, ...]] = set()
    while len(ordered) < len(found):
        ready = [
            asset
            for path, asset in sorted(found.items())
            if path not in placed and all(up in placed or up not in found for up in asset.upstream)
        ]
        if not ready:
            raise UIError("cycle among image assets")
        for asset in ready:
            ordered.append(asset)
            placed.add(asset.path)
    return ordered


_LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""
_RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""


def materialize(base_url: str, asset: ImageAsset, *, timeout_s: float = 300.0) -> str:
    """Launch one run over every partition of ``asset`` (what a single-run backfill launches) and
    wait for it to succeed; returns the run id."""
    params = {
        "selector": {
            "repositoryLocationName": asset.location,
            "repositoryName": asset.repository,
            "pipelineName": asset.job,
            "assetSelection": [{"path": list(asset.path)}],
        },
        "runConfigData": {},
        "mode": "default",
        "executionMetadata": {
            "tags": [
                {"key": RANGE_START, "value": asset.partition_keys[0]},
                {"key": RANGE_END, "value": asset.partition_keys[-1]},
            ]
        },
    }
    launched = graphql(base_url, _LAUNCH, {"params": params})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise UIError(f"launching a run of {'/'.join(asset.path)} failed: {launched}")
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + timeout_s
    status = "QUEUED"
    while time.monotonic() < deadline:
        status = graphql(base_url, _RUN, {"runId": run_id})["runOrError"]["status"]
        if status in _FINISHED:
            break
        time.sleep(0.5)
    if status != "SUCCESS":
        raise UIError(f"run {run_id} of {'/'.join(asset.path)} ended {status}")
    return run_id


# --- the browser -----------------------------------------------------------------------------


@dataclass
class PageView:
    """What one page showed."""

    url: str
    text: str
    preview_images: list[dict[str, Any]] = field(default_factory=list)
    screenshot: Path | None = None


_PREVIEWS_JS = """
() => Array.from(document.querySelectorAll('img'))
  .filter((img) => img.getAttribute('src') && img.getAttribute('src').startsWith('data:image/'))
  .map((img) => ({
    alt: img.alt,
    complete: img.complete,
    naturalWidth: img.naturalWidth,
    naturalHeight: img.naturalHeight,
    width: img.getBoundingClientRect().width,
    height: img.getBoundingClientRect().height,
    srcLength: img.getAttribute('src').length,
  }))
"""


_SKIP_COMMUNITY_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'))"


def browser_available() -> str | None:
    """Why the browser check cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (install Debian's chromium: make browser-deps)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            # A first visit to a local UI opens a "join the community" dialog; a user clicks Skip,
            # which stores this flag.
            context.add_init_script(_SKIP_COMMUNITY_DIALOG)
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _wait_for_previews(page: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    previews: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        previews = page.evaluate(_PREVIEWS_JS)
        if previews and all(p["complete"] and p["naturalWidth"] > 0 for p in previews):
            return previews
        page.wait_for_timeout(250)
    return previews


def partition_view(
    page: Any, base_url: str, asset: ImageAsset, partition: str, *, screenshot: Path | None
) -> PageView:
    """The asset's Partitions tab with ``partition`` selected: its latest materialization's metadata."""
    url = (
        f"{base_url}/assets/{asset.url_path}?view=partitions&partition={quote(partition, safe='')}"
    )
    page.goto(url)
    page.get_by_text("cost_usd", exact=True).first.wait_for()
    previews = _wait_for_previews(page)
    view = PageView(url=url, text=page.inner_text("body"), preview_images=previews)
    if screenshot is not None:
        _scroll_metadata_into_view(page)
        page.screenshot(path=str(screenshot), full_page=False)
        view.screenshot = screenshot
    return view


def _scroll_metadata_into_view(page: Any) -> None:
    """Bring the metadata table (cost, latency, tokens, path, preview) into the viewport."""
    with contextlib.suppress(Exception):
        page.get_by_text("Metadata", exact=True).first.scroll_into_view_if_needed()
        page.mouse.move(10, 10)


def overview(page: Any, base_url: str, asset: ImageAsset, *, screenshot: Path | None) -> PageView:
    """The asset's Overview tab (description, latest materialization with its metadata)."""
    url = f"{base_url}/assets/{asset.url_path}?view=overview"
    page.goto(url)
    page.get_by_text("cost_usd", exact=True).first.wait_for()
    previews = _wait_for_previews(page)
    view = PageView(url=url, text=page.inner_text("body"), preview_images=previews)
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=False)
        view.screenshot = screenshot
    return view


def lineage(page: Any, base_url: str, asset: ImageAsset, *, screenshot: Path | None) -> PageView:
    """The asset graph of ``asset``'s group: the generation asset and its edits."""
    location, group = quote(asset.location, safe=""), quote(asset.group, safe="")
    url = f"{base_url}/locations/{location}/asset-groups/{group}"
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 820})
    page.goto(url)
    page.get_by_text(asset.path[-1], exact=True).first.wait_for()
    page.wait_for_load_state("networkidle")
    view = PageView(url=url, text=page.inner_text("body"))
    if screenshot is not None:
        page.screenshot(path=str(screenshot), full_page=False)
        view.screenshot = screenshot
    return view


# --- the whole flow --------------------------------------------------------------------------


@dataclass
class Tour:
    """Everything the flow saw."""

    base_url: str
    generation: ImageAsset
    edit: ImageAsset | None
    assets: list[ImageAsset]
    runs: dict[str, str]
    sidecars: dict[str, dict[str, Any]]
    views: dict[str, PageView]
    duration_s: float


_LATEST = """
query($key: AssetKeyInput!, $partition: String!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        metadataEntries { label ... on PathMetadataEntry { path } }
      }
    }
  }
}
"""


def stored_sidecar(base_url: str, asset: ImageAsset, partition: str) -> dict[str, Any]:
    """The sidecar beside the image the partition's latest materialization points to: the record
    the UI must agree with (read from disk, not from the UI)."""
    data = graphql(base_url, _LATEST, {"key": {"path": list(asset.path)}, "partition": partition})
    events = data["assetOrError"].get("assetMaterializations") or []
    paths = [e["path"] for e in (events[0]["metadataEntries"] if events else []) if e.get("path")]
    if not paths:
        raise UIError(f"{'/'.join(asset.path)} {partition!r}: no materialization with a path")
    sidecar = Path(paths[0]).with_suffix(".json")
    if not sidecar.is_file():
        raise UIError(f"no sidecar {sidecar} beside the image {paths[0]}")
    return json.loads(sidecar.read_text())


FOCUS = "product_shots"
"""The example's generation asset: the one the screenshots show."""


def _focus(assets: Sequence[ImageAsset], focus: str) -> tuple[ImageAsset, ImageAsset | None]:
    """The generation asset to look at (``focus`` if present) and an edit of it, if any."""
    generations = [
        a for a in assets if not any(up in {b.path for b in assets} for up in a.upstream)
    ]
    named = [a for a in generations if a.path[-1] == focus]
    with_edits = [a for a in generations if any(a.path in b.upstream for b in assets)]
    generation = (named or with_edits or generations or list(assets))[0]
    edits = [a for a in assets if generation.path in a.upstream]
    return generation, (edits[0] if edits else None)


def tour(
    *,
    home: Path,
    workdir: Path,
    screenshots: Path | None,
    workspace: Path | None = None,
    focus: str = FOCUS,
    materialize_all: bool = False,
) -> Tour:
    """Materialize (the focus asset and its edits, or every image asset), then visit the pages.
    Screenshots go to ``screenshots`` when given."""
    started = time.monotonic()
    workspace = workspace or workspace_file(workdir)
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    shot = (lambda name: screenshots / name) if screenshots is not None else (lambda name: None)
    env = {"GPTIMAGE_STORE_URL": str(workdir / "gptimage_store"), "GPTIMAGE_PROVIDER": "emulator"}
    log_path = workdir / "dagster-dev.log"
    with dagster_dev(workspace, home, log_path=log_path, extra_env=env) as base_url:
        assets = image_assets(base_url)
        if not assets:
            raise UIError("the workspace has no statically partitioned image asset")
        generation, edit = _focus(assets, focus)
        chosen = [a for a in assets if materialize_all or a is generation or a is edit]
        runs = {"/".join(asset.path): materialize(base_url, asset) for asset in chosen}
        partition = generation.partition_keys[0]
        shown = [generation] if edit is None else [generation, edit]
        sidecars = {"/".join(a.path): stored_sidecar(base_url, a, partition) for a in shown}
        views: dict[str, PageView] = {}
        with chromium_page() as page:
            views["partition"] = partition_view(
                page, base_url, generation, partition, screenshot=shot("asset-partition.png")
            )
            if edit is not None:
                views["edit_partition"] = partition_view(
                    page, base_url, edit, partition, screenshot=shot("edit-partition.png")
                )
            views["overview"] = overview(
                page, base_url, generation, screenshot=shot("asset-overview.png")
            )
            views["lineage"] = lineage(
                page, base_url, generation, screenshot=shot("asset-lineage.png")
            )
    return Tour(
        base_url=base_url,
        generation=generation,
        edit=edit,
        assets=assets,
        runs=runs,
        sidecars=sidecars,
        views=views,
        duration_s=time.monotonic() - started,
    )


def js_number(value: float) -> str:
    """``value`` as the UI prints a float (JavaScript's ``String(number)``)."""
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent):+d}"
    return text


def expected_texts(sidecar: Mapping[str, Any]) -> dict[str, str]:
    """The values the partition view must show, as the UI formats them (shortest round-trip
    floats, like JavaScript's)."""
    usage = sidecar.get("usage") or {}
    input_tokens = int(usage.get("input_text_tokens", 0)) + int(usage.get("input_image_tokens", 0))
    output_tokens = int(usage.get("output_image_tokens", 0)) + int(
        usage.get("output_text_tokens", 0)
    )
    return {
        "cost_usd": js_number(float(sidecar["cost_usd"])),
        "latency_s": js_number(round(float(sidecar["latency_s"]), LATENCY_DECIMALS)),
        "input_tokens": str(input_tokens),
        "output_tokens": str(output_tokens),
        "path": str(sidecar["path"]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "docs" / "screenshots", help="screenshot folder"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME")
    parser.add_argument(
        "--focus-only",
        action="store_true",
        help=f"materialize only {FOCUS} and its edit (faster), not every image asset",
    )
    args = parser.parse_args(argv)
    reason = browser_available()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="gptimage-ui-"))
    try:
        result = tour(
            home=tmp / "dagster_home",
            workdir=tmp,
            screenshots=args.out,
            materialize_all=not args.focus_only,
        )
        for name, view in result.views.items():
            print(f"{name}: {view.url}")
            print(f"  previews: {view.preview_images}")
            if view.screenshot:
                print(f"  screenshot: {view.screenshot}")
        print(f"done in {result.duration_s:.1f}s")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
