"""The end of the sampler chain (top-p, min-p, temperature, the seeded draw) for all the step's rows
at once, on the k candidates the decode graph kept (`graph_top_k`).

Why: llama.cpp finishes a backend-sampled row with `llama_sampler_sample`, one row at a time: a
few ctypes calls and a small C++ chain per row, about 25 µs, which at 64 sequences is 1.5 ms a
step on an H200, a quarter of the decode itself (issue 16). Here the rows of one step are
finished together with numpy on a (rows, k) matrix read straight from llama.cpp's host buffers.

It reproduces llama.cpp's own chain step by step, float for float where it matters: top-p's
softmax and cumulative sum in float32 in candidate order, min-p's floor `max + logf(min_p)`,
the division by the temperature, and `dist`'s draw, which accumulates the float probabilities in
double against `sum * u` with `u` from `std::uniform_real_distribution<double>` on a
`std::mt19937` seeded like llama.cpp's (two 32-bit outputs per draw, one draw per token, also
when one candidate is left). numpy's legacy MT19937 seeding is the standard `init_genrand`, so a
seed replays the same tokens as llama.cpp's chain would (tests/engine/test_graph_top_k.py); the
only possible differences are last-bit ones between numpy's and the C library's `exp`.
"""

from __future__ import annotations

import ctypes
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

# Below this many generations (running + queued) at admission a generation is finished by
# llama.cpp's chain row by row instead. On an H100's host (issue 16, session 12, 1B shape) the
# chain cost about 11.5 µs a row (`_sample` 0.18-0.21 ms a step at 16 rows, 0.37-0.39 at 32), the
# numpy passes about 0.27 ms a step whatever the rows (0.27-0.31 at 16, 0.28-0.33 at 32): even
# near 23 rows. Since session 17 `finish_prepared` takes 30% less (the 2-core VM: 22.6 against
# 32.5 µs at 16 rows). There the chain costs 1.7 µs a row warm, but the CPU samples in no graph.
HOST_TAIL_MIN_ROWS = 24
PENALTY_HISTORY = 64  # `sampling.PENALTY_LAST_N`: the extra candidates kept for the penalties
NO_HISTORY = np.full(PENALTY_HISTORY, -1, np.int32)  # shared, never written: nothing picked yet
NO_HISTORY.flags.writeable = False

_TWO_32 = 4294967296.0
_TWO_64 = 18446744073709551616.0
_BELOW_ONE = float(np.nextafter(1.0, 0.0))


class Mt19937Uniforms:
    """`std::uniform_real_distribution<double>(0, 1)` over `std::mt19937(seed)`, as libstdc++'s
    `generate_canonical<double, 53>` computes it, drawn in blocks."""

    BLOCK = 256

    def __init__(self, seed: int) -> None:
        if seed == llama_cpp.LLAMA_DEFAULT_SEED:  # llama.cpp then seeds from the system
            seed = secrets.randbits(32)
        self._seed = seed & 0xFFFFFFFF
        self._bits: Any = None  # made at the first draw: most generations never draw here
        self._block = np.empty(0)
        self._next = 0

    def next(self) -> float:
        if self._next == len(self._block):
            if self._bits is None:
                # RandomState(int) seeds MT19937 with init_genrand, as std::mt19937(seed) does.
                self._bits = np.random.RandomState(self._seed)._bit_generator
            raw = self._bits.random_raw(2 * self.BLOCK).astype(np.float64)
            u = (raw[0::2] + raw[1::2] * _TWO_32) / _TWO_64
            self._block = np.minimum(u, _BELOW_ONE)
            self._next = 0
        value = float(self._block[self._next])
        self._next += 1
        return value


