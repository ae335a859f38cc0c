"""Steps that keep their shape, so llama.cpp reuses their graph (`scheduler.HOLD_STEPS`,
`scheduler.SEPARATE_PROMPTS`, on a GPU; switched on here by hand): a slot whose answer ended
keeps a throwaway output row, and prompt tokens go in steps of their own. Either way every
conversation gets the same tokens, and the held slot's cache comes out untouched."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import llama_cpp
import pytest

from server.config import ModelConfig
from server.engine import scheduler
from server.engine.sampling import SamplingParams, build_sampler
from server.engine.scheduler import Engine, Event, Generation
from tests.engine.conftest import engine_on

pytestmark = pytest.mark.integration


def greedy(
    engine: Engine, prompt: list[int], max_tokens: int, started: threading.Event | None = None
) -> Generation:
    """A greedy generation, submitted; `started` is set once its first text arrives."""

    def sink(events: list[Event]) -> None:
        if started is not None and any(kind == "text" for kind, _ in events):
            started.set()

    gen = Generation(
        prompt=prompt,
        max_tokens=max_tokens,
        sampler=build_sampler(engine.model.model, SamplingParams(temperature=0.0)),
        sink=sink,
    )
    engine.submit(gen)
    return gen


def wait(*gens: Generation) -> None:
    """Until each generation has ended (the engine sets its finish reason before its last event)."""
    deadline = time.monotonic() + 120
    for gen in gens:
        while gen.finish_reason is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert gen.finish_reason == "length", gen.finish_reason


PROMPTS = [[2000 + 13 * k + i for i in range(24)] for k in range(2)]


def held_story(folder: Path, hold: int) -> tuple[list[list[int]], dict[str, int], bool]:
    """Two conversations start together; the first's answer ends long before the second's, and
    its next turn comes after. Their tokens, the stats, and whether the first slot's KV cells
    matched its cache while the second ran on alone."""
    folder.mkdir()
    with engine_on(folder, n_ctx=256, n_parallel=2) as engine:
        engine.hold_steps = hold
        short, long = greedy(engine, PROMPTS[0], 4), greedy(engine, PROMPTS[1], 24)
        wait(short, long)
        idle = engine.slots[short.slot or 0]
        untouched = llama_cpp.llama_memory_seq_pos_max(engine.model.memory, idle.seq) == len(idle.cache) - 1
        nxt = greedy(engine, short.prompt + short.tokens + PROMPTS[1][:5], 8)
        wait(nxt)
        assert nxt.slot == short.slot and nxt.cache_n >= len(short.prompt) + len(short.tokens) - 1
        return [short.tokens, long.tokens, nxt.tokens], engine.stats.summary(), untouched


def test_a_finished_answer_keeps_its_row_and_the_step_its_graph(tmp_path: Path) -> None:
    held, stats, untouched = held_story(tmp_path / "held", scheduler.HOLD_STEPS)
    plain, plain_stats, _ = held_story(tmp_path / "plain", 0)
    assert held == plain  # every conversation's tokens, the next turn's too
    assert stats["held_rows"] > 0 and plain_stats["held_rows"] == 0
    assert untouched  # the held row's cell was removed after each step
    # The second conversation's steps after the first's answer kept their shape: one graph
    # build fewer (the first's leaving) than without the held row.
    assert stats["graph_builds"] < plain_stats["graph_builds"], (
        stats["graph_builds"],
        plain_stats["graph_builds"],
    )
    assert stats["tokens_prompt"] == plain_stats["tokens_prompt"]  # no held row counted as prompt


def arriving_story(folder: Path, separate: bool) -> tuple[list[list[int]], dict[str, object]]:
    """A prompt arrives while another conversation generates."""
    folder.mkdir()
    with engine_on(folder, n_ctx=256, n_parallel=2) as engine:
        engine.separate_prompts = separate
        started = threading.Event()
        first = greedy(engine, PROMPTS[0], 40, started)
        assert started.wait(120)
        second = greedy(engine, PROMPTS[1], 8)
        wait(first, second)
        assert first.tokens and second.tokens
        return [first.tokens, second.tokens], engine.stats.summary()


def test_prompt_tokens_take_steps_of_their_own(tmp_path: Path) -> None:
    apart, stats = arriving_story(tmp_path / "apart", True)
    mixed, mixed_stats = arriving_story(tmp_path / "mixed", False)
    assert apart == mixed
    prompt_steps, mixed_prompt_steps = stats["prompt_steps"], mixed_stats["prompt_steps"]
    assert isinstance(prompt_steps, dict) and isinstance(mixed_prompt_steps, dict)
    # The second prompt beside the first's one-token row: two micro-batches; on its own: one.
    assert prompt_steps["micro_batches"] == prompt_steps["steps"]
    assert mixed_prompt_steps["micro_batches"] > mixed_prompt_steps["steps"]


def bursting_story(folder: Path, burst: int) -> tuple[list[list[int]], list[int]]:
    """A 40-token prompt arrives, in steps of 16 tokens, while another conversation generates.
    The tokens, and each step's prompt tokens in order (0: a decode step)."""
    folder.mkdir()
    with engine_on(folder, n_ctx=256, n_parallel=2, n_batch=16, n_ubatch=16) as engine:
        engine.separate_prompts, engine.prompt_burst = True, burst
        prompt_tokens: list[int] = []
        add = engine.stats.add

        def record(generating: int, prompt: int, *rest: float) -> None:
            prompt_tokens.append(prompt)
            add(generating, prompt, *rest)

        engine.stats.add = record  # type: ignore[method-assign]
        started = threading.Event()
        first = greedy(engine, PROMPTS[0][:8], 60, started)
        assert started.wait(120)
        second = greedy(engine, [3000 + i for i in range(40)], 8)
        wait(first, second)
        return [first.tokens, second.tokens], prompt_tokens


