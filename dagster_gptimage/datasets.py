"""Image datasets: a manifest of every stored image, and a Hugging Face ``imagefolder`` export.

Both read the sidecar records of the ``ImageStore`` (not Dagster's event log): the store is what a
dataset is made of, and a sidecar says exactly how its image was made, what it cost and, for edits,
which parent images (by asset, partition and sha256) it was made from.

- ``image_manifest_asset``: one table row per stored image, written as Parquet and JSONL, with
  cost and latency rollups as numeric metadata so the Dagster UI plots them over time.
- ``image_dataset_export_asset`` / ``export_imagefolder``: a folder that
  ``datasets.load_dataset("imagefolder", data_dir=...)`` loads, captions in ``metadata.jsonl``.

The pure functions (``manifest_rows``, ``write_manifest``, ``imagefolder_rows``,
``export_imagefolder``) work without Dagster, e.g. in a notebook.
"""

import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import dagster as dg
import pyarrow as pa

from dagster_gptimage._metadata import percentile
from dagster_gptimage._urls import check_url_has_no_credentials, redact_url
from dagster_gptimage.images import EXTENSIONS
from dagster_gptimage.models import Usage
from dagster_gptimage.storage import ImageRecord, ImageStore

__all__ = [
    "DEFAULT_EXPORT_COLUMNS",
    "EXPORT_MARKER",
    "MANIFEST_COLUMNS",
    "ImagefolderExport",
    "ManifestFiles",
    "ManifestSummary",
    "export_imagefolder",
    "image_dataset_export_asset",
    "image_manifest_asset",
    "imagefolder_rows",
    "manifest_rows",
    "manifest_table",
    "summarize_manifest",
    "write_manifest",
]

MANIFEST_SOURCES_METADATA_KEY = "gptimage/manifest_sources"
"""Definition metadata naming a manifest's source assets, so an export given the manifest knows
which images to export."""

EXPORT_MARKER = ".gptimage-export.json"
"""Hidden file in an exported split folder listing the files the export wrote (``imagefolder``
ignores hidden files). It lets a re-export skip unchanged images and remove images that left the
dataset, and keeps the export from ever deleting files it did not write."""

Split = Literal["train", "validation", "test"]

_STRING = pa.string()
_LIST = pa.list_(pa.string())
_TIMESTAMP = pa.timestamp("us", tz="UTC")

MANIFEST_COLUMNS: Mapping[str, tuple[pa.DataType, str]] = {
    "asset": (_STRING, "Asset key of the image asset, as a user string ('prefix/name')"),
    "partition_key": (_STRING, "Partition key (the prompt table's key)"),
    "path": (_STRING, "URL of the stored image"),
    "sha256": (_STRING, "sha256 of the image bytes; also the partition's Dagster data version"),
    "width": (pa.int64(), "Image width in pixels"),
    "height": (pa.int64(), "Image height in pixels"),
    "format": (_STRING, "Image format: png, jpeg, webp, gif or avif"),
    "bytes": (pa.int64(), "Size of the image file in bytes"),
    "prompt": (_STRING, "Prompt sent (for edits: the edit instruction)"),
    "revised_prompt": (_STRING, "Prompt as revised by the provider, when it returned one"),
    "parameters": (_STRING, "Request parameters as a JSON object (model, size, quality, ...)"),
    "model": (_STRING, "Model that made the image"),
    "provider": (_STRING, "Provider: openai, azure, gateway or emulator"),
    "cost_usd": (pa.float64(), "What making this image cost (USD), retries included"),
    "latency_s": (pa.float64(), "Wall time of the request that made the image, retries included"),
    "attempts": (pa.int64(), "HTTP attempts made for this image"),
    "input_tokens": (pa.int64(), "Input tokens (text + image) reported by the provider"),
    "output_tokens": (pa.int64(), "Output tokens (image + text) reported by the provider"),
    "created_at": (_TIMESTAMP, "When the image was stored (UTC)"),
    "request_id": (_STRING, "Provider request id, for support tickets"),
    "fingerprint": (_STRING, "Request fingerprint (what the cache compares)"),
    "parent_assets": (_LIST, "Edits: asset key of each input image, in request order"),
    "parent_partition_keys": (_LIST, "Edits: partition key of each input image"),
    "parent_sha256": (_LIST, "Edits: sha256 (data version) of each input image"),
    "mask_sha256": (_STRING, "Edits: sha256 of the mask, when one was sent"),
    "extra": (_STRING, "Other prompt-table columns of the row, as a JSON object"),
}
"""Every manifest column: Arrow type and meaning. The Parquet file has exactly these columns in this
order; the JSONL file has the same keys (``created_at`` as ISO 8601 text)."""

