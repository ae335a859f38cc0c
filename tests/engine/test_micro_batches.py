"""The mirror of llama.cpp's micro-batch split (`micro_batches`), and the prompt chunks the engine
shapes with it (`scheduler.PROMPT_CHUNKS`): checked against llama.cpp's own split, which it
logs with LLAMA_BATCH_DEBUG, on the bundled model."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import llama_cpp
import pytest
from llama_cpp._logger import set_verbose

from server.engine import micro_batches, scheduler
from server.engine.model import BatchedModel
from server.engine.scheduler import _Batch
from tests.engine.conftest import engine_on
from tests.engine.test_gap_fillers import generate


def test_one_token_rows_and_a_prompt_chunk_take_two_passes() -> None:
    # Rows 0-3 give one token each with the chunk's first; the chunk's other 9 go alone.
    assert micro_batches.sizes([(0, 1), (1, 1), (2, 1), (3, 1), (4, 10)], 512) == [5, 9]


def test_a_gap_between_sequences_starts_a_new_pass() -> None:
    assert micro_batches.sizes([(0, 1), (2, 1), (3, 1)], 512) == [1, 2]


def test_chunks_of_different_lengths_are_cut_at_the_shortest() -> None:
    assert micro_batches.sizes([(0, 64), (1, 64), (2, 56)], 512) == [168, 16]
    assert micro_batches.sizes([(0, 64), (1, 64), (2, 64)], 512) == [192]


def test_a_pass_holds_at_most_n_ubatch_tokens_in_whole_rounds() -> None:
    assert micro_batches.sizes([(0, 300), (1, 300)], 512) == [512, 88]
    assert micro_batches.sizes([(0, 300), (1, 300), (2, 300)], 512) == [510, 390]


def test_fillers_are_worth_it_between_one_token_rows_only() -> None:
    # Decoding slots 0, 1 and 4: two passes, one with slots 2 and 3 filled.
    assert micro_batches.worth_filling([(0, 1), (1, 1), (4, 1)], {2, 3}, 512)
    # Two prompt chunks on slots 2 and 9: two passes; filled, their first tokens go apart (three).
    assert not micro_batches.worth_filling([(2, 10), (9, 10)], set(range(3, 9)), 512)
    # A prompt chunk after decoding rows: two passes either way, so no fillers (they cost rows).
    assert not micro_batches.worth_filling([(0, 1), (3, 40)], {1, 2}, 512)


def test_one_stream_cuts_the_batch_in_n_ubatch_pieces() -> None:
    assert micro_batches.sizes([(0, 1), (2, 1), (3, 700)], 512, streams=False) == [512, 190]


SHAPES = [
    [(0, 1), (1, 1), (2, 1), (3, 1), (4, 10)],
    [(0, 1), (2, 1), (3, 1), (5, 7)],
    [(0, 12), (1, 12), (2, 5)],
    [(1, 40), (2, 40), (3, 40), (4, 3), (6, 1)],
    [(0, 130), (1, 90)],  # n_ubatch 64 below: whole rounds of two
]


@pytest.mark.integration
def test_the_mirror_matches_llama_cpps_own_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batches of these shapes decoded by llama.cpp (a KV stream per sequence) with its batch
    debug log on: the micro-batches it logs are the ones `micro_batches.sizes` predicts."""
    monkeypatch.setenv("LLAMA_BATCH_DEBUG", "1")  # read when the context is made
    with engine_on(tmp_path, n_ctx=256, n_parallel=8, n_batch=512, n_ubatch=64) as engine:
        model: BatchedModel = engine.model
        engine.close()  # this test drives the context itself
        batch = _Batch(512)
        for runs in SHAPES:
            llama_cpp.llama_memory_clear(model.memory, True)
            batch.clear()
            for seq, n in runs:
                batch.add_run([1000 + i for i in range(n)], 0, seq, output_last=True)
            capsys.readouterr()
            set_verbose(True)
            try:
                assert batch.decode(model.ctx) == 0
                llama_cpp.llama_synchronize(model.ctx)
            finally:
                set_verbose(False)
            log = capsys.readouterr().err
            logged = [
                int(m.group(1))
                for m in re.finditer(r"added ubatch to split:\s*\n.*?n_tokens\s*=\s*(\d+)", log, re.S)
            ]
            assert logged, "llama.cpp logged no micro-batch: is LLAMA_BATCH_DEBUG still read?"
            assert logged == micro_batches.sizes(runs, 64), runs


@pytest.mark.integration
def test_even_chunks_evaluate_prompts_that_arrive_together_in_one_pass_a_step(tmp_path: Path) -> None:
    """Six 40-token prompts at once in steps of 64 tokens: "fifo" cuts the last chunk of a step
    short and mixes the first answers' one-token rows into the prompt steps (several passes a
    step); "even" gives each prompt a share of 10 (then 10, 10, 10), so every prompt step is
    one pass. The answers are the same token for token."""
    prompts = [[2000 + 37 * k + i for i in range(40)] for k in range(6)]
    results = {}
    for mode in ("fifo", "even"):
        (tmp_path / mode).mkdir()
        with engine_on(tmp_path / mode, n_ctx=256, n_parallel=6, n_batch=64, n_ubatch=64) as engine:
            engine.prompt_chunks = mode
            gens = generate(engine, prompts, 6)
            assert all(g.finish_reason == "length" for g in gens)
            results[mode] = ([g.tokens for g in gens], engine.stats.summary()["prompt_steps"])
    (fifo_tokens, fifo_steps), (even_tokens, even_steps) = results["fifo"], results["even"]
    assert even_tokens == fifo_tokens
    assert even_steps["prompt_tokens"] == fifo_steps["prompt_tokens"] == 240
    assert even_steps["steps"] == even_steps["micro_batches"] == 4
    assert fifo_steps["micro_batches"] > fifo_steps["steps"]


@pytest.mark.integration
def test_prompts_that_arrive_together_fill_a_step_in_arrival_order_on_a_gpu_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first to arrive gets its whole prompt into the step and so its first token soonest;
    the last gets what is left or waits (`PROMPT_CHUNKS`: measured on an H100, session 15)."""
    from server.config import ModelConfig

    waiting = [SimpleNamespace(seq=k, at=0, gen=SimpleNamespace(prompt=[7] * 40)) for k in range(3)]
    monkeypatch.setattr(ModelConfig, "on_gpu", property(lambda self: True))
    with engine_on(tmp_path, n_ctx=256, n_parallel=3) as engine:
        assert engine.prompt_chunks == scheduler.PROMPT_CHUNKS == "fifo"
        assert engine._chunks(waiting, 64) == {0: 40, 1: 24}  # type: ignore[arg-type]
        engine.prompt_chunks = "even"
        assert engine._chunks(waiting, 64) == {0: 21, 1: 21, 2: 21}  # type: ignore[arg-type]
