"""ImageStore on local disk and memory://: layout, records, cache checks, atomic writes, secrets."""

import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import dagster as dg
import fsspec
import pytest
from PIL import Image

from dagster_gptimage.errors import InvalidImageError
from dagster_gptimage.storage import (
    ImageRecord,
    ImageStore,
    SourceImage,
    check_url_has_no_credentials,
    redact_url,
)

FAKE_SECRET = "fake-secret-Zq9xW3-do-not-leak"
ASSET = dg.AssetKey(["images", "cats"])


def make_image(fmt: str = "PNG", size: tuple[int, int] = (8, 6), color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def make_record(fingerprint: str = "fp-1", **overrides: Any) -> ImageRecord:
    fields: dict[str, Any] = {
        "fingerprint": fingerprint,
        "prompt": "a red square",
        "params": {"size": "1024x1024", "quality": "low"},
        "model": "gpt-image-2",
        "provider": "emulator",
        "usage": {"output_image_tokens": 196},
        "cost_usd": 0.006,
        "latency_s": 1.5,
        "attempts": 1,
        "possibly_billed_attempts": 1,
        "request_id": "req_1",
    }
    fields.update(overrides)
    return ImageRecord(**fields)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "local":
        return ImageStore(base_url=str(tmp_path / "store"))
    return ImageStore(base_url=f"memory://store-{uuid.uuid4().hex}")


def put(store: ImageStore, url: str, data: bytes) -> None:
    """Write behind the store's back (to simulate corruption or foreign files)."""
    fs = store.fs
    path = fs._strip_protocol(url)
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def is_local(store: ImageStore) -> bool:
    return "://" not in store.resolved_base_url


def files_under(store: ImageStore) -> list[str]:
    fs = store.fs
    root = fs._strip_protocol(store.resolved_base_url)
    if not fs.exists(root):
        return []
    return sorted(p[len(root) + 1 :] for p in fs.find(root))


# --- configuration ---------------------------------------------------------------------------------


def test_default_base_url_uses_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert ImageStore().resolved_base_url == str(tmp_path / "home" / "storage" / "gptimage")
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.chdir(tmp_path)
    assert ImageStore().resolved_base_url == str(tmp_path / "gptimage_store")
    assert ImageStore(base_url="rel/dir/").resolved_base_url == str(tmp_path / "rel" / "dir")


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIAFAKEKEY:{FAKE_SECRET}@bucket/prefix",
        f"https://user:{FAKE_SECRET}@example.com/images",
        f"simplecache::s3://AKIAFAKEKEY:{FAKE_SECRET}@bucket",
    ],
)
def test_credentials_in_base_url_are_refused(url: str) -> None:
    store = ImageStore(base_url=url)
    with pytest.raises(ValueError, match="storage_options") as info:
        store.image_path(ASSET, "a", "png")
    assert FAKE_SECRET not in str(info.value)
    assert "AKIAFAKEKEY" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("/plain/local?.csv") == "/plain/local?.csv"
    assert redact_url("s3://bucket/p.csv") == "s3://bucket/p.csv"
    assert (
        redact_url(f"https://u:{FAKE_SECRET}@host/p.csv?X-Amz-Signature={FAKE_SECRET}#frag")
        == "https://***@host/p.csv"
    )
    check_url_has_no_credentials("s3://bucket/a@b.csv")
    check_url_has_no_credentials("/home/me/a@b/prompts.csv")


def test_repr_and_str_hide_storage_options() -> None:
    store = ImageStore(
        base_url="s3://bucket/images",
        storage_options={"key": "AKIAFAKEKEY", "secret": FAKE_SECRET, "client_kwargs": {"a": 1}},
    )
    for text in (repr(store), str(store), f"{store}"):
        assert FAKE_SECRET not in text
        assert "AKIAFAKEKEY" not in text
        assert "s3://bucket/images" in text
        assert "<redacted>" in text