DEFAULT_EXPORT_COLUMNS: tuple[str, ...] = (
    "asset",
    "partition_key",
    "sha256",
    "width",
    "height",
    "format",
    "model",
    "provider",
    "cost_usd",
    "latency_s",
    "created_at",
    "parameters",
    "parent_assets",
    "parent_partition_keys",
    "parent_sha256",
)
"""Manifest columns an export writes to ``metadata.jsonl`` beside ``file_name`` and the caption."""

_PREVIEW_ROWS = 20
_PREVIEW_PROMPT_CHARS = 120
_COPY_THREADS = 8
_RESERVED_EXPORT_COLUMNS = frozenset({"file_name", "file_names"})
_SPLITS: tuple[str, ...] = ("train", "validation", "test")


# --- manifest rows --------------------------------------------------------------------------


def _asset_string(path: Sequence[str] | None) -> str | None:
    return "/".join(path) if path else None


def _iso_utc(value: str) -> str | None:
    """``created_at`` normalised to ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``; None when unparseable (a
    hand-edited sidecar must not break the manifest)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _manifest_row(record: ImageRecord) -> dict[str, Any]:
    usage = Usage.model_validate(record.usage or {})
    return {
        "asset": _asset_string(record.asset_key) or "",
        "partition_key": record.partition_key,
        "path": redact_url(record.path),
        "sha256": record.sha256,
        "width": int(record.width),
        "height": int(record.height),
        "format": record.format,
        "bytes": int(record.bytes),
        "prompt": record.prompt,
        "revised_prompt": record.revised_prompt,
        "parameters": _json(record.params),
        "model": record.model,
        "provider": record.provider,
        "cost_usd": float(record.cost_usd),
        "latency_s": float(record.latency_s),
        "attempts": int(record.attempts),
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "created_at": _iso_utc(record.created_at),
        "request_id": record.request_id,
        "fingerprint": record.fingerprint,
        "parent_assets": [_asset_string(source.asset_key) for source in record.sources],
        "parent_partition_keys": [source.partition_key for source in record.sources],
        "parent_sha256": [source.sha256 for source in record.sources],
        "mask_sha256": record.mask.sha256 if record.mask is not None else None,
        "extra": _json(record.extra),
    }


def manifest_rows(records: Iterable[ImageRecord]) -> list[dict[str, Any]]:
    """One JSON-safe row per record (keys: ``MANIFEST_COLUMNS``), sorted by asset then partition."""
    rows = [_manifest_row(record) for record in records]
    rows.sort(key=lambda row: (row["asset"], row["partition_key"]))
    return rows


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def manifest_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """The rows as an Arrow table with the ``MANIFEST_COLUMNS`` schema (typed even when empty)."""
    schema = pa.schema([pa.field(name, kind) for name, (kind, _) in MANIFEST_COLUMNS.items()])
    columns: dict[str, list[Any]] = {name: [] for name in MANIFEST_COLUMNS}
    for row in rows:
        for name in MANIFEST_COLUMNS:
            value = row.get(name)
            columns[name].append(_timestamp(value) if name == "created_at" else value)
    return pa.Table.from_pydict(columns, schema=schema)


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(
        (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode() for row in rows
    )


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


# --- rollups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestSummary:
    """Totals over manifest rows. Costs are what the stored images cost when they were made."""

    images: int
    cost_usd: float
    input_tokens: int
    output_tokens: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    by_asset: Mapping[str, Mapping[str, Any]]
    by_model: Mapping[str, Mapping[str, Any]]


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    latencies = [float(row["latency_s"]) for row in rows]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return {
        "images": len(rows),
        "cost_usd": math.fsum(float(row["cost_usd"]) for row in rows),
        "latency_p50_s": p50,
        "latency_p95_s": p95,
    }


def summarize_manifest(rows: Sequence[Mapping[str, Any]]) -> ManifestSummary:
    """Images, cost (``math.fsum``, so totals are exact sums), tokens and latency percentiles,
    overall, per asset and per model."""
    by_asset: dict[str, list[Mapping[str, Any]]] = {}
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_asset.setdefault(str(row["asset"]), []).append(row)
        by_model.setdefault(str(row["model"]), []).append(row)
    overall = _group(rows)
    return ManifestSummary(
        images=len(rows),
        cost_usd=overall["cost_usd"],
        input_tokens=sum(int(row["input_tokens"]) for row in rows),
        output_tokens=sum(int(row["output_tokens"]) for row in rows),
        latency_p50_s=overall["latency_p50_s"],
        latency_p95_s=overall["latency_p95_s"],
        by_asset={asset: _group(group) for asset, group in sorted(by_asset.items())},
        by_model={model: _group(group) for model, group in sorted(by_model.items())},
    )


# --- output files ---------------------------------------------------------------------------


def _output_store(
    url: str, store: ImageStore | None, storage_options: Mapping[str, Any] | None
) -> ImageStore:
    """An ImageStore rooted at ``url`` used as a plain fsspec folder with the store's atomic writes
    (temp file + ``os.replace`` locally, one ``pipe_file`` on object stores). Without explicit
    ``storage_options``, a URL on the image store's own protocol reuses its options."""
    check_url_has_no_credentials(url, what="output URL")
    if (
        storage_options is None
        and store is not None
        and _protocol(url) == _protocol(store.resolved_base_url)
    ):
        storage_options = store.storage_options
    return ImageStore(base_url=url, storage_options=dict(storage_options or {}))


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


