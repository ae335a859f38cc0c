"""Top-k (or greedy) over a whole step's rows of logits at once with numpy, then llama.cpp's own
sampler chain on the k survivors: the batched engine's opt-in way to sample on the CPU (`host_top_k`).

Why not llama.cpp alone: measured on an H200 (issue 16, BENCHMARKS.md), llama.cpp's top-k costs
about 0.9 ms per row on the CPU (it builds and partially sorts all 128k candidates of a Llama-3
vocabulary), and inside the decode graph ("backend sampling") it is one sort launch per sequence:
0.4 ms a step for one sequence, 5 ms a step at 64. Selecting the k largest of every row here is
a few passes of vectorised numpy over the rows (`top_k_rows`), and what follows top-k (top-p,
min-p, temperature, the seeded draw) runs in llama.cpp on k values, exactly as its own chain
would after its own top-k: the candidates arrive sorted by logit, largest first, as llama.cpp's
top-k leaves them, so the seeded draw picks the same token.

Only requests whose chain is "logit bias, then top-k or greedy" take this path
(`sampling.host_plan`):
repetition penalties, grammars, typical and mirostat keep llama.cpp's whole chain.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

# llama_token_data as numpy sees it: {id int32, logit float, p float}, 12 bytes.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


@dataclass(frozen=True)
class HostPlan:
    """What the host does before llama.cpp's tail chain: the logit bias, then greedy or top-k."""

    top_k: int  # 0 for greedy
    bias_ids: np.ndarray
    bias_values: np.ndarray

    @property
    def greedy(self) -> bool:
        return self.top_k == 0


def make_plan(top_k: int, logit_bias: dict[int, float]) -> HostPlan:
    ids = np.fromiter(logit_bias.keys(), np.int64, len(logit_bias))
    values = np.fromiter(logit_bias.values(), np.float32, len(logit_bias))
    return HostPlan(top_k, ids, values)


def tail_chain(top_p: float, min_p: float, temperature: float, seed: int) -> internals.LlamaSampler:
    """llama.cpp's chain after top-k, as `sampling.build_sampler` orders it (a greedy plan needs
    none, but every generation owns a chain: an empty one then)."""
    chain = internals.LlamaSampler()
    if temperature > 0.0:
        chain.add_top_p(top_p, 1)
        chain.add_min_p(min_p, 1)
        chain.add_temp(temperature)
        chain.add_dist(seed & 0xFFFFFFFF)
    return chain


# Values per group in `top_k_rows` (the number of contiguous stripes its first pass reduces).
BLOCK = 128