def test_storage_options_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTIMAGE_TEST_OPTION", FAKE_SECRET)
    base = f"memory://env-{uuid.uuid4().hex}"
    store = ImageStore(base_url=base, storage_options={"token": dg.EnvVar("GPTIMAGE_TEST_OPTION")})
    assert store.fs.storage_options["token"] == FAKE_SECRET
    as_dagster_passes_it = ImageStore(
        base_url=base, storage_options={"nested": {"token": {"env": "GPTIMAGE_TEST_OPTION"}}}
    )
    assert as_dagster_passes_it.fs.storage_options["nested"] == {"token": FAKE_SECRET}
    missing = ImageStore(base_url=base, storage_options={"token": dg.EnvVar("GPTIMAGE_UNSET_VAR")})
    monkeypatch.delenv("GPTIMAGE_UNSET_VAR", raising=False)
    with pytest.raises(ValueError, match="GPTIMAGE_UNSET_VAR"):
        missing.read_record(ASSET, "a")


# --- layout ----------------------------------------------------------------------------------------


def test_layout(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path) + "/")
    expected = f"{tmp_path}/images/cats/tabby-01.png"
    assert store.image_path(ASSET, "tabby-01", "png") == expected
    assert store.image_path("images/cats", "tabby-01", "png") == expected
    assert store.image_path(["images", "cats"], "tabby-01", "png") == expected
    assert store.image_path(ASSET, "tabby-01", "jpeg").endswith("/tabby-01.jpg")
    assert store.image_path(ASSET, "tabby-01", "JPG").endswith("/tabby-01.jpg")
    assert store.sidecar_path(ASSET, "tabby-01") == f"{tmp_path}/images/cats/tabby-01.json"
    memory = ImageStore(base_url="memory://bucket/prefix")
    assert memory.image_path(ASSET, "k", "webp") == "memory://bucket/prefix/images/cats/k.webp"


@pytest.mark.parametrize("key", ["", "a/b", "a\\b", "..", ".hidden", "a\nb", "x" * 201])
def test_unsafe_partition_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = ImageStore(base_url=str(tmp_path))
    with pytest.raises(ValueError, match="partition key"):
        store.image_path(ASSET, key, "png")
    with pytest.raises(ValueError, match="partition key"):
        store.sidecar_path(ASSET, key)


@pytest.mark.parametrize("key", [["..", "x"], ["a/b"], [], [".git"]])
def test_unsafe_asset_keys_are_refused(tmp_path: Path, key: list[str]) -> None:
    with pytest.raises(ValueError, match="asset key"):
        ImageStore(base_url=str(tmp_path)).image_path(key, "a", "png")


def test_dagster_style_partition_keys_are_storable(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path))
    assert store.image_path(ASSET, "2024-01-01-00:00", "png").endswith("/2024-01-01-00:00.png")
    assert store.image_path(ASSET, "a|b", "png").endswith("/a|b.png")


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accepted: png"):
        ImageStore(base_url=str(tmp_path)).image_path(ASSET, "a", "bmp")


# --- write / read ----------------------------------------------------------------------------------


def test_write_fills_record_and_reads_back(store: ImageStore) -> None:
    data = make_image()
    record = make_record(extra={"style": "flat"}, sources=[SourceImage(path="in.png", sha256="ab")])
    written = store.write_image(ASSET, "red", data, "png", record)

    assert written.asset_key == ["images", "cats"]
    assert written.partition_key == "red"
    assert written.path == store.image_path(ASSET, "red", "png")
    assert written.format == "png"
    assert (written.width, written.height) == (8, 6), "dimensions read from the image when absent"
    assert written.bytes == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert written.fingerprint == "fp-1"
    assert written.created_at.endswith("Z")
    assert store.read_bytes(written.path) == data
    assert store.read_record(ASSET, "red") == written
    sidecar = json.loads(store.read_bytes(store.sidecar_path(ASSET, "red")))
    assert sidecar["schema_version"] == 1
    assert sidecar["sha256"] == written.sha256
    assert sidecar["sources"] == [
        {"asset_key": None, "partition_key": None, "path": "in.png", "sha256": "ab"}
    ]
    assert files_under(store) == ["images/cats/red.json", "images/cats/red.png"]