@dataclass(frozen=True)
class ManifestFiles:
    """What ``write_manifest`` wrote."""

    parquet_url: str
    jsonl_url: str
    rows: list[dict[str, Any]]
    summary: ManifestSummary
    sha256: str
    """sha256 of the JSONL file: the manifest's data version (same images → same version)."""


def _manifest_urls(output_url: str) -> tuple[str, str, str]:
    """(folder, parquet URL, jsonl URL): ``output_url`` is a folder, or a ``.parquet`` file whose
    JSONL twin goes beside it."""
    url = output_url.rstrip("/")
    if url.endswith(".parquet"):
        folder, _, _ = url.rpartition("/")
        return folder or ".", url, url[: -len(".parquet")] + ".jsonl"
    return url, _join(url, "manifest.parquet"), _join(url, "manifest.jsonl")


def write_manifest(
    records: Iterable[ImageRecord],
    output_url: str,
    *,
    store: ImageStore | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ManifestFiles:
    """Write ``manifest.parquet`` and ``manifest.jsonl`` for ``records`` under ``output_url`` (a
    folder, or a ``.parquet`` file path) through fsspec, each file all-or-nothing.

    ``store`` (optional) lends its ``storage_options`` when the output is on the same protocol.
    """
    folder_url, parquet_url, jsonl_url = _manifest_urls(output_url)
    rows = manifest_rows(records)
    folder = _output_store(folder_url, store, storage_options)
    parquet_url = _join(folder.resolved_base_url, parquet_url.rsplit("/", 1)[-1])
    jsonl_url = _join(folder.resolved_base_url, jsonl_url.rsplit("/", 1)[-1])
    jsonl = _jsonl(rows)
    folder.write_bytes(parquet_url, _parquet(manifest_table(rows)))
    folder.write_bytes(jsonl_url, jsonl)
    return ManifestFiles(
        parquet_url=parquet_url,
        jsonl_url=jsonl_url,
        rows=rows,
        summary=summarize_manifest(rows),
        sha256=hashlib.sha256(jsonl).hexdigest(),
    )


# --- imagefolder export ---------------------------------------------------------------------


def _file_name(row: Mapping[str, Any]) -> str:
    """Flat file names (``{asset path joined by '__'}__{partition}.{ext}``) in the split folder:
    a sub-folder named like a split keyword ('test_set', 'eval-…') would make ``datasets`` invent a
    split, so the split folder is the only folder."""
    asset = str(row["asset"]).replace("/", "__")
    return f"{asset}__{row['partition_key']}.{EXTENSIONS[row['format']]}"


def _export_value(value: Any) -> Any:
    """Never null and never a list: ``imagefolder`` infers column types from the first rows, so a
    column that is null (or an empty list) there and text later would fail to load."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return _json(list(value) if isinstance(value, tuple) else value)
    return value


def _check_export_columns(caption_column: str, columns: Sequence[str]) -> None:
    if not caption_column or caption_column in _RESERVED_EXPORT_COLUMNS:
        raise ValueError(
            f"caption_column={caption_column!r} must be a non-empty name other than file_name"
        )
    names = [caption_column, *columns]
    for name in names:
        if name.endswith(("_file_name", "_file_names")):
            raise ValueError(
                f"column {name!r}: imagefolder reads columns ending in '_file_name(s)' as image "
                "paths; choose another name"
            )
    unknown = [name for name in columns if name not in MANIFEST_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown export columns {unknown}; accepted: {', '.join(MANIFEST_COLUMNS)}"
        )
    if caption_column in columns:
        raise ValueError(
            f"caption_column={caption_column!r} is also in columns: the caption (the prompt) would "
            "overwrite it; choose another caption column name"
        )
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns {list(columns)} has duplicates")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(
            f"split={split!r}; accepted: {', '.join(_SPLITS)} (the folder names datasets "
            "recognises as splits)"
        )


def imagefolder_rows(
    records: Iterable[ImageRecord],
    *,
    caption_column: str = "text",
    columns: Sequence[str] = DEFAULT_EXPORT_COLUMNS,
) -> list[dict[str, Any]]:
    """The ``metadata.jsonl`` rows of an export: ``file_name``, the prompt as ``caption_column``,
    then ``columns`` (manifest columns; lists and JSON as text, missing values as "")."""
    _check_export_columns(caption_column, columns)
    rows = []
    for row in manifest_rows(records):
        out: dict[str, Any] = {"file_name": _file_name(row), caption_column: row["prompt"]}
        for name in columns:
            out[name] = _export_value(row[name])
        rows.append(out)
    seen: set[str] = set()
    for row in rows:
        if row["file_name"] in seen:
            raise ValueError(
                f"two images would be exported as {row['file_name']!r}; rename an asset or key"
            )
        seen.add(row["file_name"])
    return rows


@dataclass(frozen=True)
class ImagefolderExport:
    """What ``export_imagefolder`` wrote."""

    output_url: str
    split: str
    metadata_url: str
    rows: list[dict[str, Any]]
    copied: int
    unchanged: int
    removed: int
    sha256: str
    """sha256 of ``metadata.jsonl``: the export's data version."""


def _read_marker(folder: ImageStore, split_url: str) -> dict[str, str] | None:
    """Files (name → sha256) of the previous export in ``split_url``; None when the folder is not
    an export. Refuses a non-empty folder without a marker: the export deletes files it replaced,
    so it must never adopt a folder holding someone else's files."""
    fs = folder.fs
    target = fs._strip_protocol(split_url)
    fs.invalidate_cache(target)
    try:
        raw = fs.cat_file(fs._strip_protocol(_join(split_url, EXPORT_MARKER)))
    except FileNotFoundError:
        try:
            entries = fs.ls(target, detail=False)
        except FileNotFoundError:
            return None
        if any(not str(entry).rstrip("/").rsplit("/", 1)[-1].startswith(".") for entry in entries):
            raise ValueError(
                f"refusing to export into {redact_url(split_url)}: the folder is not empty and was "
                f"not written by an export (no {EXPORT_MARKER}). Choose an empty or new folder."
            ) from None
        return None
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{redact_url(_join(split_url, EXPORT_MARKER))} is unreadable ({type(error).__name__}); "
            "delete the folder and export again"
        ) from error
    return {str(name): str(sha) for name, sha in files.items()}


