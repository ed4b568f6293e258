"""Manifests and imagefolder exports: rows from sidecars, totals against the instance's
materialization metadata, atomic fsspec writes, and a real ``datasets.load_dataset`` round trip."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _assets_support import SMALL, emulator_resources, materializations, materialize_range, value
from PIL import Image

from dagster_gptimage._metadata import percentile
from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.datasets import (
    DEFAULT_EXPORT_COLUMNS,
    EXPORT_MARKER,
    MANIFEST_COLUMNS,
    export_imagefolder,
    image_dataset_export_asset,
    image_manifest_asset,
    imagefolder_rows,
    manifest_rows,
    manifest_table,
    summarize_manifest,
    write_manifest,
)
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageRecord, ImageStore, SourceImage

REPO = Path(__file__).resolve().parents[1]
KEYS = ["a", "b", "c"]


def png(size: tuple[int, int] = (8, 6), color: str = "red", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def record(**overrides: Any) -> ImageRecord:
    fields: dict[str, Any] = {
        "fingerprint": "fp",
        "prompt": "a red square",
        "params": {"size": "1024x1024", "quality": "low"},
        "model": "gpt-image-2",
        "provider": "emulator",
        "usage": {"input_text_tokens": 5, "input_image_tokens": 7, "output_image_tokens": 100},
        "cost_usd": 0.25,
        "latency_s": 1.5,
        "attempts": 2,
        "request_id": "req_1",
        "created_at": "2026-01-02T03:04:05Z",
        "extra": {"category": "shapes"},
    }
    fields.update(overrides)
    return ImageRecord(**fields)


def stored(store: ImageStore) -> tuple[ImageRecord, ImageRecord, ImageRecord]:
    """Two generated images and an edit of the first, written through the store."""
    gen_a = store.write_image(["shapes"], "a", png(color="red"), "png", record())
    gen_b = store.write_image(
        ["shapes"],
        "b",
        png((10, 4), "blue", "WEBP"),
        "webp",
        record(prompt="a blue bar", cost_usd=0.5, latency_s=3.0, model="gpt-image-1.5"),
    )
    edit = store.write_image(
        ["shapes_night"],
        "a",
        png(color="black"),
        "png",
        record(
            prompt="at night",
            cost_usd=0.125,
            latency_s=0.5,
            sources=[
                SourceImage(
                    asset_key=["shapes"], partition_key="a", path=gen_a.path, sha256=gen_a.sha256
                )
            ],
            mask=SourceImage(path="/masks/m.png", sha256="f" * 64),
            extra={},
        ),
    )
    return gen_a, gen_b, edit


# --- pure functions -------------------------------------------------------------------------


def test_manifest_rows_have_every_column_and_edit_lineage(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path))
    gen_a, gen_b, edit = stored(store)

    rows = manifest_rows([edit, gen_b, gen_a])

    assert [list(row) for row in rows] == [list(MANIFEST_COLUMNS)] * 3
    assert [(r["asset"], r["partition_key"]) for r in rows] == [
        ("shapes", "a"),
        ("shapes", "b"),
        ("shapes_night", "a"),
    ]
    first, second, night = rows
    assert first["path"] == store.image_path(["shapes"], "a", "png")
    assert first["sha256"] == gen_a.sha256
    assert (first["width"], first["height"], first["format"], first["bytes"]) == (
        8,
        6,
        "png",
        gen_a.bytes,
    )
    assert (second["width"], second["height"], second["format"]) == (10, 4, "webp")
    assert json.loads(first["parameters"]) == {"size": "1024x1024", "quality": "low"}
    assert (first["input_tokens"], first["output_tokens"]) == (12, 100)
    assert first["created_at"] == "2026-01-02T03:04:05Z"
    assert json.loads(first["extra"]) == {"category": "shapes"}
    assert first["parent_assets"] == first["parent_partition_keys"] == first["parent_sha256"] == []
    assert first["mask_sha256"] is None
    assert night["parent_assets"] == ["shapes"]
    assert night["parent_partition_keys"] == ["a"]
    assert night["parent_sha256"] == [gen_a.sha256]
    assert night["mask_sha256"] == "f" * 64
    assert night["revised_prompt"] is None
    assert night["request_id"] == "req_1"


def test_created_at_is_normalised_and_bad_values_become_null() -> None:
    rows = manifest_rows(
        [
            record(created_at="2026-01-02T04:04:05+01:00", asset_key=["x"], partition_key="1"),
            record(created_at="yesterday", asset_key=["x"], partition_key="2"),
        ]
    )
    assert [row["created_at"] for row in rows] == ["2026-01-02T03:04:05Z", None]
    table = manifest_table(rows)
    assert table.column("created_at").to_pylist()[1] is None
    assert table.column("created_at").to_pylist()[0].isoformat() == "2026-01-02T03:04:05+00:00"


def test_manifest_table_is_typed_even_when_empty() -> None:
    table = manifest_table([])
    assert table.num_rows == 0
    assert table.schema.names == list(MANIFEST_COLUMNS)
    assert table.schema.field("parent_sha256").type == pa.list_(pa.string())
    assert table.schema.field("cost_usd").type == pa.float64()
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")


def test_summary_totals_and_percentiles(tmp_path: Path) -> None:
    rows = manifest_rows(stored(ImageStore(base_url=str(tmp_path))))
    summary = summarize_manifest(rows)
    assert summary.images == 3
    assert summary.cost_usd == 0.875
    assert summary.by_asset["shapes"]["cost_usd"] == 0.75
    assert summary.by_asset["shapes"]["images"] == 2
    assert summary.by_asset["shapes_night"]["cost_usd"] == 0.125
    assert summary.by_model == {
        "gpt-image-1.5": {
            "images": 1,
            "cost_usd": 0.5,
            "latency_p50_s": 3.0,
            "latency_p95_s": 3.0,
        },
        "gpt-image-2": {
            "images": 2,
            "cost_usd": 0.375,
            "latency_p50_s": 1.0,
            "latency_p95_s": pytest.approx(1.45),
        },
    }
    assert summary.latency_p50_s == 1.5
    assert summary.latency_p95_s == pytest.approx(2.85)
    assert (summary.input_tokens, summary.output_tokens) == (36, 300)
    empty = summarize_manifest([])
    assert (empty.images, empty.cost_usd, empty.latency_p50_s) == (0, 0.0, None)


@pytest.mark.parametrize("target", ["local", "memory", "parquet-file"])
def test_write_manifest_parquet_and_jsonl(tmp_path: Path, target: str) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    records = stored(store)
    if target == "memory":
        output = f"memory://manifests-{uuid.uuid4().hex}/out"
    elif target == "parquet-file":
        output = str(tmp_path / "out" / "images.parquet")
    else:
        output = str(tmp_path / "out")

    files = write_manifest(records, output, store=store)

    store_at = ImageStore(base_url=files.parquet_url.rsplit("/", 1)[0])
    parquet = pq.read_table(io.BytesIO(store_at.read_bytes(files.parquet_url)))
    jsonl = store_at.read_bytes(files.jsonl_url).decode()
    assert parquet.schema.names == list(MANIFEST_COLUMNS)
    lines = [json.loads(line) for line in jsonl.splitlines()]
    assert lines == files.rows == manifest_rows(records)
    assert parquet.column("sha256").to_pylist() == [row["sha256"] for row in lines]
    assert parquet.column("parent_sha256").to_pylist()[2] == [records[0].sha256]
    if target == "parquet-file":
        assert files.parquet_url.endswith("/out/images.parquet")
        assert files.jsonl_url.endswith("/out/images.jsonl")
    if target != "memory":
        leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
        assert leftovers == []

    again = write_manifest(list(reversed(records)), output, store=store)
    assert again.sha256 == files.sha256
    changed = write_manifest(
        [*records[:2], records[2].model_copy(update={"cost_usd": 9.0})], output
    )
    assert changed.sha256 != files.sha256


def test_write_manifest_refuses_credentials_in_the_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="credentials") as error:
        write_manifest([], "s3://AKIA:hunter2@bucket/manifest")
    assert "hunter2" not in str(error.value)


def test_imagefolder_rows_are_never_null_and_lists_are_text(tmp_path: Path) -> None:
    gen_a, gen_b, edit = stored(ImageStore(base_url=str(tmp_path)))
    rows = imagefolder_rows([gen_a, gen_b, edit], caption_column="caption")
    assert [row["file_name"] for row in rows] == [
        "shapes__a.png",
        "shapes__b.webp",
        "shapes_night__a.png",
    ]
    assert list(rows[0]) == ["file_name", "caption", *DEFAULT_EXPORT_COLUMNS]
    assert rows[1]["caption"] == "a blue bar"
    assert rows[0]["parent_sha256"] == "[]"
    assert json.loads(rows[2]["parent_sha256"]) == [gen_a.sha256]
    assert all(v is not None for row in rows for v in row.values())
    extra = imagefolder_rows([edit], columns=("revised_prompt", "mask_sha256", "extra"))
    assert extra[0]["revised_prompt"] == ""
    assert extra[0]["mask_sha256"] == "f" * 64


@pytest.mark.parametrize(
    ("caption", "columns", "match"),
    [
        ("file_name", DEFAULT_EXPORT_COLUMNS, "other than file_name"),
        ("", DEFAULT_EXPORT_COLUMNS, "non-empty"),
        ("source_file_name", DEFAULT_EXPORT_COLUMNS, "_file_name"),
        ("text", ("asset", "colour"), "unknown export columns"),
        ("asset", ("asset",), "also in columns"),
        ("text", ("asset", "asset"), "duplicates"),
    ],
)
def test_bad_export_columns(caption: str, columns: tuple[str, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        imagefolder_rows([], caption_column=caption, columns=columns)
    with pytest.raises(ValueError, match=match):
        image_dataset_export_asset(
            sources=["x"], output_url="/tmp/never", caption_column=caption, columns=columns
        )


def test_export_factory_refuses_bad_split_and_credentials() -> None:
    with pytest.raises(ValueError, match="split='holdout'"):
        image_dataset_export_asset(sources=["x"], output_url="/tmp/x", split="holdout")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="credentials") as error:
        image_dataset_export_asset(sources=["x"], output_url="s3://k:s3cr3t@bucket/ds")
    assert "s3cr3t" not in str(error.value)
    with pytest.raises(ValueError, match="more than once"):
        image_manifest_asset(sources=["x", dg.AssetKey("x")])


# --- export_imagefolder ---------------------------------------------------------------------


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_export_layout_copies_verified_images_and_reexports_incrementally(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    gen_a, gen_b, edit = stored(store)
    out = tmp_path / "dataset"

    first = export_imagefolder([gen_a, gen_b, edit], store, str(out))

    train = out / "train"
    assert files_in(out) == ["train"]
    assert files_in(train) == sorted(
        [EXPORT_MARKER, "metadata.jsonl", "shapes__a.png", "shapes__b.webp", "shapes_night__a.png"]
    )
    assert (train / "shapes__b.webp").read_bytes() == store.read_bytes(gen_b.path)
    lines = [json.loads(x) for x in (train / "metadata.jsonl").read_text().splitlines()]
    assert lines == first.rows
    assert [line["text"] for line in lines] == ["a red square", "a blue bar", "at night"]
    assert (first.copied, first.unchanged, first.removed) == (3, 0, 0)
    marker = json.loads((train / EXPORT_MARKER).read_text())
    assert marker["files"]["shapes__a.png"] == gen_a.sha256

    second = export_imagefolder([gen_a, gen_b, edit], store, str(out))
    assert (second.copied, second.unchanged, second.removed) == (0, 3, 0)
    assert second.sha256 == first.sha256

    new_a = store.write_image(["shapes"], "a", png(color="green"), "png", record(prompt="green"))
    third = export_imagefolder([new_a, gen_b], store, str(out))
    assert (third.copied, third.unchanged, third.removed) == (1, 1, 1)
    assert files_in(train) == sorted(
        [EXPORT_MARKER, "metadata.jsonl", "shapes__a.png", "shapes__b.webp"]
    )
    assert (train / "shapes__a.png").read_bytes() == store.read_bytes(new_a.path)
    assert third.sha256 != first.sha256


def test_export_to_memory_and_other_split(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    records = stored(store)
    url = f"memory://export-{uuid.uuid4().hex}"
    result = export_imagefolder(records, store, url, split="test", caption_column="prompt")
    out = ImageStore(base_url=url)
    metadata = out.read_bytes(f"{url}/test/metadata.jsonl").decode().splitlines()
    assert json.loads(metadata[0])["prompt"] == "a red square"
    assert out.read_bytes(f"{url}/test/shapes__a.png") == store.read_bytes(records[0].path)
    assert result.metadata_url == f"{url}/test/metadata.jsonl"


def test_export_refuses_foreign_folders_and_corrupt_images(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    records = stored(store)
    foreign = tmp_path / "foreign" / "train"
    foreign.mkdir(parents=True)
    (foreign / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(ValueError, match="not empty and was not written by an export"):
        export_imagefolder(records, store, str(tmp_path / "foreign"))
    assert files_in(foreign) == ["holiday.jpg"]

    with pytest.raises(ValueError, match="nothing to export"):
        export_imagefolder([], store, str(tmp_path / "empty"))

    Path(records[1].path).write_bytes(png(color="white", fmt="WEBP"))
    with pytest.raises(ValueError, match=r"shapes__b\.webp: .* does not match its sidecar"):
        export_imagefolder(records, store, str(tmp_path / "corrupt"))
    assert not (tmp_path / "corrupt" / "train" / "metadata.jsonl").exists()


# --- Dagster assets -------------------------------------------------------------------------


def scenes(prefix: str = "a harbour") -> PromptTable:
    return PromptTable.from_records([{"key": k, "prompt": f"{prefix} {k}"} for k in KEYS])


def project(tmp_path: Path, rows: PromptTable | None = None):  # type: ignore[no-untyped-def]
    harbour = image_generation_asset(name="harbour", prompts=rows or scenes(), size=SMALL)
    dusk = image_edit_asset(name="harbour_dusk", sources=[harbour], prompt="at dusk")
    manifest = image_manifest_asset(sources=[harbour, dusk], group_name="datasets")
    export = image_dataset_export_asset(
        sources=[manifest], output_url=str(tmp_path / "dataset"), group_name="datasets"
    )
    resources, emulator = emulator_resources(tmp_path / "store")
    return harbour, dusk, manifest, export, resources, emulator


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    [event] = instance.fetch_materializations(key, limit=1).records
    assert event.asset_materialization is not None
    return {
        k: value(event.asset_materialization.metadata, k)
        for k in event.asset_materialization.metadata
    }


def partition_cost(materialization: dg.AssetMaterialization) -> float:
    """What the partition's stored image cost: a cache hit reports 0 and keeps the original."""
    metadata = materialization.metadata
    key = "original_cost_usd" if value(metadata, "cached") else "cost_usd"
    return value(metadata, key)


