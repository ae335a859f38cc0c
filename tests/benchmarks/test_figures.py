"""The benchmark arithmetic that turns server answers into figures: cache shares, the engine's
per-step profile, the cached-token count a stream reports, and tables with ours-only rows."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import httpx
import respx

from benchmarks.client import StreamResult
from benchmarks.common import make_record, markdown_table
from benchmarks.engine_profile import OURS_ONLY, Profiler, StepSplit, counter_delta, step_split
from benchmarks.multiturn_concurrency import Turn, cache_percent, lowest_percent, summarize


def _conv(*turns: tuple[int, int, int | None]) -> list[Turn]:
    return [Turn(ttft_ms=10.0 * (i + 1), prompt=p, completion=c, cached=k, end=float(i)) for i, (p, c, k) in
            enumerate(turns)]  # fmt: skip


def test_cache_percent_is_cached_over_previous_prompt_plus_answer() -> None:
    a = _conv((100, 20, 0), (250, 20, 110))  # history 120, 110 cached
    b = _conv((100, 20, 3), (250, 20, 120))  # history 120, all cached
    assert cache_percent([a, b], 1) == 100.0 * 230 / 240
    assert cache_percent([a, b], 0) is None  # the first turn has no history
    assert lowest_percent([a, b], 1) == 100.0 * 110 / 120


def test_cache_percent_unknown_when_a_server_does_not_say() -> None:
    a = _conv((100, 20, 0), (250, 20, None))
    assert cache_percent([a], 1) is None
    assert lowest_percent([a], 1) is None
    assert cache_percent([], 1) is None


def test_summarize_per_turn_and_ratio() -> None:
    a = _conv((100, 20, 0), (250, 20, 110), (400, 20, 260))
    b = _conv((100, 20, 0), (250, 20, 120), (400, 20, 270))
    out = summarize([a, b], wall_s=2.0)
    assert out["aggregate"] == 6 * 20 / 2.0  # every answer of every conversation
    assert out["ttft1"] == 10.0 and out["ttft3"] == 30.0 and out["ratio"] == 3.0
    assert "cache1" not in out
    assert out["cache2"] == 100.0 * 230 / 240 and out["history2"] == 120 and out["cached2"] == 115
    assert out["cache3"] == 100.0 * 530 / 540 and out["lowest3"] == 100.0 * 260 / 270


def _stats(steps: int, decode: float, sample: float, other: float, **extra: int) -> dict:
    row = {"steps": steps, "decode": decode, "sample": sample, "other": other}
    return {"decode_only_ms_per_step_by_sequences": {"16": row}, **extra}


def test_step_split_is_the_difference_of_cumulative_means() -> None:
    before = _stats(100, 2.0, 1.0, 0.5, tokens_generated=1600)
    after = _stats(300, 3.0, 1.5, 0.5, tokens_generated=4800)  # totals 900 / 450 / 150 ms
    split = step_split(before, after, 16)
    assert split is not None
    assert split.steps == 200
    assert math.isclose(split.decode_ms, (900 - 200) / 200)
    assert math.isclose(split.sample_ms, (450 - 100) / 200)
    assert math.isclose(split.other_ms, (150 - 50) / 200)
    assert math.isclose(split.share, 100 * (1.75 + 0.5) / (3.5 + 1.75 + 0.5))
    assert counter_delta(before, after, "tokens_generated") == 3200
    assert counter_delta(before, after, "backend_sampled") is None


def test_step_split_first_row_and_missing_data() -> None:
    after = _stats(10, 3.0, 1.0, 1.0)
    assert step_split({"steps": 0}, after, 16) == StepSplit(10, 3.0, 1.0, 1.0)  # no row before: all new
    assert step_split(None, after, 16) is None  # no snapshot before: cannot attribute
    assert step_split(after, after, 16) is None  # no step at 16 in between
    assert step_split({}, {"steps": 3}, 16) is None  # the llama-cpp-python engine: no such keys
    assert step_split({}, _stats(10, 3.0, 1.0, 1.0), 8) is None


def test_prompt_cached_from_timings_or_usage() -> None:
    r = StreamResult(start=0.0, timings={"prompt_n": 5, "cache_n": 95})
    assert r.prompt_cached == 95 and r.prompt_tokens == 100
    r = StreamResult(start=0.0, usage={"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 64}})
    assert r.prompt_cached == 64
    assert StreamResult(start=0.0, usage={"prompt_tokens": 100}).prompt_cached is None


def test_ours_only_record_has_no_reference_and_renders() -> None:
    r = make_record("concurrency", "m", 16, "ours engine step", "ms", [1.0, 3.0], [], better="lower",
                    reference_name=OURS_ONLY)  # fmt: skip
    assert r.ours == 2.0 and r.reference is None and r.ratio is None
    row = markdown_table([r]).splitlines()[-1]
    assert "| 2.00 (1.00 / 3.00) | - | - |" in row


def test_step_split_of_all_steps() -> None:
    before = {"steps": 10, "ms_per_step": {"decode": 4.0, "sample": 1.0, "other": 1.0}}
    after = {"steps": 30, "ms_per_step": {"decode": 3.0, "sample": 1.0, "other": 0.5}}
    split = step_split(before, after, None)
    assert split is not None and split.steps == 20
    assert math.isclose(split.decode_ms, (90 - 40) / 20) and math.isclose(split.other_ms, (15 - 10) / 20)


def test_the_profile_of_lanes_is_the_first_lanes_steps_and_the_counters_of_all() -> None:
    """With `"lanes": 2` the server's stats are `{"lanes": [...]}`: 32 conversations are 16
    rows a lane; the split is the first lane's steps at 16, the counters both lanes'."""
    lane = _stats(100, 2.0, 1.0, 0.5, tokens_generated=1600) | {"steps": 100}
    grown = _stats(300, 3.0, 1.5, 0.5, tokens_generated=4800) | {"steps": 300}
    other = _stats(100, 2.0, 1.0, 0.5, tokens_generated=2000) | {"steps": 150}  # the second lane's
    answers = iter([{"lanes": [lane, lane]}, {"lanes": [grown, other]}])
    server = SimpleNamespace(root_url="http://127.0.0.1:9")
    profiler = Profiler(server, 32)  # type: ignore[arg-type]

    async def run() -> str:
        return "done"

    with respx.mock:
        respx.get("http://127.0.0.1:9/storybench/models").mock(
            side_effect=lambda _: httpx.Response(
                200, json={"loaded_model_settings": {"stats": next(answers)}}
            )
        )
        assert asyncio.run(profiler.measure(run())) == "done"
    assert profiler.lanes == 2
    assert profiler.splits == [step_split(lane, grown, 16)]
    assert profiler.generated == 3200 + 400 and profiler.counters["steps"] == 200 + 50
    assert "16 generating sequences in the first of 2 lanes" in profiler.records("concurrency", "m")[0].note


def test_the_profile_says_where_the_steps_that_are_not_full_went() -> None:
    """150 full steps at 3 ms, 20 prompt steps at 12 ms and 30 decode-only steps with fewer
    sequences at 4 ms: the note gives the last two kinds, the third derived from all steps."""
    zero = {"decode": 0.0, "sample": 0.0, "other": 0.0}
    before = {"steps": 0, "ms_per_step": zero, "decode_only_ms_per_step_by_sequences": {},
              "prompt_steps": {"steps": 0, **zero}}  # fmt: skip
    after = {
        "steps": 200,
        "ms_per_step": {"decode": 630 / 200, "sample": 90 / 200, "other": 90 / 200},
        "decode_only_ms_per_step_by_sequences": {
            "16": {"steps": 150, "decode": 2.0, "sample": 0.5, "other": 0.5}
        },
        "prompt_steps": {"steps": 20, "prompt_tokens": 5000, "decode": 12.0, "sample": 0.0, "other": 0.0},
    }
    answers = iter([before, after])
    server = SimpleNamespace(root_url="http://127.0.0.1:9")
    profiler = Profiler(server, 16)  # type: ignore[arg-type]

    async def run() -> None:
        return None

    with respx.mock:
        respx.get("http://127.0.0.1:9/storybench/models").mock(
            side_effect=lambda _: httpx.Response(
                200, json={"loaded_model_settings": {"stats": next(answers)}}
            )
        )
        asyncio.run(profiler.measure(run()))
    assert profiler.prompts == [StepSplit(20, 12.0, 0.0, 0.0)]
    note = profiler.records("multiturn_concurrency", "m")[0].note
    assert "decode-only steps with fewer sequences, ms a step: 20 at 12.00 ms / 30 at 4.00 ms" in note
