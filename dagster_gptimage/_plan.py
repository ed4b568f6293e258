"""Planning a run: every partition's request built, validated, fingerprinted and looked up in the
store before anything is sent, so one bad row costs nothing and a cached image is never paid twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from dagster_gptimage._checks import DecodedImage, verify_bytes
from dagster_gptimage._job import ImageJob
from dagster_gptimage._metadata import preview_value, safe_preview
from dagster_gptimage._urls import redact_url
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import InvalidRequestError
from dagster_gptimage.fingerprint import request_fingerprint
from dagster_gptimage.models import ImageRequest
from dagster_gptimage.prompt_rows import row_data_version
from dagster_gptimage.prompts import PromptRow, PromptTable
from dagster_gptimage.storage import ImageRecord, ImageStore, SourceImage

__all__ = [
    "Failed",
    "Planned",
    "Planner",
    "SourceProblem",
    "read_cached",
    "short_error",
]

_PLAN_THREADS = 8


@dataclass
class Planned:
    """One partition after planning: what to send (or what is already stored)."""

    key: str
    prompt: str
    params: dict[str, Any]
    fingerprint: str
    estimate_usd: float
    extra: dict[str, Any]
    request: ImageRequest | None = None
    sources: list[SourceImage] = field(default_factory=list)
    mask: SourceImage | None = None
    mask_location: str | None = None
    row_version: str | None = None
    revision: str | None = None
    cached: ImageRecord | None = None
    cached_preview: dg.MetadataValue | None = None
    cached_problems: list[str] = field(default_factory=list)

    def record(self, **made: Any) -> ImageRecord:
        """The sidecar of the image made for this partition: what was planned (fingerprint,
        prompt, row, inputs) plus what making it gave (``made``: model, usage, cost, size …)."""
        return ImageRecord(
            fingerprint=self.fingerprint,
            prompt=self.prompt,
            extra=self.extra,
            sources=self.sources,
            mask=self.mask,
            revision=self.revision,
            **made,
        )


@dataclass(frozen=True)
class Failed:
    """A partition that will not be materialized by this run, and why."""

    key: str
    reason: str
    message: str
    attempts: int = 0
    possibly_billed_attempts: int = 0
    cost_usd: float = 0.0


class SourceProblem(Exception):
    """A partition's source image is missing, unreadable or changed: that partition fails alone."""


def read_cached(
    store: ImageStore, asset_key: dg.AssetKey, key: str, fingerprint: str
) -> tuple[ImageRecord, bytes] | None:
    """The cache hit and the bytes verified for it (size and sha256, for the check), so a cache hit
    reads its image once."""
    hit = store.read_verified(asset_key, key, fingerprint)
    return None if hit is None else (hit.record, hit.data)


def _resolve_location(location: str, table: PromptTable | None) -> str:
    """A per-row mask path relative to a local prompt table resolves next to that table."""
    if "://" in location or "::" in location or os.path.isabs(location):
        return location
    source = table.source if table is not None else None
    if source and "://" not in source and os.path.isabs(source):
        return os.path.join(os.path.dirname(source), location)
    return os.path.abspath(location)


