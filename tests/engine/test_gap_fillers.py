"""Throwaway tokens in the idle slots between a step's sequences (`scheduler.FILL_GAPS_UP_TO`, on a GPU):
with a KV stream per slot, llama.cpp decodes each run of consecutive sequence ids as its own
micro-batch, so the engine joins the runs, and the idle slots' caches must come out untouched."""

from __future__ import annotations

import threading
from pathlib import Path

import llama_cpp
import pytest

from server.config import ModelConfig
from server.engine import scheduler
from server.engine.sampling import SamplingParams, build_sampler
from server.engine.scheduler import Engine, Event, Generation
from tests.engine.conftest import engine_on

pytestmark = pytest.mark.integration


def generate(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[Generation]:
    """Greedy generations of these token prompts, submitted together, once all have ended."""
    done = threading.Semaphore(0)

    def sink(events: list[Event]) -> None:
        if any(kind in ("done", "error") for kind, _ in events):
            done.release()

    gens = [
        Generation(
            prompt=prompt,
            max_tokens=max_tokens,
            sampler=build_sampler(engine.model.model, SamplingParams(temperature=0.0)),
            sink=sink,
        )
        for prompt in prompts
    ]
    for gen in gens:
        engine.submit(gen)
    for _ in gens:
        assert done.acquire(timeout=120), "a generation did not finish"
    assert all(g.finish_reason in ("length", "stop") for g in gens), [g.finish_reason for g in gens]
    return gens


def story(folder: Path, fill: int) -> tuple[list[int], dict[str, int], bool]:
    """Three conversations on slots 0, 1, 2; the next turns of the first and the third together
    (slot 1 idle between them); then the second's next turn alone. Its tokens, the stats, and
    whether slot 1's KV cells matched its cache while the others decoded."""
    folder.mkdir()
    with engine_on(folder, n_ctx=256, n_parallel=4) as engine:
        engine.fill_gaps = fill  # on the CPU the engine leaves gaps by default
        model = engine.model
        first = [generate(engine, [model.completion_prompt(text)], 12)[0] for text in TEXTS]
        assert [g.slot for g in first] == [0, 1, 2]
        nexts = [g.prompt + g.tokens + g.prompt[-3:] for g in first]  # each one's next turn
        both = generate(engine, [nexts[0], nexts[2]], 12)
        assert [g.slot for g in both] == [0, 2]
        idle = engine.slots[1]
        untouched = llama_cpp.llama_memory_seq_pos_max(model.memory, 1) == len(idle.cache) - 1
        second = generate(engine, [nexts[1]], 12)[0]
        assert second.slot == 1 and second.cache_n >= len(first[1].prompt) + len(first[1].tokens) - 1
        return second.tokens, engine.stats.summary(), untouched


TEXTS = ["The lighthouse keeper climbed", "Recipe for tomato soup: first,", "In 1492, the ships"]


def test_the_idle_slot_between_two_conversations_keeps_its_cache(tmp_path: Path) -> None:
    filled, stats, untouched = story(tmp_path / "a", scheduler.FILL_GAPS_UP_TO)
    assert stats["gap_fillers"] > 0  # slot 1 took a throwaway token at every step of the pair
    assert untouched  # the throwaway cells were removed after each decode
    plain, plain_stats, _ = story(tmp_path / "b", 0)
    assert plain_stats["gap_fillers"] == 0
    assert filled == plain  # the conversation in the idle slot goes on as if nothing happened
    assert stats["tokens_prompt"] == plain_stats["tokens_prompt"]  # no filler counted as prompt


def test_gaps_are_filled_on_a_gpu_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's default follows `ModelConfig.on_gpu`: off on this CPU, on where the model
    runs on a GPU (stood in for here by the property, since no GPU is at hand)."""
    (tmp_path / "cpu").mkdir()
    with engine_on(tmp_path / "cpu", n_ctx=256, n_parallel=2) as engine:
        assert not engine.model.config.on_gpu
        assert engine.fill_gaps == 0
    monkeypatch.setattr(ModelConfig, "on_gpu", property(lambda self: True))
    (tmp_path / "gpu").mkdir()
    with engine_on(tmp_path / "gpu", n_ctx=256, n_parallel=2) as engine:
        assert engine.fill_gaps == scheduler.FILL_GAPS_UP_TO > 0
