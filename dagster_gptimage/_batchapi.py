"""The Files and Batches endpoints over httpx (async): upload, create, poll, cancel, stream results.

Retries follow the money rule. Reads (``retrieve``, ``list``, file content) are idempotent and are
retried with stamina. ``create`` is not: after an answer that leaves open whether the batch exists
(a dropped connection, a 5xx), the batch is looked up by its input file before anything is sent
again, so a backfill can never be submitted, and paid for, twice. Uploads are not retried (a
duplicate file costs nothing, but the caller decides). Output files can be gigabytes of base64:
they are read as a stream, line by line, and a download that breaks resumes where the last
complete line ended (``Range`` when the server honours it, else by skipping what was read).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import stamina
from pydantic import BaseModel, ConfigDict

from dagster_gptimage import _providers as providers
from dagster_gptimage._batchfile import BatchEndpoint, BatchFile, LineResult, parse_result_line
from dagster_gptimage.errors import GPTImageError, ProviderError

if TYPE_CHECKING:
    from dagster_gptimage.emulator import Emulator

__all__ = ["BatchAPI", "BatchCounts", "BatchObject", "BatchPage", "FileObject"]

TERMINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
_MAX_LINE_BYTES = 256 * 1024 * 1024
_LOOKUP_PAGES = 10


class FileObject(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    bytes: int = 0
    filename: str | None = None
    purpose: str | None = None
    created_at: int | None = None


class BatchCounts(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(BaseModel):
    """The fields of a ``Batch`` this package reads; the rest is kept in ``model_extra``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    id: str
    status: str
    endpoint: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    request_counts: BatchCounts | None = None
    metadata: dict[str, str] | None = None
    errors: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """No further change will happen: its files (if any) are final."""
        return self.status in TERMINAL_STATUSES

    @property
    def result_file_ids(self) -> list[str]:
        return [fid for fid in (self.output_file_id, self.error_file_id) if fid]


class BatchPage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    data: list[BatchObject]
    has_more: bool = False
    last_id: str | None = None


class _Retryable(Exception):
    """A read that may succeed when tried again (transport hiccup, 408/409/429/5xx)."""

    def __init__(self, error: GPTImageError) -> None:
        super().__init__(str(error))
        self.error = error


