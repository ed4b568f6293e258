"""Image storage: where generated images and their sidecar records live.

Layout: ``{base_url}/{asset key path}/{partition key}.{ext}`` plus ``{partition key}.json``, the
sidecar ImageRecord that says how the image was made (prompt, parameters, fingerprint, usage, cost).
``base_url`` is any fsspec URL: a local folder, ``s3://``, ``gs://``, ``memory://`` …

Writes are all-or-nothing per file (a temp file + ``os.replace`` on local disks, one ``pipe_file``
on object stores) and ordered image first, sidecar second, so a reader never finds a sidecar
describing a partial image. A paid-for image must never be lost to a half-written file, and a
corrupt file must never be mistaken for a cached result: ``read_verified`` re-hashes the image
before the cache serves it, and the image check reads the same file through ``stored_image``.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from dagster_gptimage._urls import (
    check_url_has_no_credentials,
    fs_is_local,
    fs_protocols,
    fs_serves,
    redact_url,
    resolve_local,
)
from dagster_gptimage.images import EXTENSIONS

__all__ = [
    "ImageRecord",
    "ImageStore",
    "SourceImage",
    "VerifiedImage",
    "check_url_has_no_credentials",
    "redact_url",
]

_log = logging.getLogger(__name__)

SIDECAR_SCHEMA_VERSION = 1
_MAX_SEGMENT_LENGTH = 200
_HASH_CHUNK_BYTES = 1 << 20
_FORMAT_ALIASES = {"jpg": "jpeg"}
_REDACTED = "<redacted>"
_FOLDER_PROTOCOLS = frozenset({"sftp", "ssh", "ftp", "smb", "webdav", "hdfs", "arrow_hdfs", "dbfs"})

AssetKeyLike = dg.AssetKey | str | Sequence[str]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class SourceImage(BaseModel):
    """An input image (or mask) of an edit: the asset partition it came from, if any, and its hash."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    asset_key: list[str] | None = None
    partition_key: str | None = None
    path: str
    sha256: str