def test_a_burst_of_prompt_steps_runs_back_to_back(tmp_path: Path) -> None:
    """`PROMPT_BURST`: with 1 the second prompt's three steps take turns with the first
    conversation's decode steps; with 3 they run one after another. The same tokens either way."""
    turns, turn_steps = bursting_story(tmp_path / "turns", 1)
    burst, burst_steps = bursting_story(tmp_path / "burst", 3)
    assert scheduler.PROMPT_BURST == 1
    assert turns == burst

    def prompt_runs(steps: list[int]) -> list[list[int]]:
        runs: list[list[int]] = []
        for before, now in zip([0, *steps], steps, strict=False):
            if now:
                runs.append([now]) if not before else runs[-1].append(now)
        return runs

    # The first prompt (8 tokens) runs alone; then the second prompt's chunks.
    assert prompt_runs(turn_steps)[1:] == [[16], [16], [8]], turn_steps
    assert prompt_runs(burst_steps)[1:] == [[16, 16, 8]], burst_steps


def test_held_rows_and_separate_prompts_are_on_a_gpu_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpu").mkdir()
    with engine_on(tmp_path / "cpu", n_ctx=256, n_parallel=2) as engine:
        assert engine.hold_steps == 0 and not engine.separate_prompts
    monkeypatch.setattr(ModelConfig, "on_gpu", property(lambda self: True))
    (tmp_path / "gpu").mkdir()
    with engine_on(tmp_path / "gpu", n_ctx=256, n_parallel=2) as engine:
        assert engine.hold_steps == scheduler.HOLD_STEPS > 0 and engine.separate_prompts
    (tmp_path / "tail").mkdir()
    with engine_on(tmp_path / "tail", n_ctx=256, n_parallel=2, graph_tail=True) as engine:
        assert engine.hold_steps == 0 and not engine.separate_prompts  # the whole chain in the graph
    (tmp_path / "unified").mkdir()
    with engine_on(tmp_path / "unified", n_ctx=256, n_parallel=2, kv_unified=True) as engine:
        assert engine.hold_steps == 0 and engine.separate_prompts  # held rows need cells of their own


def test_no_held_rows_beside_rows_sampled_whole_in_the_graph(tmp_path: Path) -> None:
    """`graph_tail` stages the settings and draws of the real output rows only, in batch order: a
    held row among them would shift them. With held rows and separate prompt steps forced on,
    requests sampled whole in the graph, whose answers end at different steps, still get what
    llama.cpp's CPU chain gives, and no row is held while such a request runs."""
    from server.engine.sampling import build_chains
    from tests.engine.test_backend_sampling import Job
    from tests.engine.test_engine import PROMPTS as TEXTS
    from tests.engine.test_graph_top_k import job_params

    def run(engine: Engine, whole: bool) -> list[list[int]]:
        jobs = [
            Job(
                engine,
                TEXTS[i],
                n,
                job_params(i),
                chains=build_chains(engine.model.model, job_params(i), whole, in_graph_tail=whole),
            )
            for i, n in enumerate((10, 30, 18, 30))
        ]
        return [job.wait().gen.tokens for job in jobs]

    with engine_on(tmp_path, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as engine:
        engine.hold_steps, engine.separate_prompts = scheduler.HOLD_STEPS, True
        ours = run(engine, whole=True)
        held = engine.stats.held_rows
        assert ours == run(engine, whole=False)
        assert len({len(t) for t in ours}) > 1  # answers of several lengths: slots freed while others ran
    assert held == 0
