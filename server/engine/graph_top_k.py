"""Top-k for every row of a step in one pass of the decode graph: a custom llama.cpp backend sampler.

Why: llama.cpp builds backend sampling per sequence. Its own top-k adds, for every sequence, a
sort of that sequence's whole row of logits (128k values on a Llama-3 vocabulary) as separate
kernel launches; on an H200 that is 0.9 ms a step at 16 sequences and 4.3 ms at 64 (issue 16,
BENCHMARKS.md), most of the distance between the engine and `llama-batched-bench`. The sampler
here is attached to each sequence like llama.cpp's, but the first of them to be applied in a
graph builds one top-k over the matrix of all the step's rows (`data.logits` is a row view of
it), and every sequence then takes its row of the result: a view, no kernel of its own.

The top-k itself is made of sorts small enough for one GPU block each: every row is cut into
blocks of `BLOCK` values, each block is sorted (one `ggml_argsort` launch for all the blocks of
all the rows) and keeps its k largest, and the survivors (k per block, plus the values past the
last whole block) go round again until a row is at most `BLOCK` long; its k largest are the
row's. The token ids travel beside the values as floats (exact below 2^24). The result is what
llama.cpp's top-k leaves: the k largest logits of the row, largest first, with their token ids,
so the tail of the chain (top-p, min-p, temperature, the draw) runs on the CPU unchanged. Rows
whose logits were changed first (a logit bias or penalties in the graph) are not views of the
matrix; this sampler then runs the same top-k on that row alone. Should building the graph fail
(a Python exception cannot cross into llama.cpp), the row gets llama.cpp's own top-k instead.

About 420 lines on purpose: the ggml bindings, the graph of block sorts and the sampler's
callbacks share the struct layout checked at load and the one set of callbacks llama.cpp holds
pointers to; `graph_tail` builds on all three.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import llama_cpp

log = logging.getLogger(__name__)

BLOCK = 1024  # values a block sort holds: ggml-cuda sorts up to 1,024 values per block in shared memory
# Block size of the first pass (`_preselect`); 0: sort every block of the row. Exact
# (tests/engine/test_graph_top_k.py); on an H200 it raised the engine from 66/58/58% to 80/77/78%
# of llama-batched-bench at 16/32/64 sequences (1B shape; 8B 81/76/73% to 87/83/76%), but cost a
# lone sequence 5-7% (BENCHMARKS.md, issue 16, session 8): a step of one row sorts every block.
PRESELECT = 256
PRESELECT_MIN_ROWS = 2
MAX_K = BLOCK // 4  # past this, the rounds shrink a row too slowly: llama.cpp's own top-k then
# A sampler's llama.cpp context pointer: k | (sequence + 1) << SEQ_SHIFT once `bind` told it its
# sequence (0 above the k: not bound, applied whatever is staged).
SEQ_SHIFT = 20
_K_MASK = (1 << SEQ_SHIFT) - 1

GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26
GGML_SORT_ORDER_DESC = 1
# sizeof(struct ggml_object), which `ggml_tensor_overhead()` adds to sizeof(struct ggml_tensor).
GGML_OBJECT_SIZE = 32


class GgmlTensor(ctypes.Structure):
    """The head of `struct ggml_tensor` (ggml.h) up to what this module reads: shape, strides,
    and the tensor a view looks into. Checked against the library's own size at load."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _tensor(ptr: int) -> GgmlTensor:
    return GgmlTensor.from_address(ptr)


