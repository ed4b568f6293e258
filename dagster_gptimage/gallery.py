"""A static HTML gallery of stored images, to review a dataset by eye instead of file by file.

One folder, copyable or servable from a bucket as is::

    {gallery}/index.html               the page: totals, filters, search, data inlined once
    {gallery}/thumbs/{sha256}.webp     one thumbnail per distinct image (or .jpg)

Cards come from the store's sidecars (the same records the manifest lists), so each shows how its
image was made: prompt, revised prompt, model, size, quality, cost, latency, and for edits the
source images they were made from, linked to their cards. Thumbnails are named by the image's
sha256, so a rebuild decodes only images it has not seen (none, when nothing changed), and an
image stored under two keys is decoded once. Links are relative wherever the images share the
gallery's filesystem, so the folder works from ``file://``, a static server or a bucket.

``build_gallery`` does the work without Dagster; ``image_gallery_asset`` wraps it as an asset.
"""

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import dagster as dg
from PIL import features

from dagster_gptimage._gallery_page import CHUNK, render_page
from dagster_gptimage.datasets import (
    ManifestSummary,
    _asset_key,
    _collect,
    _cost_metadata,
    _join,
    _output_store,
    _protocol,
    _source_keys,
    _store_asset,
    manifest_rows,
    summarize_manifest,
)
from dagster_gptimage.errors import InvalidImageError
from dagster_gptimage.images import EXTENSIONS, make_thumbnail
from dagster_gptimage.storage import (
    ImageRecord,
    ImageStore,
    check_url_has_no_credentials,
    redact_url,
)

__all__ = [
    "GALLERY_FIELDS",
    "GalleryResult",
    "build_gallery",
    "gallery_data",
    "image_gallery_asset",
]

ThumbnailFormat = Literal["webp", "jpeg"]

GALLERY_FIELDS: tuple[str, ...] = (
    "asset",
    "partition",
    "sha256",
    "ext",
    "width",
    "height",
    "prompt",
    "revised_prompt",
    "model",
    "size",
    "quality",
    "cost_usd",
    "latency_s",
    "thumb",
    "sources",
)
"""Columns of each item in the page's data (one JSON array per image: names are listed once, so
5,000 images do not repeat them 5,000 times). ``asset`` indexes the data's ``assets`` list;
``thumb`` is 1 when the thumbnail exists; ``sources`` lists ``[asset, partition, sha256]``."""

THUMBNAIL_EXTENSIONS: Mapping[str, str] = {"webp": "webp", "jpeg": "jpg"}
_THUMB_NAME = re.compile(r"(?P<sha>[0-9a-f]{64})\.(?:webp|jpg)")
_THUMB_QUALITY = 75
_THUMB_WEBP_METHOD = 2
"""Half the encoding time of WebP's default effort (4) for thumbnails ~10 % bigger."""
_THUMB_THREADS = 4
_PAGE = "index.html"
_THUMBS = "thumbs"


@dataclass(frozen=True)
class GalleryResult:
    """What ``build_gallery`` wrote."""

    url: str
    """URL of ``index.html`` (a local path for a local gallery)."""
    folder_url: str
    local: bool
    images: int
    new_thumbnails: int
    cached_thumbnails: int
    removed_thumbnails: int
    page_bytes: int
    summary: ManifestSummary
    sha256: str
    """sha256 of the page's data without its build time: the gallery's data version."""
    unreadable: list[str] = field(default_factory=list)
    """``asset/partition`` of images shown without a thumbnail (missing, changed or corrupt)."""


# --- pure: the page's data ------------------------------------------------------------------


def _item(record: ImageRecord, asset_index: int, has_thumb: bool) -> list[Any]:
    params = record.params or {}
    return [
        asset_index,
        record.partition_key,
        record.sha256,
        EXTENSIONS.get(record.format, record.format),
        int(record.width),
        int(record.height),
        record.prompt,
        record.revised_prompt,
        record.model,
        params.get("size"),
        params.get("quality"),
        round(float(record.cost_usd), 8),
        round(float(record.latency_s), 3),
        1 if has_thumb else 0,
        [["/".join(s.asset_key or []), s.partition_key or "", s.sha256] for s in record.sources],
    ]


def _record_id(asset_key: Sequence[str] | None, partition_key: str | None) -> str:
    return f"{'/'.join(asset_key or [])}/{partition_key or ''}"