def _copy_one(
    store: ImageStore,
    folder: ImageStore,
    record: ImageRecord,
    target: str,
    previous_sha: str | None,
) -> str:
    """ "copied", or "unchanged" when the previous export wrote the same bytes; otherwise why the
    source image cannot be shipped (missing, or not matching its sidecar: corrupted or swapped)."""
    fs = folder.fs
    if previous_sha == record.sha256:
        try:
            if fs.size(fs._strip_protocol(target)) == record.bytes:
                return "unchanged"
        except FileNotFoundError:
            pass
    source = store.image_path(record.asset_key, record.partition_key, record.format)
    try:
        data = store.read_bytes(source)
    except FileNotFoundError:
        return f"{redact_url(source)} is missing"
    if hashlib.sha256(data).hexdigest() != record.sha256:
        return f"{redact_url(source)} does not match its sidecar's sha256"
    folder.write_bytes(target, data)
    return "copied"


def export_imagefolder(
    records: Iterable[ImageRecord],
    store: ImageStore,
    output_url: str,
    *,
    caption_column: str = "text",
    split: Split = "train",
    columns: Sequence[str] = DEFAULT_EXPORT_COLUMNS,
    storage_options: Mapping[str, Any] | None = None,
) -> ImagefolderExport:
    """Write ``records``' images as a Hugging Face ``imagefolder`` dataset under ``output_url``.

    Layout: ``{output_url}/{split}/{asset}__{partition}.{ext}`` plus ``{split}/metadata.jsonl``
    (``file_name``, the prompt as ``caption_column``, ``columns``). Images are copied through
    fsspec (verified against their sidecar's sha256), then ``metadata.jsonl`` is written in one
    piece, so a reader never sees rows for images not yet copied. Re-exporting skips images whose
    bytes did not change and removes images the previous export wrote that left the dataset.
    Load with ``datasets.load_dataset("imagefolder", data_dir=output_url)``.
    """
    _check_split(split)
    records = list(records)
    if not records:
        raise ValueError("nothing to export: no stored images (materialize the image assets first)")
    rows = imagefolder_rows(records, caption_column=caption_column, columns=columns)
    by_name = {_file_name(_manifest_row(record)): record for record in records}
    folder = _output_store(output_url, store, storage_options)
    split_url = _join(folder.resolved_base_url, split)
    previous = _read_marker(folder, split_url) or {}

    def copy(name: str) -> tuple[str, str]:
        return name, _copy_one(
            store, folder, by_name[name], _join(split_url, name), previous.get(name)
        )

    with ThreadPoolExecutor(max_workers=_COPY_THREADS) as pool:
        outcomes = dict(pool.map(copy, sorted(by_name)))
    problems = {
        name: text for name, text in outcomes.items() if text not in ("copied", "unchanged")
    }
    if problems:
        listed = "; ".join(f"{name}: {text}" for name, text in sorted(problems.items())[:20])
        raise ValueError(
            f"{len(problems)} images could not be exported (run the image_valid asset check or "
            f"re-materialize those partitions): {listed}"
        )
    metadata = _jsonl(rows)
    metadata_url = _join(split_url, "metadata.jsonl")
    folder.write_bytes(metadata_url, metadata)
    marker = {
        "schema_version": 1,
        "written_by": "dagster-gptimage",
        "caption_column": caption_column,
        "files": {name: by_name[name].sha256 for name in sorted(by_name)},
    }
    folder.write_bytes(_join(split_url, EXPORT_MARKER), json.dumps(marker, indent=1).encode())
    removed = 0
    fs = folder.fs
    for name in sorted(set(previous) - set(by_name)):
        target = fs._strip_protocol(_join(split_url, name))
        try:
            fs.rm_file(target)
            removed += 1
        except FileNotFoundError:
            pass
    counts = list(outcomes.values())
    return ImagefolderExport(
        output_url=folder.resolved_base_url,
        split=split,
        metadata_url=metadata_url,
        rows=rows,
        copied=counts.count("copied"),
        unchanged=counts.count("unchanged"),
        removed=removed,
        sha256=hashlib.sha256(metadata).hexdigest(),
    )