class _Ggml:
    """The few ggml graph functions the sampler builds with, from the libggml-base libllama uses."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libggml-base.so.0", mode=os.RTLD_NOLOAD | ctypes.RTLD_GLOBAL)
        except OSError:
            override = os.environ.get("LLAMA_CPP_LIB_PATH")
            folder = Path(override) if override else Path(llama_cpp.__file__).parent / "lib"
            lib = ctypes.CDLL(str(folder / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        vp, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        ci, cf = ctypes.c_int, ctypes.c_float
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "ggml_tensor_overhead": (sz, []),
            "ggml_view_1d": (vp, [vp, vp, i64, sz]),
            "ggml_view_2d": (vp, [vp, vp, i64, i64, sz, sz]),
            "ggml_view_3d": (vp, [vp, vp, i64, i64, i64, sz, sz, sz]),
            "ggml_reshape_2d": (vp, [vp, vp, i64, i64]),
            "ggml_reshape_3d": (vp, [vp, vp, i64, i64, i64]),
            "ggml_cont": (vp, [vp, vp]),
            "ggml_argsort": (vp, [vp, vp, ci]),
            "ggml_get_rows": (vp, [vp, vp, vp]),
            "ggml_cast": (vp, [vp, vp, ci]),
            "ggml_arange": (vp, [vp, cf, cf, cf]),
            "ggml_add": (vp, [vp, vp, vp]),
            "ggml_scale": (vp, [vp, vp, cf]),
            "ggml_argmax": (vp, [vp, vp]),
            "ggml_concat": (vp, [vp, vp, vp, ci]),
            "ggml_repeat": (vp, [vp, vp, vp]),
        }
        self.lib = lib
        self.bind(signatures)

    def bind(self, signatures: dict[str, tuple[Any, list[Any]]]) -> None:
        """Make the named functions attributes, without their `ggml_` prefix."""
        for name, (res, args) in signatures.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = res, args
            setattr(self, name.removeprefix("ggml_"), fn)

    def __getattr__(self, name: str) -> Any:  # for mypy: the functions are set in __init__
        raise AttributeError(name)


def _level(g: _Ggml, ctx: int, vals: int, ids: int | None, k: int) -> tuple[int, int | None]:
    """One round over `vals` [L, R] (float, contiguous) and their token ids (same shape, floats;
    None: the column index): the k largest of every block of BLOCK values and their ids."""
    t = _tensor(vals)
    length, rows = t.ne[0], t.ne[1]
    blocks, rest = divmod(length, BLOCK)
    whole = blocks * BLOCK

    def split(x: int) -> int:  # [L, R] -> [BLOCK, blocks, R], contiguous
        if rest == 0:
            return int(g.reshape_3d(ctx, x, BLOCK, blocks, rows))
        view = g.view_3d(ctx, x, BLOCK, blocks, rows, BLOCK * 4, _tensor(x).nb[1], 0)
        return int(g.cont(ctx, view))

    main = split(vals)
    order = g.argsort(ctx, main, GGML_SORT_ORDER_DESC)
    o = _tensor(order)
    top = g.cont(ctx, g.view_3d(ctx, order, k, blocks, rows, o.nb[1], o.nb[2], 0))
    top2 = g.reshape_2d(ctx, top, k, blocks * rows)
    picked = g.get_rows(ctx, g.reshape_3d(ctx, main, 1, BLOCK, blocks * rows), top2)
    new_vals = g.reshape_2d(ctx, picked, k * blocks, rows)
    if ids is None:
        local = g.cast(ctx, top, GGML_TYPE_F32)  # [k, blocks, R]
        starts = g.reshape_3d(ctx, g.arange(ctx, 0.0, float(whole), float(BLOCK)), 1, blocks, 1)
        new_ids = g.reshape_2d(ctx, g.add(ctx, local, starts), k * blocks, rows)
    else:
        got = g.get_rows(ctx, g.reshape_3d(ctx, split(ids), 1, BLOCK, blocks * rows), top2)
        new_ids = g.reshape_2d(ctx, got, k * blocks, rows)
    if rest:
        tail = g.cont(ctx, g.view_2d(ctx, vals, rest, rows, t.nb[1], whole * 4))
        new_vals = g.concat(ctx, new_vals, tail, 0)
        if ids is None:
            column = g.reshape_2d(ctx, g.arange(ctx, float(whole), float(length), 1.0), rest, 1)
            tail_ids = g.repeat(ctx, column, tail)
        else:
            tail_ids = g.cont(ctx, g.view_2d(ctx, ids, rest, rows, _tensor(ids).nb[1], whole * 4))
        new_ids = g.concat(ctx, new_ids, tail_ids, 0)
    return int(new_vals), int(new_ids)


def _preselect(g: _Ggml, ctx: int, logits: int, k: int, size: int) -> tuple[int, int]:
    """The k blocks of `size` values with the largest maxima in every row of `logits` [V, R],
    gathered with the values past the last whole block, and their token ids (floats): [L, R]
    each, L = k * size + the rest. Every one of a row's k largest values is in there: a value
    whose block is left out has k block maxima at least as large above it. Finding the blocks
    reads the row once (argmax per block), so the sorts that follow see k * size values per row
    instead of all of them."""
    t = _tensor(logits)
    length, rows = t.ne[0], t.ne[1]
    blocks, rest = divmod(length, size)
    whole = blocks * size
    if rest == 0:
        main = int(g.reshape_3d(ctx, logits, size, blocks, rows))
    else:
        main = int(g.cont(ctx, g.view_3d(ctx, logits, size, blocks, rows, size * 4, t.nb[1], 0)))
    flat = g.reshape_2d(ctx, main, size, blocks * rows)
    at = g.reshape_2d(ctx, g.argmax(ctx, flat), 1, blocks * rows)
    maxima = g.reshape_2d(
        ctx, g.get_rows(ctx, g.reshape_3d(ctx, main, 1, size, blocks * rows), at), blocks, rows
    )
    order = g.argsort(ctx, maxima, GGML_SORT_ORDER_DESC)
    chosen = g.cont(ctx, g.view_2d(ctx, order, k, rows, _tensor(order).nb[1], 0))  # [k, R] block numbers
    vals = g.reshape_2d(ctx, g.get_rows(ctx, main, chosen), size * k, rows)  # [size, k, R] -> [size * k, R]
    starts = g.reshape_3d(ctx, g.scale(ctx, g.cast(ctx, chosen, GGML_TYPE_F32), float(size)), 1, k, rows)
    column = g.reshape_3d(ctx, g.arange(ctx, 0.0, float(size), 1.0), size, 1, 1)
    shape = g.reshape_3d(ctx, vals, size, k, rows)
    ids = g.reshape_2d(ctx, g.add(ctx, g.repeat(ctx, column, shape), starts), size * k, rows)
    if rest:
        tail = g.cont(ctx, g.view_2d(ctx, logits, rest, rows, t.nb[1], whole * 4))
        vals = g.concat(ctx, vals, tail, 0)
        tail_column = g.reshape_2d(ctx, g.arange(ctx, float(whole), float(length), 1.0), rest, 1)
        ids = g.concat(ctx, ids, g.repeat(ctx, tail_column, tail), 0)
    return int(vals), int(ids)


def build_top_k(g: _Ggml, ctx: int, logits: int, k: int, float_ids: bool = False) -> tuple[int, int]:
    """The k largest values of every row of `logits` [V, R] (float, contiguous), largest first:
    (token ids as int32 [k, R], or as floats with `float_ids`, values [k, R])."""
    vals: int = logits
    ids: int | None = None
    k = min(k, _tensor(logits).ne[0])
    shape = _tensor(logits)
    if PRESELECT and shape.ne[1] >= PRESELECT_MIN_ROWS and shape.ne[0] // PRESELECT > 2 * k:  # else no gain
        vals, ids = _preselect(g, ctx, logits, k, PRESELECT)
    while _tensor(vals).ne[0] > BLOCK:
        vals, ids = _level(g, ctx, vals, ids, k)
    t = _tensor(vals)
    length, rows = t.ne[0], t.ne[1]
    order = g.argsort(ctx, vals, GGML_SORT_ORDER_DESC)
    top = g.cont(ctx, g.view_2d(ctx, order, k, rows, _tensor(order).nb[1], 0))
    final_vals = g.reshape_2d(ctx, g.get_rows(ctx, g.reshape_3d(ctx, vals, 1, length, rows), top), k, rows)
    if ids is None:
        return int(g.cast(ctx, top, GGML_TYPE_F32) if float_ids else top), int(final_vals)
    got = g.reshape_2d(ctx, g.get_rows(ctx, g.reshape_3d(ctx, ids, 1, length, rows), top), k, rows)
    return int(got if float_ids else g.cast(ctx, got, GGML_TYPE_I32)), int(final_vals)


def sampler_interface(owner: Any, name: bytes) -> tuple[Any, list[Any]]:
    """A `llama_sampler_i` whose callbacks are `owner`'s `_apply`, `_clone`, `_backend_apply`
    and `_backend_reset`, and what must stay alive as long as any sampler made with it."""
    lc = llama_cpp.llama_cpp
    label = ctypes.create_string_buffer(name)
    # ctypes callbacks cannot return a char or struct pointer: these two return void pointers.
    returns_pointer = ctypes.CFUNCTYPE(ctypes.c_void_p, lc.llama_sampler_p_ctypes)
    name_fn = returns_pointer(lambda _s: ctypes.addressof(label))
    clone_fn = returns_pointer(owner._clone)
    fields: dict[str, Any] = {
        "name": ctypes.cast(name_fn, lc.llama_sampler_i_name),
        "apply": lc.llama_sampler_i_apply(owner._apply),
        "clone": ctypes.cast(clone_fn, lc.llama_sampler_i_clone),
        "backend_init": lc.llama_sampler_i_backend_init(lambda _s, _b, _n: True),
        "backend_apply": lc.llama_sampler_i_backend_apply(owner._backend_apply),
        "backend_reset": lc.llama_sampler_i_backend_reset(owner._backend_reset),
    }
    return lc.llama_sampler_i(**fields), [label, name_fn, clone_fn, *fields.values()]


def top_k_of_row(g: _Ggml, ctx: int, data: Any, k: int) -> None:
    """The batched top-k over one row that is not part of the step's matrix (`data.logits`)."""
    assert _SAMPLER is not None
    width = _tensor(int(data.logits)).ne[0]
    ids, vals = build_top_k(g, ctx, int(g.reshape_2d(ctx, data.logits, width, 1)), k)
    _SAMPLER.lone_rows += 1
    n = min(k, width)
    data.candidates = g.view_1d(ctx, ids, n, 0)
    data.logits = g.view_1d(ctx, vals, n, 0)