def test_data_that_is_not_the_declared_image_is_refused(store: ImageStore) -> None:
    with pytest.raises(ValueError, match="image data is JPEG but fmt='png'"):
        store.write_image(ASSET, "k", make_image("JPEG"), "png", make_record())
    with pytest.raises(InvalidImageError):
        store.write_image(ASSET, "k", b"not an image at all", "png", make_record())
    assert files_under(store) == []


def test_given_dimensions_are_kept(store: ImageStore) -> None:
    written = store.write_image(ASSET, "k", make_image(), "png", make_record(width=8, height=6))
    assert (written.width, written.height) == (8, 6)


def test_missing_and_corrupt_sidecars(store: ImageStore, caplog: pytest.LogCaptureFixture) -> None:
    assert store.read_record(ASSET, "nothing") is None
    put(store, store.sidecar_path(ASSET, "bad"), b"{not json")
    with caplog.at_level(logging.WARNING, logger="dagster_gptimage.storage"):
        assert store.read_record(ASSET, "bad") is None
    assert "unreadable image sidecar" in caplog.text


def test_records_from_newer_versions_are_readable(store: ImageStore) -> None:
    written = store.write_image(ASSET, "k", make_image(), "png", make_record())
    payload = json.loads(written.model_dump_json())
    payload["a_future_field"] = {"x": 1}
    put(store, store.sidecar_path(ASSET, "k"), json.dumps(payload).encode())
    assert store.read_record(ASSET, "k") == written


def test_rewrite_in_another_format_removes_the_old_image(store: ImageStore) -> None:
    store.write_image(ASSET, "k", make_image("PNG"), "png", make_record("fp-png"))
    jpeg = make_image("JPEG")
    written = store.write_image(ASSET, "k", jpeg, "jpeg", make_record("fp-jpeg"))
    assert files_under(store) == ["images/cats/k.jpg", "images/cats/k.json"]
    assert written.path.endswith("/k.jpg")
    assert store.read_record(ASSET, "k") == written
    assert store.cached_record(ASSET, "k", "fp-jpeg") == written
    assert store.cached_record(ASSET, "k", "fp-png") is None


# --- cache -----------------------------------------------------------------------------------------


def test_cached_record_requires_fingerprint_and_intact_image(store: ImageStore) -> None:
    data = make_image()
    written = store.write_image(ASSET, "k", data, "png", make_record("fp-1"))
    assert store.cached_record(ASSET, "k", "fp-1") == written
    assert store.cached_record(ASSET, "k", "fp-other") is None
    assert store.cached_record(ASSET, "missing", "fp-1") is None

    image = store.fs._strip_protocol(written.path)
    store.fs.pipe_file(image, data[:-10])
    assert store.cached_record(ASSET, "k", "fp-1") is None, "a truncated image is not a cache hit"
    store.fs.pipe_file(image, data[:-1] + bytes([data[-1] ^ 1]))
    assert store.cached_record(ASSET, "k", "fp-1") is None, "same size, other bytes"
    store.fs.rm_file(image)
    assert store.cached_record(ASSET, "k", "fp-1") is None, "a missing image is not a cache hit"
    assert store.read_record(ASSET, "k") == written


def test_cached_record_follows_a_moved_store(tmp_path: Path) -> None:
    old = ImageStore(base_url=str(tmp_path / "old"))
    written = old.write_image(ASSET, "k", make_image(), "png", make_record())
    (tmp_path / "old").rename(tmp_path / "new")
    new = ImageStore(base_url=str(tmp_path / "new"))
    cached = new.cached_record(ASSET, "k", "fp-1")
    assert cached is not None
    assert cached.path == str(tmp_path / "new" / "images" / "cats" / "k.png")
    assert cached.sha256 == written.sha256


def test_cached_record_ignores_a_sidecar_copied_from_another_partition(store: ImageStore) -> None:
    store.write_image(ASSET, "a", make_image(), "png", make_record("fp"))
    fs = store.fs
    fs.pipe_file(
        fs._strip_protocol(store.sidecar_path(ASSET, "b")),
        fs.cat_file(fs._strip_protocol(store.sidecar_path(ASSET, "a"))),
    )
    fs.pipe_file(fs._strip_protocol(store.image_path(ASSET, "b", "png")), make_image())
    assert store.cached_record(ASSET, "b", "fp") is None


