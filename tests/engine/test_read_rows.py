"""`host_tail.read_rows`: the step's candidates read straight from llama.cpp's sampled buffers,
checked with as few calls as possible (each one synchronizes with the GPU). Against fake
buffers laid out as llama.cpp lays them out (row r at r * n_vocab), and against layouts it must
refuse, where the engine falls back to llama.cpp's chain row by row."""

from __future__ import annotations

import ctypes
from collections import Counter
from typing import Any

import llama_cpp
import numpy as np
import pytest

from server.engine import host_tail

N_VOCAB, K = 50, 4


class FakeSampled:
    """llama.cpp's sampled logits and candidates for `rows` outputs, `k` kept in each row; batch
    index i is output i unless `order` says otherwise. Counts its calls."""

    def __init__(self, rows: int, k: int = K, order: list[int] | None = None) -> None:
        self.logits = np.arange(rows * N_VOCAB, dtype=np.float32).reshape(rows, N_VOCAB)
        self.ids = (np.arange(rows * N_VOCAB, dtype=np.int32) % N_VOCAB).reshape(rows, N_VOCAB) + 1000
        self.k, self.order = k, order or list(range(rows))
        self.calls: Counter[str] = Counter()

    def _row(self, array: np.ndarray, i: int, ctype: Any) -> Any:
        return ctypes.cast(array[self.order[i]].ctypes.data, ctypes.POINTER(ctype))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def logits_ith(_ctx: object, i: int) -> Any:
            self.calls["logits"] += 1
            return self._row(self.logits, i, ctypes.c_float)

        def candidates_ith(_ctx: object, i: int) -> Any:
            self.calls["candidates"] += 1
            return self._row(self.ids, i, ctypes.c_int32)

        def count_ith(_ctx: object, _i: int) -> int:
            self.calls["count"] += 1
            return self.k

        monkeypatch.setattr(llama_cpp, "llama_get_sampled_logits_ith", logits_ith)
        monkeypatch.setattr(llama_cpp, "llama_get_sampled_candidates_ith", candidates_ith)
        monkeypatch.setattr(llama_cpp, "llama_get_sampled_logits_count_ith", count_ith)


@pytest.mark.parametrize("out_rows", [[0, 1, 2, 3, 4, 5], [1, 2, 3], [0, 2, 5], [3]])
def test_rows_are_read_in_four_calls_at_most(monkeypatch: pytest.MonkeyPatch, out_rows: list[int]) -> None:
    fake = FakeSampled(6)
    fake.install(monkeypatch)
    read = host_tail.read_rows(None, out_rows, out_rows, N_VOCAB, K)
    assert read is not None
    ids, logits = read
    np.testing.assert_array_equal(ids, fake.ids[out_rows, :K])
    np.testing.assert_array_equal(logits, fake.logits[out_rows, :K])
    assert sum(fake.calls.values()) == (3 if len(out_rows) == 1 else 4)


def test_rows_out_of_output_order_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last row is not where the layout puts it (llama.cpp reordered its outputs)."""
    FakeSampled(6, order=[0, 1, 2, 3, 5, 4]).install(monkeypatch)
    assert host_tail.read_rows(None, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], N_VOCAB, K) is None


def test_rows_of_another_k_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSampled(6, k=K + 1).install(monkeypatch)
    assert host_tail.read_rows(None, [0, 1, 2], [0, 1, 2], N_VOCAB, K) is None