@dataclass
class TailPlan:
    """One request's chain after top-k, as `sampling.build_chains` orders it."""

    top_k: int  # how many candidates the graph leaves (rows are read by it)
    top_p: float
    min_p: float
    temperature: float
    seed: int
    # The decode graph finishes the chain itself (`graph_tail`); the CPU only where it did not.
    in_graph: bool = False
    rng: Mt19937Uniforms = field(init=False)
    # With `in_graph`: this step's draw, taken before the decode, for the CPU should it finish.
    uniform: float = 0.0
    # With `in_graph`: the rest of its row of `graph_tail`'s staged array (`tail_ops.settings`).
    graph_settings: tuple[float, ...] = ()
    # The repetition, frequency and presence penalties applied after the graph's top-k, which
    # then keeps PENALTY_HISTORY more candidates (`candidates`); None: none.
    penalties: tuple[float, float, float] | None = None
    # With penalties: the last PENALTY_HISTORY tokens picked (-1: none yet), a ring.
    history: np.ndarray = field(init=False)
    _picked: int = field(default=0, init=False)
    # With penalties, in an engine: the row of `PenaltyCounts` that counts `history` by token.
    counts: PenaltyCounts | None = field(default=None, init=False, repr=False)
    count_row: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        self.rng = Mt19937Uniforms(self.seed)
        self.history = NO_HISTORY

    def remember(self, token: int) -> None:
        """A token this request picked, for its penalties."""
        if self.history is NO_HISTORY:
            self.history = np.full(PENALTY_HISTORY, -1, np.int32)
        at = self._picked % PENALTY_HISTORY
        if self.counts is not None:
            table, row, dropped = self.counts.table, self.count_row, int(self.history[at])
            if dropped >= 0:  # the token that leaves the window
                table[row, dropped] -= 1
            table[row, token] += 1
        self.history[at] = token
        self._picked += 1

    @property
    def candidates(self) -> int:
        """How many candidates the graph leaves for this request's row."""
        return self.top_k + (PENALTY_HISTORY if self.penalties is not None else 0)


class PenaltyCounts:
    """How often each token is in the penalty window of the generation in each slot: a (slots,
    n_vocab) matrix of small counts, kept up to date as tokens are picked (`TailPlan.remember`).

    Why: the penalties need, for each of a row's k + 64 candidates, how often it was picked in the
    last 64 tokens. Matching the candidates against the histories at every step (a sort and a
    search over all rows) made `penalize` take 0.44 ms at 64 rows on a 2-core VM, after the
    decode, while the GPU waits; with a lookup in this matrix (one gather) it takes 0.13 ms. A
    slot holds one generation at a time, so a row per slot (n_vocab bytes each) is enough."""

    def __init__(self, slots: int, n_vocab: int) -> None:
        self.table = np.zeros((slots, n_vocab), np.uint8)  # at most PENALTY_HISTORY per token
        self._owners: list[TailPlan | None] = [None] * slots

    def lend(self, row: int, plan: TailPlan) -> None:
        """Give the slot's row to the generation it now runs; the previous owner, if any, goes
        back to matching its history (`penalize` does either, with the same result)."""
        previous = self._owners[row]
        if previous is not None and previous is not plan:
            previous.counts, previous.count_row = None, -1
        self._owners[row] = plan
        counts = self.table[row]
        counts[:] = 0
        picked = plan.history[plan.history >= 0]
        np.add.at(counts, picked, 1)  # a generation attached again keeps the window it had
        plan.counts, plan.count_row = self, row


def _candidate_counts(ids: np.ndarray, plans: list[TailPlan]) -> np.ndarray:
    """How often each candidate (ids: (rows, n)) is in its row's history, as float32: from the
    plans' `PenaltyCounts` rows when all have one, else by matching the plans' histories."""
    m, n = ids.shape
    shared = plans[0].counts
    if shared is not None and all(p.counts is shared for p in plans):
        rows = np.fromiter((p.count_row for p in plans), np.intp, m)
        return shared.table[rows[:, None], ids].astype(np.float32)
    # (row, token) keys looked up among the histories' distinct keys, all rows at once.
    histories = [p.history for p in plans]
    span = np.int64(1) << 32
    rows = np.repeat(np.arange(m, dtype=np.int64), [len(h) for h in histories])
    tokens = np.concatenate(histories).astype(np.int64)
    seen = tokens >= 0
    keys, counts = np.unique(rows[seen] * span + tokens[seen], return_counts=True)
    if not len(keys):
        return np.zeros((m, n), np.float32)
    wanted = (np.arange(m, dtype=np.int64)[:, None] * span + ids.astype(np.int64)).ravel()
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, counts[at], 0).reshape(m, n).astype(np.float32)


