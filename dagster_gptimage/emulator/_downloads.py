"""Images served by URL (the gateway's ``response_format="url"``) until newer ones push them out."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

from dagster_gptimage.images import EXTENSIONS

__all__ = ["Downloads"]


class Downloads:
    """The stored images of one emulator, by file name; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    def store(self, data: bytes, fmt: str, origin: str, max_files: int) -> str:
        """Keep an image (the oldest beyond ``max_files`` go) and return its URL under ``origin``."""
        name = f"{secrets.token_hex(12)}.{EXTENSIONS[fmt]}"
        with self._lock:
            self._files[name] = (data, fmt)
            while len(self._files) > max_files:
                self._files.popitem(last=False)
        return f"{origin.rstrip('/')}/_emulator/files/{name}"

    def get(self, name: str) -> tuple[bytes, str] | None:
        """The image and its format, or None once it has been pushed out."""
        with self._lock:
            return self._files.get(name)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
