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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "next_item"]

_T = TypeVar("_T")
_POLL_S = 0.5


class LoopThread:
    """``with LoopThread() as loop: loop.run(coro)``; on exit, whatever still runs is cancelled
    and awaited, worker threads are joined, and the loop is closed.

    Also the sync face of :class:`~dagster_gptimage.client.GPTImageClient`, which starts one
    lazily (``start()``) and ends it with ``stop()``: that works from any thread, the loop's own
    included (a garbage-collection finalizer may run there), and cancels nothing.
    """

    def __init__(self, name: str = "gptimage-requests") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> LoopThread:
        self.thread.start()
        return self

    def __enter__(self) -> LoopThread:
        return self.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for it; refused on the loop's own thread, where
        waiting would deadlock."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                f"a blocking call was made from the event loop thread {self.thread.name!r}; "
                "use the async method instead"
            )
        future = self.submit(coro)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def cancel_all(self) -> None:
        self.run(_cancel_all())

    def stop(self) -> None:
        """Stop and close the loop without cancelling what runs on it."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self.thread:
                self.thread.join()
        if not self.thread.is_alive():
            self.loop.close()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.cancel_all()
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.stop()


async def _cancel_all() -> None:
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def next_item(items: queue.Queue[Any], on_idle: Callable[[], None] | None = None) -> Any:
    """The next item, waking up regularly so that an interrupt (run termination) is raised promptly
    in the waiting thread; ``on_idle`` runs at each wake-up without an item (in this thread)."""
    while True:
        try:
            return items.get(timeout=_POLL_S)
        except queue.Empty:
            if on_idle is not None:
                on_idle()