# --- Dagster assets -------------------------------------------------------------------------


def _source_keys(sources: Sequence[dg.AssetsDefinition | dg.AssetKey | str]) -> list[dg.AssetKey]:
    keys: list[dg.AssetKey] = []
    for source in sources:
        if isinstance(source, dg.AssetsDefinition):
            keys.extend(sorted(source.keys, key=lambda key: key.to_user_string()))
        elif isinstance(source, dg.AssetKey):
            keys.append(source)
        else:
            keys.append(dg.AssetKey.from_user_string(source))
    if not keys:
        raise ValueError("sources is empty; give at least one image asset")
    duplicates = sorted({key.to_user_string() for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"sources lists {', '.join(duplicates)} more than once")
    return keys


def _manifest_sources(asset: dg.AssetsDefinition) -> list[dg.AssetKey] | None:
    """The source keys recorded on a manifest made by ``image_manifest_asset``; None otherwise."""
    if len(asset.keys) != 1:
        return None
    entry = asset.metadata_by_key.get(asset.key, {}).get(MANIFEST_SOURCES_METADATA_KEY)
    if entry is None:
        return None
    names = entry.value if isinstance(entry, dg.MetadataValue) else entry
    if not isinstance(names, list):
        return None
    return [dg.AssetKey.from_user_string(str(name)) for name in names]


def _export_sources(
    sources: Sequence[dg.AssetsDefinition | dg.AssetKey | str],
) -> tuple[list[dg.AssetKey], list[dg.AssetKey]]:
    """The export's deps (manifests stand for their sources) and the image assets it exports."""
    deps: list[dg.AssetKey] = []
    image_keys: list[dg.AssetKey] = []
    for source in sources:
        manifest_sources = (
            _manifest_sources(source) if isinstance(source, dg.AssetsDefinition) else None
        )
        if manifest_sources is not None:
            assert isinstance(source, dg.AssetsDefinition)
            deps.append(source.key)
            image_keys.extend(key for key in manifest_sources if key not in image_keys)
        else:
            for key in _source_keys([source]):
                deps.append(key)
                if key not in image_keys:
                    image_keys.append(key)
    _source_keys(deps)
    return deps, image_keys


def _asset_key(name: str, key_prefix: str | Sequence[str] | None) -> dg.AssetKey:
    prefix = [key_prefix] if isinstance(key_prefix, str) else list(key_prefix or [])
    return dg.AssetKey([*prefix, name])


def _store_asset(
    body: Callable[[dg.AssetExecutionContext, ImageStore], dg.MaterializeResult],
    *,
    key: dg.AssetKey,
    deps: Sequence[dg.AssetKey],
    store_key: str,
    kinds: set[str],
    description: str,
    group_name: str | None,
    automation_condition: dg.AutomationCondition | None,
    owners: Sequence[str] | None,
    tags: Mapping[str, str] | None,
    metadata: Mapping[str, Any] | None = None,
) -> dg.AssetsDefinition:
    """An unpartitioned asset over ``deps`` (nothing loaded through an IO manager) whose ``body``
    reads the image store resource ``store_key``: manifests, dataset exports, galleries."""

    @dg.asset(
        key=key,
        deps=deps,
        group_name=group_name,
        automation_condition=automation_condition,
        description=description,
        required_resource_keys={store_key},
        kinds=kinds,
        owners=owners,
        tags=tags,
        metadata=metadata,
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return body(context, getattr(context.resources, store_key))

    return _asset


def _cost_metadata(summary: ManifestSummary) -> dict[str, Any]:
    """Rollups as typed entries (plotted by the UI across materializations) plus JSON tables."""
    metadata: dict[str, Any] = {
        "images": dg.MetadataValue.int(summary.images),
        "total_cost_usd": dg.MetadataValue.float(summary.cost_usd),
        "input_tokens": dg.MetadataValue.int(summary.input_tokens),
        "output_tokens": dg.MetadataValue.int(summary.output_tokens),
        "cost_by_asset": dg.MetadataValue.json(dict(summary.by_asset)),
        "cost_by_model": dg.MetadataValue.json(dict(summary.by_model)),
    }
    if summary.latency_p50_s is not None and summary.latency_p95_s is not None:
        metadata["latency_p50_s"] = dg.MetadataValue.float(summary.latency_p50_s)
        metadata["latency_p95_s"] = dg.MetadataValue.float(summary.latency_p95_s)
    for asset, group in summary.by_asset.items():
        metadata[f"cost_usd/{asset}"] = dg.MetadataValue.float(group["cost_usd"])
        metadata[f"images/{asset}"] = dg.MetadataValue.int(group["images"])
    for model, group in summary.by_model.items():
        metadata[f"model_cost_usd/{model}"] = dg.MetadataValue.float(group["cost_usd"])
    return metadata


def _summary_table(summary: ManifestSummary) -> dg.MetadataValue:
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("asset", "string"),
            dg.TableColumn("images", "int"),
            dg.TableColumn("cost_usd", "float"),
            dg.TableColumn("latency_p50_s", "float"),
            dg.TableColumn("latency_p95_s", "float"),
        ]
    )
    records = [
        dg.TableRecord(
            {
                "asset": asset,
                "images": group["images"],
                "cost_usd": group["cost_usd"],
                "latency_p50_s": group["latency_p50_s"],
                "latency_p95_s": group["latency_p95_s"],
            }
        )
        for asset, group in summary.by_asset.items()
    ]
    return dg.MetadataValue.table(records, schema=schema)