class _Sampler:
    """The callbacks behind every batched top-k sampler (one set per process). A sampler's
    llama.cpp context pointer is its k and sequence, so clones and frees need no bookkeeping."""

    def __init__(self) -> None:
        self.ggml = _Ggml()
        size = self.ggml.tensor_overhead() - GGML_OBJECT_SIZE
        if size != ctypes.sizeof(GgmlTensor):
            ours = ctypes.sizeof(GgmlTensor)
            raise RuntimeError(f"ggml_tensor is {size} bytes in this libggml, {ours} here")
        # Per engine thread, per graph being built: (ggml context, logits matrix, k) -> (ids, values).
        self._local = threading.local()
        self._native: dict[int, Any] = {}  # k -> llama.cpp's own top-k: the CPU path and the fallback
        self._native_lock = threading.Lock()
        # Graphs built: top-k over the step's matrix of rows, and over a lone row.
        self.matrices = 0
        self.lone_rows = 0
        self.fallbacks = 0  # rows handed to llama.cpp's top-k after an error
        self.idle = 0  # samplers of sequences not in the step, left alone
        self.build_s = 0.0  # in these callbacks, while llama.cpp builds a graph (Python's share of a build)
        self.iface, self._callbacks = sampler_interface(self, b"storybench-top-k")

    def new(self, value: int) -> Any:
        return llama_cpp.llama_sampler_init(ctypes.byref(self.iface), ctypes.c_void_p(value))

    @staticmethod
    def _value(smpl: Any) -> int:
        return int(smpl.contents.ctx or 0)

    @classmethod
    def _k(cls, smpl: Any) -> int:
        return cls._value(smpl) & _K_MASK

    def _clone(self, smpl: Any) -> int | None:
        return ctypes.cast(self.new(self._value(smpl)), ctypes.c_void_p).value

    @property
    def built(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        local = self._local.__dict__
        return local.setdefault("built", {})  # type: ignore[no-any-return]

    def native(self, k: int) -> Any:
        """llama.cpp's own top-k sampler for k (kept: it has no state)."""
        with self._native_lock:
            smpl = self._native.get(k)
            if smpl is None:
                smpl = self._native[k] = llama_cpp.llama_sampler_init_top_k(k)
            return smpl

    def _apply(self, smpl: Any, cur_p: Any) -> None:
        llama_cpp.llama_sampler_apply(self.native(self._k(smpl)), cur_p)

    def _backend_reset(self, _smpl: Any) -> None:
        self.built.clear()

    def _backend_apply(self, smpl: Any, ctx: int, gf: int, data: Any) -> None:
        value, fields = self._value(smpl), data.contents
        k, seq = value & _K_MASK, (value >> SEQ_SHIFT) - 1
        before, start = (fields.logits, fields.candidates), time.perf_counter()
        try:
            self._build(k, seq, int(ctx), fields)
        except Exception:  # an exception cannot cross into C: llama.cpp's own top-k for this row
            log.exception("batched top-k: building the graph failed; llama.cpp's top-k instead")
            self.fallbacks += 1
            fields.logits, fields.candidates = before
            native = self.native(k)
            native.contents.iface.contents.backend_apply(native, ctx, gf, data)
        finally:
            self.build_s += time.perf_counter() - start

    def _build(self, k: int, seq: int, ctx: int, data: Any) -> None:
        g = self.ggml
        logits = int(data.logits)
        row = _tensor(logits)
        width = row.ne[0]
        parent = int(row.view_src or 0)
        matrix = _tensor(parent) if parent else None
        if (
            matrix is None
            or matrix.type != GGML_TYPE_F32
            or matrix.ne[0] != width
            or matrix.nb[1] != width * 4
            or row.view_offs % matrix.nb[1] != 0
            or data.candidates
        ):  # not a row of the step's matrix: this row alone
            top_k_of_row(g, ctx, data, k)
            return
        if idle(seq):
            # Not in this step (a slot keeps its chain between requests; llama.cpp applies the
            # samplers of idle sequences to the first row and keeps nothing they make): a k no
            # running request has would otherwise add a whole top-k to every step.
            self.idle += 1
            return
        key = (ctx, parent, k)
        built = self.built.get(key)
        if built is None:
            built = self.built[key] = build_top_k(g, ctx, parent, k)
            self.matrices += 1
        ids, vals = built
        n = _tensor(ids).ne[0]
        offset = (row.view_offs // matrix.nb[1]) * n * 4
        data.candidates = g.view_1d(ctx, ids, n, offset)
        data.logits = g.view_1d(ctx, vals, n, offset)


# One set of callbacks per process, never freed: llama.cpp holds pointers to them in every
# sampler it made, so a second set (two threads racing to make the first) would free the
# callbacks of the samplers made with the first. The lock makes the first one the only one.
_SAMPLER: _Sampler | None = None
_UNAVAILABLE: str | None = None
_LOCK = threading.Lock()


def available() -> bool:
    """Whether this libllama/libggml can run the batched top-k (checked once per process)."""
    global _SAMPLER, _UNAVAILABLE
    with _LOCK:
        if _SAMPLER is None and _UNAVAILABLE is None:
            try:
                _SAMPLER = _Sampler()
            except (OSError, AttributeError, RuntimeError) as exc:
                _UNAVAILABLE = str(exc)
                log.warning("batched top-k unavailable, llama.cpp's own top-k is used: %s", exc)
    return _SAMPLER is not None


def loaded_ggml() -> _Ggml:
    """The ggml functions the sampler builds with (once `available()`), for `graph_tail`."""
    assert _SAMPLER is not None
    return _SAMPLER.ggml


def native_top_k(k: int) -> Any:
    """llama.cpp's own top-k sampler for k, kept (the CPU path and the fallback)."""
    assert _SAMPLER is not None
    return _SAMPLER.native(k)


def counts() -> dict[str, int]:
    """Graphs built so far in this process: over a step's matrix of rows, over lone rows
    (llama.cpp's own probe of a new chain is one), rows given to llama.cpp's top-k after an
    error, samplers of sequences not in the step that were left alone, and the microseconds
    spent in these callbacks (the Python part of building a graph)."""
    if _SAMPLER is None:
        return {"matrices": 0, "lone_rows": 0, "fallbacks": 0, "idle": 0, "build_us": 0}
    s = _SAMPLER
    return {
        "matrices": s.matrices,
        "lone_rows": s.lone_rows,
        "fallbacks": s.fallbacks,
        "idle": s.idle,
        "build_us": round(s.build_s * 1e6),
    }


def bind(member: Any, seq: int) -> bool:
    """Tell a chain member, if it is a batched top-k, which sequence it samples for (before the
    chain is attached to it); whether it was one."""
    if _SAMPLER is None or ctypes.cast(member.contents.iface, ctypes.c_void_p).value != ctypes.addressof(
        _SAMPLER.iface
    ):
        return False
    if 0 <= seq < (1 << (63 - SEQ_SHIFT)):
        member.contents.ctx = ctypes.c_void_p(_SAMPLER._k(member) | (seq + 1) << SEQ_SHIFT)
    return True


def stage(seqs: list[int] | None) -> None:
    """Before a decode, on the engine's thread: the sequences of the step's output rows (None:
    unknown, every sampler builds)."""
    if _SAMPLER is not None:
        _SAMPLER._local.staged = frozenset(seqs) if seqs is not None else None


def idle(seq: int) -> bool:
    """Whether a sampler bound to `seq` (-1: not bound) belongs to no row of the graph being
    built on this thread, by what `stage` was told (for `graph_tail`'s samplers too)."""
    staged = getattr(_SAMPLER._local, "staged", None) if _SAMPLER is not None else None
    return staged is not None and seq >= 0 and seq not in staged


def add_to(chain: Any, k: int) -> bool:
    """Add a batched top-k to a llama.cpp sampler chain (which then owns it); False when this
    build cannot run it or k is past MAX_K (the caller adds llama.cpp's top-k instead)."""
    if not 0 < k <= MAX_K or not available():
        return False
    assert _SAMPLER is not None
    llama_cpp.llama_sampler_chain_add(chain, _SAMPLER.new(k))
    return True
