"""Files of the emulated Files API, kept on disk so a multi-GB batch output never sits in memory.

Each emulator owns one temporary directory, created on first use and removed by
:meth:`FileStore.clear` or when the store is garbage collected. Content is immutable once a file
is registered, so downloads read it with their own file handle, from any offset.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["FileStore", "StoredFile"]

_CHUNK = 1024 * 1024
_BATCH_FILE_TTL_S = 30 * 86_400


@dataclass(frozen=True)
class StoredFile:
    """One file object: what ``GET /v1/files/{id}`` shows, and where its bytes are."""

    id: str
    purpose: str
    filename: str
    size: int
    created_at: int
    path: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "expires_at": self.created_at + _BATCH_FILE_TTL_S,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class FileStore:
    """Thread-safe registry of stored files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self._dir: Path | None = None
        self._finalizer: weakref.finalize[Any, FileStore] | None = None

    def _directory(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="gptimage-emulator-files-"))
                self._finalizer = weakref.finalize(
                    self, shutil.rmtree, str(self._dir), ignore_errors=True
                )
            return self._dir

    @staticmethod
    def new_id() -> str:
        return f"file-{secrets.token_hex(12)}"

    def add_bytes(self, data: bytes, *, purpose: str, filename: str, now: float) -> StoredFile:
        with self.writer(purpose=purpose, filename=filename, now=now) as (handle, file_id):
            handle.write(data)
        stored = self.get(file_id)
        assert stored is not None
        return stored

    @contextlib.contextmanager
    def writer(self, *, purpose: str, filename: str, now: float) -> Iterator[tuple[BinaryIO, str]]:
        """Write a new file; it is registered (visible) only once the block exits cleanly."""
        file_id = self.new_id()
        path = self._directory() / file_id
        with path.open("wb") as handle:
            yield handle, file_id
        stored = StoredFile(file_id, purpose, filename, path.stat().st_size, int(now), path)
        with self._lock:
            self._files[file_id] = stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        with self._lock:
            stored = self._files.pop(file_id, None)
        if stored is None:
            return False
        with contextlib.suppress(OSError):
            os.unlink(stored.path)
        return True

    def lines(self, stored: StoredFile) -> Iterator[bytes]:
        """The file's lines, read lazily (without their line ends)."""
        with stored.path.open("rb") as handle:
            for line in handle:
                yield line.rstrip(b"\r\n")

    def read_line(self, stored: StoredFile, offset: int, length: int) -> bytes:
        with stored.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def chunks(self, stored: StoredFile, start: int, stop: int) -> Iterator[bytes]:
        """Bytes ``start:stop`` of the file in chunks of at most 1 MiB."""
        with stored.path.open("rb") as handle:
            handle.seek(start)
            remaining = stop - start
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            directory, self._dir = self._dir, None
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
