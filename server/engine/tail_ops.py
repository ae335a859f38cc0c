"""The sampler chain after the batched top-k as ggml operations over all the step's rows at once:
repetition penalties, top-p, min-p, temperature and the seeded draw (`graph_tail` builds them into
llama.cpp's decode graph).

Why a module of its own: this is the arithmetic that must pick what llama.cpp's CPU chain picks
(`host_tail.finish` and `host_tail.penalize` are its numpy twins, and the tests compare them);
`graph_tail` is the plumbing that gets it into llama.cpp's graph and the settings into it.

Every step is counted with `ggml_step` over masks rather than searched, so one handful of
kernels serves every row whatever its settings. The settings come as N_PARAMS graph inputs of
[1, R] each (one value per row), and every one of them is first used by an operation on data
already on the GPU: ggml's scheduler then copies them up with the step's other inputs before the
model runs, as it does llama.cpp's own draw uniform, instead of stopping the GPU halfway to
compute on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from server.engine.graph_top_k import GGML_TYPE_F32, GGML_TYPE_I32, _tensor
from server.engine.host_tail import PENALTY_HISTORY

# Per output row, in this order: the draw's uniform, top-p (2: off), log(min-p) and whether
# min-p is on, the temperature, then the repetition, frequency and presence penalties.
N_PARAMS = 8
HISTORY = PENALTY_HISTORY  # tokens the penalties look back on
NO_PENALTIES = (1.0, 0.0, 0.0)

Settings = tuple[float, float, float, float, float, float, float]


def settings(
    top_p: float, min_p: float, temperature: float, penalties: tuple[float, float, float] = NO_PENALTIES
) -> Settings:
    """A request's settings after its uniform, in `params` order."""
    on = min_p > 0.0
    log_min_p = float(np.log(np.float32(min_p))) if on else 0.0
    return (top_p if top_p < 1.0 else 2.0, log_min_p, 1.0 if on else 0.0, temperature, *penalties)


OFF = settings(1.0, 0.0, 1.0)  # a row no such sampler finishes


def lowers_only(penalties: tuple[float, float, float]) -> bool:
    """Whether these penalties can only lower logits, so that the k largest after them are among
    the k + HISTORY largest before them (at most HISTORY tokens are penalised)."""
    repeat, frequency, presence = penalties
    return repeat >= 1.0 and frequency >= 0.0 and presence >= 0.0


class _Rows:
    """Helpers over [n, R] matrices of one graph."""

    def __init__(self, g: Any, ctx: int, params: list[int]) -> None:
        self.g, self.ctx = g, ctx
        self.rows = _tensor(params[0]).ne[1]
        self.settings = params

    def column(self, x: int, c: int) -> int:  # [1, R]
        t = _tensor(x)
        return int(self.g.cont(self.ctx, self.g.view_2d(self.ctx, x, 1, self.rows, t.nb[1], c * 4)))

    def below(self, x: int, y: int) -> int:  # 1 where x < y (y broadcast along rows)
        g, ctx = self.g, self.ctx
        return int(g.step(ctx, g.scale(ctx, g.sub(ctx, x, y), -1.0)))

    def select(self, mask: int, yes: int, no: int) -> int:  # mask * yes + (1 - mask) * no
        g, ctx = self.g, self.ctx
        return int(g.add(ctx, g.mul(ctx, mask, yes), g.mul(ctx, g.scale_bias(ctx, mask, -1.0, 1.0), no)))

    def first(self, ids: int, vals: int, order: int, k: int) -> tuple[int, int]:
        """The first k columns of `order` (per row) taken from `ids` and `vals` [n, R]."""
        g, ctx = self.g, self.ctx
        n = _tensor(vals).ne[0]
        top = g.cont(ctx, g.view_2d(ctx, order, k, self.rows, _tensor(order).nb[1], 0))

        def take(x: int) -> int:
            picked = g.get_rows(ctx, g.reshape_3d(ctx, x, 1, n, self.rows), top)
            return int(g.reshape_2d(ctx, picked, k, self.rows))

        return take(ids), take(vals)


