"""How fast one endpoint is asked: an adaptive limit on requests in flight, and rate limits.

**Adaptive concurrency (AIMD).** Providers answer overload with 429, 503 or 529 (or time out)
long before a fixed concurrency is wrong for good, and retrying at the same rate only earns more
refusals. So each endpoint gets a limit on requests in flight that starts at its configured
concurrency, halves on an overload answer or a timeout (at most once per window of requests
already in flight: one burst of refusals is one signal, not ten), and grows by one after as
many successes in a row as the current limit; never below 1 or above `max_concurrency`. The
limit is per request attempt, so a retry waits for a slot like any request.

**Rate limits.** `requests_per_minute` and `tokens_per_minute` of a model entry are enforced
with `aiolimiter` (a leaky bucket): a request waits for its share before it is sent. Tokens are
counted as providers count them for their limits: the prompt plus the most the answer may use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from aiolimiter import AsyncLimiter

__all__ = ["AdaptiveLimit", "FlowControl", "is_overload"]

OVERLOAD_STATUS = frozenset({429, 503, 529})


def is_overload(exc: BaseException) -> bool:
    """An answer that means "slow down": 429/503/529, an "overloaded" error, or a timeout."""
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in OVERLOAD_STATUS:
            return True
        return "overloaded" in str(exc).lower()
    return isinstance(exc, openai.APITimeoutError | httpx.TimeoutException | asyncio.TimeoutError)


@dataclass
class AdaptiveLimit:
    """An AIMD limit on requests in flight. Not thread-safe: one event loop."""

    start: int
    maximum: int
    limit: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    decreases: int = 0
    lowest: int = 0
    _streak: int = 0
    _started: int = 0  # requests started so far (a request's number is its start order)
    _window_end: int = 0  # overloads of requests started before this number were already counted
    _changed: asyncio.Condition | None = None

    def __post_init__(self) -> None:
        self.maximum = max(1, self.maximum)
        self.limit = max(1, min(self.start, self.maximum))
        self.lowest = self.limit

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self) -> int:
        """Wait for a slot; return the request's number (for `overloaded`)."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._started += 1
            return self._started

    async def release(self) -> None:
        changed = self._condition()
        async with changed:
            self.in_flight -= 1
            changed.notify_all()

    def succeeded(self) -> None:
        self._streak += 1
        if self._streak >= self.limit and self.limit < self.maximum:
            self.limit += 1
            self._streak = 0
            if self._changed is not None:
                asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def overloaded(self, request_number: int) -> None:
        """Halve, unless this request started before the last halving (the same burst)."""
        self._streak = 0
        if request_number <= self._window_end:
            return
        self.limit = max(1, self.limit // 2)
        self.lowest = min(self.lowest, self.limit)
        self.decreases += 1
        self._window_end = self._started

    def snapshot(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "lowest": self.lowest,
            "maximum": self.maximum,
            "decreases": self.decreases,
            "peak_in_flight": self.peak_in_flight,
        }


@dataclass
class FlowControl:
    """Everything that paces one endpoint: its adaptive limit and its rate limiters."""

    limit: AdaptiveLimit
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    _rpm: AsyncLimiter | None = field(default=None, repr=False)
    _tpm: AsyncLimiter | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.requests_per_minute:
            self._rpm = AsyncLimiter(self.requests_per_minute, 60)
        if self.tokens_per_minute:
            self._tpm = AsyncLimiter(self.tokens_per_minute, 60)

    @asynccontextmanager
    async def attempt(self, tokens: int = 0) -> AsyncIterator[Attempt]:
        """One request attempt: rate limits first, then a slot; the outcome adjusts the limit."""
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None and tokens > 0:
            await self._tpm.acquire(min(tokens, self.tokens_per_minute or tokens))
        number = await self.limit.acquire()
        outcome = Attempt(number)
        try:
            yield outcome
        except BaseException as exc:
            if is_overload(exc):
                self.limit.overloaded(number)
            raise
        else:
            self.limit.succeeded()
        finally:
            await self.limit.release()

    def snapshot(self) -> dict[str, Any]:
        return self.limit.snapshot() | {
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
        }


@dataclass
class Attempt:
    number: int