def penalize(ids: np.ndarray, logits: np.ndarray, plans: list[TailPlan]) -> tuple[np.ndarray, np.ndarray]:
    """The rows' top-k after their penalties, largest first (ids, logits: (rows, k)), from the
    k + PENALTY_HISTORY candidates the graph kept before them, as llama.cpp's penalties sampler
    and top-k compute it in float32: a token seen `count` times in the row's history (-1: no
    token) has a positive logit divided by the repetition penalty (any other multiplied), then
    `count * frequency + presence` taken off. The plans' histories are matched only when some
    plan has no `PenaltyCounts` row (tests, a generation whose slot went to another)."""
    m, k = len(plans), plans[0].top_k
    count = _candidate_counts(ids, plans)
    penalties = np.array([p.penalties for p in plans], np.float32)
    repeat, frequency, presence = (penalties[:, c : c + 1] for c in range(3))
    changed = np.where(logits <= 0, logits * repeat, logits / repeat)
    out = np.where(count > 0, changed - (count * frequency + presence), logits).astype(np.float32)
    order = np.argsort(-out, axis=1)[:, :k]
    take = np.arange(m)[:, None]
    return ids[take, order], out[take, order]


@dataclass
class TailRows:
    """What finishing a step's rows needs besides their logits: each row's settings as columns
    and its draw. Nothing here waits for the decode, so the engine works it out while the GPU
    decodes the step (`scheduler.OVERLAP`). A step left off is a setting that keeps every
    candidate (top-p +inf, log min-p -inf), so `finish_prepared` needs no mask to skip it."""

    top_p: np.ndarray  # (rows, 1) float32: +inf where top-p is off (1 or more)
    log_min_p: np.ndarray  # (rows, 1) float32: logf(min_p), -inf where min-p is off
    temp: np.ndarray  # (rows, 1) float32
    u: np.ndarray  # (rows,) float64: the rows' draws


def prepare(plans: list[TailPlan], uniforms: list[float] | None = None) -> TailRows:
    """The rows' settings and draws (`uniforms`: already taken from their plans' generators, as
    `graph_tail` stages them before the decode; by default drawn here, one per row)."""
    m = len(plans)
    top_p = np.fromiter((p.top_p if p.top_p < 1.0 else np.inf for p in plans), np.float32, m)
    min_p = np.fromiter((p.min_p for p in plans), np.float32, m)
    log_min_p = np.full(m, -np.inf, np.float32)
    on = min_p > 0.0
    log_min_p[on] = np.log(min_p[on])
    draws = uniforms if uniforms is not None else (p.rng.next() for p in plans)
    return TailRows(
        top_p=top_p[:, None],
        log_min_p=log_min_p[:, None],
        temp=np.fromiter((p.temperature for p in plans), np.float32, m)[:, None],
        u=np.fromiter(draws, np.float64, m),
    )


def finish(
    ids: np.ndarray, logits: np.ndarray, plans: list[TailPlan], uniforms: list[float] | None = None
) -> list[int]:
    """The token of every row: `ids` and `logits` are (rows, k), each row its k candidates
    largest logit first, as the graph's top-k leaves them (llama.cpp's top-p sorts them so, and
    its other samplers keep the order). `uniforms` as for `prepare`."""
    if len(plans) == 0:
        return []
    return finish_prepared(ids, logits, prepare(plans, uniforms))


