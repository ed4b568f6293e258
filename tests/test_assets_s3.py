"""End to end on S3: generation and edit assets storing through s3fs into a moto server on 127.0.0.1."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest
from _assets_support import SMALL, emulator_resources, materializations, materialize_range, value

from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.images import inspect_image
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageStore

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

FAKE_KEY = "AKIAASSETTESTS"
FAKE_SECRET = "asset-test-secret-Qz81-never-shown"


def test_generation_and_edit_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    options = {
        "key": FAKE_KEY,
        "secret": FAKE_SECRET,
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }
    bucket = f"gptimage-assets-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    prompts = PromptTable.from_records([{"key": k, "prompt": f"a canal {k}"} for k in ("x", "y")])
    base = image_generation_asset(name="canals", prompts=prompts, size=SMALL, output_format="jpeg")
    edited = image_edit_asset(
        name="canals_winter", sources=[base], prompt="frozen, in winter", output_format="jpeg"
    )
    resources, emulator = emulator_resources(tmp_path)
    store = ImageStore(base_url=f"s3://{bucket}/images", storage_options=options)
    resources["image_store"] = store
    instance = dg.DagsterInstance.ephemeral()

    result = materialize_range([base, edited], resources, "x", "y", instance=instance)

    assert result.success
    for asset in (base, edited):
        mats = materializations(instance, asset.key)
        assert sorted(mats) == ["x", "y"]
        for key, mat in mats.items():
            path = value(mat.metadata, "path")
            assert path == f"s3://{bucket}/images/{asset.key.path[-1]}/{key}.jpg"
            assert inspect_image(store.read_bytes(path)).format == "jpeg"
            text = repr(dict(mat.metadata)) + repr(mat.tags)
            assert FAKE_SECRET not in text
            assert FAKE_KEY not in text
    record = store.read_record(edited.key, "x")
    assert record is not None
    assert record.sources[0].path.startswith(f"s3://{bucket}/images/canals/")

    again = materialize_range([base, edited], resources, "x", "y", instance=instance)
    assert again.success
    assert emulator.stats.requests == 4
    assert all(
        value(mat.metadata, "cached")
        for mat in materializations(instance, edited.key, run_id=again.run_id).values()
    )
