"""Long stories in this process, without HTTP: N conversations x T turns through the real engine,
each turn's prompt the whole history (its cache serves all but the new tokens), answers of
varying length so the conversations drift out of phase as real ones do (issue 16, goal 3).

This is the step pattern `benchmarks/engine_steps.py` (all sequences start and stop together)
never makes and a long story makes every turn: a conversation leaves the step when its answer
ends, its next prompt arrives a moment later and is evaluated, it comes back. Each change of
shape makes llama.cpp build a new graph, and a prompt mixed with one-token rows costs two
micro-batches, so the engine's shape-keeping switches are compared here, alternating, at a
fraction of an HTTP run's device time: the variant names of `engine_steps.configure`
(`engine-batched` is the engine's defaults; `engine-batched-plain` is session 9's engine;
`engine-sampled...` the same with the whole chain in the decode graph, `graph_tail`).

Runs on the GPU machine (`TURNS=12 benchmarks/device_steps.sh`) and on the CPU with the bundled
model (`python -m benchmarks.engine_turns --model <gguf> --conversations 4 --turns 3 --gen 24
--turn-tokens 16 --variants engine-batched-hold-separate,engine-batched-plain`). Writes one
JSON document.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_steps import (
    _clear,
    _prompt,
    add_model_arguments,
    configure,
    keep_progress,
    load_model,
    packing,
    run_header,
    whole_chain_in_graph,
    write_results,
)
from server.engine.app import set_switch_interval
from server.engine.model import BatchedModel
from server.engine.sampling import SamplingParams, build_chains
from server.engine.scheduler import Engine, Event, Generation

COUNTERS = (
    "steps", "micro_batches", "graph_builds", "gap_fillers", "held_rows", "tokens_prompt",
    "graph_tail_rows", "graph_tail_cpu_rows",
)  # fmt: skip


def _turn(
    engine: Engine, prompt: list[int], max_tokens: int, params: SamplingParams, whole: bool = False
) -> Generation:
    """One turn: submitted, waited for; its generation (tokens, timings) once done. `whole`:
    the whole chain in the decode graph (`graph_tail`), else the batched top-k and host tail."""
    done = threading.Event()
    errors: list[str] = []

    def sink(events: list[Event]) -> None:
        for kind, value in events:
            if kind == "error":
                errors.append(str(value))
            if kind in ("done", "error"):
                done.set()

    model = engine.model.model
    chains = build_chains(model, params, backend=True, in_graph_tail=whole)
    gen = Generation.sampled_by(chains, params, prompt=prompt, max_tokens=max_tokens, sink=sink)
    engine.submit(gen)
    if not done.wait(600):
        raise TimeoutError("a turn did not finish")
    if errors:
        raise RuntimeError(f"turn failed: {errors[0]}")
    return gen


def story_run(model: BatchedModel, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """`args.conversations` stories of `args.turns` turns, each in its own client thread."""
    _clear(model)
    engine = Engine(model)
    engine._backend_sampling = True  # engine-batched's sampling, whatever the config's default
    configure(engine, variant)
    whole = whole_chain_in_graph(variant)
    latencies: list[list[float]] = [[] for _ in range(args.turns)]
    firsts: list[list[float]] = [[] for _ in range(args.turns)]
    cached: list[list[float]] = [[] for _ in range(args.turns)]
    produced = [0] * args.conversations
    failures: list[BaseException] = []

    def story(k: int) -> None:
        rng = random.Random(k)
        params = SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, seed=1234 + k)
        history = _prompt(model, args.first_prompt, seed=k)
        try:
            for t in range(args.turns):
                answer = rng.randint(int(args.gen * (1 - args.jitter)), args.gen)
                gen = _turn(engine, list(history), answer, params, whole)
                latencies[t].append(1000 * ((gen.t_end or 0) - gen.t_submit))
                firsts[t].append(1000 * ((gen.t_first or 0) - gen.t_submit))
                cached[t].append(100 * gen.cache_n / len(gen.prompt))
                produced[k] += len(gen.tokens)
                history += gen.tokens + _prompt(model, args.turn_tokens, seed=1000 * k + t + 1)
                time.sleep(args.pause_ms / 1000)  # the client: the answer read, the next turn written
        except BaseException as exc:  # reported after the others end
            failures.append(exc)

    before = engine.stats.summary()
    threads = [threading.Thread(target=story, args=(k,)) for k in range(args.conversations)]
    try:
        with packing(variant):
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
        after = engine.stats.summary()
    finally:
        engine.close()
    if failures:
        raise RuntimeError(f"{len(failures)} stories failed") from failures[0]
    n = str(args.conversations)
    full = after["decode_only_ms_per_step_by_sequences"].get(n, {})
    return {
        "tok_per_s": sum(produced) / wall,
        "tokens": sum(produced),
        "wall_s": wall,
        "turn_latency_ms_median": [round(statistics.median(x), 1) for x in latencies],
        "turn_first_token_ms_median": [round(statistics.median(x), 1) for x in firsts],
        "turn_cached_pct_median": [round(statistics.median(x), 1) for x in cached],
        **{k: after[k] - before[k] for k in COUNTERS},
        "full_steps_ms": {k: full.get(k) for k in ("steps", "decode", "sample", "other", "decode_call")},
        "all_steps_ms": after["ms_per_step"],
        "prompt_steps": after["prompt_steps"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(ap)
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--first-prompt", type=int, default=256, help="tokens of the first turn's prompt")
    ap.add_argument("--turn-tokens", type=int, default=200, help="new tokens every later turn adds")
    ap.add_argument("--gen", type=int, default=400, help="the longest answer, in tokens")
    ap.add_argument("--jitter", type=float, default=0.25, help="answers run from (1 - jitter) x gen to gen")
    ap.add_argument("--pause-ms", type=float, default=5.0, help="between an answer and the next turn")
    ap.add_argument(
        "--variants",
        default="engine-batched-plain,engine-batched,engine-batched-plain#2,engine-batched#2",
        help="comma-separated `engine_steps.configure` names; #<tag> repeats one",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = ap.parse_args(argv)
    need = args.first_prompt + args.turns * (args.turn_tokens + args.gen) + 8
    if need > args.n_ctx:
        ap.error(f"a story needs about {need} tokens of context; --n-ctx is {args.n_ctx}")
    set_switch_interval()
    model = load_model(args, args.conversations)
    results: dict[str, Any] = run_header(args) | {"variants": {}}
    try:
        for variant in args.variants.split(","):
            row = results["variants"][variant] = story_run(model, args, variant)
            lat = row["turn_latency_ms_median"]
            print(
                f"{results['model']} {args.conversations}x{args.turns} {variant}: "
                f"{row['tok_per_s']:.0f} tok/s, turn 1 / last {lat[0]:.0f} / {lat[-1]:.0f} ms, "
                f"steps {row['steps']}, micro-batches {row['micro_batches']}, graphs built "
                f"{row['graph_builds']}, held rows {row['held_rows']}, fillers {row['gap_fillers']}",
                file=sys.stderr,
            )
            keep_progress(results, args.out)
    finally:
        model.close()
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