def _lineage_order(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Each image followed by its edits (depth first), so an edit sits beside its source; images
    whose sources are not in the gallery keep their place in ``records``."""
    by_id = {_record_id(r.asset_key, r.partition_key): r for r in records}
    children: dict[str, list[ImageRecord]] = {}
    roots: list[ImageRecord] = []
    for record in records:
        parents = [
            _record_id(s.asset_key, s.partition_key)
            for s in record.sources
            if _record_id(s.asset_key, s.partition_key) in by_id
        ]
        if parents:
            children.setdefault(parents[0], []).append(record)
        else:
            roots.append(record)
    ordered: list[ImageRecord] = []
    seen: set[str] = set()

    def visit(record: ImageRecord) -> None:
        stack = [record]
        while stack:
            current = stack.pop()
            current_id = _record_id(current.asset_key, current.partition_key)
            if current_id in seen:
                continue
            seen.add(current_id)
            ordered.append(current)
            stack.extend(reversed(children.get(current_id, [])))

    for record in [*roots, *records]:
        visit(record)
    return ordered


def gallery_data(
    records: Iterable[ImageRecord],
    *,
    asset_hrefs: Mapping[str, str],
    thumbnails: Iterable[str],
    title: str = "Image gallery",
    thumbnail_format: ThumbnailFormat = "webp",
    built: str = "",
) -> dict[str, Any]:
    """The page's data: assets with their image counts, costs and the link prefix of their images
    (``asset_hrefs``, by asset string), and one item per record (see ``GALLERY_FIELDS``) by asset
    and partition, each followed by its edits. ``thumbnails`` are the sha256s with a thumbnail."""
    names = list(asset_hrefs)
    index = {name: i for i, name in enumerate(names)}
    records = _lineage_order(
        sorted(records, key=lambda r: (index["/".join(r.asset_key)], r.partition_key))
    )
    summary = summarize_manifest(manifest_rows(records))
    have = set(thumbnails)
    items = [
        _item(record, index["/".join(record.asset_key)], record.sha256 in have)
        for record in records
    ]
    assets = [
        {
            "key": name,
            "href": asset_hrefs[name],
            "images": int(summary.by_asset.get(name, {}).get("images", 0)),
            "cost_usd": float(summary.by_asset.get(name, {}).get("cost_usd", 0.0)),
        }
        for name in names
    ]
    return {
        "schema_version": 1,
        "title": title,
        "built": built,
        "chunk": CHUNK,
        "thumb_ext": THUMBNAIL_EXTENSIONS[thumbnail_format],
        "totals": {"images": summary.images, "cost_usd": summary.cost_usd},
        "assets": assets,
        "fields": list(GALLERY_FIELDS),
        "items": items,
    }


def _relative_href(gallery_url: str, image_folder_url: str, same_filesystem: bool) -> str:
    """Link prefix from the gallery folder to an asset's image folder: relative on the same
    filesystem (and, on object stores, the same bucket: a link cannot leave a bucket), absolute
    (credentials stripped) otherwise."""
    if same_filesystem:
        source = _path_part(gallery_url)
        target = _path_part(image_folder_url)
        same_root = source.startswith("/") or source.split("/", 1)[0] == target.split("/", 1)[0]
        if same_root:
            relative = posixpath.relpath(target, source)
            return "/".join(quote(part) for part in relative.split("/")) + "/"
    return redact_url(image_folder_url).rstrip("/") + "/"


def _path_part(url: str) -> str:
    path = url.split("://", 1)[1] if "://" in url else url
    return path.rstrip("/") or "/"


# --- I/O: thumbnails and the page -----------------------------------------------------------


def _existing_thumbnails(folder: ImageStore, thumbs_url: str) -> dict[str, str]:
    """sha256 → file name of the thumbnails already in the folder (one listing)."""
    fs = folder.fs
    path = fs._strip_protocol(thumbs_url)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return {}
    found: dict[str, str] = {}
    for entry in entries:
        name = str(entry).rsplit("/", 1)[-1]
        match = _THUMB_NAME.fullmatch(name)
        if match is not None:
            found.setdefault(match["sha"], name)
    return found


def _make_thumbnail_file(
    store: ImageStore,
    folder: ImageStore,
    record: ImageRecord,
    target: str,
    size: int,
    fmt: ThumbnailFormat,
) -> bool:
    """Read, verify and decode one image, write its thumbnail; False when the image is missing,
    no longer the one its sidecar describes, or undecodable (it is retried on the next build)."""
    path = store.image_path(record.asset_key, record.partition_key, record.format)
    try:
        data = store.read_bytes(path)
    except (FileNotFoundError, ValueError):
        return False
    if hashlib.sha256(data).hexdigest() != record.sha256:
        return False
    try:
        thumbnail = make_thumbnail(
            data, max_side=size, fmt=fmt, quality=_THUMB_QUALITY, webp_method=_THUMB_WEBP_METHOD
        )
    except InvalidImageError:
        return False
    folder.write_bytes(target, thumbnail)
    return True


def _update_thumbnails(
    store: ImageStore,
    folder: ImageStore,
    records: Sequence[ImageRecord],
    size: int,
    fmt: ThumbnailFormat,
) -> tuple[set[str], int, int, int]:
    """(sha256s with a thumbnail, new, cached, removed): thumbnails made only for sha256s not in
    the folder yet, each once; thumbnails of images no longer shown are removed."""
    thumbs_url = _join(folder.resolved_base_url, _THUMBS)
    ext = THUMBNAIL_EXTENSIONS[fmt]
    existing = _existing_thumbnails(folder, thumbs_url)
    wanted: dict[str, list[ImageRecord]] = {}
    for record in records:
        wanted.setdefault(record.sha256, []).append(record)
    have = {sha for sha, name in existing.items() if name == f"{sha}.{ext}" and sha in wanted}
    todo = [copies for sha, copies in wanted.items() if sha not in have]

    def make(copies: list[ImageRecord]) -> tuple[str, bool]:
        """The first stored copy of these bytes that reads back intact makes the thumbnail."""
        target = _join(thumbs_url, f"{copies[0].sha256}.{ext}")
        ok = any(_make_thumbnail_file(store, folder, r, target, size, fmt) for r in copies)
        return copies[0].sha256, ok

    with ThreadPoolExecutor(max_workers=_THUMB_THREADS) as pool:
        made = {sha for sha, ok in pool.map(make, todo) if ok}
    fs = folder.fs
    removed = 0
    for sha, name in sorted(existing.items()):
        if sha in wanted and name == f"{sha}.{ext}":
            continue
        try:
            fs.rm_file(fs._strip_protocol(_join(thumbs_url, name)))
            removed += 1
        except FileNotFoundError:
            pass
    return have | made, len(made), len(have), removed


def _same_filesystem(folder: ImageStore, store: ImageStore) -> bool:
    return _protocol(folder.resolved_base_url) == _protocol(store.resolved_base_url)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _data_sha256(data: Mapping[str, Any]) -> str:
    stable = {key: value for key, value in data.items() if key != "built"}
    text = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def build_gallery(
    store: ImageStore,
    asset_keys: Sequence[dg.AssetKey | str],
    output_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    title: str = "Image gallery",
    thumbnail_size: int = 256,
    thumbnail_format: ThumbnailFormat = "webp",
) -> GalleryResult:
    """Write the gallery of every stored image of ``asset_keys`` into the folder ``output_url``
    (any fsspec URL; without ``storage_options`` a URL on the store's protocol uses the store's).

    Thumbnails are made only for images whose sha256 has none yet; the page is rewritten each time
    (all-or-nothing). Images that cannot be read or decoded are shown without a thumbnail and
    listed in ``GalleryResult.unreadable``, so one bad file cannot hide the rest.
    """
    _check_thumbnail_settings(thumbnail_size, thumbnail_format)
    if not asset_keys:
        raise ValueError("asset_keys is empty; give at least one image asset")
    keys = _source_keys(list(asset_keys))
    folder = _output_store(output_url, store, storage_options)
    records = _collect(store, keys)
    have, new, cached, removed = _update_thumbnails(
        store, folder, records, thumbnail_size, thumbnail_format
    )
    same = _same_filesystem(folder, store)
    hrefs = {
        key.to_user_string(): _relative_href(folder.resolved_base_url, store.asset_url(key), same)
        for key in keys
    }
    data = gallery_data(
        records,
        asset_hrefs=hrefs,
        thumbnails=have,
        title=title,
        thumbnail_format=thumbnail_format,
        built=_now(),
    )
    page = render_page(data)
    url = _join(folder.resolved_base_url, _PAGE)
    folder.write_bytes(url, page)
    unreadable = [
        f"{'/'.join(r.asset_key)}/{r.partition_key}" for r in records if r.sha256 not in have
    ]
    return GalleryResult(
        url=url,
        folder_url=folder.resolved_base_url,
        local="://" not in url,
        images=len(records),
        new_thumbnails=new,
        cached_thumbnails=cached,
        removed_thumbnails=removed,
        page_bytes=len(page),
        summary=summarize_manifest(manifest_rows(records)),
        sha256=_data_sha256(data),
        unreadable=unreadable,
    )


def _check_thumbnail_settings(size: int, fmt: str) -> None:
    if not isinstance(size, int) or not 16 <= size <= 2048:
        raise ValueError(f"thumbnail_size={size!r}: use a pixel count from 16 to 2048")
    if fmt not in THUMBNAIL_EXTENSIONS:
        raise ValueError(f"thumbnail_format={fmt!r}: use 'webp' or 'jpeg'")
    if fmt == "webp" and not features.check("webp"):
        raise ValueError("this Pillow build cannot write WebP: use thumbnail_format='jpeg'")


# --- Dagster asset --------------------------------------------------------------------------


def _gallery_metadata(result: GalleryResult) -> dict[str, Any]:
    shown = redact_url(result.url)
    link = dg.MetadataValue.path(shown) if result.local else dg.MetadataValue.url(shown)
    metadata: dict[str, Any] = {
        "gallery": link,
        **_cost_metadata(result.summary),
        "new_thumbnails": dg.MetadataValue.int(result.new_thumbnails),
        "cached_thumbnails": dg.MetadataValue.int(result.cached_thumbnails),
        "removed_thumbnails": dg.MetadataValue.int(result.removed_thumbnails),
        "unreadable_images": dg.MetadataValue.int(len(result.unreadable)),
        "page_bytes": dg.MetadataValue.int(result.page_bytes),
        "dagster/row_count": dg.MetadataValue.int(result.images),
    }
    if result.unreadable:
        metadata["unreadable"] = dg.MetadataValue.json(result.unreadable[:50])
    return metadata


def image_gallery_asset(
    *,
    name: str = "image_gallery",
    assets: Sequence[dg.AssetsDefinition | dg.AssetKey | str],
    store_key: str = "image_store",
    output_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    title: str | None = None,
    thumbnail_size: int = 256,
    thumbnail_format: ThumbnailFormat = "webp",
    automation_condition: dg.AutomationCondition | None = None,
    description: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.AssetsDefinition:
    """An unpartitioned asset writing a static HTML gallery of every stored image of ``assets``
    (image assets, which it depends on) to review them by eye: a grid of thumbnails with key,
    prompt, revised prompt, model, size, quality, cost and latency, edits linked to their sources,
    filters by asset, text search over prompts, and totals (images, cost per asset).

    The gallery goes to ``output_url`` (a folder; default ``{store base}/{asset key path}/``):
    ``index.html`` plus ``thumbs/{sha256}.{webp|jpg}``, ``thumbnail_size`` pixels on the longer
    side, made once per distinct image. The materialization links to the page (a path for a local
    gallery, a URL otherwise) and carries images, cost per asset and new thumbnails.
    """
    if not assets:
        raise ValueError("assets is empty; give at least one image asset")
    keys = _source_keys(assets)
    _check_thumbnail_settings(thumbnail_size, thumbnail_format)
    if output_url is not None:
        check_url_has_no_credentials(output_url, what="image_gallery_asset output_url")
    asset_key = _asset_key(name, key_prefix)
    names = [key.to_user_string() for key in keys]

    def gallery(context: dg.AssetExecutionContext, store: ImageStore) -> dg.MaterializeResult:
        target = output_url or _join(store.resolved_base_url, *asset_key.path)
        result = build_gallery(
            store,
            keys,
            target,
            storage_options=storage_options,
            title=title or asset_key.to_user_string(),
            thumbnail_size=thumbnail_size,
            thumbnail_format=thumbnail_format,
        )
        context.log.info(
            f"{asset_key.to_user_string()}: {result.images} images ({result.new_thumbnails} new "
            f"thumbnails, {len(result.unreadable)} unreadable), total cost "
            f"${result.summary.cost_usd:.4f} → {redact_url(result.url)}"
        )
        return dg.MaterializeResult(
            metadata=_gallery_metadata(result), data_version=dg.DataVersion(result.sha256)
        )

    return _store_asset(
        gallery,
        key=asset_key,
        deps=keys,
        store_key=store_key,
        kinds={"html", "image"},
        description=description or f"HTML gallery of every stored image of {', '.join(names)}",
        group_name=group_name,
        automation_condition=automation_condition,
        owners=owners,
        tags=tags,
    )
