"""Offline emulator of the GPT image API, for tests, examples and benchmarks.

Use it in-process (no socket, core dependencies only)::

    emulator = get_emulator()                      # process-wide, shared with Dagster runs
    client = httpx.AsyncClient(transport=EmulatorTransport(emulator), base_url=IN_PROCESS_BASE_URL)

or over real HTTP (needs the ``emulator`` extra)::

    python -m dagster_gptimage.emulator --port 8089 --latency 0.5
    with run_server_in_thread(emulator) as base_url: ...

It validates requests like the real API (400s with ``param`` and ``code``), renders deterministic
images of the requested size and format, reports realistic usage, counts what would have been
billed, and injects faults (429, quota, 5xx, connection reset, truncated body, timeout,
moderation) from configured rates or a deterministic script. It can also enforce an account's
rate limits (images and tokens per minute, token buckets shared by all its clients) with OpenAI's
429s and ``x-ratelimit-*`` headers.

What a client sees is what the wire would show it: authentication is required by default (the
client sends a placeholder bearer to the emulator); a "reset" is a dropped connection
(``httpx.ReadError``) and a "truncate" a 200 whose body stops short of its Content-Length
(``httpx.RemoteProtocolError``), both billed because they happen after generation; a slow answer
hits the client's own read timeout (``httpx.ReadTimeout``), also billed.
"""

from ._asgi import EmulatorASGIApp, run_server_in_thread, serve
from ._config import FAULT_KINDS, EmulatorConfig, FaultKind, Profile
from ._core import Emulator, get_emulator
from ._messages import IN_PROCESS_BASE_URL, IN_PROCESS_ORIGIN, EmulatorRequest, EmulatorResponse
from ._render import RenderSpec, render, renderable_formats
from ._stats import EmulatorStats, RecordedFile, RecordedRequest
from ._transport import EmulatorTransport

__all__ = [
    "FAULT_KINDS",
    "IN_PROCESS_BASE_URL",
    "IN_PROCESS_ORIGIN",
    "Emulator",
    "EmulatorASGIApp",
    "EmulatorConfig",
    "EmulatorRequest",
    "EmulatorResponse",
    "EmulatorStats",
    "EmulatorTransport",
    "FaultKind",
    "Profile",
    "RecordedFile",
    "RecordedRequest",
    "RenderSpec",
    "get_emulator",
    "render",
    "renderable_formats",
    "run_server_in_thread",
    "serve",
]
