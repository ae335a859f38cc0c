"""The whole usual chain in the decode graph: the batched top-k (`graph_top_k`), then top-p, min-p,
temperature and the seeded draw over the (k, rows) matrix it leaves (`tail_ops`); only tokens
come back.

Why: with the top-k alone in the graph, llama.cpp still copies two small tensors back for every
row (its k candidates and their logits: 128 device-to-host copies a step at 64 sequences) and the
CPU finishes the chain after the GPU is done (`host_tail`, 0.3-1.1 ms a step on the H200's host).
The GPU is idle meanwhile. Here the same few dozen kernels finish every row of the step at once,
and only each row's token comes back (llama.cpp copies it; `PACKED` writes them all into one
array of ours instead).

Repetition penalties that only lower logits come first (llama-cpp-python's default request has
1.1): the top-k then keeps k + 64 candidates, which hold the k largest after the penalties, since
at most the 64 tokens of a request's history are lowered; the penalties are applied to those
from each request's history of picked tokens (`host_tail.TailPlan.history`), staged by row.

The draw's uniform still comes from each request's own `std::mt19937` stream, drawn on the host
(`host_tail.Mt19937Uniforms`) before the step. Each step's uniforms and settings reach the graph
through a small array of ours: it is wrapped in a ggml CPU buffer, and a graph input over it
copies it up once a step. So no Python runs inside llama.cpp while it decodes, only while it
builds a graph. That happens rarely: llama.cpp reuses the graph while the step's rows stay the
same sequences. The array is indexed by output row. The engine says before every decode which
sequence each row belongs to (`stage`), and a sequence's sampler takes the graph's token only
when its row is the one staged for it. Otherwise, for example when llama.cpp splits the outputs
over several micro-batches, the sampler leaves its row's top-k candidates, as `graph_top_k` does.
The engine then finishes that row on the CPU with the same uniform. So a seed gives the same
uniforms on every path; the arithmetic here is float32 in the GPU's order of summation, so a
token differs from llama.cpp's CPU chain only where a uniform or the top-p threshold falls
within rounding of a boundary between two candidates (tests/engine/test_graph_tail.py).

About 400 lines: llama.cpp's callbacks, the staged arrays and the calls the engine makes before
and after a decode all work on one per-thread state; the graph arithmetic itself is `tail_ops`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from server.engine import graph_top_k
from server.engine.graph_top_k import GGML_TYPE_F32, GGML_TYPE_I32, _tensor, build_top_k
from server.engine.tail_ops import HISTORY, N_PARAMS, build_penalties, build_tail

log = logging.getLogger(__name__)

MAX_ROWS = 1024  # outputs in one micro-batch that the graph can finish; more: the CPU finishes them
MAX_SEQ = 1 << 11  # sequence ids a sampler can be bound to (`config.MAX_PARALLEL` is 256)
# A sampler's llama.cpp context pointer: k | penalised << _PENALTY_BIT | (sequence + 1) << _SEQ_SHIFT.
_K_MASK = (1 << 12) - 1
_PENALTY_BIT = 12
_SEQ_SHIFT = graph_top_k.SEQ_SHIFT  # the same layout of the sequence as the top-k sampler's
_TENSORS_PER_CONTEXT = 256
_ALIGN = 64
# The tokens go into an array of ours in one copy (True), or come back row by row as llama.cpp's
# sampled tokens (False). Row by row on purpose: the array is host memory, so the graph's last
# operation writing into it is a CPU split after the GPU's, and ggml's scheduler synchronizes the
# GPU before copying that split's input. `llama_decode` then returns only once the GPU is done,
# and the host work meant to overlap the decode (`scheduler.OVERLAP`) runs after it: in session
# 12's H100 runs (1B, 16 rows) the packed `llama_decode` call took 3.15 of its 3.43 ms decode,
# against 0.57 of 2.91 with the top-k alone. Row by row was as fast or faster even before the
# overlap existed (session 8: 3,961 / 5,630 / 7,114 against 3,898 / 5,629 / 6,854 tok/s at 16 /
# 32 / 64). `engine_steps`' `-packed` / `-unpacked` variants compare them (BENCHMARKS.md, issue 16).
PACKED = False
_PACKED_KS = 4  # distinct k in one graph whose tokens are packed; more come back row by row


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _unpack(value: int) -> tuple[int, bool, int]:
    """(k, penalised, sequence or -1) from a sampler's context pointer."""
    return value & _K_MASK, bool(value >> _PENALTY_BIT & 1), (value >> _SEQ_SHIFT) - 1


