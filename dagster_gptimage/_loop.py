"""An asyncio event loop on its own thread, for the requests of one Dagster step.

The step's thread spends a large share of a backfill writing events to Dagster's event log. If the
requests ran on a loop driven by that thread (an ``async def`` asset body, which Dagster advances
one ``yield`` at a time), every event write would pause them. On their own loop they keep flowing
while Dagster records finished partitions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "next_item"]

_T = TypeVar("_T")
_POLL_S = 0.5


class LoopThread:
    """``with LoopThread() as loop: loop.run(coro)``; on exit, whatever still runs is cancelled
    and awaited, worker threads are joined, and the loop is closed."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gptimage-requests", daemon=True
        )

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.submit(coro).result()

    def cancel_all(self) -> None:
        self.run(_cancel_all())

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.cancel_all()
            self.run(self._loop.shutdown_default_executor())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


async def _cancel_all() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def next_item(items: queue.Queue[Any]) -> Any:
    """The next item, waking up regularly so that an interrupt (run termination) is raised promptly
    in the waiting thread."""
    while True:
        try:
            return items.get(timeout=_POLL_S)
        except queue.Empty:
            continue
