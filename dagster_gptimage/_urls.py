"""URLs and paths as the package shows and resolves them.

A URL may reach the UI, logs, metadata and error messages, so credentials are refused in it and
anything shown is redacted first. Local paths are made absolute once, so that a daemon or a later
run resolves them to the same file as the process that read them first.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "check_url_has_no_credentials",
    "fs_is_local",
    "fs_protocols",
    "fs_serves",
    "is_remote",
    "redact_url",
    "resolve_local",
]


def check_url_has_no_credentials(url: str, *, what: str = "URL") -> None:
    """Refuse ``scheme://user:secret@host/...``: a URL is shown in the UI, logs and metadata, so
    credentials belong in ``storage_options`` (or the environment), never in the URL."""
    for part in url.split("::"):
        if "://" in part and "@" in urlsplit(part).netloc:
            raise ValueError(
                f"{what} {redact_url(url)!r} contains credentials before '@'. Remove them from the URL "
                "and pass them in storage_options (e.g. {'key': ..., 'secret': ...} for s3, ideally "
                "via dg.EnvVar) or use the storage provider's environment variables or credential files."
            )


def redact_url(url: str) -> str:
    """``url`` safe to display: user info replaced by ``***``, query string and fragment dropped
    (presigned URLs carry signatures there). Plain local paths are returned unchanged."""
    parts = []
    for part in url.split("::"):
        if "://" not in part:
            parts.append(part)
            continue
        split = urlsplit(part)
        netloc = split.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        parts.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return "::".join(parts)


def is_remote(url: str) -> bool:
    """Whether ``url`` names an fsspec URL (``s3://…``, chained ``a::b``) rather than a local path."""
    return "://" in url or "::" in url


def resolve_local(url: str) -> str:
    """A local path made absolute (``~`` expanded); fsspec URLs are returned unchanged."""
    if is_remote(url):
        return url
    return os.path.abspath(os.path.expanduser(url))


def fs_is_local(fs: Any) -> bool:
    """Whether the fsspec file system ``fs`` is the local disk."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def fs_protocols(fs: Any) -> set[str]:
    """Every protocol name the fsspec file system ``fs`` answers to."""
    protocol = fs.protocol
    return set(protocol) if isinstance(protocol, (tuple, list)) else {protocol}


def fs_serves(fs: Any, path: str) -> bool:
    """Whether ``path`` can be read with ``fs`` (same protocol; plain paths need a local ``fs``)."""
    if "://" not in path:
        return fs_is_local(fs)
    return path.split("://", 1)[0] in fs_protocols(fs)
