"""The ``image_valid`` asset check: a stored image is what its sidecar says it is.

A paid-for image can be damaged after the fact (a truncated copy, an edited file, a half-synced
bucket). The check re-reads the stored bytes and verifies that they hash to the sidecar's sha256,
decode completely, and have the requested format and size. It runs in the materialization run for the
run's partitions and, run alone, over every stored image of the asset without regenerating anything.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from dagster_gptimage._urls import redact_url
from dagster_gptimage.errors import InvalidImageError
from dagster_gptimage.images import inspect_image
from dagster_gptimage.models import parse_size
from dagster_gptimage.storage import ImageRecord, ImageStore

__all__ = [
    "CHECK_NAME",
    "FAILING_KEY",
    "DecodedImage",
    "check_result",
    "check_spec",
    "earlier_failures",
    "reverify",
    "verify_all",
    "verify_bytes",
    "verify_image",
]

CHECK_NAME = "image_valid"
FAILING_KEY = "failing_partitions"
"""Metadata of every evaluation: all partitions found invalid, so that the next evaluation
re-verifies them and a failure stays reported until it is fixed or regenerated."""
_LISTED_FAILURES = 50
_VERIFY_THREADS = 4


@dataclass(frozen=True)
class DecodedImage:
    """What decoding some bytes showed; lets the check skip decoding bytes it just decoded."""

    sha256: str
    format: str
    width: int
    height: int


def check_spec(asset_key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        CHECK_NAME,
        asset=asset_key,
        description=(
            "Each stored image decodes, has the requested format and size, and matches the sha256 "
            "in its sidecar. In a materialization run it covers the run's partitions; run alone it "
            "re-verifies every stored image of the asset (or the run's partitions) without "
            "regenerating anything. Every evaluation also re-verifies the partitions the previous "
            "one found invalid, so a bad image stays reported until it is fixed or regenerated."
        ),
    )


def earlier_failures(previous: Mapping[str, dg.MetadataValue]) -> list[str]:
    """The partitions the previous evaluation found invalid (its ``failing_partitions``)."""
    value = previous.get(FAILING_KEY)
    keys = getattr(value, "value", None)
    return [str(key) for key in keys] if isinstance(keys, list) else []


async def reverify(
    store: ImageStore, asset_key: dg.AssetKey, keys: Iterable[str]
) -> dict[str, list[str]]:
    """Problems of partitions found invalid before: re-read now (fixed ones pass)."""
    records: list[ImageRecord] = []
    problems: dict[str, list[str]] = {}
    for key in keys:
        record = await asyncio.to_thread(store.read_record, asset_key, key)
        if record is None:
            problems[key] = ["no image in the store"]
        else:
            records.append(record)
    problems.update(await verify_all(store, records))
    return problems


def _requested_dimensions(size: object) -> tuple[int, int] | None:
    if not isinstance(size, str):
        return None
    try:
        return parse_size(size)
    except ValueError:
        return None


def verify_bytes(
    record: ImageRecord,
    data: bytes,
    *,
    decoded: DecodedImage | None = None,
    sha256: str | None = None,
) -> list[str]:
    """Problems with ``data``, the bytes stored for ``record`` (an empty list: they are valid).

    ``decoded`` describes bytes already decoded (in this process, or when stored: see
    ``ImageRecord.decoded``); when ``data`` hashes to its sha256 they are those bytes, so they are
    not decoded a second time. ``sha256`` is that of ``data`` when the caller has just computed it.
    """
    problems: list[str] = []
    if sha256 is None:
        sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != record.sha256:
        problems.append(
            f"sha256 {sha256[:12]}… of the stored file does not match the sidecar's "
            f"{record.sha256[:12]}… (file changed or corrupted)"
        )
    if decoded is not None and decoded.sha256 == sha256:
        info = decoded
    else:
        try:
            image = inspect_image(data, field="stored image")
        except InvalidImageError as error:
            problems.append(f"does not decode: {error.message}")
            return problems
        info = DecodedImage(sha256, image.format, image.width, image.height)
    return problems + _described_problems(record, info)


def _described_problems(record: ImageRecord, info: DecodedImage) -> list[str]:
    """What is wrong with an image described by ``info`` for ``record``'s request and sidecar."""
    problems: list[str] = []
    requested_format = record.params.get("output_format") or record.format
    if info.format != requested_format:
        problems.append(f"is {info.format}, {requested_format} was requested")
    elif info.format != record.format:
        problems.append(f"is {info.format}, the sidecar says {record.format}")
    requested = _requested_dimensions(record.params.get("size"))
    if requested is not None and (info.width, info.height) != requested:
        problems.append(
            f"is {info.width}x{info.height}, {requested[0]}x{requested[1]} was requested"
        )
    elif (info.width, info.height) != (record.width, record.height):
        problems.append(
            f"is {info.width}x{info.height}, the sidecar says {record.width}x{record.height}"
        )
    return problems


