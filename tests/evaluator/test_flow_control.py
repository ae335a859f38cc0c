"""The adaptive limit on requests in flight (AIMD) and the rate limiters, on their own."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from evaluator.flow_control import AdaptiveLimit, FlowControl, is_overload


def status_error(code: int, message: str = "slow down") -> openai.APIStatusError:
    request = httpx.Request("POST", "http://x.test/v1/chat/completions")
    return openai.APIStatusError(message, response=httpx.Response(code, request=request), body=None)


def test_overload_answers_are_recognised() -> None:
    assert (
        is_overload(status_error(429)) and is_overload(status_error(503)) and is_overload(status_error(529))
    )
    assert is_overload(status_error(500, "upstream overloaded, try later"))
    assert is_overload(httpx.ReadTimeout("slow"))
    assert not is_overload(status_error(400)) and not is_overload(status_error(500, "boom"))


def test_the_limit_halves_once_per_burst_and_grows_back_by_one() -> None:
    async def scenario() -> AdaptiveLimit:
        limit = AdaptiveLimit(start=16, maximum=16)
        numbers = [await limit.acquire() for _ in range(8)]
        for n in numbers:  # eight refusals of one burst: one halving
            limit.overloaded(n)
            await limit.release()
        assert limit.limit == 8 and limit.decreases == 1
        later = await limit.acquire()  # a request started after the halving counts again
        limit.overloaded(later)
        await limit.release()
        assert limit.limit == 4 and limit.decreases == 2
        for _ in range(4):  # as many successes in a row as the limit: one more slot
            await limit.acquire()
            limit.succeeded()
            await limit.release()
        assert limit.limit == 5
        return limit

    limit = asyncio.run(scenario())
    assert limit.snapshot() == {"limit": 5, "lowest": 4, "maximum": 16, "decreases": 2, "peak_in_flight": 8}


def test_the_limit_never_leaves_its_bounds() -> None:
    async def scenario() -> AdaptiveLimit:
        limit = AdaptiveLimit(start=2, maximum=3)
        for _ in range(6):
            limit.overloaded(await limit.acquire())
            await limit.release()
        assert limit.limit == 1
        for _ in range(50):
            await limit.acquire()
            limit.succeeded()
            await limit.release()
        return limit

    assert asyncio.run(scenario()).limit == 3
    assert AdaptiveLimit(start=10, maximum=4).limit == 4  # start above the maximum: capped


def test_requests_wait_for_a_slot_when_the_limit_is_reached() -> None:
    async def scenario() -> list[int]:
        limit = AdaptiveLimit(start=2, maximum=2)
        seen: list[int] = []

        async def one() -> None:
            await limit.acquire()
            seen.append(limit.in_flight)
            await asyncio.sleep(0)
            await limit.release()

        await asyncio.gather(*(one() for _ in range(10)))
        return seen

    assert max(asyncio.run(scenario())) <= 2


def test_rate_limits_are_asked_for_each_attempt_with_its_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, float]] = []

    async def acquire(self: Any, amount: float = 1) -> None:
        calls.append(("rpm" if self.max_rate == 600 else "tpm", amount))

    monkeypatch.setattr("aiolimiter.AsyncLimiter.acquire", acquire)
    flow = FlowControl(AdaptiveLimit(start=4, maximum=4), requests_per_minute=600, tokens_per_minute=90_000)

    async def scenario() -> None:
        async with flow.attempt(tokens=1_500):
            pass
        with pytest.raises(openai.APIStatusError):
            async with flow.attempt(tokens=200_000):  # more than a minute's budget: capped
                raise status_error(429)

    asyncio.run(scenario())
    assert calls == [("rpm", 1), ("tpm", 1_500), ("rpm", 1), ("tpm", 90_000)]
    assert flow.limit.decreases == 1 and flow.snapshot()["requests_per_minute"] == 600