class BatchAPI:
    """Files and Batches endpoints at ``settings.base_url`` (``{base_url}/files``, ``/batches``).

    ``http`` is owned by the caller (see :meth:`connect` for one made here). The Batch API is
    OpenAI's: ``settings.provider`` must be "openai" or "emulator".
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: providers.ProviderSettings,
        *,
        read_attempts: int = 6,
        create_attempts: int = 3,
        wait_initial_s: float = 0.5,
        wait_max_s: float = 30.0,
    ) -> None:
        if settings.provider not in ("openai", "emulator"):
            raise ValueError(
                f"the Batch API is OpenAI's: provider={settings.provider!r} cannot run batches"
            )
        self._http = http
        self._settings = settings
        self._read_attempts = max(read_attempts, 1)
        self._create_attempts = max(create_attempts, 1)
        self._wait = {"wait_initial": wait_initial_s, "wait_max": wait_max_s}

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        settings: providers.ProviderSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        emulator: Emulator | None = None,
        timeout_s: float = 600.0,
        **options: Any,
    ) -> AsyncIterator[BatchAPI]:
        """A :class:`BatchAPI` with its own httpx client, closed on exit. provider="emulator"
        without ``transport`` talks to ``emulator`` (else ``get_emulator("default")``) in-process
        when ``settings.base_url`` is the in-process address."""
        if transport is None and settings.provider == "emulator":
            from dagster_gptimage.emulator import IN_PROCESS_BASE_URL, get_emulator

            if emulator is not None or settings.base_url == IN_PROCESS_BASE_URL:
                transport = (emulator or get_emulator("default")).transport()
        async with httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            headers=providers.base_headers(),
            trust_env=settings.provider != "emulator",
        ) as http:
            yield cls(http, settings, **options)

    @property
    def settings(self) -> providers.ProviderSettings:
        """The provider settings the batch lines are written for (``batch_files`` needs them)."""
        return self._settings

    def _url(self, path: str) -> str:
        return f"{self._settings.base_url}/{path}"

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**providers.auth_headers(self._settings), **(extra or {})}

    def _error(self, response: httpx.Response, body: bytes) -> GPTImageError:
        return providers.error_from_response(
            response.status_code, response.headers, body, self._settings.provider
        )

    # --- files ---------------------------------------------------------------------------------

    async def upload(self, batch_file: BatchFile, *, filename: str = "batch.jsonl") -> FileObject:
        """``POST /files`` (purpose "batch"). Not retried: see the module docstring."""
        try:
            response = await self._http.post(
                self._url("files"),
                headers=self._headers(),
                data={"purpose": "batch"},
                files={"file": (filename, batch_file.content, "application/jsonl")},
            )
        except httpx.TransportError as exc:
            raise ProviderError(
                f"uploading the batch input file failed: {type(exc).__name__}: {exc}",
                code="transport_error",
                provider=self._settings.provider,
            ) from None
        if response.status_code >= 400:
            raise self._error(response, response.content)
        return FileObject.model_validate(response.json())

    async def delete_file(self, file_id: str) -> None:
        response = await self._http.delete(self._url(f"files/{file_id}"), headers=self._headers())
        if response.status_code >= 400 and response.status_code != 404:
            raise self._error(response, response.content)

    async def retrieve_file(self, file_id: str) -> FileObject:
        return FileObject.model_validate(await self._get_json(f"files/{file_id}"))

    # --- batches -------------------------------------------------------------------------------

    async def create(
        self,
        input_file_id: str,
        endpoint: BatchEndpoint,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchObject:
        """``POST /batches``. After an ambiguous failure, look the batch up by ``input_file_id``
        (each input file feeds one batch) and post again only if it does not exist."""
        payload: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if metadata:
            payload["metadata"] = dict(metadata)
        last: GPTImageError | None = None
        for attempt in range(self._create_attempts):
            if attempt:
                existing = await self.find(input_file_id=input_file_id)
                if existing is not None:
                    return existing
            try:
                response = await self._http.post(
                    self._url("batches"), headers=self._headers(), json=payload
                )
            except httpx.TransportError as exc:
                last = ProviderError(
                    f"creating the batch failed: {type(exc).__name__}: {exc}",
                    code="transport_error",
                    provider=self._settings.provider,
                )
                continue
            if response.status_code < 400:
                return BatchObject.model_validate(response.json())
            error = self._error(response, response.content)
            if response.status_code < 500 and response.status_code not in (408, 409):
                raise error
            last = error
        assert last is not None
        existing = await self.find(input_file_id=input_file_id)
        if existing is not None:
            return existing
        raise last

    async def retrieve(self, batch_id: str) -> BatchObject:
        return BatchObject.model_validate(await self._get_json(f"batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchObject:
        """``POST /batches/{id}/cancel`` (safe to repeat: cancelling twice changes nothing, and a
        refusal because it already ended is answered with the batch as it is)."""
        try:
            response = await self._http.post(
                self._url(f"batches/{batch_id}/cancel"), headers=self._headers()
            )
        except httpx.TransportError:
            return await self.retrieve(batch_id)
        if response.status_code >= 400:
            error = self._error(response, response.content)
            if response.status_code in (400, 409):
                current = await self.retrieve(batch_id)
                if current.terminal or current.status == "cancelling":
                    return current
            raise error
        return BatchObject.model_validate(response.json())

    async def list(self, *, after: str | None = None, limit: int = 20) -> BatchPage:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return BatchPage.model_validate(await self._get_json("batches", params))

    async def find(
        self,
        *,
        input_file_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        max_pages: int = _LOOKUP_PAGES,
    ) -> BatchObject | None:
        """The newest batch matching ``input_file_id`` and every ``metadata`` pair, searching the
        ``max_pages`` newest pages of 100."""
        after: str | None = None
        for _ in range(max_pages):
            page = await self.list(after=after, limit=100)
            for batch in page.data:
                if input_file_id is not None and batch.input_file_id != input_file_id:
                    continue
                if metadata and any(
                    (batch.metadata or {}).get(k) != v for k, v in metadata.items()
                ):
                    continue
                return batch
            if not page.has_more or not page.data:
                return None
            after = page.data[-1].id
        return None

    # --- results -------------------------------------------------------------------------------

    async def results(self, batch: BatchObject) -> AsyncIterator[LineResult]:
        """Every result line of a finished batch (output file, then error file), parsed."""
        for file_id in batch.result_file_ids:
            async for line in self.stream_lines(file_id):
                try:
                    yield parse_result_line(line)
                except ValueError as exc:
                    raise ProviderError(
                        f"batch {batch.id} file {file_id} has a line that is not a result: {exc}",
                        code="invalid_batch_output",
                        provider=self._settings.provider,
                    ) from None

    async def stream_lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The lines of a file's content (without line ends), streamed, never the whole file in
        memory. A broken download is resumed after the last complete line yielded."""
        consumed = 0
        try:
            async for attempt in stamina.retry_context(
                on=_Retryable, attempts=self._read_attempts, timeout=None, **self._wait
            ):
                with attempt:
                    async for line, end in self._lines_from(file_id, consumed):
                        consumed = end
                        yield line
                    return
        except _Retryable as exc:
            raise exc.error from None
        raise AssertionError("unreachable: stamina yields at least one attempt")

    async def _lines_from(self, file_id: str, offset: int) -> AsyncIterator[tuple[bytes, int]]:
        headers = self._headers({"Accept-Encoding": "identity"})
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self._http.stream(
                "GET", self._url(f"files/{file_id}/content"), headers=headers
            ) as response:
                if response.status_code >= 400:
                    self._raise_for(response, await response.aread())
                skip = offset
                if offset and response.status_code == 206:
                    skip = _range_skip(response.headers.get("content-range"), offset)
                async for item in _split_lines(response.aiter_bytes(), offset, skip):
                    yield item
        except httpx.TransportError as exc:
            raise _Retryable(
                ProviderError(
                    f"downloading file {file_id} (from byte {offset}) broke: "
                    f"{type(exc).__name__}: {exc}",
                    code="transport_error",
                    provider=self._settings.provider,
                )
            ) from None

    def _raise_for(self, response: httpx.Response, body: bytes) -> None:
        error = self._error(response, body)
        if providers.is_retryable_error(error, response.headers):
            raise _Retryable(error)
        raise error

    async def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            async for attempt in stamina.retry_context(
                on=_Retryable, attempts=self._read_attempts, timeout=None, **self._wait
            ):
                with attempt:
                    try:
                        response = await self._http.get(
                            self._url(path), headers=self._headers(), params=params
                        )
                    except httpx.TransportError as exc:
                        raise _Retryable(
                            ProviderError(
                                f"GET {path} failed: {type(exc).__name__}: {exc}",
                                code="transport_error",
                                provider=self._settings.provider,
                            )
                        ) from None
                    if response.status_code >= 400:
                        self._raise_for(response, response.content)
                    return response.json()
        except _Retryable as exc:
            raise exc.error from None
        raise AssertionError("unreachable: stamina yields at least one attempt")


