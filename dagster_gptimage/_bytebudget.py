"""A bound on the bytes that the tasks of one event loop hold in memory at once.

The client uses it for response bodies that have arrived but are not yet (or are being) decoded:
the request's HTTP slot is free as soon as its body is in hand, so without a bound in bytes a
burst of large answers would all be held in memory while the CPU works through them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

__all__ = ["ByteBudget"]


class ByteBudget:
    """``async with budget.hold(size):`` waits until ``size`` more bytes fit under ``limit``.

    First come, first served, so a large holder is never starved by a stream of small ones; a
    holder larger than ``limit`` counts as ``limit``, i.e. it waits until nothing else is held.
    Not thread-safe: one budget per event loop.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget needs a positive limit, got {limit}")
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = max(0, min(size, self.limit))
        await self._acquire(size)
        try:
            yield
        finally:
            self.held -= size
            self._wake()

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self.held + size <= self.limit:
            self.held += size
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, granted))
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.held -= size  # granted, then cancelled before it could run: give it back
            else:
                granted.cancel()
            self._wake()
            raise

    def _wake(self) -> None:
        while self._waiters:
            size, granted = self._waiters[0]
            if granted.done():
                self._waiters.popleft()
                continue
            if self.held + size > self.limit:
                return
            self._waiters.popleft()
            self.held += size
            granted.set_result(None)