def verify_image(
    store: ImageStore, record: ImageRecord, *, decoded: DecodedImage | None = None
) -> list[str]:
    """Problems with ``record``'s image as stored now (an empty list: it is valid).

    With ``decoded`` matching the sidecar, the file is only hashed, in chunks (a backfill of 4K
    images then holds no second copy of each); anything else reads and verifies the whole file."""
    if decoded is not None and decoded.sha256 == record.sha256:
        try:
            if store.stored_sha256(record) == record.sha256:
                return _described_problems(record, decoded)
        except (FileNotFoundError, OSError, ValueError):
            pass  # reported below, as any unreadable image
    try:
        _, data = store.stored_image(record)
    except FileNotFoundError:
        return [f"image file {_shown_path(store, record)} is missing"]
    except OSError as error:
        return [
            f"image file {_shown_path(store, record)} could not be read ({type(error).__name__})"
        ]
    return verify_bytes(record, data, decoded=decoded)


def _shown_path(store: ImageStore, record: ImageRecord) -> str:
    return redact_url(store.image_path(record.asset_key, record.partition_key, record.format))


async def verify_all(
    store: ImageStore,
    records: Iterable[ImageRecord],
    *,
    decoded: Mapping[str, DecodedImage] | None = None,
) -> dict[str, list[str]]:
    """``verify_image`` for many records, a few at a time in threads (decoding releases the GIL)."""
    limit = asyncio.Semaphore(_VERIFY_THREADS)
    known = decoded or {}

    async def one(record: ImageRecord) -> tuple[str, list[str]]:
        async with limit:
            problems = await asyncio.to_thread(
                verify_image, store, record, decoded=known.get(record.partition_key)
            )
            return record.partition_key, problems

    results = await asyncio.gather(*(one(record) for record in records))
    return dict(results)


def check_result(
    asset_key: dg.AssetKey,
    problems: Mapping[str, Sequence[str]],
    *,
    scope: str,
) -> dg.AssetCheckResult:
    """One result for the verified partitions; failures listed by key in metadata and description."""
    failed = {key: list(found) for key, found in sorted(problems.items()) if found}
    checked = len(problems)
    if failed:
        listed = list(failed.items())[:_LISTED_FAILURES]
        more = len(failed) - len(listed)
        description = (
            f"{len(failed)} of {checked} stored images are invalid ({scope}): "
            + "; ".join(f"{key}: {', '.join(found)}" for key, found in listed)
        )
        if more:
            description += f"; and {more} more"
    else:
        description = f"{checked} stored images verified ({scope})"
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=CHECK_NAME,
        passed=not failed,
        description=description,
        metadata={
            "checked": dg.MetadataValue.int(checked),
            "failed": dg.MetadataValue.int(len(failed)),
            "scope": dg.MetadataValue.text(scope),
            "failures": dg.MetadataValue.json(dict(list(failed.items())[:_LISTED_FAILURES])),
            FAILING_KEY: dg.MetadataValue.json(sorted(failed)),
        },
    )