@dataclass
class _Built:
    """What one graph holds for one k: the top-k (ids as floats, values; with penalties, the
    k + HISTORY largest before them), the tokens when the graph finishes its rows, and the ids as
    int32 once a row is left to the CPU."""

    ids: int
    vals: int
    tokens: int | None = None
    int_ids: int | None = None
    place: int | None = None  # the row of `_Thread.tokens` the tokens go into (`PACKED`)


class _Thread:
    """One engine thread's staging array, its ggml buffer, and the graphs it is building."""

    def __init__(self, g: Any) -> None:
        # In one block of host memory that ggml wraps as a CPU buffer, each part aligned to 64
        # bytes (ggml wants 32, numpy promises 16): what is staged for each output row (+
        # llama.cpp's padding row), its settings and its penalties' history, and the tokens the
        # graph picks (`PACKED`).
        parts = {
            "params": (np.float32, (N_PARAMS, MAX_ROWS + 1)),  # one run of rows per setting
            "history": (np.float32, (MAX_ROWS + 1, HISTORY)),  # each row's sequence's last tokens
            "tokens": (np.int32, (_PACKED_KS, MAX_ROWS + 1)),
        }
        offsets, total = {}, 0
        for name, (_, shape) in parts.items():
            offsets[name] = total
            total += -(-int(np.prod(shape)) * 4 // _ALIGN) * _ALIGN
        self._memory = np.zeros(total + _ALIGN, np.uint8)
        start = -self._memory.ctypes.data % _ALIGN
        block = self._memory[start : start + total]

        def part(name: str) -> np.ndarray:
            dtype, shape = parts[name]
            at = offsets[name]
            return block[at : at + int(np.prod(shape)) * 4].view(dtype).reshape(shape)

        self.params, self.history_rows, self.tokens = part("params"), part("history"), part("tokens")
        self.buffer = g.backend_cpu_buffer_from_ptr(block.ctypes.data, total)
        if not self.buffer:
            raise RuntimeError("ggml could not wrap the staging array in a CPU buffer")
        # (k, penalised) -> the row of `tokens` that graphs finishing such rows write into
        # (`PACKED`). Fixed for the thread's life: a graph llama.cpp reuses need not be the last
        # one built.
        self.places: dict[tuple[int, bool], int] = {}
        size = _TENSORS_PER_CONTEXT * g.tensor_overhead()
        # Two contexts for the staged tensors, in turns: a graph llama.cpp reuses is always the
        # last one built, so the other context's tensors are free when its turn comes again.
        self.contexts = [g.init(_InitParams(size, None, True)) for _ in range(2)]
        self.current, self.made = 0, 0
        self.seqs: list[int] | None = None  # the sequence of every output row, for the next decode
        self.built: dict[tuple[int, int, int, bool], _Built] = {}

    def staged(self, g: Any, array: np.ndarray, ne0: int, ne1: int, ne2: int = 1) -> int:
        """A graph input [ne0, ne1, ne2] (float) over the start of one of the staged arrays."""
        if self.made == _TENSORS_PER_CONTEXT:
            self.current, self.made = 1 - self.current, 0
            g.reset(self.contexts[self.current])
        self.made += 1
        tensor = g.new_tensor_3d(self.contexts[self.current], GGML_TYPE_F32, ne0, ne1, ne2)
        if g.backend_tensor_alloc(self.buffer, tensor, array.ctypes.data) != 0:
            raise RuntimeError("ggml could not place a staged array")
        g.set_input(tensor)
        return int(tensor)

    def place_tokens(self, g: Any, tokens: int, kind: tuple[int, bool]) -> int | None:
        """Make the graph write its tokens into the row of `self.tokens` for this (k, penalised)
        (the copy to the host is then one, made by ggml's scheduler, instead of one per row);
        None past `_PACKED_KS` kinds."""
        place = self.places.get(kind)
        if place is None:
            if len(self.places) == _PACKED_KS:
                return None
            place = self.places[kind] = len(self.places)
        if g.backend_tensor_alloc(self.buffer, tokens, self.tokens[place].ctypes.data) != 0:
            raise RuntimeError("ggml could not place the tokens")
        return place


class _Sampler:
    """The callbacks behind every such sampler (one set per process, as in `graph_top_k`)."""

    def __init__(self) -> None:
        if not graph_top_k.available():
            raise RuntimeError("the batched top-k is unavailable")
        g = self.ggml = graph_top_k.loaded_ggml()
        vp, i64, sz, cf = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_float
        g.bind(
            {
                "ggml_init": (vp, [_InitParams]),
                "ggml_reset": (None, [vp]),
                "ggml_new_tensor_2d": (vp, [vp, ctypes.c_int, i64, i64]),
                "ggml_new_tensor_3d": (vp, [vp, ctypes.c_int, i64, i64, i64]),
                "ggml_abs": (vp, [vp, vp]),
                "ggml_set_input": (None, [vp]),
                "ggml_backend_cpu_buffer_from_ptr": (vp, [vp, sz]),
                "ggml_backend_tensor_alloc": (ctypes.c_int, [vp, vp, vp]),
                "ggml_transpose": (vp, [vp, vp]),
                "ggml_soft_max": (vp, [vp, vp]),
                "ggml_cumsum": (vp, [vp, vp]),
                "ggml_sum_rows": (vp, [vp, vp]),
                "ggml_step": (vp, [vp, vp]),
                "ggml_exp": (vp, [vp, vp]),
                "ggml_sub": (vp, [vp, vp, vp]),
                "ggml_mul": (vp, [vp, vp, vp]),
                "ggml_div": (vp, [vp, vp, vp]),
                "ggml_scale_bias": (vp, [vp, vp, cf, cf]),
                "ggml_clamp": (vp, [vp, vp, cf, cf]),
                "ggml_build_forward_expand": (None, [vp, vp]),
            }
        )
        self._local = threading.local()
        self.matrices = 0  # graphs whose rows are finished in the graph
        self.packed = 0  # of those, graphs that write the tokens into one array of ours (`PACKED`)
        self.top_k_only = 0  # graphs that left the top-k (rows not staged as built)
        self.fallbacks = 0  # rows handed to llama.cpp's top-k after an error
        self.idle = 0  # samplers of sequences not in the step, left alone
        self.iface, self._callbacks = graph_top_k.sampler_interface(self, b"storybench-sample")

    def thread(self) -> _Thread:
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _Thread(self.ggml)
        return state  # type: ignore[no-any-return]

    def new(self, value: int) -> Any:
        return llama_cpp.llama_sampler_init(ctypes.byref(self.iface), ctypes.c_void_p(value))

    @staticmethod
    def _value(smpl: Any) -> int:
        return int(smpl.contents.ctx or 0)

    def _clone(self, smpl: Any) -> int | None:
        return ctypes.cast(self.new(self._value(smpl)), ctypes.c_void_p).value

    def _apply(self, smpl: Any, cur_p: Any) -> None:  # on the CPU: llama.cpp's top-k, as `graph_top_k`
        k, penalized, _ = _unpack(self._value(smpl))
        llama_cpp.llama_sampler_apply(graph_top_k.native_top_k(k + HISTORY if penalized else k), cur_p)

    def _backend_reset(self, _smpl: Any) -> None:  # a new graph is being built
        self.thread().built.clear()

    def _backend_apply(self, smpl: Any, ctx: int, gf: int, data: Any) -> None:
        fields = data.contents
        k, penalized, seq = _unpack(self._value(smpl))
        if penalized:  # the candidates the penalties choose from (`tail_ops.lowers_only`)
            k += HISTORY
        before = (fields.logits, fields.candidates, fields.sampled)
        try:
            self._build(k, penalized, seq, int(ctx), int(gf), fields)
        except Exception:  # an exception cannot cross into C: llama.cpp's own top-k for this row
            log.exception("sampling in the graph: building failed; llama.cpp's top-k instead")
            self.fallbacks += 1
            fields.logits, fields.candidates, fields.sampled = before
            native = graph_top_k.native_top_k(k)
            native.contents.iface.contents.backend_apply(native, ctx, gf, data)

    def _build(self, k: int, penalized: bool, seq: int, ctx: int, gf: int, data: Any) -> None:
        """`k`: the candidates to keep, HISTORY more than the request's top-k with penalties."""
        g, state = self.ggml, self.thread()
        row = _tensor(int(data.logits))
        parent = int(row.view_src or 0)
        matrix = _tensor(parent) if parent else None
        if (
            matrix is None
            or matrix.type != GGML_TYPE_F32
            or matrix.ne[0] != row.ne[0]
            or matrix.nb[1] != row.ne[0] * 4
            or row.view_offs % matrix.nb[1] != 0
            or data.candidates
        ):  # not a row of the step's matrix: the top-k of this row alone, as `graph_top_k`
            graph_top_k.top_k_of_row(g, ctx, data, k)
            return
        if graph_top_k.idle(seq):
            # Not in this step (a slot keeps its chain between requests; llama.cpp applies the
            # samplers of idle sequences to the first row and keeps nothing they make): nothing
            # to build, which saves a whole top-k when its kind is one no running request has.
            self.idle += 1
            return
        rows, r = matrix.ne[1], row.view_offs // matrix.nb[1]
        key = (ctx, parent, k, penalized)
        built = state.built.get(key)
        if built is None:
            ids, vals = build_top_k(g, ctx, parent, k, float_ids=True)
            built = state.built[key] = _Built(ids, vals)
            staged = state.seqs
            if staged is not None and len(staged) + 1 == rows and rows <= MAX_ROWS + 1:
                params = [state.staged(g, state.params[c], 1, rows) for c in range(N_PARAMS)]
                if penalized:
                    history = state.staged(g, state.history_rows, HISTORY, 1, rows)
                    ids, vals = build_penalties(g, ctx, ids, vals, params, history, k - HISTORY)
                built.tokens = build_tail(g, ctx, ids, vals, params)
                if PACKED:
                    built.place = state.place_tokens(g, built.tokens, (k, penalized))
                    if built.place is not None:
                        g.build_forward_expand(gf, built.tokens)
                        self.packed += 1
                self.matrices += 1
            else:
                self.top_k_only += 1
        staged = state.seqs
        if built.tokens is not None and staged is not None and r < len(staged) and staged[r] == seq:
            # Nothing for llama.cpp to copy back: the row's token is in `tokens` (or, past the
            # packed k, llama.cpp's sampled token).
            data.logits = data.candidates = None
            if built.place is None:
                data.sampled = g.view_1d(ctx, built.tokens, 1, r * 4)
            return
        if built.int_ids is None:  # the rows' candidates, for the CPU to finish
            built.int_ids = int(g.cast(ctx, built.ids, GGML_TYPE_I32))
        n = _tensor(built.vals).ne[0]
        data.candidates = g.view_1d(ctx, built.int_ids, n, r * n * 4)
        data.logits = g.view_1d(ctx, built.vals, n, r * n * 4)


_SAMPLER: _Sampler | None = None
_UNAVAILABLE: str | None = None
_LOCK = threading.Lock()


def available() -> bool:
    """Whether this libllama/libggml can sample in the graph (checked once per process)."""
    global _SAMPLER, _UNAVAILABLE
    with _LOCK:
        if _SAMPLER is None and _UNAVAILABLE is None:
            try:
                _SAMPLER = _Sampler()
            except (OSError, AttributeError, RuntimeError) as exc:
                _UNAVAILABLE = str(exc)
                log.warning("sampling in the graph unavailable, the CPU finishes the chain: %s", exc)
    return _SAMPLER is not None


def counts() -> dict[str, int]:
    """Graphs built so far in this process that finish their rows (and of those, the ones whose
    tokens come back in one array), graphs that only left the top-k (their rows were not staged
    as llama.cpp laid them out), rows given to llama.cpp's top-k after an error, and samplers of
    sequences not in the step that were left alone."""
    names = ("matrices", "packed", "top_k_only", "fallbacks", "idle")
    return {name: getattr(_SAMPLER, name) if _SAMPLER is not None else 0 for name in names}


def add_to(chain: Any, k: int, penalized: bool = False) -> bool:
    """Add the whole-chain sampler to a llama.cpp sampler chain (which then owns it), with the
    repetition penalties first when `penalized` (they must only lower logits:
    `tail_ops.lowers_only`); False when this build cannot run it or the candidates it keeps
    (k, plus HISTORY with penalties) are past `graph_top_k.MAX_K`."""
    if not 0 < k + (HISTORY if penalized else 0) <= graph_top_k.MAX_K or not k or not available():
        return False
    assert _SAMPLER is not None
    llama_cpp.llama_sampler_chain_add(chain, _SAMPLER.new(k | int(penalized) << _PENALTY_BIT))
    return True


def bind(chain: Any, seq: int) -> None:
    """Tell the chain's samplers (this module's, `graph_top_k`'s) which sequence they sample
    for (before the chain is attached to it)."""
    iface = ctypes.addressof(_SAMPLER.iface) if _SAMPLER is not None else None
    for i in range(llama_cpp.llama_sampler_chain_n(chain)):
        member = llama_cpp.llama_sampler_chain_get(chain, i)
        if graph_top_k.bind(member, seq) or iface is None:
            continue
        if ctypes.cast(member.contents.iface, ctypes.c_void_p).value == iface and 0 <= seq < MAX_SEQ:
            kind = _Sampler._value(member) & ((1 << _SEQ_SHIFT) - 1)
            member.contents.ctx = ctypes.c_void_p(kind | (seq + 1) << _SEQ_SHIFT)


def _state() -> _Thread | None:
    return getattr(_SAMPLER._local, "state", None) if _SAMPLER is not None else None


def packed_token(ctx: Any, batch_index: int, row: int, k: int, penalized: bool) -> int:
    """After a decode, on the engine's thread: the token the graph wrote for output `row` (the
    batch's `batch_index`) of a request with top-k `k`, or -1 when the graph left the row to the
    CPU (llama.cpp then copied its candidates back) or this thread packs no such tokens."""
    state = _state()
    kind = (k + HISTORY, True) if penalized else (k, False)
    if state is None or (place := state.places.get(kind)) is None:
        return -1
    if llama_cpp.llama_get_sampled_candidates_count_ith(ctx, batch_index) > 0:
        return -1
    return int(state.tokens[place, row])


def stage(
    seqs: list[int] | None,
    uniforms: list[float] | None = None,
    rows: list[tuple[float, ...]] | None = None,
    histories: list[np.ndarray] | None = None,
) -> None:
    """Before a decode, on the engine's thread: the sequence of every output row in batch order,
    each row's uniform and its `tail_ops.settings` (rows this module does not sample may hold
    anything; none when no row is finished in the graph), and when some row has penalties every
    row's last tokens (`host_tail.TailPlan.history`). None: nothing staged, rows built now only
    leave their top-k."""
    graph_top_k.stage(seqs)
    if _SAMPLER is None:
        return
    state = _SAMPLER.thread()
    state.seqs = seqs
    if seqs is not None and uniforms and rows:
        n = min(len(rows), MAX_ROWS)
        state.params[0, :n] = uniforms[:n]
        state.params[1:, :n] = np.asarray(rows[:n], np.float32).T
        if histories:
            state.history_rows[:n] = np.stack(histories[:n])
