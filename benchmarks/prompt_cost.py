"""What one prompt micro-batch costs on our context, by its tokens, its sequences and its depth
(issue 16): the price the engine pays each time a step carries prompt tokens.

A long story's steps with prompt tokens took about twice the time a token that batched-bench's
prompt phase needs (session 16). This separates the parts: a micro-batch's fixed cost (a pass
over the weights, a graph built afresh, kernels launched one by one rather than from a CUDA
graph) from its cost a token, and checks whether several sequences' equal chunks in one
micro-batch (the only way several sequences share one when each slot has its own KV stream)
cost what one sequence's chunk of the same size does. Each measurement runs between two
decode steps of every slot's one-token row, as in a story, and times the decode step after
it too (the step whose shape came back).

All slots are first filled to the depth, then every measurement is taken back out of the
cache, so each one sees the same depth. `llama_decode` + `llama_synchronize`, no sampling.

    python -m benchmarks.prompt_cost --model m.gguf --gpu --depths 0,3500,7000 --out cost.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp

from benchmarks.engine_steps import (
    _Batch,
    _prompt,
    add_model_arguments,
    keep_progress,
    load_model,
    run_header,
    write_results,
)
from server.engine.model import BatchedModel

# (sequences, tokens each): one sequence's chunk of several sizes, then 512 tokens over 2-16.
SHAPES = [(1, 16), (1, 64), (1, 128), (1, 256), (1, 512), (2, 256), (4, 128), (8, 64), (16, 32)]


def _fill(model: BatchedModel, batch: _Batch, slots: int, start: int, depth: int) -> None:
    """Every slot's cache from `start` to `depth` tokens, one slot a decode."""
    for seq in range(slots):
        tokens = _prompt(model, depth - start, seed=1000 + seq * 7919 + start)
        for at in range(0, len(tokens), model.n_batch):
            batch.clear()
            chunk = tokens[at : at + model.n_batch]
            batch.add_run(chunk, start + at, seq, output_last=False)
            if batch.decode(model.ctx) != 0:
                raise RuntimeError(f"filling slot {seq} to {depth} failed")
    llama_cpp.llama_synchronize(model.ctx)


def _step(model: BatchedModel, batch: _Batch, rows: list[tuple[list[int], int, int]]) -> tuple[float, float]:
    """One decode of `rows` (tokens, position, sequence; the last token of each an output), its
    cells removed after: (ms until llama_decode returned, ms until synchronized)."""
    batch.clear()
    for tokens, pos, seq in rows:
        batch.add_run(tokens, pos, seq, output_last=True)
    t0 = time.perf_counter()
    if batch.decode(model.ctx) != 0:
        raise RuntimeError(f"decode of {batch.n} tokens failed")
    t1 = time.perf_counter()
    llama_cpp.llama_synchronize(model.ctx)
    t2 = time.perf_counter()
    for _, pos, seq in rows:
        llama_cpp.llama_memory_seq_rm(model.memory, seq, pos, -1)
    return 1000 * (t1 - t0), 1000 * (t2 - t0)


def measure(model: BatchedModel, slots: int, depth: int, repeats: int) -> dict[str, Any]:
    """At `depth`: every slot's one-token step (steady, reused graph), then for each shape of
    `SHAPES` the prompt micro-batch and the one-token step right after it, `repeats` times."""
    batch = _Batch(model.n_batch)
    token = _prompt(model, 1, seed=4242)
    decode_rows = [(token, depth, seq) for seq in range(slots)]
    for _ in range(8):  # a steady shape: llama.cpp's graph reused, the CUDA graph captured
        _step(model, batch, decode_rows)
    steady = [_step(model, batch, decode_rows) for _ in range(repeats * 4)]
    out: dict[str, Any] = {
        "decode_step_ms": statistics.median(t for _, t in steady),
        "decode_step_call_ms": statistics.median(c for c, _ in steady),
        "shapes": {},
    }
    for n_seqs, each in (shape for shape in SHAPES if shape[0] <= slots):
        chunk, after, second, call = [], [], [], []
        for r in range(repeats):
            first = (r * n_seqs) % slots  # consecutive sequences, moving over the slots
            first = first if first + n_seqs <= slots else 0
            rows = [(_prompt(model, each, seed=r * 100 + s), depth, s) for s in range(first, first + n_seqs)]
            for _ in range(3):
                _step(model, batch, decode_rows)
            c, t = _step(model, batch, rows)
            call.append(c)
            chunk.append(t)
            after.append(_step(model, batch, decode_rows)[1])
            second.append(_step(model, batch, decode_rows)[1])
        tokens = n_seqs * each
        ms = statistics.median(chunk)
        out["shapes"][f"{n_seqs}x{each}"] = {
            "tokens": tokens,
            "ms": round(ms, 3),
            "call_ms": round(statistics.median(call), 3),
            "tok_per_s": round(tokens / ms * 1000),
            "decode_step_after_ms": round(statistics.median(after), 3),
            "second_decode_step_after_ms": round(statistics.median(second), 3),
        }
        print(f"depth {depth} {n_seqs}x{each}: {out['shapes'][f'{n_seqs}x{each}']}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(ap)
    ap.add_argument("--slots", type=int, default=16, help="sequences, each filled to the depth")
    ap.add_argument("--depths", default="0,3500,7000", help="tokens in every slot, comma-separated, rising")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = ap.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    room = max(each for _, each in SHAPES)  # the longest chunk a slot takes on top of its depth
    if depths != sorted(depths) or depths[-1] + room > args.n_ctx:
        context = f"{args.n_ctx}-token context"
        ap.error(f"--depths must rise and leave {room} tokens of the {context}: {args.depths}")
    model = load_model(args, args.slots)
    results: dict[str, Any] = run_header(args) | {"depths": {}}
    try:
        batch, filled = _Batch(model.n_batch), 0
        for depth in depths:
            if depth > filled:
                _fill(model, batch, args.slots, filled, depth)
                filled = depth
            results["depths"][str(depth)] = measure(model, args.slots, depth, args.repeats)
            keep_progress(results, args.out)
    finally:
        model.close()
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