def _preview_table(rows: Sequence[Mapping[str, Any]]) -> dg.MetadataValue:
    names = (
        "asset",
        "partition_key",
        "model",
        "cost_usd",
        "latency_s",
        "width",
        "height",
        "prompt",
    )
    types = {"cost_usd": "float", "latency_s": "float", "width": "int", "height": "int"}
    schema = dg.TableSchema(columns=[dg.TableColumn(n, types.get(n, "string")) for n in names])
    records = []
    for row in rows[:_PREVIEW_ROWS]:
        values = {name: row[name] for name in names}
        prompt = str(values["prompt"])
        if len(prompt) > _PREVIEW_PROMPT_CHARS:
            values["prompt"] = prompt[: _PREVIEW_PROMPT_CHARS - 1] + "…"
        records.append(dg.TableRecord(values))
    return dg.MetadataValue.table(records, schema=schema)


def _column_schema() -> dg.TableSchema:
    def kind(arrow: pa.DataType) -> str:
        if pa.types.is_list(arrow):
            return "list<string>"
        if pa.types.is_timestamp(arrow):
            return "timestamp"
        return str(arrow)

    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind(arrow), description=description)
            for name, (arrow, description) in MANIFEST_COLUMNS.items()
        ]
    )


def _collect(store: ImageStore, keys: Sequence[dg.AssetKey]) -> list[ImageRecord]:
    return [record for key in keys for record in store.list_records(key)]