class Planner:
    """Builds each partition's request with the run's client (provider-aware rules)."""

    def __init__(
        self,
        job: ImageJob,
        client: GPTImageClient,
        store: ImageStore,
        *,
        force: bool,
        check: bool,
        failed_upstream: Mapping[dg.AssetKey, frozenset[str]] | None = None,
    ) -> None:
        self.job = job
        self.client = client
        self.store = store
        self.force = force
        self.check = check
        self.emulated = client.provider == "emulator"
        self.table = job.prompts
        self.failed_upstream = failed_upstream or {}
        self._fixed_mask: bytes | None = None

    def rows(self, keys: Sequence[str]) -> dict[str, PromptRow | None]:
        """The rows as the table holds them now: a run re-reads its table (tables from records
        have nothing to re-read), so a row changed since the code loaded is made as it reads now,
        which is what its observed data version says."""
        if self.table is None:
            return dict.fromkeys(keys)
        table = self.table = self.table.reload()
        return {key: table.row(key) if key in table else None for key in keys}

    def read_source(self, source: dg.AssetKey, key: str) -> tuple[SourceImage, bytes]:
        if key in self.failed_upstream.get(source, frozenset()):
            raise SourceProblem(
                f"source {source.to_user_string()} failed for partition {key!r} in this run: "
                "nothing was sent for its edit"
            )
        record = self.store.read_record(source, key)
        if record is None:
            raise SourceProblem(
                f"source {source.to_user_string()} has no stored image for partition {key!r}: "
                "materialize it first"
            )
        path = self.store.image_path(record.asset_key, record.partition_key, record.format)
        try:
            data = self.store.read_bytes(path)
        except (FileNotFoundError, OSError) as error:
            raise SourceProblem(
                f"source image {redact_url(path)} could not be read ({type(error).__name__})"
            ) from error
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise SourceProblem(
                f"source image {redact_url(path)} does not match its sidecar's sha256: "
                "re-materialize the source"
            )
        source_image = SourceImage(
            asset_key=list(source.path), partition_key=key, path=path, sha256=record.sha256
        )
        return source_image, data

    def mask_location(self, row: PromptRow | None) -> str | None:
        if self.job.mask is not None:
            return self.job.mask
        if self.job.mask_column is None:
            return None
        value = (row.extra if row is not None else {}).get(self.job.mask_column)
        if value is None or value == "":
            return None
        return _resolve_location(str(value), self.table)

    def read_mask(self, location: str) -> bytes:
        if location == self.job.mask and self._fixed_mask is not None:
            return self._fixed_mask
        try:
            data = self.store.read_bytes(location)
        except FileNotFoundError as error:
            column = f" (column {self.job.mask_column!r})" if self.job.mask_column else ""
            raise InvalidRequestError(
                f"mask file {redact_url(location)}{column} does not exist",
                field="mask",
                value=location,
                accepted="an existing PNG file path or fsspec URL",
            ) from error
        if location == self.job.mask:
            self._fixed_mask = data
        return data

    def _prompt_and_params(self, key: str, row: PromptRow | None) -> tuple[str, dict[str, Any]]:
        prompt = row.prompt if row is not None else self.job.prompt
        if prompt is None:
            raise InvalidRequestError(
                f"no row with key {key!r} in prompt table {self.table.source if self.table else ''}",
                field="key",
                value=key,
                accepted="a key present in the prompt table",
            )
        params = {**self.job.defaults, **(row.params if row is not None else {})}
        if params.get("n", 1) != 1:
            raise InvalidRequestError(
                f"n={params['n']!r}: an image asset stores one image per partition",
                field="n",
                value=params["n"],
                accepted="1",
            )
        return prompt, params

    def _build(
        self, key: str, row: PromptRow | None
    ) -> tuple[ImageRequest, list[SourceImage], SourceImage | None, dict[str, Any], str]:
        prompt, params = self._prompt_and_params(key, row)
        if self.job.kind == "generate":
            return self.client.build_generate(prompt, **params), [], None, params, prompt
        sources: list[SourceImage] = []
        datas: list[bytes] = []
        for source in self.job.sources:
            source_image, data = self.read_source(source, key)
            sources.append(source_image)
            datas.append(data)
        location = self.mask_location(row)
        mask_data = self.read_mask(location) if location is not None else None
        request = self.client.build_edit(prompt, datas, mask=mask_data, **params)
        mask = None
        if location is not None and mask_data is not None:
            mask = SourceImage(
                path=redact_url(location), sha256=hashlib.sha256(mask_data).hexdigest()
            )
        return request, sources, mask, params, prompt

    def rebuild_edit(self, planned: Planned) -> ImageRequest:
        """An edit as planned, its inputs re-read when it is sent (so a big backfill never holds
        every input image in memory); an input that changed since planning fails the partition
        rather than paying for an image of the wrong inputs."""
        datas = []
        for source in planned.sources:
            data = self.store.read_bytes(source.path)
            if hashlib.sha256(data).hexdigest() != source.sha256:
                raise SourceProblem(
                    f"source image {redact_url(source.path)} changed during the run: re-run"
                )
            datas.append(data)
        mask = None
        if planned.mask_location is not None:
            mask = self.read_mask(planned.mask_location)
            if planned.mask is not None and hashlib.sha256(mask).hexdigest() != planned.mask.sha256:
                raise SourceProblem(
                    f"mask {redact_url(planned.mask_location)} changed during the run: re-run"
                )
        return self.client.build_edit(planned.prompt, datas, mask=mask, **planned.params)

    def plan_one(self, key: str, row: PromptRow | None) -> Planned | Failed:
        try:
            request, sources, mask, params, prompt = self._build(key, row)
        except InvalidRequestError as error:
            return Failed(key, "invalid", short_error(error))
        except SourceProblem as error:
            return Failed(key, "source", str(error))
        revision = row.revision if row is not None else None
        planned = Planned(
            key=key,
            prompt=prompt,
            params=params,
            fingerprint=request_fingerprint(request, emulated=self.emulated, revision=revision),
            revision=revision,
            estimate_usd=self.client.estimate_cost(request, batch=self.job.mode == "batch"),
            extra=dict(row.extra) if row is not None else {},
            request=request if self.job.kind == "generate" else None,
            sources=sources,
            mask=mask,
            mask_location=self.mask_location(row) if self.job.kind == "edit" else None,
            row_version=(
                row_data_version(row) if row is not None and self.job.kind == "generate" else None
            ),
        )
        if not self.force:
            hit = read_cached(self.store, self.job.asset_key, key, planned.fingerprint)
            if hit is not None:
                self._serve_cached(planned, *hit)
        return planned

    def _serve_cached(self, planned: Planned, record: ImageRecord, data: bytes) -> None:
        """A cache hit's preview and check without decoding its image, when its sidecar says it
        was decoded when stored: ``data`` hashes to the sidecar's sha256 (``read_verified``), so it
        is those bytes. Sidecars that do not say so (older versions) are decoded as before."""
        planned.cached = record
        if record.preview is not None:
            planned.cached_preview = preview_value(record.preview)
        else:
            planned.cached_preview = safe_preview(data)
        if self.check:
            decoded = (
                DecodedImage(record.sha256, record.format, record.width, record.height)
                if record.decoded
                else None
            )
            planned.cached_problems = verify_bytes(
                record, data, decoded=decoded, sha256=record.sha256
            )

    async def plan(self, keys: Sequence[str]) -> list[Planned | Failed]:
        rows = self.rows(keys)
        limit = asyncio.Semaphore(_PLAN_THREADS)

        async def one(key: str) -> Planned | Failed:
            async with limit:
                return await asyncio.to_thread(self.plan_one, key, rows[key])

        return list(await asyncio.gather(*(one(key) for key in keys)))


def short_error(error: BaseException, limit: int = 300) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
