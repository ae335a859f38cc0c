"""llama.cpp's CPU chain over the candidates the decode graph left, for several rows, without
`llama_sampler_sample`'s per-row reads.

Why: below `host_tail.HOST_TAIL_MIN_ROWS` generations the engine finishes each row with the
request's own llama.cpp chain (top-p, min-p, temperature, the seeded draw, and the penalties
when they follow the batched top-k). `llama_sampler_sample` starts each row with five reads of
the context's sampled buffers (token, probabilities, logits, candidates, count), and every one
of them first synchronizes the context with its backends. On an H200 host the chain cost 13 to
20 µs a row at 32 rows (BENCHMARKS.md, issue 16, session 10) against 4 to 9 µs on a 2-core VM
where synchronizing is free. Here the rows' candidates are read once for all rows
(`host_tail.read_rows`: a few reads a step, whatever the rows), laid out as llama.cpp's
`llama_token_data` for every row at once, and each request's chain is applied to its row and
told the token, as `llama_sampler_sample` does: the same chain on the same values, so the same
token.

Off by default (`scheduler.DIRECT_CHAINS`) until measured on a GPU: on the 2-core VM, where
synchronizing costs nothing, it costs more than `llama_sampler_sample` (0.12-0.15 against 0.03-0.04
ms a step at one row, 0.29-0.31 against 0.16-0.17 at 32 rows; BENCHMARKS.md, issue 16, session 11).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from typing import Any

import llama_cpp
import numpy as np

from server.engine.host_tail import read_rows

# llama.cpp's `llama_token_data` {id, logit, p} and `llama_token_data_array` {data, size,
# selected, sorted}, as numpy records; used only where they match the ctypes structures.
_TOKEN = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
_ARRAY = np.dtype([("data", "<u8"), ("size", "<u8"), ("selected", "<i8"), ("sorted", "?"), ("pad", "V7")])


def _matches(record: np.dtype[Any], struct: Any) -> bool:
    fields: Mapping[str, Any] = record.fields or {}
    named = [field[0] for field in struct._fields_]
    return record.itemsize == ctypes.sizeof(struct) and all(
        name in fields and fields[name][1] == getattr(struct, name).offset for name in named
    )


_LAID_OUT_AS_LLAMA = _matches(_TOKEN, llama_cpp.llama_token_data) and _matches(
    _ARRAY, llama_cpp.llama_token_data_array
)
# The two calls with plain addresses: no ctypes pointer objects made per row.
_lib = llama_cpp.llama_cpp._lib
_apply = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(("llama_sampler_apply", _lib))
_accept = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32)(("llama_sampler_accept", _lib))

# Written every step: one set per thread (each engine has its own), never shared.
_local = threading.local()


def address(sampler: Any) -> int:
    """The address of a llama.cpp sampler (a ctypes pointer)."""
    return ctypes.cast(sampler, ctypes.c_void_p).value or 0


class _Rows:
    """Token data for `rows` rows of k and one `llama_token_data_array` per row pointing at its
    row, with the views a step writes and reads (made once: a step's sizes repeat)."""

    def __init__(self, rows: int, k: int) -> None:
        self.cur = np.zeros((rows, k), _TOKEN)
        self.arrays = np.zeros(rows, _ARRAY)
        self.ids, self.logits, self.p = self.cur["id"], self.cur["logit"], self.cur["p"]
        self.data, self.size = self.arrays["data"], self.arrays["size"]
        self.selected, self.sorted = self.arrays["selected"], self.arrays["sorted"]
        self.home = self.cur.ctypes.data + np.arange(rows, dtype=np.uint64) * np.uint64(k * _TOKEN.itemsize)
        self.index = np.arange(rows)
        self.addresses = [self.arrays.ctypes.data + r * _ARRAY.itemsize for r in range(rows)]


def _laid_out(rows: int, k: int) -> _Rows:
    buffers: dict[tuple[int, int], _Rows] = _local.__dict__.setdefault("buffers", {})
    found = buffers.get((rows, k))
    if found is None:
        if len(buffers) > 64:
            buffers.clear()
        found = buffers[(rows, k)] = _Rows(rows, k)
    return found


def finish_rows(
    ctx: object, chains: list[int], batch_rows: list[int], out_rows: list[int], n_vocab: int, k: int
) -> list[int] | None:
    """The token of each row, by its request's chain (`chains`: sampler addresses, one per
    row) over the k candidates the graph left for it; the chains take the tokens as accepted.
    `batch_rows` and `out_rows` as for `host_tail.read_rows`. None, with no chain touched, when
    llama.cpp's buffers are not laid out as expected or the graph left probabilities too (the
    caller then uses `llama_sampler_sample`)."""
    if not _LAID_OUT_AS_LLAMA:
        return None
    read = read_rows(ctx, batch_rows, out_rows, n_vocab, k)
    if read is None or llama_cpp.llama_get_sampled_probs_ith(ctx, batch_rows[0]):
        return None
    rows = _laid_out(len(chains), k)
    rows.ids[...], rows.logits[...], rows.p[...] = read[0], read[1], 0.0  # as llama_sampler_sample
    rows.data[...], rows.size[...], rows.selected[...], rows.sorted[...] = rows.home, k, -1, False
    for chain, at in zip(chains, rows.addresses, strict=True):
        _apply(chain, at)
    selected = rows.selected
    if (selected.astype(np.uint64) >= rows.size).any():  # -1 included
        raise RuntimeError("llama.cpp's sampler chain selected no candidate")
    if (rows.data != rows.home).any():  # a sampler moved a row elsewhere: read it from there
        tokens: list[int] = [
            int(llama_cpp.llama_token_data.from_address(int(at) + int(n) * _TOKEN.itemsize).id)
            for at, n in zip(rows.data, selected, strict=True)
        ]
    else:
        tokens = rows.ids[rows.index, selected].tolist()
    for chain, token in zip(chains, tokens, strict=True):
        _accept(chain, token)
    return tokens
