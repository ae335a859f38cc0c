"""Store writes off the event loop, one at a time, in order, on one background thread.

A synchronous pymongo write inside a coroutine stalls every other conversation's stream (and
its measured time to first token) for the database round trip; `StoreWriter.write` hands the
write to its own thread instead. One thread, not a pool: writes keep their order, and when the
database dies the first write waits out its timeout and every later one fails at once with the
same error, so a run stops in one timeout, not one per conversation in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class StoreWriteFailed(Exception):
    """An earlier write failed; this one was not attempted."""


class StoreWriter:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.failed: str | None = None  # why the first failed write failed

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer thread; raises what it raised, or StoreWriteFailed."""
        if self.failed is not None:
            raise StoreWriteFailed(self.failed)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._attempt, fn, *args)

    def _attempt(self, fn: Callable[..., T], *args: Any) -> T:
        if self.failed is not None:  # queued behind the write that failed
            raise StoreWriteFailed(self.failed)
        try:
            return fn(*args)
        except Exception as exc:
            self.failed = str(exc)
            raise

    def close(self) -> None:
        """Drop queued writes; a write in progress ends on its own (its timeout at worst)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
