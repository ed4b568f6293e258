"""The gallery: thumbnails made once per sha256, relative links that resolve, totals equal to the
sidecars, lineage of edits, escaping of prompts, local and ``memory://`` stores, and the asset."""

from __future__ import annotations

import io
import json
import math
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _assets_support import SMALL, emulator_resources, materialize_range, value
from PIL import Image

import dagster_gptimage.gallery as gallery_module
from dagster_gptimage import (
    ImageRecord,
    ImageStore,
    PromptTable,
    SourceImage,
    build_gallery,
    image_edit_asset,
    image_gallery_asset,
    image_generation_asset,
)

_DATA = re.compile(r'<script type="application/json" id="gallery-data">(.*?)</script>', re.S)


def image(color: str, size: tuple[int, int] = (96, 64), fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def record(prompt: str = "a square", cost: float = 0.25, **fields: Any) -> ImageRecord:
    return ImageRecord(
        fingerprint="fp",
        prompt=prompt,
        model="gpt-image-2",
        provider="emulator",
        params={"size": "1024x1024", "quality": "low"},
        cost_usd=cost,
        latency_s=1.25,
        **fields,
    )


def fill(store: ImageStore) -> list[ImageRecord]:
    """Three shapes (two of them the same bytes under different keys) and an edit of one."""
    red = store.write_image(["shapes"], "red", image("red"), "png", record("a red square", 0.1))
    blue = store.write_image(
        ["shapes"], "blue", image("blue", fmt="WEBP"), "webp", record("a blue square", 0.2)
    )
    twin = store.write_image(["shapes"], "red-again", image("red"), "png", record("red", 0.3))
    source = SourceImage(
        asset_key=["shapes"], partition_key="red", path=red.path, sha256=red.sha256
    )
    night = store.write_image(
        ["shapes_night"],
        "red",
        image("black"),
        "png",
        record("the same square at night", 0.125, sources=[source]),
    )
    return [red, blue, twin, night]


def page_data(page: str) -> dict[str, Any]:
    found = _DATA.search(page)
    assert found, "no inlined data in the page"
    return json.loads(found.group(1))


def items(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Items by ``asset/partition``, as dicts of the data's fields."""
    out = {}
    for row in data["items"]:
        item = dict(zip(data["fields"], row, strict=True))
        item["asset"] = data["assets"][item["asset"]]["key"]
        out[f"{item['asset']}/{item['partition']}"] = item
    return out


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every thumbnail made (each one a full decode of its image), by image size in bytes."""
    calls: list[int] = []
    real = gallery_module.make_thumbnail

    def counting(data: bytes, **kwargs: Any) -> bytes:
        calls.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(gallery_module, "make_thumbnail", counting)
    return calls


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "local":
        return ImageStore(base_url=str(tmp_path / "store"))
    return ImageStore(base_url=f"memory://gallery-{uuid.uuid4().hex}/store")


def read(store: ImageStore, url: str) -> bytes:
    return store.read_bytes(url)


def test_thumbnails_made_once_per_sha256_and_rebuild_decodes_nothing(
    store: ImageStore, count_decodes: list[int]
) -> None:
    records = fill(store)
    out = f"{store.resolved_base_url}/gallery"

    first = build_gallery(store, ["shapes", "shapes_night"], out)
    distinct = {r.sha256 for r in records}
    assert len(distinct) == 3 < len(records)  # the twin shares red's bytes
    assert len(count_decodes) == first.new_thumbnails == 3
    assert first.cached_thumbnails == 0
    assert first.images == 4
    assert first.unreadable == []

    fs = store.fs
    thumbs = sorted(
        str(p).rsplit("/", 1)[-1] for p in fs.ls(fs._strip_protocol(f"{out}/thumbs"), detail=False)
    )
    assert thumbs == sorted(f"{sha}.webp" for sha in distinct)
    for sha in distinct:
        with Image.open(io.BytesIO(read(store, f"{out}/thumbs/{sha}.webp"))) as thumb:
            assert thumb.format == "WEBP"
            assert thumb.size == (96, 64)  # never enlarged

    second = build_gallery(store, ["shapes", "shapes_night"], out)
    assert len(count_decodes) == 3, "a rebuild with nothing new decoded an image"
    assert (second.new_thumbnails, second.cached_thumbnails) == (0, 3)
    assert second.sha256 == first.sha256

    store.write_image(["shapes"], "green", image("green"), "png", record("a green square"))
    third = build_gallery(store, ["shapes", "shapes_night"], out)
    assert len(count_decodes) == 4
    assert (third.new_thumbnails, third.cached_thumbnails) == (1, 3)
    assert third.sha256 != first.sha256


def test_thumbnail_size_format_and_cleanup(tmp_path: Path, count_decodes: list[int]) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    wide = store.write_image(["big"], "wide", image("orange", (1200, 600)), "png", record())
    out = tmp_path / "gallery"
    build_gallery(store, ["big"], str(out), thumbnail_size=128)
    with Image.open(out / "thumbs" / f"{wide.sha256}.webp") as thumb:
        assert thumb.size == (128, 64)

    result = build_gallery(store, ["big"], str(out), thumbnail_format="jpeg")
    assert (result.new_thumbnails, result.removed_thumbnails) == (1, 1)
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == [f"{wide.sha256}.jpg"]
    assert page_data((out / "index.html").read_text())["thumb_ext"] == "jpg"
    assert len(count_decodes) == 2

    (out / "thumbs" / "notes.txt").write_text("mine")
    store.fs.rm_file(str(tmp_path / "store" / "big" / "wide.json"))
    emptied = build_gallery(store, ["big"], str(out), thumbnail_format="jpeg")
    assert emptied.images == 0
    assert emptied.removed_thumbnails == 1
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == ["notes.txt"]


def test_links_are_relative_and_resolve(store: ImageStore) -> None:
    records = fill(store)
    out = f"{store.resolved_base_url}/reviews/gallery"
    result = build_gallery(store, ["shapes", "shapes_night"], out)
    page = read(store, result.url).decode()
    data = page_data(page)

    fs = store.fs
    folder = fs._strip_protocol(out)
    assert [a["href"] for a in data["assets"]] == ["../../shapes/", "../../shapes_night/"]
    by_key = items(data)
    for rec in records:
        item = by_key[f"{'/'.join(rec.asset_key)}/{rec.partition_key}"]
        href = next(a["href"] for a in data["assets"] if a["key"] == "/".join(rec.asset_key))
        image_path = posixpath.normpath(
            posixpath.join(folder, href + f"{item['partition']}.{item['ext']}")
        )
        assert fs.cat_file(image_path) == read(store, rec.path)
        thumb = posixpath.join(folder, "thumbs", f"{item['sha256']}.{data['thumb_ext']}")
        assert fs.exists(thumb)
    assert "://" not in json.dumps(data["assets"])


def test_gallery_on_another_filesystem_links_images_absolutely(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    fill(store)
    out = f"memory://gallery-{uuid.uuid4().hex}/elsewhere"
    result = build_gallery(store, ["shapes"], out)
    assert not result.local
    data = page_data(store.read_bytes(result.url).decode())
    assert data["assets"][0]["href"] == f"{tmp_path / 'store' / 'shapes'}/"


def test_totals_equal_summed_sidecar_costs(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    fill(store)
    result = build_gallery(store, ["shapes", "shapes_night"], str(tmp_path / "gallery"))
    sidecars: dict[str, list[float]] = {}
    for path in (tmp_path / "store").glob("*/*.json"):
        sidecars.setdefault(path.parent.name, []).append(json.loads(path.read_text())["cost_usd"])
    data = page_data((tmp_path / "gallery" / "index.html").read_text())

    assert data["totals"]["cost_usd"] == math.fsum(c for costs in sidecars.values() for c in costs)
    assert data["totals"]["images"] == sum(len(costs) for costs in sidecars.values()) == 4
    for asset in data["assets"]:
        assert asset["cost_usd"] == math.fsum(sidecars[asset["key"]])
        assert asset["images"] == len(sidecars[asset["key"]])
        assert result.summary.by_asset[asset["key"]]["cost_usd"] == asset["cost_usd"]


def test_edits_carry_their_sources(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    red, *_, night = fill(store)
    build_gallery(store, ["shapes", "shapes_night"], str(tmp_path / "gallery"))
    by_key = items(page_data((tmp_path / "gallery" / "index.html").read_text()))

    assert by_key["shapes_night/red"]["sources"] == [["shapes", "red", red.sha256]]
    assert by_key["shapes/red"]["sha256"] == red.sha256  # the source card the edit links to
    assert by_key["shapes/red"]["sources"] == []
    assert by_key["shapes_night/red"]["prompt"] == night.prompt
    # Each image is followed by its edits: the night edit sits right after its source.
    assert list(by_key) == ["shapes/blue", "shapes/red", "shapes_night/red", "shapes/red-again"]


def test_prompts_cannot_inject_markup(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    evil = '</script><script>window.pwned=1</script><img src=x onerror="alert(1)"> & \u2028'
    store.write_image(
        ["shapes"], "evil", image("red"), "png", record(evil, revised_prompt="<b>bold</b>")
    )
    result = build_gallery(store, ["shapes"], str(tmp_path / "gallery"), title="<i>Review</i> & co")
    page = Path(result.url).read_text()

    assert "window.pwned" in page
    assert "<script>window.pwned" not in page
    assert "<img src=x" not in page
    assert "<b>bold" not in page
    assert "<i>Review" not in page
    assert "&lt;i&gt;Review&lt;/i&gt; &amp; co" in page
    assert page.count("</script>") == 2  # the data's and the code's, nothing from a prompt
    assert "innerHTML" not in page
    item = items(page_data(page))["shapes/evil"]
    assert item["prompt"] == evil
    assert item["revised_prompt"] == "<b>bold</b>"


def test_unreadable_images_are_shown_without_thumbnail(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    red, blue, _twin, night = fill(store)
    Path(blue.path).write_bytes(b"RIFF\x00\x00\x00\x00WEBPgarbage")
    Path(night.path).unlink()
    Path(red.path).unlink()
    result = build_gallery(store, ["shapes", "shapes_night"], str(tmp_path / "gallery"))

    assert sorted(result.unreadable) == ["shapes/blue", "shapes_night/red"]
    assert result.images == 4
    by_key = items(page_data(Path(result.url).read_text()))
    assert by_key["shapes/blue"]["thumb"] == 0
    assert by_key["shapes_night/red"]["thumb"] == 0
    # red's file is gone, but red-again holds the same bytes: the thumbnail is made from it.
    assert by_key["shapes/red"]["thumb"] == by_key["shapes/red-again"]["thumb"] == 1

    Path(night.path).write_bytes(image("black"))
    again = build_gallery(store, ["shapes", "shapes_night"], str(tmp_path / "gallery"))
    assert again.new_thumbnails == 1
    assert again.unreadable == ["shapes/blue"]


def test_page_holds_data_once_and_no_per_image_html(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path / "store"))
    data = image("red")
    for i in range(120):
        store.write_image(["many"], f"k{i:03d}", data, "png", record(f"prompt number {i}"))
    result = build_gallery(store, ["many"], str(tmp_path / "gallery"))
    page = Path(result.url).read_text()
    assert result.new_thumbnails == 1
    assert page.count("prompt number 7") == 1 + 10  # once itself, and inside 70..79
    assert "<article" not in page
    assert 'im.loading="lazy"' in page
    assert "IntersectionObserver" in page
    assert result.page_bytes == len(page.encode())
    assert result.page_bytes < 30_000 + 120 * 200


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="thumbnail_format"):
        image_gallery_asset(assets=["a"], thumbnail_format="png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thumbnail_size"):
        image_gallery_asset(assets=["a"], thumbnail_size=4)
    with pytest.raises(ValueError, match="assets is empty"):
        image_gallery_asset(assets=[])
    with pytest.raises(ValueError, match="more than once"):
        image_gallery_asset(assets=["a", "a"])
    with pytest.raises(ValueError, match="credentials"):
        image_gallery_asset(assets=["a"], output_url="s3://user:secret@bucket/g")


def test_asset_materializes_gallery_with_metadata(tmp_path: Path) -> None:
    resources, _ = emulator_resources(tmp_path / "store")
    table = PromptTable.from_records(
        [{"key": k, "prompt": f"A paper lantern, study {k}"} for k in ("a", "b", "c")]
    )
    lanterns = image_generation_asset(name="lanterns", prompts=table, size=SMALL, quality="low")
    lit = image_edit_asset(name="lanterns_lit", sources=[lanterns], prompt="lit at dusk")
    gallery = image_gallery_asset(assets=[lanterns, lit], group_name="review")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_range([lanterns, lit], resources, "a", "c", instance=instance).success

    result = dg.materialize(
        [lanterns, lit, gallery], resources=resources, instance=instance, selection=[gallery.key]
    )
    assert result.success
    defs = dg.Definitions(assets=[lanterns, lit, gallery], resources=resources)
    spec = defs.resolve_asset_graph().get(gallery.key)
    assert spec.parent_keys == {lanterns.key, lit.key}
    assert spec.partitions_def is None
    meta = result.asset_materializations_for_node(gallery.node_def.name)[0].metadata

    page = tmp_path / "store" / "image_gallery" / "index.html"
    assert isinstance(meta["gallery"], dg.PathMetadataValue)
    assert meta["gallery"].value == str(page)
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "store").glob("lanterns*/*.json")]
    assert value(meta, "images") == len(sidecars) == 6
    assert value(meta, "new_thumbnails") == 6
    assert value(meta, "total_cost_usd") == math.fsum(s["cost_usd"] for s in sidecars)
    for name in ("lanterns", "lanterns_lit"):
        costs = [s["cost_usd"] for s in sidecars if s["asset_key"] == [name]]
        assert value(meta, f"cost_usd/{name}") == math.fsum(costs) > 0
        assert value(meta, f"images/{name}") == 3
    by_key = items(page_data(page.read_text()))
    lit_a = by_key["lanterns_lit/a"]
    assert lit_a["sources"] == [["lanterns", "a", by_key["lanterns/a"]["sha256"]]]

    again = dg.materialize(
        [lanterns, lit, gallery], resources=resources, instance=instance, selection=[gallery.key]
    )
    meta2 = again.asset_materializations_for_node(gallery.node_def.name)[0].metadata
    assert value(meta2, "new_thumbnails") == 0
    assert value(meta2, "cached_thumbnails") == 6
    first_version = result.asset_materializations_for_node(gallery.node_def.name)[0].tags
    second_version = again.asset_materializations_for_node(gallery.node_def.name)[0].tags
    assert first_version["dagster/data_version"] == second_version["dagster/data_version"]


def test_asset_on_object_storage_links_by_url() -> None:
    base = f"memory://gallery-{uuid.uuid4().hex}/store"
    store = ImageStore(base_url=base)
    fill(store)
    gallery = image_gallery_asset(name="review", assets=["shapes", "shapes_night"])
    result = dg.materialize([gallery], resources={"image_store": store})
    meta = result.asset_materializations_for_node(gallery.node_def.name)[0].metadata
    assert isinstance(meta["gallery"], dg.UrlMetadataValue)
    assert meta["gallery"].value == f"{base}/review/index.html"
    page = store.read_bytes(f"{base}/review/index.html").decode()
    assert len(page_data(page)["items"]) == value(meta, "images") == 4