class ImageRecord(BaseModel):
    """The sidecar JSON beside every image: enough to audit, reproduce and cache it.

    ``ImageStore.write_image`` fills ``asset_key``, ``partition_key``, ``path``, ``format``, ``bytes``
    and ``sha256`` from what it writes (and ``width``/``height`` when left at 0), so callers cannot
    store a record that disagrees with its image. Unknown fields are ignored so that records written
    by newer versions stay readable. ``revision`` is the prompt row's revision, part of the request
    fingerprint (None when the row has none). ``decoded`` and ``preview`` are set by the image
    assets, which verify every image before storing it. ``mode`` is how the image was requested
    ("batch" for the Batch API; None means synchronously, as records written before batch mode
    were), and ``batch_id`` the batch that made it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SIDECAR_SCHEMA_VERSION
    asset_key: list[str] = Field(default_factory=list)
    partition_key: str = ""
    path: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0
    sha256: str = ""
    fingerprint: str
    prompt: str
    params: dict[str, Any] = Field(default_factory=dict)
    model: str
    provider: str
    usage: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    possibly_billed_attempts: int = 0
    request_id: str | None = None
    revised_prompt: str | None = None
    created_at: str = Field(default_factory=_utc_now)
    extra: dict[str, Any] = Field(default_factory=dict)
    sources: list[SourceImage] = Field(default_factory=list)
    mask: SourceImage | None = None
    revision: str | None = None
    decoded: bool = False
    """The image was fully decoded when it was stored and found complete, in ``format``, of
    ``width`` x ``height``: bytes that still hash to ``sha256`` need not be decoded again to
    know that (the cache trusts it; the check run on its own decodes every image regardless)."""
    preview: str | None = Field(default=None, repr=False)
    """A ``data:`` URI of a small thumbnail made from those decoded pixels, so that a cache hit
    shows its image in Dagster without decoding it."""
    mode: str | None = None
    batch_id: str | None = None


@dataclass(frozen=True)
class VerifiedImage:
    """A stored image whose bytes were just checked against its sidecar (size and sha256).

    ``record.path`` is where the image is now; ``data`` are the bytes that were verified, so a
    caller that needs them (previews, decoding checks) does not read the file a second time.
    """

    record: ImageRecord
    data: bytes = field(repr=False)


def _segment_problem(segment: str) -> str | None:
    if not segment:
        return "is empty"
    if len(segment) > _MAX_SEGMENT_LENGTH:
        return f"is longer than {_MAX_SEGMENT_LENGTH} characters"
    if "/" in segment or "\\" in segment:
        return "contains a path separator ('/' or '\\')"
    if segment.startswith("."):
        return "starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in segment):
        return "contains control characters"
    return None


def _asset_key_path(asset_key: AssetKeyLike) -> list[str]:
    if isinstance(asset_key, dg.AssetKey):
        path = list(asset_key.path)
    elif isinstance(asset_key, str):
        path = asset_key.split("/")
    else:
        path = [str(part) for part in asset_key]
    if not path:
        raise ValueError("asset key is empty")
    for part in path:
        problem = _segment_problem(part)
        if problem:
            raise ValueError(f"asset key {path!r} cannot be stored: component {part!r} {problem}")
    return path


def _check_partition_key(partition_key: str) -> str:
    problem = _segment_problem(partition_key) if isinstance(partition_key, str) else "is not text"
    if problem:
        raise ValueError(
            f"partition key {partition_key!r} cannot be a file name: it {problem}. "
            "Use keys made of letters, digits, '-', '_' and '.'"
        )
    return partition_key


def _normalize_format(fmt: str) -> str:
    normalized = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if normalized not in EXTENSIONS:
        raise ValueError(
            f"image format {fmt!r} is not supported; accepted: {', '.join(EXTENSIONS)}"
        )
    return normalized


def _sniff_format(data: bytes) -> str | None:
    """The image format from its signature bytes, or None when unrecognised (decided by Pillow later
    if at all): cheap enough to run on every write."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def _atomic_write_local(path: str, data: bytes, digest: Any = None) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of ``data``:
    a hidden temp file in the same folder (same file system, so the rename is atomic), fsynced, then
    ``os.replace``. The temp file is removed on any failure; one left by a killed writer is removed
    by the next process writing into the folder (``_remove_stale_temps``). ``digest`` (a hashlib
    object) is fed ``data`` as it is written."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temps(directory)
    name = f".{os.path.basename(path)}.{_WRITER_TAG}-{os.getpid()}.{secrets.token_hex(6)}.tmp"
    tmp = os.path.join(directory, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_hashed(f, data, digest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _partition_file(folder: str, partition_key: str, extension: str) -> str:
    """Where a partition's image (by its format's extension) or sidecar (``json``) lives."""
    return f"{folder}/{_check_partition_key(partition_key)}.{extension}"


def _write_hashed(file: Any, data: bytes, digest: Any) -> None:
    """1 MiB at a time, each chunk hashed then written while it is still in the CPU's cache: a
    4K image hashed whole and then written is read from memory twice (~4 ms more per image)."""
    if digest is None:
        file.write(data)
        return
    view = memoryview(data)
    for start in range(0, len(view), _HASH_CHUNK_BYTES):
        chunk = view[start : start + _HASH_CHUNK_BYTES]
        digest.update(chunk)
        file.write(chunk)


_WRITER_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
"""Marks temp files made on this host, so that only their writers' liveness is judged here."""
_TEMP_NAME = re.compile(rf"\..+\.{_WRITER_TAG}-(?P<pid>\d+)\.[0-9a-f]+\.tmp")
_swept: set[tuple[int, str]] = set()
_sweep_lock = threading.Lock()


def _remove_stale_temps(directory: str) -> None:
    """Remove the temp files of writers on this host that no longer run (a process killed between
    creating its temp file and renaming it leaves it behind, hidden but taking space).

    Done once per folder per process, so that a backfill lists each folder once rather than once per
    file. Temp files of live writers (another run writing into the same folder) are left alone.
    """
    key = (os.getpid(), directory)
    with _sweep_lock:
        if key in _swept:
            return
        _swept.add(key)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = _TEMP_NAME.fullmatch(name)
        if match is not None and not _process_alive(int(match.group("pid"))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; True when unsure (a temp file must never be taken from
    a live writer). Windows is always "unsure": its ``os.kill`` would terminate the process."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _resolve_env(value: Any, name: str) -> Any:
    """storage_options values may be ``dg.EnvVar("NAME")`` (Dagster passes it as ``{"env": NAME}``),
    which keeps secrets out of the Dagster UI's resource config."""
    if isinstance(value, dg.EnvVar) or (
        isinstance(value, Mapping) and set(value) == {"env"} and isinstance(value["env"], str)
    ):
        var = value.env_var_name if isinstance(value, dg.EnvVar) else value["env"]
        if var not in os.environ:
            raise ValueError(
                f"storage_options[{name!r}] reads environment variable {var!r}, which is not set"
            )
        return os.environ[var]
    if isinstance(value, Mapping):
        return {k: _resolve_env(v, f"{name}.{k}") for k, v in value.items()}
    return value


class ImageStore(dg.ConfigurableResource):
    """Stores generated images and their sidecar records under ``base_url``.

    ``base_url`` defaults to ``$DAGSTER_HOME/storage/gptimage`` (or ``./gptimage_store`` when
    DAGSTER_HOME is unset) and may be any fsspec URL. Credentials go in ``storage_options`` (values may
    be ``dg.EnvVar``); they are never shown in repr, logs, metadata or sidecars.
    """

    base_url: str | None = Field(
        default=None,
        description=(
            "Where images are stored: a local folder or any fsspec URL (s3://bucket/prefix, gs://…). "
            "Default: $DAGSTER_HOME/storage/gptimage, else ./gptimage_store. Never put credentials here."
        ),
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "fsspec options such as credentials or endpoint_url (values may be dg.EnvVar). Never shown."
        ),
    )

    _fs_cache: Any = PrivateAttr(default=None)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "storage_options" and isinstance(value, Mapping):
                yield name, dict.fromkeys(value, _REDACTED)
            else:
                yield name, value

    @property
    def resolved_base_url(self) -> str:
        """The base URL in use: the default resolved, local paths made absolute, no trailing '/'."""
        if self.base_url:
            url = str(self.base_url)
            check_url_has_no_credentials(url, what="ImageStore base_url")
        elif os.environ.get("DAGSTER_HOME"):
            url = os.path.join(os.environ["DAGSTER_HOME"], "storage", "gptimage")
        else:
            url = "gptimage_store"
        return resolve_local(url).rstrip("/") or "/"

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of ``base_url`` (created once per resource instance)."""
        return self._filesystem()[0]

    def _filesystem(self) -> tuple[Any, bool]:
        base = self.resolved_base_url
        cached = self._fs_cache
        if cached is None or cached[0] != base:
            from fsspec.core import url_to_fs

            options = {k: _resolve_env(v, k) for k, v in self.storage_options.items()}
            fs, _ = url_to_fs(base, **options)
            cached = (base, fs, fs_is_local(fs))
            self._fs_cache = cached
        return cached[1], cached[2]

    def _fs_path(self, url: str) -> str:
        fs = self.fs
        return fs._strip_protocol(url)

    def asset_url(self, asset_key: AssetKeyLike) -> str:
        """The folder (URL) holding one asset's images and sidecars."""
        return "/".join([self.resolved_base_url.rstrip("/"), *_asset_key_path(asset_key)])

    def image_path(self, asset_key: AssetKeyLike, partition_key: str, fmt: str) -> str:
        ext = EXTENSIONS[_normalize_format(fmt)]
        return _partition_file(self.asset_url(asset_key), partition_key, ext)

    def sidecar_path(self, asset_key: AssetKeyLike, partition_key: str) -> str:
        return _partition_file(self.asset_url(asset_key), partition_key, "json")

    def write_image(
        self,
        asset_key: AssetKeyLike,
        partition_key: str,
        data: bytes,
        fmt: str,
        record: ImageRecord,
    ) -> ImageRecord:
        """Store ``data`` and its sidecar; return the record as written.

        Image first, sidecar second, each all-or-nothing; then any image of this partition in another
        format is removed. If the sidecar write fails, the previous sidecar (if any) stays, and since its
        sha256 no longer matches the image it is not a cache hit.
        """
        fmt = _normalize_format(fmt)
        data = bytes(data)
        sniffed = _sniff_format(data)
        if sniffed is not None and sniffed != fmt:
            raise ValueError(
                f"image data is {sniffed.upper()} but fmt={fmt!r}: the file extension and the "
                "sidecar would lie about the image"
            )
        # The folder once: resolving the base URL is not free per file.
        folder = self.asset_url(asset_key)
        path = _partition_file(folder, partition_key, EXTENSIONS[fmt])
        update: dict[str, Any] = {
            "asset_key": _asset_key_path(asset_key),
            "partition_key": partition_key,
            "path": path,
            "format": fmt,
            "bytes": len(data),
        }
        if record.width <= 0 or record.height <= 0:
            from dagster_gptimage.images import inspect_image

            info = inspect_image(data, field="image")
            update["width"], update["height"] = info.width, info.height
        # A record that cannot be serialized fails before anything is written.
        record.model_copy(update=update).model_dump_json()

        digest = hashlib.sha256()
        self._write(path, data, digest)
        final = record.model_copy(update={**update, "sha256": digest.hexdigest()})
        sidecar = final.model_dump_json(indent=2).encode()
        self.write_bytes(_partition_file(folder, partition_key, "json"), sidecar)
        self._remove_other_formats(folder, partition_key, fmt)
        return final

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write ``data`` at ``url`` all-or-nothing: readers see the old file or the new one, never
        a part (temp file + ``os.replace`` on local disk, one ``pipe_file`` on object stores)."""
        self._write(url, data, None)

    def _write(self, url: str, data: bytes, digest: Any) -> None:
        """:meth:`write_bytes`, feeding ``data`` to ``digest`` (when given) as it is written."""
        fs, local = self._filesystem()
        target = fs._strip_protocol(url)
        if local:
            _atomic_write_local(target, data, digest)
            return
        if digest is not None:
            digest.update(data)
        try:
            fs.pipe_file(target, data)
        except FileNotFoundError:
            # Folder-based remote file systems need the folder. Object stores raise this for a missing
            # bucket, and makedirs would create one: a typo must fail, not create a bucket.
            if not fs_protocols(fs) & _FOLDER_PROTOCOLS:
                raise
            fs.makedirs(fs._parent(target), exist_ok=True)
            fs.pipe_file(target, data)

    def _remove_other_formats(self, folder: str, partition_key: str, fmt: str) -> None:
        fs, local = self._filesystem()
        keep = EXTENSIONS[fmt]
        for other in sorted(set(EXTENSIONS.values()) - {keep}):
            target = fs._strip_protocol(_partition_file(folder, partition_key, other))
            with contextlib.suppress(FileNotFoundError):
                if local:
                    os.unlink(target)
                elif fs.exists(target):
                    fs.rm_file(target)

    def read_bytes(self, path: str) -> bytes:
        """The bytes at ``path`` (an ``image_path`` of this store, or any fsspec URL)."""
        fs, _ = self._filesystem()
        if fs_serves(fs, path):
            return fs.cat_file(fs._strip_protocol(path))
        from fsspec.core import url_to_fs

        other, target = url_to_fs(path)
        return other.cat_file(target)

    def read_record(self, asset_key: AssetKeyLike, partition_key: str) -> ImageRecord | None:
        """The partition's sidecar, or None when missing or unreadable (then the image is redone)."""
        url = self.sidecar_path(asset_key, partition_key)
        try:
            raw = self.fs.cat_file(self._fs_path(url))
        except FileNotFoundError:
            return None
        return _parse_record(raw, url)

    def stored_image(self, record: ImageRecord) -> tuple[str, bytes]:
        """Where ``record``'s image is in this store now and its bytes, whatever ``record.path``
        says (a store moved to another base URL still finds its images).

        Raises FileNotFoundError when it is missing, ValueError when the record names no valid
        location, OSError when it cannot be read.
        """
        path = self.image_path(record.asset_key, record.partition_key, record.format)
        return path, self.read_bytes(path)

    def stored_sha256(self, record: ImageRecord) -> str:
        """The sha256 of ``record``'s image as stored now, read in chunks: verifying a 4K image
        this way holds 1 MiB at most, not the whole file (on Python >= 3.11 ``file_digest`` reads
        into one reused buffer). Raises like :meth:`stored_image`."""
        path = self.image_path(record.asset_key, record.partition_key, record.format)
        with self.fs.open(self._fs_path(path), "rb") as file:
            if sys.version_info >= (3, 11):
                return hashlib.file_digest(file, "sha256").hexdigest()
            digest = hashlib.sha256()
            while chunk := file.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
            return digest.hexdigest()

    def image_matches(self, record: ImageRecord) -> bool:
        """True when the image the record describes exists and hashes to ``record.sha256``."""
        try:
            _, data = self.stored_image(record)
        except FileNotFoundError:
            return False
        return _intact(record, data)

    def read_verified(
        self, asset_key: AssetKeyLike, partition_key: str, fingerprint: str | None = None
    ) -> VerifiedImage | None:
        """The partition's record and image bytes if the sidecar belongs to this partition, was
        made by ``fingerprint`` (when given) and its image is there with the recorded size and
        sha256; None otherwise. Every cache hit comes through here (``cached_record`` and the image
        assets), so a missing, truncated or replaced image is never taken for the one paid for;
        ``data`` spares the caller a second read for its preview and check."""
        record = self.read_record(asset_key, partition_key)
        if record is None or (fingerprint is not None and record.fingerprint != fingerprint):
            return None
        if record.asset_key != _asset_key_path(asset_key) or record.partition_key != partition_key:
            return None
        try:
            path, data = self.stored_image(record)
        except (FileNotFoundError, ValueError):
            return None
        if not _intact(record, data):
            return None
        if record.path != path:
            record = record.model_copy(update={"path": path})
        return VerifiedImage(record=record, data=data)

    def cached_record(
        self, asset_key: AssetKeyLike, partition_key: str, fingerprint: str
    ) -> ImageRecord | None:
        """The stored record if it was made by the same request (``fingerprint``) and its image is
        intact; None otherwise (a missing or corrupted image is never a cache hit)."""
        verified = self.read_verified(asset_key, partition_key, fingerprint)
        return verified.record if verified is not None else None

    def list_records(self, asset_key: AssetKeyLike) -> list[ImageRecord]:
        """Every readable sidecar of the asset, sorted by partition key (for manifests)."""
        fs = self.fs
        folder = self._fs_path(self.asset_url(asset_key))
        fs.invalidate_cache(folder)
        try:
            entries = fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        paths = [
            entry["name"]
            for entry in entries
            if entry.get("type") == "file"
            and entry["name"].endswith(".json")
            and not entry["name"].rsplit("/", 1)[-1].startswith(".")
        ]
        if not paths:
            return []
        contents = fs.cat(paths, on_error="omit")
        records = [
            record
            for path, raw in contents.items()
            if (record := _parse_record(raw, path)) is not None
        ]
        return sorted(records, key=lambda r: r.partition_key)

    async def awrite_image(
        self,
        asset_key: AssetKeyLike,
        partition_key: str,
        data: bytes,
        fmt: str,
        record: ImageRecord,
    ) -> ImageRecord:
        return await asyncio.to_thread(
            self.write_image, asset_key, partition_key, data, fmt, record
        )

    async def aread_record(self, asset_key: AssetKeyLike, partition_key: str) -> ImageRecord | None:
        return await asyncio.to_thread(self.read_record, asset_key, partition_key)

    async def acached_record(
        self, asset_key: AssetKeyLike, partition_key: str, fingerprint: str
    ) -> ImageRecord | None:
        return await asyncio.to_thread(self.cached_record, asset_key, partition_key, fingerprint)

    async def aread_verified(
        self, asset_key: AssetKeyLike, partition_key: str, fingerprint: str | None = None
    ) -> VerifiedImage | None:
        return await asyncio.to_thread(self.read_verified, asset_key, partition_key, fingerprint)

    async def aread_bytes(self, path: str) -> bytes:
        return await asyncio.to_thread(self.read_bytes, path)

    async def alist_records(self, asset_key: AssetKeyLike) -> list[ImageRecord]:
        return await asyncio.to_thread(self.list_records, asset_key)


def _intact(record: ImageRecord, data: bytes) -> bool:
    return len(data) == record.bytes and hashlib.sha256(data).hexdigest() == record.sha256


def _parse_record(raw: bytes, where: str) -> ImageRecord | None:
    try:
        return ImageRecord.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        _log.warning(
            "Ignoring unreadable image sidecar %s (%s)", redact_url(where), type(exc).__name__
        )
        return None
