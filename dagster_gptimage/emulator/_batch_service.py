"""The Files and Batches endpoints of the emulator: state, HTTP routes, outputs, downloads.

The rules (what a valid input file is, which status a batch has when) are in :mod:`._batches`;
this module keeps the objects of one emulator, answers requests for them, runs a batch's lines
once it has finished (rendering like the synchronous endpoints) and streams file content from disk,
breaking the first downloads mid-body when configured to.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio.to_thread

from dagster_gptimage.pricing import estimate_usage

from ._auth import authenticate
from ._batches import (
    BATCH_ENDPOINTS,
    TERMINAL,
    InputLine,
    LineOutcome,
    Timeline,
    batch_json,
    draw,
    endpoint_errors,
    error_line,
    list_json,
    not_run_line,
    output_line,
    parse_input_file,
)
from ._config import EmulatorConfig
from ._faults import moderation_error, server_error
from ._filestore import FileStore, StoredFile
from ._messages import EmulatorResponse
from ._wire import ApiError, Call

__all__ = ["BatchService"]

_ROUTE = re.compile(
    r"(?:/v1)?/(?P<kind>files|batches)(?:/(?P<id>[^/]+)(?:/(?P<action>content|cancel))?)?"
)
_RANGE = re.compile(r"bytes=(?P<start>\d+)-(?P<stop>\d*)")
_METADATA_PAIRS = 16


class BatchHost(Protocol):
    """What the service needs from its :class:`~dagster_gptimage.emulator.Emulator`."""

    @property
    def config(self) -> EmulatorConfig: ...

    def _interpret_line(self, url: str, body: bytes) -> Call: ...

    def _batch_body(self, call: Call) -> bytes: ...

    def _count_batch(self, call_name: str, *, lines: int = 0, images: int = 0) -> None: ...


@dataclass
class _Batch:
    id: str
    endpoint: str
    input_file: StoredFile
    lines: list[InputLine]
    outcomes: list[LineOutcome]
    timeline: Timeline
    model: str | None
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]]
    files: dict[str, str | None] = field(default_factory=lambda: {"output": None, "error": None})
    built: bool = False
    build_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Reply:
    """A JSON answer, or streamed file content (``chunks``) with an optional break."""

    status: int
    payload: Any = None
    chunks: Iterator[bytes] | None = None
    length: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    fault: str | None = None

    def response(self, base: tuple[tuple[str, str], ...]) -> EmulatorResponse:
        """The HTTP answer, with the emulator's ``base`` headers (for JSON) before the reply's."""
        if self.chunks is None:
            return EmulatorResponse(self.status, base, json.dumps(self.payload).encode())
        kept = tuple(item for item in base if item[0] != "content-type")
        fault: Literal["reset", "truncate"] | None = (
            "reset" if self.fault == "reset" else "truncate" if self.fault else None
        )
        return EmulatorResponse(
            self.status,
            kept + self.headers,
            b"",
            fault=fault,
            chunks=self.chunks,
            length=self.length,
        )


class BatchService:
    """Files and batches of one emulator; thread-safe."""

    def __init__(self, host: BatchHost) -> None:
        self._host = host
        self._lock = threading.Lock()
        self._store = FileStore()
        self._batches: dict[str, _Batch] = {}
        self._offset = 0.0
        self._faults_served = 0
        self._submissions: dict[str, int] = {}

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the batches' clock forward (to reach expiry without waiting a day)."""
        with self._lock:
            self._offset += seconds

    def rearm_download_faults(self) -> None:
        with self._lock:
            self._faults_served = 0

    def clear(self) -> None:
        with self._lock:
            self._batches.clear()
            self._offset = 0.0
            self._faults_served = 0
            self._submissions.clear()
        self._store.clear()

    @staticmethod
    def matches(path: str) -> bool:
        return _ROUTE.fullmatch(path.rstrip("/")) is not None

    async def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        """Route one request; :class:`ApiError` becomes the caller's error response."""
        match = _ROUTE.fullmatch(path.rstrip("/"))
        assert match is not None
        kind, item, action = match.group("kind"), match.group("id"), match.group("action")
        authenticate(self._host.config, headers, query)
        route = (kind, method, item is not None, action)
        if route == ("files", "POST", False, None):
            self._host._count_batch("files.create")
            return await self._upload(headers.get("content-type", ""), body)
        if kind == "files" and item is not None:
            return self._file_route(method, item, action, headers)
        if route == ("batches", "POST", False, None):
            self._host._count_batch("batches.create")
            return await self._create(body)
        if route == ("batches", "GET", False, None):
            self._host._count_batch("batches.list")
            return await self._list(query)
        if route == ("batches", "GET", True, None) and item is not None:
            self._host._count_batch("batches.retrieve")
            return Reply(200, await self._observe(self._batch(item)))
        if route == ("batches", "POST", True, "cancel") and item is not None:
            self._host._count_batch("batches.cancel")
            return Reply(200, await self._cancel(self._batch(item)))
        raise ApiError(404, f"Invalid URL ({method} {path})")

    def _file_route(
        self, method: str, file_id: str, action: str | None, headers: Mapping[str, str]
    ) -> Reply:
        stored = self._store.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        if method == "GET" and action is None:
            self._host._count_batch("files.retrieve")
            return Reply(200, stored.to_json())
        if method == "DELETE" and action is None:
            self._host._count_batch("files.delete")
            self._store.delete(file_id)
            return Reply(200, {"id": file_id, "object": "file", "deleted": True})
        if method == "GET" and action == "content":
            self._host._count_batch("files.content")
            return self._content(stored, headers.get("range"))
        raise ApiError(404, f"Invalid URL ({method} /v1/files/{file_id})")

    # --- files ---------------------------------------------------------------------------------

    async def _upload(self, content_type: str, body: bytes) -> Reply:
        fields, files = parse_multipart(content_type, body)
        purpose = fields.get("purpose")
        if purpose is None:
            raise ApiError(
                400, "Missing required parameter: 'purpose'.", param="purpose", code="missing"
            )
        if purpose != "batch":
            raise ApiError(
                400,
                f"The emulator only stores batch input files: purpose must be 'batch', not "
                f"{purpose!r}.",
                param="purpose",
                code="invalid_value",
            )
        if "file" not in files:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        filename, data = files["file"]
        config = self._host.config
        await anyio.to_thread.run_sync(
            lambda: parse_input_file(
                data, max_lines=config.batch_max_lines, max_bytes=config.batch_max_bytes
            )
        )
        stored = self._store.add_bytes(
            data, purpose="batch", filename=filename or "batch.jsonl", now=self.now()
        )
        return Reply(200, stored.to_json())

    def _content(self, stored: StoredFile, range_header: str | None) -> Reply:
        start, stop, status = 0, stored.size, 200
        headers: list[tuple[str, str]] = [("accept-ranges", "bytes")]
        if range_header:
            match = _RANGE.fullmatch(range_header.strip())
            if match is None or int(match.group("start")) >= max(stored.size, 1):
                raise ApiError(416, f"Range not satisfiable: {range_header}", code="invalid_range")
            start = int(match.group("start"))
            if match.group("stop"):
                stop = min(int(match.group("stop")) + 1, stored.size)
            status = 206
            headers.append(("content-range", f"bytes {start}-{stop - 1}/{stored.size}"))
        config = self._host.config
        with self._lock:
            fault = self._faults_served < config.batch_download_faults
            self._faults_served += int(fault)
        length = stop - start
        cut = start + int(length * config.batch_download_fault_at) if fault else stop
        return Reply(
            status,
            chunks=self._store.chunks(stored, start, cut),
            length=length,
            headers=(("content-type", "application/octet-stream"), *headers),
            fault=config.batch_download_fault if fault else None,
        )

    # --- batches -------------------------------------------------------------------------------

    def _batch(self, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    async def _create(self, body: bytes) -> Reply:
        request = _create_request(body)
        stored = self._store.get(request["input_file_id"])
        if stored is None or stored.purpose != "batch":
            raise ApiError(
                400,
                f"Invalid 'input_file_id': no batch input file {request['input_file_id']!r}.",
                param="input_file_id",
                code="invalid_value",
            )
        config = self._host.config
        batch_id = f"batch_{secrets.token_hex(12)}"
        endpoint = request["endpoint"]
        lines, outcomes, model = await anyio.to_thread.run_sync(
            self._plan, stored, endpoint, config
        )
        errors = endpoint_errors(lines, endpoint)
        timeline = Timeline(
            self.now(), config.batch_completion_s, config.batch_window_s, refused=bool(errors)
        )
        batch = _Batch(
            batch_id,
            endpoint,
            stored,
            lines,
            outcomes,
            timeline,
            model,
            request.get("metadata"),
            errors,
        )
        with self._lock:
            self._batches[batch_id] = batch
        return Reply(200, await self._observe(batch, timeline.created_at))

    def _plan(
        self, stored: StoredFile, endpoint: str, config: EmulatorConfig
    ) -> tuple[list[InputLine], list[LineOutcome], str | None]:
        """Decide every line's outcome up front (cheap: no rendering), so request counts can be
        shown while the batch runs."""
        lines: list[InputLine] = []
        outcomes: list[LineOutcome] = []
        model: str | None = None
        data = stored.path.read_bytes()
        for entry in parse_input_file(data, max_lines=len(data) + 1, max_bytes=len(data) + 1):
            lines.append(entry)
            raw = json.loads(data[entry.offset : entry.offset + entry.length])
            model = model or raw["body"].get("model")
            outcomes.append(self._outcome(raw, endpoint, config))
        return lines, outcomes, model if isinstance(model, str) else None

    def _outcome(self, raw: dict[str, Any], endpoint: str, config: EmulatorConfig) -> LineOutcome:
        try:
            call = self._host._interpret_line(raw["url"], json.dumps(raw["body"]).encode())
        except ApiError as error:
            return LineOutcome(error.status, error=error)
        word = config.moderation_word
        if word and word.lower() in call.request.prompt.lower():
            return LineOutcome(400, error=moderation_error(self._host.config.profile))
        if draw(config.seed, self._submission(raw["custom_id"]), raw["custom_id"]) < (
            config.batch_failure_rate
        ):
            return LineOutcome(500, error=server_error(self._host.config.profile, "500"))
        usage = estimate_usage(call.concrete_request)
        return LineOutcome(
            200, images=call.request.n, usage=(usage.input_tokens, usage.output_tokens)
        )

    def _submission(self, custom_id: str) -> int:
        """How many times this line has been submitted: its failure draw depends on the seed and
        this count only, so a seeded run fails the same lines and a resubmission draws afresh."""
        with self._lock:
            count = self._submissions.get(custom_id, 0) + 1
            self._submissions[custom_id] = count
            return count

    async def _cancel(self, batch: _Batch) -> dict[str, Any]:
        now = self.now()
        with self._lock:
            status = batch.timeline.status(now)
            if status in TERMINAL or status == "cancelling":
                raise ApiError(
                    409,
                    f"Cannot cancel a batch with status '{status}'.",
                    code="batch_not_cancellable",
                )
            batch.timeline = Timeline(
                batch.timeline.created_at,
                batch.timeline.completion_s,
                batch.timeline.window_s,
                refused=batch.timeline.refused,
                cancelled_at=now,
            )
        return await self._observe(batch, now)

    async def _list(self, query: Mapping[str, str]) -> Reply:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise ApiError(
                400, "Invalid 'limit': expected an integer between 1 and 100.", param="limit"
            )
        with self._lock:
            newest_first = list(reversed(self._batches.values()))
        after = query.get("after")
        if after is not None:
            ids = [batch.id for batch in newest_first]
            if after not in ids:
                raise ApiError(400, f"Invalid 'after': no batch {after!r}.", param="after")
            newest_first = newest_first[ids.index(after) + 1 :]
        page = newest_first[:limit]
        objects = [await self._observe(batch) for batch in page]
        return Reply(200, list_json(objects, has_more=len(newest_first) > limit))

    async def _observe(self, batch: _Batch, now: float | None = None) -> dict[str, Any]:
        """The batch object at ``now``, producing its output files on first sight of its end."""
        now = self.now() if now is None else now
        status = batch.timeline.status(now)
        if status in TERMINAL and not batch.built and status != "failed":
            await anyio.to_thread.run_sync(_build, self._store, self._host, batch, now)
        done = batch.timeline.done(len(batch.lines), now)
        finished = status in ("completed", "expired", "cancelled")
        ran = batch.outcomes[:done]
        completed = sum(1 for outcome in ran if outcome.status == 200)
        failed = (len(batch.lines) if finished else done) - completed
        usage = _usage(ran) if finished else None
        files = batch.files if finished else {}
        return batch_json(
            batch_id=batch.id,
            endpoint=batch.endpoint,
            input_file_id=batch.input_file.id,
            model=batch.model,
            metadata=batch.metadata,
            timeline=batch.timeline,
            now=now,
            counts={"total": len(batch.lines), "completed": completed, "failed": failed},
            errors=batch.errors,
            files=files,
            usage=usage,
        )


def _build(store: FileStore, host: BatchHost, batch: _Batch, now: float) -> None:
    """Run the lines the batch got to and write its output and error files, once."""
    with batch.build_lock:
        if batch.built:
            return
        done = batch.timeline.done(len(batch.lines), now)
        reason = "expired" if batch.timeline.status(now) == "expired" else "cancelled"
        stamp = batch.timeline.created_at
        base = f"{batch.id}"
        with (
            store.writer(purpose="batch_output", filename=f"{base}_output.jsonl", now=stamp) as (
                out,
                out_id,
            ),
            store.writer(purpose="batch_output", filename=f"{base}_error.jsonl", now=stamp) as (
                err,
                err_id,
            ),
        ):
            for index, (line, outcome) in enumerate(zip(batch.lines, batch.outcomes, strict=True)):
                line_id = f"batch_req_{secrets.token_hex(12)}"
                request_id = f"req_emu_{secrets.token_hex(8)}"
                if index >= done:
                    err.write(not_run_line(line_id, line.custom_id, reason))
                elif outcome.error is not None:
                    err.write(error_line(line_id, line.custom_id, request_id, outcome.error))
                else:
                    body = _line_body(store, host, batch, line)
                    out.write(output_line(line_id, line.custom_id, request_id, body))
                    host._count_batch("", lines=1, images=outcome.images)
        for kind, file_id in (("output", out_id), ("error", err_id)):
            stored = store.get(file_id)
            if stored is not None and stored.size == 0:
                store.delete(file_id)
            else:
                batch.files[kind] = file_id
        batch.built = True


def _line_body(store: FileStore, host: BatchHost, batch: _Batch, line: InputLine) -> bytes:
    raw = json.loads(store.read_line(batch.input_file, line.offset, line.length))
    call = host._interpret_line(raw["url"], json.dumps(raw["body"]).encode())
    return host._batch_body(call)


def _usage(ran: list[LineOutcome]) -> dict[str, Any]:
    input_tokens = sum(outcome.usage[0] for outcome in ran if outcome.status == 200)
    output_tokens = sum(outcome.usage[1] for outcome in ran if outcome.status == 200)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _create_request(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        request = None
    if not isinstance(request, dict):
        raise ApiError(400, "We could not parse the JSON body of your request.")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(request.get(name), str):
            raise ApiError(
                400,
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
    if request["endpoint"] not in BATCH_ENDPOINTS:
        raise ApiError(
            400,
            f"Invalid value for 'endpoint': the emulator batches {', '.join(BATCH_ENDPOINTS)}, "
            f"not {request['endpoint']!r}.",
            param="endpoint",
            code="invalid_value",
        )
    if request["completion_window"] != "24h":
        raise ApiError(
            400,
            f"Invalid value: '{request['completion_window']}'. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    metadata = request.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise ApiError(
            400,
            "Invalid 'metadata': at most 16 pairs of strings, keys up to 64 and values up to 512 "
            "characters.",
            param="metadata",
            code="invalid_value",
        )
    return request


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= _METADATA_PAIRS
        and all(
            isinstance(key, str) and isinstance(value, str) and len(key) <= 64 and len(value) <= 512
            for key, value in metadata.items()
        )
    )


def parse_multipart(
    content_type: str, body: bytes
) -> tuple[dict[str, str], dict[str, tuple[str | None, bytes]]]:
    """(fields, files) of a multipart/form-data body, without copying a large file part more than
    once (the stdlib email parser would, several times)."""
    media_type, _, params = content_type.partition(";")
    boundary = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if media_type.strip().lower() != "multipart/form-data" or not boundary:
        raise ApiError(
            400,
            f"Invalid Content-Type header ({content_type or 'none'}), expected multipart/form-data.",
        )
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str | None, bytes]] = {}
    position = body.find(delimiter)
    while position >= 0:
        start = position + len(delimiter)
        if body[start : start + 2] == b"--":
            break
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            break
        head, _, content = body[start + 2 : end].partition(b"\r\n\r\n")
        name, filename = _disposition(head.decode("utf-8", "replace"))
        if name is not None:
            if filename is not None or name == "file":
                files[name] = (filename, content)
            else:
                fields[name] = content.decode("utf-8", "replace")
        position = end + 2
    return fields, files


def _disposition(head: str) -> tuple[str | None, str | None]:
    for header in head.split("\r\n"):
        key, _, value = header.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        name = re.search(r'(?:^|;)\s*name="([^"]*)"', value)
        filename = re.search(r'(?:^|;)\s*filename="([^"]*)"', value)
        return (
            name.group(1) if name else None,
            filename.group(1) if filename else None,
        )
    return None, None