def build_penalties(
    g: Any, ctx: int, ids: int, vals: int, params: list[int], history: int, k: int
) -> tuple[int, int]:
    """The k largest of `vals` [n, R] after each row's penalties, largest first, with their `ids`
    (floats); `history` [HISTORY, 1, R] holds each row's last tokens (-1: none yet), repeated tokens
    repeated. What llama.cpp's penalties do to a token seen `count` times: a positive logit
    divided by the repetition penalty, any other multiplied, then `count * frequency + presence`
    taken off."""
    r = _Rows(g, ctx, params)
    n, rows = _tensor(vals).ne[0], r.rows
    repeat, frequency, presence = r.settings[5:8]
    shape = g.new_tensor_3d(ctx, GGML_TYPE_F32, HISTORY, n, rows)
    spread = g.repeat(ctx, g.reshape_3d(ctx, ids, 1, n, rows), shape)  # [H, n, R]: each id H times
    apart = g.abs(ctx, g.sub(ctx, spread, history))
    same = g.step(ctx, g.scale_bias(ctx, apart, -1.0, 0.5))  # 1 where the ids are equal
    count = g.reshape_2d(ctx, g.sum_rows(ctx, same), n, rows)
    seen = g.step(ctx, g.scale_bias(ctx, count, 1.0, -0.5))
    repeated = r.select(g.step(ctx, vals), g.div(ctx, vals, repeat), g.mul(ctx, vals, repeat))
    amount = g.add(ctx, g.mul(ctx, count, frequency), g.mul(ctx, seen, presence))
    penalized = g.sub(ctx, r.select(seen, repeated, vals), amount)
    order = g.argsort(ctx, penalized, 1)  # GGML_SORT_ORDER_DESC
    return r.first(ids, penalized, order, k)


def build_tail(g: Any, ctx: int, ids: int, vals: int, params: list[int]) -> int:
    """Tokens [1, 1, R] (int32) from `vals` [k, R] (each row largest first) and their token ids
    `ids` [k, R] (floats), with `params` (N_PARAMS of [1, R]): what `host_tail.finish` computes, with
    the same masks (top-p's and min-p's kept prefixes) and the same draw (the first candidate
    whose running sum reaches the sum times the uniform)."""
    r = _Rows(g, ctx, params)
    k, rows = _tensor(vals).ne[0], r.rows
    u, top_p, log_min_p, min_p_on, temperature = r.settings[:5]
    position = g.repeat(ctx, g.reshape_2d(ctx, g.arange(ctx, 0.0, float(k), 1.0), k, 1), vals)
    # top-p: keep j while j <= the number of running sums below p (the first one reaching p stays).
    short = g.sum_rows(ctx, r.below(g.cumsum(ctx, g.soft_max(ctx, vals)), top_p))
    keep_p = g.step(ctx, g.scale_bias(ctx, g.sub(ctx, position, short), -1.0, 0.5))
    # min-p: drop the values under max + log(min-p) (never the first: it is the max).
    under = r.below(vals, g.add(ctx, r.column(vals, 0), log_min_p))
    keep_min = g.scale_bias(ctx, g.mul(ctx, under, min_p_on), -1.0, 1.0)
    keep = g.mul(ctx, keep_p, keep_min)
    # temperature, then the draw over what is kept.
    scaled = g.div(ctx, vals, temperature)
    weights = g.mul(ctx, g.exp(ctx, g.sub(ctx, scaled, r.column(scaled, 0))), keep)
    running = g.cumsum(ctx, weights)
    target = g.mul(ctx, r.column(running, k - 1), u)
    pick = g.clamp(ctx, g.sum_rows(ctx, r.below(running, target)), 0.0, float(k - 1))
    chosen = g.get_rows(ctx, g.reshape_3d(ctx, ids, 1, k, rows), g.cast(ctx, pick, GGML_TYPE_I32))
    return int(g.cast(ctx, chosen, GGML_TYPE_I32))