def image_manifest_asset(
    *,
    name: str = "image_manifest",
    sources: Sequence[dg.AssetsDefinition | dg.AssetKey | str],
    store_key: str = "image_store",
    output_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    group_name: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    description: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.AssetsDefinition:
    """An unpartitioned asset listing every stored image of ``sources`` (image assets) in one table.

    Rows come from the store's sidecars (see ``MANIFEST_COLUMNS``), written as ``manifest.parquet``
    and ``manifest.jsonl`` under ``output_url`` (a folder or a ``.parquet`` path; default
    ``{store base}/{asset key path}/``). The materialization carries the totals: images, cost per
    asset (``cost_usd/<asset>``) and per model (``model_cost_usd/<model>``), tokens, p50/p95
    latency, a per-asset summary table, a preview, row count and column schema. Its data version is
    the sha256 of the JSONL, so assets downstream of the manifest go stale only when an image changed.
    The sources are ``deps`` (nothing is loaded through an IO manager).
    """
    source_keys = _source_keys(sources)
    asset_key = _asset_key(name, key_prefix)
    if output_url is not None:
        check_url_has_no_credentials(output_url, what="image_manifest_asset output_url")
    names = [key.to_user_string() for key in source_keys]

    def manifest(context: dg.AssetExecutionContext, store: ImageStore) -> dg.MaterializeResult:
        target = output_url or _join(store.resolved_base_url, *asset_key.path)
        files = write_manifest(
            _collect(store, source_keys), target, store=store, storage_options=storage_options
        )
        summary = files.summary
        context.log.info(
            f"{asset_key.to_user_string()}: {summary.images} images, total cost "
            f"${summary.cost_usd:.4f} ("
            + ", ".join(f"{a} ${g['cost_usd']:.4f}" for a, g in summary.by_asset.items())
            + f") → {redact_url(files.parquet_url)}"
        )
        metadata = {
            **_cost_metadata(summary),
            "path": dg.MetadataValue.path(redact_url(files.parquet_url)),
            "jsonl_path": dg.MetadataValue.path(redact_url(files.jsonl_url)),
            "summary": _summary_table(summary),
            "preview": _preview_table(files.rows),
            "sources": dg.MetadataValue.json(names),
            "dagster/row_count": dg.MetadataValue.int(len(files.rows)),
            "dagster/column_schema": dg.MetadataValue.table_schema(_column_schema()),
        }
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(files.sha256))

    return _store_asset(
        manifest,
        key=asset_key,
        deps=source_keys,
        store_key=store_key,
        kinds={"parquet"},
        description=description or f"Manifest of every stored image of {', '.join(names)}",
        metadata={MANIFEST_SOURCES_METADATA_KEY: dg.MetadataValue.json(names)},
        group_name=group_name,
        automation_condition=automation_condition,
        owners=owners,
        tags=tags,
    )


