"""Durable records of submitted batches, kept in the image store beside the images they will make.

A batch is paid for as its lines run, whatever becomes of the process that submitted it. So before
a run waits for a batch it writes down which partitions' requests the batch holds; a later run (after
a SIGKILL, a terminated run, a restarted daemon) reads the record and collects that batch's results
instead of submitting the same requests again.

A record is written once the input file is uploaded, before the batch is created (``batch_id``
still None), and again with the batch id right after: a crash between the two leaves a record that
the next run resolves by looking the batch up by its input file (each input file feeds one batch).

Layout: ``{store}/{asset key path}/_batches/{input_file_id}.json``. The folder holds no image, so
the store's listings of sidecars never see it. Writes are all-or-nothing (``ImageStore.write_bytes``).
"""

from __future__ import annotations

import contextlib
import logging
import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dagster_gptimage._urls import redact_url
from dagster_gptimage.storage import AssetKeyLike, ImageStore

__all__ = [
    "BatchLine",
    "BatchRecord",
    "read_records",
    "record_url",
    "records_url",
    "remove_record",
    "write_record",
]

_log = logging.getLogger(__name__)

RECORDS_FOLDER = "_batches"


class BatchLine(BaseModel):
    """One request of a batch: the partition it is for and the request's fingerprint."""

    model_config = ConfigDict(frozen=True)

    custom_id: str
    key: str
    fingerprint: str


class BatchRecord(BaseModel):
    """A batch submitted for an asset, and the lines of it that are still to be collected."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = 1
    asset_key: list[str]
    provider: str
    base_url: str
    """Where the batch lives (redacted): a record is only followed by runs talking to it."""
    endpoint: str
    input_file_id: str
    batch_id: str | None = None
    submitted_at: float = Field(default_factory=time.time)
    """When the batch was created (this machine's clock): latencies count from here."""
    run_id: str | None = None
    resubmission: bool = False
    """The lines are a second try of lines that expired or were cancelled."""
    lines: list[BatchLine]

    @property
    def custom_ids(self) -> set[str]:
        return {line.custom_id for line in self.lines}

    def served_by(self, provider: str, base_url: str) -> bool:
        return self.provider == provider and self.base_url == redact_url(base_url)


def records_url(store: ImageStore, asset_key: AssetKeyLike) -> str:
    return f"{store.asset_url(asset_key)}/{RECORDS_FOLDER}"


def record_url(store: ImageStore, record: BatchRecord) -> str:
    return f"{records_url(store, record.asset_key)}/{record.input_file_id}.json"


def write_record(store: ImageStore, record: BatchRecord) -> None:
    store.write_bytes(record_url(store, record), record.model_dump_json(indent=2).encode())


def remove_record(store: ImageStore, record: BatchRecord) -> None:
    fs = store.fs
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(fs._strip_protocol(record_url(store, record)))


def read_records(store: ImageStore, asset_key: AssetKeyLike) -> list[BatchRecord]:
    """Every readable record of the asset, oldest first. An unreadable one is logged and skipped,
    never deleted: it may be the only trace of a batch that is being paid for."""
    fs = store.fs
    folder = fs._strip_protocol(records_url(store, asset_key))
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    records: list[BatchRecord] = []
    for entry in entries:
        name = entry["name"]
        if entry.get("type") != "file" or not name.endswith(".json"):
            continue
        if name.rsplit("/", 1)[-1].startswith("."):
            continue
        try:
            records.append(BatchRecord.model_validate_json(fs.cat_file(name)))
        except FileNotFoundError:
            continue
        except (ValidationError, ValueError) as error:
            _log.warning(
                "Ignoring unreadable batch record %s (%s)", redact_url(name), type(error).__name__
            )
    return sorted(records, key=lambda record: record.submitted_at)
