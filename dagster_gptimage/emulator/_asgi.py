"""The emulator over real HTTP: a raw ASGI app and uvicorn helpers (the ``emulator`` extra).

Transport faults are produced on the socket, so clients meet them exactly as on the internet:

- "reset": the connection is aborted with ``SO_LINGER 0`` before any response byte, so the peer
  receives a TCP RST (httpx: ``ReadError``);
- "truncate": the headers announce the full ``Content-Length``, half the body is sent, then the
  connection is closed (httpx: ``RemoteProtocolError``).

Both need the connection's asyncio transport, which uvicorn's ``send`` callable carries; with any
other server the app raises instead, which also drops the connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import anyio

from ._core import Emulator
from ._messages import EmulatorRequest, EmulatorResponse

__all__ = ["EmulatorASGIApp", "check_loopback", "run_server_in_thread", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_logger = logging.getLogger(__name__)
_KEEP_ALIVE_S = 75


class _ConnectionDropped(Exception):
    """Raised when the transport cannot be reached to break it on purpose."""


class EmulatorASGIApp:
    """ASGI 3 application serving one :class:`Emulator`."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        host = headers.get("host") or _server_host(scope)
        request = EmulatorRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=bytes(body),
            origin=f"{scope.get('scheme', 'http')}://{host}",
        )
        response = await _handle_until_disconnect(self.emulator, request, receive)
        if response is not None:
            await _send(response, send, receive)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _server_host(scope: Scope) -> str:
    server = scope.get("server") or ("127.0.0.1", 80)
    host, port = server[0], server[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


async def _handle_until_disconnect(
    emulator: Emulator, request: EmulatorRequest, receive: Receive
) -> EmulatorResponse | None:
    """Stop working on a request whose client went away (a timed-out client must not keep a
    'timeout' fault sleeping for its whole hang)."""
    result: list[EmulatorResponse] = []
    async with anyio.create_task_group() as group:

        async def work() -> None:
            result.append(await emulator.handle(request))
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(work)
        group.start_soon(watch)
    return result[0] if result else None


async def _send(response: EmulatorResponse, send: Send, receive: Receive) -> None:
    if response.fault == "reset" and response.chunks is None:
        _break_connection(send, reset=True)
        await _await_disconnect(receive)
        return
    headers = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in response.headers]
    headers.append((b"content-length", str(response.content_length).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.chunks is not None:
        await _send_chunks(response, send, receive)
        return
    if response.fault == "truncate":
        await send(
            {
                "type": "http.response.body",
                "body": response.body[: len(response.body) // 2],
                "more_body": True,
            }
        )
        _break_connection(send, reset=False)
        await _await_disconnect(receive)
        return
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


async def _send_chunks(response: EmulatorResponse, send: Send, receive: Receive) -> None:
    """Stream file content; a faulty download stops where its chunks stop, then breaks."""
    chunks = response.chunks
    assert chunks is not None
    try:
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if response.fault is not None:
        _break_connection(send, reset=response.fault == "reset")
        await _await_disconnect(receive)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _break_connection(send: Send, *, reset: bool) -> None:
    """Close (FIN after the buffered bytes) or abort with RST the connection behind ``send``."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        raise _ConnectionDropped("emulated connection drop")
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


async def _await_disconnect(receive: Receive) -> None:
    """Let the server notice the closed connection, so it does not report an unfinished response."""
    with anyio.move_on_after(5):
        while (await receive())["type"] != "http.disconnect":
            pass


def check_loopback(host: str) -> None:
    """The emulator has no authentication of its own: refuse anything but loopback addresses."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the emulator only listens on loopback addresses, not {host!r}")


def _server(emulator: Emulator, *, log_level: str) -> Any:
    try:
        import uvicorn
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "serving the emulator over HTTP needs uvicorn: pip install 'dagster-gptimage[emulator]'"
        ) from error
    config = uvicorn.Config(
        EmulatorASGIApp(emulator),
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        # Real APIs keep idle connections far longer than clients do (httpx: 5 s). uvicorn's 5 s
        # default races httpx's: a request sent on a connection the server is closing fails with a
        # ReadError that never reached the server, a fault the real API does not produce.
        timeout_keep_alive=_KEEP_ALIVE_S,
    )
    return uvicorn.Server(config)


def _bind(host: str, port: int) -> socket.socket:
    check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _base_url(sock: socket.socket, host: str, prefix: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{prefix}"


def _prefix(emulator: Emulator) -> str:
    return "" if emulator.config.profile == "azure" else "/v1"


def serve(
    emulator: Emulator, host: str = "127.0.0.1", port: int = 8089, *, log_level: str = "info"
) -> None:
    """Serve ``emulator`` until interrupted (Ctrl+C)."""
    sock = _bind(host, port)
    server = _server(emulator, log_level=log_level)
    print(
        f"dagster-gptimage emulator ({emulator.config.profile} profile) on {_base_url(sock, host, _prefix(emulator))}",
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def run_server_in_thread(
    emulator: Emulator, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> Iterator[str]:
    """Serve ``emulator`` from a background thread for the duration of the ``with`` block.

    Yields the base URL (``http://127.0.0.1:<port>/v1``; Azure profile: without ``/v1``). Port 0
    picks a free port. The server is stopped, and its thread joined, on exit.
    """
    sock = _bind(host, port)
    server = _server(emulator, log_level=log_level)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="gptimage-emulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator server did not start")
            time.sleep(0.01)
        yield _base_url(sock, host, _prefix(emulator))
    finally:
        server.should_exit = True
        server.force_exit = True
        thread.join(timeout=10)
        sock.close()
        if thread.is_alive():  # pragma: no cover - diagnostic only
            _logger.warning("the emulator server thread did not stop within 10 s")