def test_read_verified_returns_the_bytes_it_checked(store: ImageStore) -> None:
    data = make_image()
    written = store.write_image(ASSET, "k", data, "png", make_record("fp-1"))
    verified = store.read_verified(ASSET, "k", "fp-1")
    assert verified is not None
    assert verified.record == written
    assert verified.data == data
    assert "data" not in repr(verified), "image bytes stay out of reprs"
    any_fingerprint = store.read_verified(ASSET, "k")
    assert any_fingerprint is not None
    assert any_fingerprint.record == written
    assert store.read_verified(ASSET, "k", "fp-other") is None
    assert store.read_verified(ASSET, "missing") is None
    store.fs.pipe_file(store.fs._strip_protocol(written.path), data[:-1] + bytes([data[-1] ^ 1]))
    assert store.read_verified(ASSET, "k") is None, "changed bytes are never verified"


def test_read_verified_ignores_a_sidecar_naming_an_unknown_format(store: ImageStore) -> None:
    written = store.write_image(ASSET, "k", make_image(), "png", make_record("fp-1"))
    broken = written.model_copy(update={"format": "tiff"}).model_dump_json().encode()
    put(store, store.sidecar_path(ASSET, "k"), broken)
    assert store.read_verified(ASSET, "k", "fp-1") is None
    assert store.cached_record(ASSET, "k", "fp-1") is None


def test_stored_image_reads_where_the_store_keeps_it(tmp_path: Path) -> None:
    old = ImageStore(base_url=str(tmp_path / "old"))
    data = make_image()
    written = old.write_image(ASSET, "k", data, "png", make_record())
    (tmp_path / "old").rename(tmp_path / "new")
    new = ImageStore(base_url=str(tmp_path / "new"))
    path, read = new.stored_image(written)
    assert path == str(tmp_path / "new" / "images" / "cats" / "k.png")
    assert read == data
    with pytest.raises(FileNotFoundError):
        old.stored_image(written)


@pytest.mark.anyio
async def test_aread_verified(store: ImageStore) -> None:
    written = store.write_image(ASSET, "k", make_image(), "png", make_record("fp-1"))
    verified = await store.aread_verified(ASSET, "k", "fp-1")
    assert verified is not None
    assert verified.record == written
    assert await store.aread_verified(ASSET, "k", "fp-2") is None


def test_revision_round_trips_through_the_sidecar(store: ImageStore) -> None:
    written = store.write_image(ASSET, "k", make_image(), "png", make_record(revision="3"))
    assert written.revision == "3"
    raw = json.loads(store.fs.cat_file(store.fs._strip_protocol(store.sidecar_path(ASSET, "k"))))
    assert raw["revision"] == "3"
    read = store.read_record(ASSET, "k")
    assert read is not None
    assert read.revision == "3"
    assert read == written
    plain = store.write_image(ASSET, "p", make_image(), "png", make_record())
    assert plain.revision is None
    old_sidecar = plain.model_dump(mode="json")
    del old_sidecar["revision"]
    put(store, store.sidecar_path(ASSET, "p"), json.dumps(old_sidecar).encode())
    old = store.read_record(ASSET, "p")
    assert old is not None, "sidecars written before revisions existed stay readable"
    assert old.revision is None
    assert store.cached_record(ASSET, "p", "fp-1") == plain


# --- listing ---------------------------------------------------------------------------------------


def test_list_records(store: ImageStore) -> None:
    assert store.list_records(ASSET) == []
    for key in ["b", "a", "c"]:
        store.write_image(ASSET, key, make_image(), "png", make_record(f"fp-{key}"))
    store.write_image(["images", "cats", "kittens"], "z", make_image(), "png", make_record())
    store.write_image(["images", "dogs"], "d", make_image(), "png", make_record())
    fs = store.fs
    folder = fs._strip_protocol(store.asset_url(ASSET))
    fs.pipe_file(f"{folder}/.a.json.123.tmp", b"partial")
    fs.pipe_file(f"{folder}/broken.json", b"{")
    records = store.list_records(ASSET)
    assert [r.partition_key for r in records] == ["a", "b", "c"]
    assert [r.fingerprint for r in records] == ["fp-a", "fp-b", "fp-c"]
    assert store.list_records(["images", "nothing"]) == []