def top_k_rows(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits of every row, largest first: (ids, logits), each (rows, k).

    Each row's first BLOCK x n values are dealt into n groups of BLOCK (value j to group j mod
    n, so that one vectorised pass over BLOCK contiguous stripes gives every group's maximum).
    The k largest group maxima are k values of the row, so the row's k-th largest value is at
    least the smallest of them, `floor`, and lies in a group whose maximum reaches `floor`. Only
    those groups (typically k of them) are searched for the values reaching `floor` (typically a
    few more than k), which are sorted by row and logit, ties in token order. The values after
    the last whole stripe are always searched. numpy releases the GIL in the passes."""
    m, v = rows.shape
    k = min(k, v)
    n = v // BLOCK
    if n < k:
        return _top_k_small(rows, k)
    stripes = rows[:, : n * BLOCK].reshape(m, BLOCK, n)
    maxima = stripes.max(axis=1)
    floor = np.partition(maxima, n - k, axis=1)[:, n - k]
    r, g = np.nonzero(maxima >= floor[:, None])
    values = stripes[r, :, g]  # (chosen groups, BLOCK): group g holds tokens g, g + n, ...
    hit, at = np.nonzero(values >= floor[r][:, None])
    cand_r, cand_c, cand_v = r[hit], g[hit] + at * n, values[hit, at]
    if n * BLOCK < v:  # the tail after the last whole stripe
        tail = rows[:, n * BLOCK :]
        tr, tc = np.nonzero(tail >= floor[:, None])
        cand_r = np.concatenate((cand_r, tr))
        cand_c = np.concatenate((cand_c, tc + n * BLOCK))
        cand_v = np.concatenate((cand_v, tail[tr, tc]))
    return _first_k(m, k, cand_r, cand_c, cand_v)


def _top_k_small(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows too short for blocks: every value is a candidate."""
    m, v = rows.shape
    r, c = np.divmod(np.arange(m * v), v)
    return _first_k(m, k, r, c, rows.reshape(-1))


def _first_k(
    m: int, k: int, r: np.ndarray, c: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The first k candidates of every row once sorted by row, logit (largest first), token."""
    order = np.lexsort((c, -values, r))
    r, c, values = r[order], c[order], values[order]
    counts = np.bincount(r, minlength=m)
    starts = np.cumsum(counts) - counts
    take = starts[:, None] + np.arange(k)
    return c[take].astype(np.int32), values[take]


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted row indices as [start, end) pairs: slices, not copies."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


Pick = Callable[[Callable[[tuple[int, int]], None], Iterable[tuple[int, int]]], Iterable[None]]
_DATA_P = ctypes.POINTER(llama_cpp.llama_token_data)


class HostSampler:
    """Samples the host-planned rows of one step."""

    def sample(
        self,
        logits: np.ndarray,
        rows: list[tuple[int, HostPlan, internals.LlamaSampler]],
        map_: Pick,
        groups: int,
    ) -> list[int]:
        """One token per (row of `logits`, plan, chain after top-k), in the order given.
        `logits` is the step's (outputs, n_vocab) matrix, written in place by the logit bias;
        `map_` runs the selection over up to `groups` runs of rows (a thread pool's `map`)."""
        for row, plan, _ in rows:
            if plan.bias_ids.size:
                logits[row, plan.bias_ids] += plan.bias_values  # the bias comes first in llama.cpp's chain
        by_k: dict[int, list[int]] = {}
        for row, plan, _ in rows:
            by_k.setdefault(plan.top_k, []).append(row)
        greedy: dict[int, int] = {}
        found: dict[int, tuple[np.ndarray, int, int]] = {}  # row -> (token data, index, k)

        def select(run: tuple[int, int], *, k: int) -> None:
            block = logits[run[0] : run[1]]
            if k == 0:
                for j, token in enumerate(np.argmax(block, axis=1)):
                    greedy[run[0] + j] = int(token)
                return
            ids, values = top_k_rows(block, k)
            data = np.empty(ids.shape, TOKEN_DATA)
            data["id"], data["logit"], data["p"] = ids, values, 0.0
            for j in range(run[1] - run[0]):
                found[run[0] + j] = (data, j, ids.shape[1])

        for k, members in by_k.items():
            for _ in map_(partial(select, k=k), _split(_runs(sorted(members)), groups)):
                pass
        tokens = []
        for row, plan, chain in rows:
            if plan.greedy:
                tokens.append(greedy[row])
            else:
                tokens.append(_finish(chain, *found[row]))
        return tokens


def _finish(chain: internals.LlamaSampler, data: np.ndarray, j: int, k: int) -> int:
    """llama.cpp's chain after top-k over row j's k sorted candidates; the token it selects
    (accepted into the chain, as `llama_sampler_sample` does)."""
    cur = llama_cpp.llama_token_data_array(
        data=ctypes.cast(data.ctypes.data + j * k * TOKEN_DATA.itemsize, _DATA_P),
        size=k,
        selected=-1,
        sorted=True,
    )
    llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(cur))
    token = int(data["id"][j, cur.selected])
    llama_cpp.llama_sampler_accept(chain.sampler, token)
    return token


# Fewest rows a worker gets: each selection has a fixed cost of a dozen numpy calls under the GIL,
# which many small groups would pay over and over.
MIN_ROWS_PER_GROUP = 8


def _split(runs: list[tuple[int, int]], groups: int) -> list[tuple[int, int]]:
    """Cut long runs so that up to `groups` workers share the rows evenly."""
    total = sum(b - a for a, b in runs)
    size = max(MIN_ROWS_PER_GROUP, -(-total // max(groups, 1)))
    out = []
    for a, b in runs:
        for s in range(a, b, size):
            out.append((s, min(s + size, b)))
    return out
