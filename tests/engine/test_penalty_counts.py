"""The penalties' windows counted by token, one row per slot (`host_tail.PenaltyCounts`).

The counts replace matching each step's candidates against the histories; they must give the
same penalties: row by row against the window each plan keeps, through `penalize` against the
histories matched, and in the engine against llama.cpp's whole chain on the CPU for answers
longer than the 64-token window (so tokens leave it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.engine import scheduler
from server.engine.host_tail import PENALTY_HISTORY, PenaltyCounts, TailPlan, penalize
from server.engine.sampling import build_chains
from tests.engine.conftest import engine_on
from tests.engine.test_backend_sampling import Job
from tests.engine.test_engine import PROMPTS
from tests.engine.test_graph_top_k import job_params

VOCAB = 500


def penalized_plan(seed: int, penalties: tuple[float, float, float] = (1.1, 0.0, 0.0)) -> TailPlan:
    plan = TailPlan(40, 0.95, 0.05, 0.8, seed=seed)
    plan.penalties = penalties
    return plan


def window_counts(plan: TailPlan) -> np.ndarray:
    picked = plan.history[plan.history >= 0]
    return np.bincount(picked, minlength=VOCAB)


def test_a_row_counts_the_last_64_tokens_picked() -> None:
    """Tokens from a small vocabulary (many repeats), far past the window: after every pick the
    slot's row equals the counts of the plan's window, and every other row stays empty."""
    rng = np.random.default_rng(3)
    counts = PenaltyCounts(4, VOCAB)
    plan = penalized_plan(1)
    counts.lend(2, plan)
    for step, token in enumerate(rng.integers(0, 30, 300)):
        plan.remember(int(token))
        assert (counts.table[2] == window_counts(plan)).all(), step
    assert counts.table[2].sum() == PENALTY_HISTORY
    assert counts.table[[0, 1, 3]].sum() == 0


def test_a_row_lent_again_starts_from_its_new_owners_window() -> None:
    """A slot's next generation gets the row cleared (or counting the window it already has);
    the previous owner keeps its own window and stops writing the row."""
    counts = PenaltyCounts(2, VOCAB)
    first, second = penalized_plan(1), penalized_plan(2)
    counts.lend(0, first)
    for token in (5, 5, 7):
        first.remember(token)
    for token in (9, 9, 9):
        second.remember(token)  # picked before it reached a slot (queued again)
    counts.lend(0, second)
    assert first.counts is None and first.count_row == -1
    assert (counts.table[0] == window_counts(second)).all()
    first.remember(7)
    second.remember(5)
    assert (counts.table[0] == window_counts(second)).all()
    assert list(first.history[:4]) == [5, 5, 7, 7]


@pytest.mark.parametrize("penalties", [(1.1, 0.0, 0.0), (1.3, 0.4, 0.2)])
def test_penalize_gives_the_same_with_counts_as_with_histories(penalties: tuple[float, float, float]) -> None:
    """64 rows of k + 64 candidates, windows drawn partly from the candidates and filled past 64
    tokens: the same ids and values whether the counts come from the rows or from matching the
    histories, and when only some plans have a row (then all are matched)."""
    rng = np.random.default_rng(11)
    m, k = 64, 40
    n = k + PENALTY_HISTORY
    ids = np.stack([rng.choice(VOCAB, size=n, replace=False) for _ in range(m)]).astype(np.int32)
    logits = -np.sort(-(rng.standard_normal((m, n)) * 3).astype(np.float32), axis=1)
    counts = PenaltyCounts(m, VOCAB)
    plans = [penalized_plan(r, penalties) for r in range(m)]
    for r, plan in enumerate(plans):
        counts.lend(r, plan)
        pool = np.concatenate([ids[r, : k + 10], rng.integers(0, VOCAB, 20)])
        for token in rng.choice(pool, size=int(rng.integers(0, 3 * PENALTY_HISTORY))):
            plan.remember(int(token))
    with_counts = penalize(ids, logits, plans)
    unbound = [penalized_plan(r, penalties) for r in range(m)]
    for plan, bound in zip(unbound, plans, strict=True):
        plan.history = bound.history
    matched = penalize(ids, logits, unbound)
    mixed = penalize(ids, logits, [*plans[:-1], unbound[-1]])
    for got in (matched, mixed):
        assert (with_counts[0] == got[0]).all() and (with_counts[1] == got[1]).all()
    assert (with_counts[0] != ids[:, :k]).any(axis=1).mean() > 0.5  # the penalties changed the rows


def test_answers_past_the_window_match_llama_cpps_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four penalized requests of 150 tokens, every row finished over the step's matrix: the
    tokens of llama.cpp's whole chain on the CPU, with each request's window counted in its
    slot's row while tokens leave it."""
    monkeypatch.setattr(scheduler, "HOST_TAIL_MIN_ROWS", 0)
    with engine_on(tmp_path, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as engine:

        def run(backend: bool) -> list[Job]:
            """The four admitted together (`test_graph_tail.run_jobs`: both runs share every
            step's rows, so their kernels' rounding)."""
            jobs = []
            with engine._cond:
                for i in range(4):
                    params = job_params(i)
                    params.repeat_penalty, params.frequency_penalty, params.presence_penalty = (1.3, 0.4, 0.2)
                    chains = build_chains(engine.model.model, params, backend, in_graph_tail=False)
                    jobs.append(Job(engine, PROMPTS[i], 150, params, chains=chains))
            return [job.wait() for job in jobs]

        ours = run(backend=True)
        assert engine.stats.tail_rows > 0
        assert all(job.gen.tail is not None and job.gen.tail.counts is not None for job in ours)
        lengths = [len(job.gen.tokens) for job in ours]
        assert max(lengths) > PENALTY_HISTORY
        assert [job.gen.tokens for job in ours] == [job.gen.tokens for job in run(backend=False)]
