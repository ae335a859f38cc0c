"""How llama.cpp cuts one step's batch into micro-batches, each a full pass over the weights.

With a KV stream per sequence (the default: not `kv_unified`, no shared pool) llama.cpp splits
a batch with `llama_batch_allocr::split_equal(n_ubatch, sequential=true)`: every micro-batch is
a run of *consecutive* sequence ids that each contribute the *same* number of tokens. So a step
that mixes one-token rows with a prompt chunk, or prompt chunks of different lengths, or
sequences with idle slots between them, costs several passes where one would do; on a GPU a
pass of a small model costs about as much as its launches, whatever its rows. The scheduler
reads this mirror of that split to shape its steps (`Engine.prompt_chunks`), to decide where
throwaway tokens in idle slots save a pass (`worth_filling`) and to count the passes it paid
(`EngineStats.micro_batches`). With one stream (a shared pool) llama.cpp cuts the
batch freely in `n_ubatch` pieces (`split_simple`).

The mirror assumes what the engine's batches are: each sequence's tokens together, sequences in
increasing order, every token in exactly one sequence.
"""

from __future__ import annotations

from collections.abc import Sequence


def sizes(runs: Sequence[tuple[int, int]], n_ubatch: int, streams: bool = True) -> list[int]:
    """The tokens of each micro-batch llama.cpp makes of a batch of `runs`, `(seq, n_tokens)`
    in batch order; `streams` False: one KV stream (the batch cut in `n_ubatch` pieces)."""
    total = sum(n for _, n in runs)
    if not streams:
        return [min(n_ubatch, total - at) for at in range(0, total, n_ubatch)]
    left = [[seq, n] for seq, n in runs if n > 0]
    out: list[int] = []
    while left:
        # The run of consecutive sequence ids from the first sequence with tokens left...
        group = [left[0]]
        for run in left[1:]:
            if run[0] == group[-1][0] + 1:
                group.append(run)
            elif run[0] > group[-1][0] + 1:
                break
        # ...each giving as many tokens as the shortest has, within n_ubatch (at least one).
        take = min(min(n for _, n in group), max(1, n_ubatch // len(group)))
        for run in group:
            run[1] -= take
        out.append(take * len(group))
        left = [run for run in left if run[1] > 0]
    return out


def passes(runs: Sequence[tuple[int, int]], n_ubatch: int, streams: bool = True) -> int:
    """How many micro-batches (passes over the weights) the batch of `runs` costs."""
    return len(sizes(runs, n_ubatch, streams))


def worth_filling(runs: Sequence[tuple[int, int]], fillers: set[int], n_ubatch: int) -> bool:
    """Whether one throwaway token in each of the `fillers` slots (idle slots between the
    `runs`' sequences) makes llama.cpp's split of the batch take fewer passes. Between one-token
    rows it joins them into one pass; between prompt chunks of many tokens it only splits off
    their first tokens, a pass more."""
    filled = sorted([*runs, *((seq, 1) for seq in fillers)])
    return passes(filled, n_ubatch) < passes(runs, n_ubatch)