# --- atomicity -------------------------------------------------------------------------------------


def fail_on_sidecar(monkeypatch: pytest.MonkeyPatch, store: ImageStore, *, suffix: str) -> None:
    """Make the final step of writing a file ending in ``suffix`` fail, the way a full disk or a
    dropped connection would."""
    if is_local(store):
        real_replace = os.replace

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if str(dst).endswith(suffix):
                raise OSError(28, "No space left on device")
            real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
    else:
        fs = store.fs
        real_pipe: Callable[..., Any] = fs.pipe_file

        def pipe_file(path: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
            if path.endswith(suffix):
                raise OSError("connection reset while uploading")
            return real_pipe(path, data, *args, **kwargs)

        monkeypatch.setattr(fs, "pipe_file", pipe_file)


def snapshot(store: ImageStore) -> dict[str, bytes]:
    fs = store.fs
    root = fs._strip_protocol(store.resolved_base_url)
    return {path: fs.cat_file(path) for path in fs.find(root)}


def test_failed_sidecar_write_keeps_old_sidecar_and_leaves_no_temp_files(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store.write_image(ASSET, "k", make_image(color="red"), "png", make_record("fp-old"))
    new_data = make_image(color="blue")
    fail_on_sidecar(monkeypatch, store, suffix=".json")
    with pytest.raises(OSError, match=r"space|reset"):
        store.write_image(ASSET, "k", new_data, "png", make_record("fp-new"))
    monkeypatch.undo()

    assert files_under(store) == ["images/cats/k.json", "images/cats/k.png"], "no temp files"
    assert store.read_record(ASSET, "k") == old, "the old sidecar is intact"
    assert store.read_bytes(old.path) == new_data, "the image is complete, never partial"
    assert store.cached_record(ASSET, "k", "fp-old") is None, "old sidecar no longer matches"
    assert store.cached_record(ASSET, "k", "fp-new") is None, "no sidecar vouches for the new one"


def test_failed_image_write_keeps_old_state(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store.write_image(ASSET, "k", make_image(color="red"), "png", make_record("fp-old"))
    before = snapshot(store)
    fail_on_sidecar(monkeypatch, store, suffix=".png")
    with pytest.raises(OSError, match=r"space|reset"):
        store.write_image(ASSET, "k", make_image(color="blue"), "png", make_record("fp-new"))
    monkeypatch.undo()

    assert snapshot(store) == before
    assert store.cached_record(ASSET, "k", "fp-old") == old


def test_failed_first_write_leaves_no_sidecar(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_sidecar(monkeypatch, store, suffix=".json")
    with pytest.raises(OSError, match=r"space|reset"):
        store.write_image(ASSET, "k", make_image(), "png", make_record())
    monkeypatch.undo()
    assert store.read_record(ASSET, "k") is None
    assert all(not name.rsplit("/", 1)[-1].startswith(".") for name in files_under(store))


def test_failed_format_switch_keeps_the_old_format_image(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store.write_image(ASSET, "k", make_image("PNG"), "png", make_record("fp-old"))
    fail_on_sidecar(monkeypatch, store, suffix=".json")
    with pytest.raises(OSError, match=r"space|reset"):
        store.write_image(ASSET, "k", make_image("JPEG"), "jpeg", make_record("fp-new"))
    monkeypatch.undo()
    assert store.cached_record(ASSET, "k", "fp-old") == old, "old image removed only after success"


def test_local_write_interrupted_before_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(base_url=str(tmp_path))
    old = store.write_image(ASSET, "k", make_image(), "png", make_record("fp-old"))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        store.write_image(ASSET, "k", make_image(color="blue"), "png", make_record("fp-new"))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "images" / "cats").iterdir()) == ["k.json", "k.png"]
    assert store.cached_record(ASSET, "k", "fp-old") == old


def test_local_files_get_normal_permissions(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    store = ImageStore(base_url=str(tmp_path))
    written = store.write_image(ASSET, "k", make_image(), "png", make_record())
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(written.path).st_mode & 0o777 == 0o666 & ~umask


def test_read_bytes_from_another_file_system(tmp_path: Path) -> None:
    url = f"memory://elsewhere-{uuid.uuid4().hex}/in.png"
    fsspec.filesystem("memory").pipe_file(url, b"png-bytes")
    assert ImageStore(base_url=str(tmp_path)).read_bytes(url) == b"png-bytes"


# --- async -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_wrappers(store: ImageStore) -> None:
    images = {f"k{i}": make_image(color=color) for i, color in enumerate(["red", "green", "blue"])}
    written: dict[str, ImageRecord] = {}

    async def write(key: str) -> None:
        written[key] = await store.awrite_image(ASSET, key, images[key], "png", make_record(key))

    async with anyio.create_task_group() as tg:
        for key in images:
            tg.start_soon(write, key)

    for key, data in images.items():
        assert await store.aread_record(ASSET, key) == written[key]
        assert await store.acached_record(ASSET, key, key) == written[key]
        assert await store.aread_bytes(written[key].path) == data
    assert [r.partition_key for r in await store.alist_records(ASSET)] == ["k0", "k1", "k2"]


# --- Dagster ---------------------------------------------------------------------------------------


def test_works_as_a_dagster_resource(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTIMAGE_TEST_OPTION", FAKE_SECRET)
    data = make_image()

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a"]))
    def cats(context: dg.AssetExecutionContext, image_store: ImageStore) -> None:
        record = image_store.write_image(
            context.asset_key, context.partition_key, data, "png", make_record()
        )
        context.log.info(f"stored {record.path} with {image_store!r}")

    store = ImageStore(
        base_url=str(tmp_path), storage_options={"auto_mkdir": dg.EnvVar("GPTIMAGE_TEST_OPTION")}
    )
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [cats], partition_key="a", resources={"image_store": store}, instance=instance
    )
    assert result.success
    assert ImageStore(base_url=str(tmp_path)).cached_record(["cats"], "a", "fp-1") is not None
    logs = " ".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert "stored" in logs
    assert FAKE_SECRET not in logs


def test_sidecar_never_contains_storage_options(tmp_path: Path) -> None:
    store = ImageStore(base_url=str(tmp_path), storage_options={"auto_mkdir": FAKE_SECRET})
    written = store.write_image(ASSET, "k", make_image(), "png", make_record())
    assert FAKE_SECRET not in Path(store.sidecar_path(ASSET, "k")).read_text()
    assert FAKE_SECRET not in written.model_dump_json()


def test_a_new_format_replaces_the_partitions_other_formats(store: ImageStore) -> None:
    store.write_image(ASSET, "k", make_image("PNG"), "png", make_record())
    store.write_image(ASSET, "other", make_image("PNG"), "png", make_record())
    record = store.write_image(ASSET, "k", make_image("WEBP"), "webp", make_record())
    folder = store.asset_url(ASSET)
    assert files_under(store) == [
        f"images/cats/{n}" for n in ("k.json", "k.webp", "other.json", "other.png")
    ]
    assert store.read_verified(ASSET, "k") is not None
    assert record.path == f"{folder}/k.webp"
    store.write_image(ASSET, "k", make_image("JPEG"), "jpeg", make_record())
    assert files_under(store) == [
        f"images/cats/{n}" for n in ("k.jpg", "k.json", "other.json", "other.png")
    ]


def test_an_image_is_hashed_as_it_is_written(store: ImageStore) -> None:
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(2_500_000)  # several 1 MiB chunks and a partial one
    record = store.write_image(ASSET, "k", data, "png", make_record(width=4, height=3))
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.bytes == len(data)
    verified = store.read_verified(ASSET, "k")
    assert verified is not None
    assert verified.data == data
    assert store.stored_sha256(record) == record.sha256


def test_a_record_that_cannot_be_serialized_writes_nothing(store: ImageStore) -> None:
    record = make_record(extra={"not json": object()})
    with pytest.raises(ValueError, match="serialize"):
        store.write_image(ASSET, "k", make_image(), "png", record)
    assert files_under(store) == []