def test_manifest_totals_equal_the_partitions_metadata(tmp_path: Path) -> None:
    harbour, dusk, manifest, _, resources, _ = project(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_range([harbour, dusk], resources, "a", "c", instance=instance).success
    # A cache hit (0 cost this time) must not change what the images cost.
    assert dg.materialize(
        [harbour], resources=resources, instance=instance, partition_key="a"
    ).success
    assert value(materializations(instance, harbour.key)["a"].metadata, "cached") is True

    assert dg.materialize([manifest], resources=resources, instance=instance).success

    meta = latest_metadata(instance, manifest.key)
    by_asset = {
        key.to_user_string(): materializations(instance, key) for key in (harbour.key, dusk.key)
    }
    for asset, mats in by_asset.items():
        assert meta[f"cost_usd/{asset}"] == math.fsum(partition_cost(m) for m in mats.values())
        assert meta[f"images/{asset}"] == len(mats) == 3
        assert meta["cost_by_asset"][asset]["cost_usd"] == meta[f"cost_usd/{asset}"]
    every = [m for mats in by_asset.values() for m in mats.values()]
    assert meta["total_cost_usd"] == math.fsum(partition_cost(m) for m in every) > 0
    assert meta["model_cost_usd/gpt-image-2"] == meta["total_cost_usd"]
    assert meta["images"] == meta["dagster/row_count"] == 6
    assert meta["input_tokens"] == sum(value(m.metadata, "input_tokens") for m in every)
    assert meta["output_tokens"] == sum(value(m.metadata, "output_tokens") for m in every)
    store = ImageStore(base_url=str(tmp_path / "store"))
    stored_latency = [
        record.latency_s for key in (harbour.key, dusk.key) for record in store.list_records(key)
    ]
    assert meta["latency_p50_s"] == percentile(stored_latency, 50)
    assert meta["latency_p95_s"] == percentile(stored_latency, 95)
    assert [c.name for c in meta["dagster/column_schema"].columns] == list(MANIFEST_COLUMNS)
    assert [r.data["asset"] for r in meta["summary"].records] == ["harbour", "harbour_dusk"]
    assert len(meta["preview"].records) == 6

    path = meta["path"]
    assert path == str(tmp_path / "store" / "image_manifest" / "manifest.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 6
    rows = table.to_pylist()
    source_sha = {pk: value(m.metadata, "sha256") for pk, m in by_asset["harbour"].items()}
    for row in rows:
        mats = by_asset[row["asset"]]
        assert row["sha256"] == value(mats[row["partition_key"]].metadata, "sha256")
        if row["asset"] == "harbour_dusk":
            assert row["parent_assets"] == ["harbour"]
            assert row["parent_partition_keys"] == [row["partition_key"]]
            assert row["parent_sha256"] == [source_sha[row["partition_key"]]]
            assert row["prompt"] == "at dusk"
        else:
            assert row["parent_assets"] == []
            assert row["prompt"] == f"a harbour {row['partition_key']}"
    jsonl = (tmp_path / "store" / "image_manifest" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["sha256"] for line in jsonl] == [row["sha256"] for row in rows]


def test_manifest_metadata_is_plottable_and_output_url_is_configurable(tmp_path: Path) -> None:
    harbour, _, _, _, resources, _ = project(tmp_path)
    manifest = image_manifest_asset(
        name="catalogue",
        key_prefix=["datasets"],
        sources=["harbour"],
        output_url=str(tmp_path / "elsewhere" / "catalogue.parquet"),
    )
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(
        [harbour], resources=resources, instance=instance, partition_key="b"
    ).success
    result = dg.materialize([manifest], resources=resources, instance=instance)
    assert result.success
    [mat] = result.asset_materializations_for_node(manifest.node_def.name)
    assert mat.asset_key == dg.AssetKey(["datasets", "catalogue"])
    assert isinstance(mat.metadata["total_cost_usd"], dg.FloatMetadataValue)
    assert isinstance(mat.metadata["cost_usd/harbour"], dg.FloatMetadataValue)
    assert isinstance(mat.metadata["latency_p95_s"], dg.FloatMetadataValue)
    assert isinstance(mat.metadata["path"], dg.PathMetadataValue)
    assert (tmp_path / "elsewhere" / "catalogue.parquet").exists()
    assert (tmp_path / "elsewhere" / "catalogue.jsonl").exists()
    assert mat.tags is not None
    jsonl = (tmp_path / "elsewhere" / "catalogue.jsonl").read_bytes()
    assert mat.tags["dagster/data_version"] == hashlib.sha256(jsonl).hexdigest()
    graph = dg.Definitions(assets=[harbour, manifest], resources=resources).resolve_asset_graph()
    spec = graph.get(mat.asset_key)
    assert spec.parent_keys == {harbour.key}
    assert not spec.is_partitioned


def load_imagefolder(data_dir: Path, home: Path) -> dict[str, Any]:
    """``datasets.load_dataset("imagefolder", ...)`` in a clean, offline interpreter whose every
    cache lives under ``home``; returns what it loaded (decoded image sizes and pixel hashes)."""
    script = """
import hashlib, json, sys
import datasets
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], cache_dir=sys.argv[2])
out = {"splits": sorted(ds), "rows": []}
for split in ds:
    out["features"] = {k: type(v).__name__ for k, v in ds[split].features.items()}
    for row in ds[split]:
        image = row.pop("image")
        row["decoded"] = [image.size[0], image.size[1], hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()]
        out["rows"].append(row)
print(json.dumps(out, default=str))
"""
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "XDG_CACHE_HOME": str(home / "xdg"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(data_dir), str(home / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def pixels(data: bytes) -> str:
    return hashlib.sha256(Image.open(io.BytesIO(data)).convert("RGB").tobytes()).hexdigest()


def test_export_loads_with_the_datasets_library(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    harbour, dusk, manifest, export, resources, _ = project(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_range([harbour, dusk], resources, "a", "c", instance=instance).success
    assert dg.materialize([manifest, export], resources=resources, instance=instance).success

    meta = latest_metadata(instance, export.key)
    assert meta["dagster/row_count"] == 6
    assert meta["copied"] == 6
    assert meta["path"] == str(tmp_path / "dataset")
    assert meta["cost_usd/harbour"] == latest_metadata(instance, manifest.key)["cost_usd/harbour"]

    home = tmp_path / "hf"
    loaded = load_imagefolder(tmp_path / "dataset", home)

    assert loaded["splits"] == ["train"]
    assert loaded["features"]["image"] == "Image"
    assert loaded["features"]["text"] == "Value"
    store = ImageStore(base_url=str(tmp_path / "store"))
    rows = {(row["asset"], row["partition_key"]): row for row in loaded["rows"]}
    assert sorted(rows) == sorted((a, k) for a in ("harbour", "harbour_dusk") for k in KEYS)
    for (asset, key), row in rows.items():
        stored_record = store.read_record(asset, key)
        assert stored_record is not None
        assert row["text"] == stored_record.prompt
        assert row["sha256"] == stored_record.sha256
        assert row["decoded"] == [
            stored_record.width,
            stored_record.height,
            pixels(store.read_bytes(stored_record.path)),
        ]
        assert row["cost_usd"] == stored_record.cost_usd
        parents = json.loads(row["parent_sha256"])
        if asset == "harbour_dusk":
            assert parents == [rows[("harbour", key)]["sha256"]]
        else:
            assert parents == []
    assert (home / "cache").is_dir()


def test_export_asset_from_image_assets_reexports_only_changes(tmp_path: Path) -> None:
    rows = scenes()
    harbour, dusk, _, _, resources, _ = project(tmp_path, rows)
    export = image_dataset_export_asset(
        name="harbour_only",
        sources=[harbour],
        output_url=str(tmp_path / "only"),
        split="validation",
    )
    graph = dg.Definitions(
        assets=[harbour, dusk, export], resources=resources
    ).resolve_asset_graph()
    assert graph.get(export.key).parent_keys == {harbour.key}
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_range([harbour], resources, "a", "c", instance=instance).success
    assert dg.materialize([export], resources=resources, instance=instance).success
    assert latest_metadata(instance, export.key)["copied"] == 3

    changed = PromptTable.from_records(
        [{"key": k, "prompt": f"a harbour {k}" + (" in snow" if k == "c" else "")} for k in KEYS]
    )
    harbour2 = image_generation_asset(name="harbour", prompts=changed, size=SMALL)
    assert dg.materialize(
        [harbour2], resources=resources, instance=instance, partition_key="c"
    ).success
    assert dg.materialize([export], resources=resources, instance=instance).success
    meta = latest_metadata(instance, export.key)
    assert (meta["copied"], meta["unchanged"], meta["removed"]) == (1, 2, 0)
    lines = (tmp_path / "only" / "validation" / "metadata.jsonl").read_text().splitlines()
    assert json.loads(lines[2])["text"] == "a harbour c in snow"


def test_docs_describe_every_manifest_column() -> None:
    docs = REPO / "docs" / "datasets-and-lineage.md"
    if not docs.exists():
        pytest.skip("docs/datasets-and-lineage.md not written yet")
    text = docs.read_text()
    missing = [name for name in MANIFEST_COLUMNS if f"`{name}`" not in text]
    assert missing == []


def test_an_eager_manifest_follows_its_image_partitions(tmp_path: Path) -> None:
    """With more than 100 upstream partitions Dagster no longer reports a manifest stale, so the
    documented way to keep it current is an automation condition: it must fire on any partition."""
    harbour, _, _, _, resources, _ = project(tmp_path)
    manifest = image_manifest_asset(
        sources=[harbour], automation_condition=dg.AutomationCondition.eager()
    )
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_range([harbour], resources, "a", "c", instance=instance).success
    assert dg.materialize([manifest], resources=resources, instance=instance).success
    defs = dg.Definitions(assets=[harbour, manifest], resources=resources)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    idle = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert idle.total_requested == 0

    assert dg.materialize(
        [harbour], resources=resources, instance=instance, partition_key="b"
    ).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=idle.cursor)

    assert after.total_requested == 1
    assert after.get_num_requested(manifest.key) == 1