def _range_skip(content_range: str | None, offset: int) -> int:
    """Bytes to drop from a 206 body so it starts at ``offset`` (0 when the range is exact)."""
    if content_range and content_range.startswith("bytes "):
        start = content_range[6:].split("-", 1)[0]
        if start.isdigit() and int(start) <= offset:
            return offset - int(start)
    raise _Retryable(ProviderError(f"unusable Content-Range {content_range!r} for offset {offset}"))


async def _split_lines(
    chunks: AsyncIterator[bytes], offset: int, skip: int
) -> AsyncIterator[tuple[bytes, int]]:
    """(line, absolute offset after its newline) from a byte stream starting at ``offset``
    (``skip`` leading bytes of it already read before)."""
    pending = bytearray()
    position = offset
    async for chunk in chunks:
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        search = len(pending)
        pending += chunk
        while (newline := pending.find(b"\n", search)) >= 0:
            line = bytes(pending[:newline]).rstrip(b"\r")
            del pending[: newline + 1]
            position += newline + 1
            search = 0
            if line.strip():
                yield line, position
        if len(pending) > _MAX_LINE_BYTES:
            raise ProviderError(f"a batch result line is longer than {_MAX_LINE_BYTES} bytes")
    if pending.strip():
        position += len(pending)
        yield bytes(pending), position
