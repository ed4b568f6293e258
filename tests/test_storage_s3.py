"""ImageStore and PromptTable on S3: s3fs against a moto server on 127.0.0.1 (no real AWS)."""

import hashlib
import io
import uuid
from typing import Any

import pytest
from PIL import Image

from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.storage import ImageRecord, ImageStore

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

FAKE_KEY = "AKIAFAKEKEYFORTESTS"
FAKE_SECRET = "fake-s3-secret-Vb7Kp2-do-not-leak"


@pytest.fixture
def options(s3_endpoint: str) -> dict[str, Any]:
    return {
        "key": FAKE_KEY,
        "secret": FAKE_SECRET,
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }


@pytest.fixture
def bucket(options: dict[str, Any]) -> str:
    import s3fs

    name = f"gptimage-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(name)
    return name


@pytest.fixture
def store(bucket: str, options: dict[str, Any]) -> ImageStore:
    return ImageStore(base_url=f"s3://{bucket}/images", storage_options=options)


def png(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(buffer, format="JPEG")
    return buffer.getvalue()


def record(fingerprint: str) -> ImageRecord:
    return ImageRecord(fingerprint=fingerprint, prompt="p", model="gpt-image-2", provider="openai")


def test_write_read_cache_list(store: ImageStore, bucket: str) -> None:
    data = png()
    written = store.write_image(["cats"], "a", data, "png", record("fp-a"))
    assert written.path == f"s3://{bucket}/images/cats/a.png"
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(written.path) == data
    assert store.read_record(["cats"], "a") == written
    assert store.cached_record(["cats"], "a", "fp-a") == written
    assert store.cached_record(["cats"], "a", "fp-b") is None
    store.write_image(["cats"], "b", png("blue"), "png", record("fp-b"))
    assert [r.partition_key for r in store.list_records(["cats"])] == ["a", "b"]
    assert store.list_records(["dogs"]) == []


def test_corrupted_object_is_not_a_cache_hit(store: ImageStore) -> None:
    written = store.write_image(["cats"], "a", png(), "png", record("fp"))
    store.fs.pipe_file(store.fs._strip_protocol(written.path), b"\x89PNG truncated")
    assert store.cached_record(["cats"], "a", "fp") is None


def test_format_switch_removes_old_object(store: ImageStore, bucket: str) -> None:
    store.write_image(["cats"], "a", png(), "png", record("fp-png"))
    store.write_image(["cats"], "a", jpeg(), "jpeg", record("fp-jpg"))
    fs = store.fs
    fs.invalidate_cache()
    assert sorted(fs.ls(f"{bucket}/images/cats", detail=False)) == [
        f"{bucket}/images/cats/a.jpg",
        f"{bucket}/images/cats/a.json",
    ]
    assert store.cached_record(["cats"], "a", "fp-jpg") is not None


def test_each_object_is_one_upload(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = store.fs
    uploads: list[str] = []
    real_pipe = fs.pipe_file

    def no_streaming(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("objects must be written with one pipe_file, never open('wb')")

    def pipe_file(path: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        uploads.append(path.rsplit("/", 1)[-1])
        return real_pipe(path, data, *args, **kwargs)

    monkeypatch.setattr(fs, "open", no_streaming)
    monkeypatch.setattr(fs, "pipe_file", pipe_file)
    store.write_image(["cats"], "a", png(), "png", record("fp"))
    assert uploads == ["a.png", "a.json"], "image first, then the sidecar"


def test_failed_sidecar_upload_keeps_old_sidecar(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = store.write_image(["cats"], "a", png("red"), "png", record("fp-old"))
    fs = store.fs
    real_pipe = fs.pipe_file

    def pipe_file(path: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if path.endswith(".json"):
            raise OSError("connection reset during upload")
        return real_pipe(path, data, *args, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", pipe_file)
    with pytest.raises(OSError, match="connection reset"):
        store.write_image(["cats"], "a", png("blue"), "png", record("fp-new"))
    monkeypatch.undo()
    assert store.read_record(["cats"], "a") == old
    assert store.cached_record(["cats"], "a", "fp-old") is None
    assert store.cached_record(["cats"], "a", "fp-new") is None


def test_secrets_stay_out_of_repr_and_errors(options: dict[str, Any]) -> None:
    missing = ImageStore(
        base_url=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}", storage_options=options
    )
    assert FAKE_SECRET not in repr(missing)
    assert FAKE_SECRET not in str(missing)
    with pytest.raises(FileNotFoundError) as info:
        missing.write_image(["cats"], "a", png(), "png", record("fp"))
    text = f"{info.value!r} {info.value}"
    assert FAKE_SECRET not in text
    assert FAKE_SECRET not in repr(missing.fs)
    bucket = missing.resolved_base_url.removeprefix("s3://")
    missing.fs.invalidate_cache()
    assert not missing.fs.exists(bucket), "a missing bucket must never be created"


def test_prompt_table_from_s3(bucket: str, options: dict[str, Any]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.pipe_file(f"{bucket}/tables/p.csv", b"key,prompt\na,one\n")
    url = f"s3://{bucket}/tables/p.csv"
    table = PromptTable.from_path(url, storage_options=options)
    assert table.keys == ("a",)
    assert table.source == url
    assert FAKE_SECRET not in repr(table)
    assert FAKE_SECRET not in table.description
    fs.pipe_file(f"{bucket}/tables/p.csv", b"key,prompt\na,one\nb,two\n")
    assert table.reload().keys == ("a", "b")