def image_dataset_export_asset(
    *,
    name: str = "image_dataset",
    sources: Sequence[dg.AssetsDefinition | dg.AssetKey | str],
    output_url: str,
    caption_column: str = "text",
    split: Split = "train",
    columns: Sequence[str] = DEFAULT_EXPORT_COLUMNS,
    store_key: str = "image_store",
    storage_options: Mapping[str, Any] | None = None,
    group_name: str | None = None,
    key_prefix: str | Sequence[str] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    description: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.AssetsDefinition:
    """An unpartitioned asset exporting the stored images of ``sources`` as a Hugging Face
    ``imagefolder`` dataset at ``output_url`` (see ``export_imagefolder`` for the layout).

    ``sources`` are image assets, or manifests made by ``image_manifest_asset`` (the export then
    depends on the manifest and exports the manifest's sources). Every source goes into one
    ``split`` with an ``asset`` column; to get one asset per split, define one export per asset
    with the same ``output_url`` and different ``split``.
    """
    _check_split(split)
    _check_export_columns(caption_column, columns)
    check_url_has_no_credentials(output_url, what="image_dataset_export_asset output_url")
    deps, image_keys = _export_sources(sources)
    asset_key = _asset_key(name, key_prefix)
    names = [key.to_user_string() for key in image_keys]

    def export(context: dg.AssetExecutionContext, store: ImageStore) -> dg.MaterializeResult:
        records = _collect(store, image_keys)
        result = export_imagefolder(
            records,
            store,
            output_url,
            caption_column=caption_column,
            split=split,
            columns=columns,
            storage_options=storage_options,
        )
        summary = summarize_manifest(manifest_rows(records))
        shown = redact_url(result.output_url)
        context.log.info(
            f"{asset_key.to_user_string()}: exported {len(result.rows)} images to {shown} "
            f"({result.copied} copied, {result.unchanged} unchanged, {result.removed} removed)"
        )
        metadata = {
            **_cost_metadata(summary),
            "path": dg.MetadataValue.path(shown),
            "metadata_path": dg.MetadataValue.path(redact_url(result.metadata_url)),
            "split": dg.MetadataValue.text(split),
            "caption_column": dg.MetadataValue.text(caption_column),
            "copied": dg.MetadataValue.int(result.copied),
            "unchanged": dg.MetadataValue.int(result.unchanged),
            "removed": dg.MetadataValue.int(result.removed),
            "load": dg.MetadataValue.md(
                f'```python\nimport datasets\nds = datasets.load_dataset("imagefolder", '
                f'data_dir="{shown}")\n```'
            ),
            "dagster/row_count": dg.MetadataValue.int(len(result.rows)),
        }
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.sha256))

    return _store_asset(
        export,
        key=asset_key,
        deps=deps,
        store_key=store_key,
        kinds={"huggingface", "image"},
        description=description
        or f"Hugging Face imagefolder dataset ({split} split) of {', '.join(names)}",
        group_name=group_name,
        automation_condition=automation_condition,
        owners=owners,
        tags=tags,
    )