def finish_prepared(ids: np.ndarray, logits: np.ndarray, rows: TailRows) -> list[int]:
    """`finish` with the rows' settings and draws worked out beforehand (`prepare`).

    About 30% less time than masking each step (issue 16: this runs while the GPU waits, and a
    numpy call costs about a microsecond whatever the rows): the running sums only rise and the
    row is sorted, so where each step stops is the first column past its bound, one `argmax`
    over a comparison with a last column that is always past it; and the draw may search past
    the kept candidates, whose sums are all at least the target."""
    m, k = logits.shape
    if m == 0:
        return []
    past, at = _scratch(m, k)  # past[:, k] stays True: "none before the end"
    # The graph's rows lie n_vocab apart in llama.cpp's buffer: one copy, then every pass below
    # runs over contiguous memory.
    logits = np.ascontiguousarray(logits)
    first = logits[:, :1]
    # top-p: softmax in float32 (sum accumulated in order), then the shortest prefix reaching p.
    probs = np.exp(logits - first)
    probs /= np.add.accumulate(probs, axis=1, dtype=np.float32)[:, -1:]
    np.greater_equal(np.add.accumulate(probs, axis=1, dtype=np.float32), rows.top_p, out=past[:, :k])
    keep = past.argmax(axis=1)
    keep += 1
    # min-p: the values at or above max + logf(min_p), a prefix, never none.
    np.less(logits, first + rows.log_min_p, out=past[:, :k])
    above = past.argmax(axis=1)
    np.minimum(keep, np.maximum(above, 1, out=above), out=keep)
    np.minimum(keep, k, out=keep)
    keep -= 1  # the last kept column
    # temperature, then dist: float probabilities summed in double, the first reaching sum * u.
    scaled = logits / rows.temp
    run = np.add.accumulate(np.exp(scaled - scaled[:, :1]).astype(np.float64), axis=1)
    np.greater_equal(run, (run[at, keep] * rows.u)[:, None], out=past[:, :k])
    pick = past.argmax(axis=1)
    np.minimum(pick, keep, out=pick)  # only where a sum is not a number
    return ids[at, pick].tolist()  # type: ignore[no-any-return]


_SCRATCH = threading.local()


def _scratch(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A (m, k + 1) bool matrix whose last column is True, and arange(m), kept per thread
    (lanes may finish their steps on threads of their own)."""
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = _SCRATCH.__dict__.setdefault("cache", {})
    made = cache.get((m, k))
    if made is None:
        if len(cache) > 64:
            cache.clear()
        made = cache[m, k] = (np.ones((m, k + 1), bool), np.arange(m))
    return made


_views: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _view(base_c: int, base_l: int, rows: int, n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy views of `rows` rows of llama.cpp's sampled candidates and logits (cached: the
    buffers stay where they are between steps)."""
    key = (base_c, base_l, rows, n_vocab)
    view = _views.get(key)
    if view is None:
        if len(_views) > 256:
            _views.clear()
        ids = np.ctypeslib.as_array((ctypes.c_int32 * (rows * n_vocab)).from_address(base_c))
        logits = np.ctypeslib.as_array((ctypes.c_float * (rows * n_vocab)).from_address(base_l))
        view = _views[key] = (ids.reshape(rows, n_vocab), logits.reshape(rows, n_vocab))
    return view


def _address(pointer: Any) -> int:
    return ctypes.cast(pointer, ctypes.c_void_p).value or 0


def read_rows(
    ctx: object, batch_rows: list[int], out_rows: list[int], n_vocab: int, k: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The candidates and their logits that the graph left for the given outputs, read from
    llama.cpp's host buffers without a call per row: its sampled rows lie `n_vocab` apart in
    output order, which the first and last rows' logits confirm (the candidates share their
    row numbers). `batch_rows` are batch indices, `out_rows` the matching output numbers
    (ascending). None when the layout is not the expected one. At most four calls, since each
    one synchronizes with the GPU's stream first."""
    first, last = batch_rows[0], batch_rows[-1]
    base_l = _address(llama_cpp.llama_get_sampled_logits_ith(ctx, first))
    base_c = _address(llama_cpp.llama_get_sampled_candidates_ith(ctx, first))
    if not base_l or not base_c or llama_cpp.llama_get_sampled_logits_count_ith(ctx, first) != k:
        return None
    span = out_rows[-1] - out_rows[0]
    if span and _address(llama_cpp.llama_get_sampled_logits_ith(ctx, last)) - base_l != span * n_vocab * 4:
        return None
    ids, logits = _view(base_c, base_l, span + 1, n_vocab)
    if len(out_rows) == span + 1:  # every row in between: plain slices
        return ids[:, :k], logits[:, :k]
    rows = np.asarray(out_rows) - out_rows[0]
    return ids[rows, :k], logits[rows, :k]
