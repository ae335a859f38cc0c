"""Where a step's time goes, without HTTP: our engine in this process against the same context
decoding with no sampling at all, at several numbers of sequences (issue 16).

The HTTP benchmarks (`concurrency`) compare whole servers; `llama-batched-bench` gives llama.cpp's
own ceiling (N sequences decoded together, no sampling, no server). Between the two sit the
costs that only an in-process run can separate, so this benchmark measures each level as

1. `raw`: `llama_decode` + `llama_synchronize` on our own context (our `n_ctx` per slot, our KV
   layout), one token per sequence per step, every row output, nothing sampled: what our
   context costs against batched-bench's; `raw-spread` the same on every other sequence (idle
   slots between running conversations), `raw-spread-filled` with a throwaway token in each
   idle one between (the engine's `FILL_GAPS_UP_TO`); `raw-lanesN` the same sequences over N
   contexts on the same weights, driven in turn from one thread (`-threads`: a thread each),
   and `raw-host` /
   `raw-lanesN-host` with simulated host work after each step (`raw_lanes`): whether the host
   time a step costs can hide behind another context's decode;
2. `engine-host`: the real `Engine` (scheduler thread, batch building, text, events) sampling
   as it does by default: every row of logits back, top-k over all rows at once with numpy,
   llama.cpp's chain on the 40 survivors (`server/engine/host_sampling.py`);
3. `engine-graph`: the same engine with backend sampling and llama.cpp's own top-k in the decode
   graph (a sort per sequence), the rest on the CPU;
4. `engine-batched`: backend sampling with the engine's own graph top-k, one pass over all the
   step's rows (`server/engine/graph_top_k.py`), and the rest of the chain over all the rows
   at once with numpy (`server/engine/host_tail.py`): the GPU default; `engine-batched-serial`
   the same with each step's text worked out before the next decode, not during it
   (`scheduler.OVERLAP`); `engine-batched-fifo` / `-even` with the step's prompt tokens shared
   in arrival order / in equal chunks (`scheduler.PROMPT_CHUNKS`), and the other switches
   of `configure`; `engine-batched-chain`
   finishes each row with llama.cpp's chain instead; `engine-sampled` finishes every row in the
   decode graph too (`server/engine/graph_tail.py`, `"graph_tail": true`): one token per row
   comes back;
5. `engine-llama`: the same engine with llama.cpp's whole chain on the CPU for every row;

any engine variant with `-lanesN` in its name runs its sequences over N lanes (contexts of their
own on the same weights, stepped in turn by one thread, `-threads`: a thread each;
`server/engine/lanes.py`);

each with the engine's own per-step profile (decode / sampling / other). `raw` also times
`llama_decode`'s return apart from the synchronize: how much of a step the CPU could overlap.

Runs on the GPU machine (`benchmarks/device_steps.sh`) and on the CPU with the bundled model
(`python -m benchmarks.engine_steps --levels 1,4 --gen 32`). Writes one JSON document.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp

from server.config import load_config
from server.engine import graph_tail, graph_top_k, scheduler
from server.engine.app import set_switch_interval
from server.engine.lanes import Lanes
from server.engine.model import BatchedModel
from server.engine.sampling import SamplingParams, build_chains
from server.engine.scheduler import Engine, Event, Generation, _Batch


def configure(engine: Engine, variant: str) -> None:
    """The engine switches a variant's name asks for, over the engine's defaults: `-serial` (a
    step's text worked out before the next decode, `scheduler.OVERLAP` off), `-fifo` / `-even`
    (how prompts share a step), `-hold` / `-nohold` (held rows, `HOLD_STEPS`), `-separate` /
    `-mixed` (prompt steps of their own, `SEPARATE_PROMPTS`), `-plain` (session 9's engine:
    fifo, no held rows, mixed steps), `-pool` / `-nopool` (rows finished by their llama.cpp
    chain on the sampling threads from 8 rows, `POOL_CHAIN_MIN_ROWS`, or one after another), `-numpy` /
    `-chain` (every generation's tail over all rows in numpy, or row by row with its chain,
    whatever the number of rows: `HOST_TAIL_MIN_ROWS` 0 or unbounded), `-burst<N>` (up to N
    prompt steps in a row while rows generate, `PROMPT_BURST`). `-packed` / `-unpacked` are
    module-wide: `packing`, around the run."""
    parts = set(variant.split("#")[0].split("-"))
    for part in parts:
        if part.startswith("burst") and part[5:].isdigit():
            engine.prompt_burst = int(part[5:])
    engine.overlap = "serial" not in parts
    if "plain" in parts:
        engine.prompt_chunks, engine.hold_steps, engine.separate_prompts = "fifo", 0, False
    for mode in ("fifo", "even"):
        if mode in parts:
            engine.prompt_chunks = mode
    if "hold" in parts or "nohold" in parts:
        engine.hold_steps = scheduler.HOLD_STEPS if "hold" in parts else 0
    if "separate" in parts or "mixed" in parts:
        engine.separate_prompts = "separate" in parts
    if "pool" in parts or "nopool" in parts:
        engine.pool_chain_min_rows = 8 if "pool" in parts else None
    if "numpy" in parts or "chain" in parts:
        engine.host_tail_min_rows = 0 if "numpy" in parts else 1 << 30


@contextlib.contextmanager
def packing(variant: str) -> Iterator[None]:
    """`-packed` / `-unpacked`: `graph_tail`'s tokens written into one array of ours, or copied
    back one per row by llama.cpp (`graph_tail.PACKED`, which is module-wide), for one run only,
    so that both alternate in one process."""
    parts = set(variant.split("#")[0].split("-"))
    saved = graph_tail.PACKED
    if parts & {"packed", "unpacked"}:
        graph_tail.PACKED = "packed" in parts
    try:
        yield
    finally:
        graph_tail.PACKED = saved


def whole_chain_in_graph(variant: str) -> bool:
    """Whether a variant samples with the whole chain in the decode graph (`graph_tail`): the
    `engine-sampled` names, here and in `engine_turns`."""
    return variant.startswith("engine-sampled")


def _prompt(model: BatchedModel, n: int, seed: int) -> list[int]:
    """`n` token ids drawn from the ordinary vocabulary (no control tokens), one per seed."""
    rng = random.Random(seed)
    first = min(1000, model.n_vocab // 4)
    return [rng.randrange(first, model.n_vocab - 1) for _ in range(n)]


def _clear(model: BatchedModel) -> None:
    llama_cpp.llama_memory_clear(model.memory, True)


def _prefill(model: BatchedModel, ctx: Any, batch: _Batch, seqs: list[tuple[int, int]], prompt: int) -> None:
    """`prompt` tokens into each (sequence, seed) of `seqs`, one sequence per decode: prefill is
    not what the raw variants measure."""
    for seq, seed in seqs:
        tokens = _prompt(model, prompt, seed=seed)
        for at in range(0, len(tokens), model.n_batch):
            batch.clear()
            chunk = tokens[at : at + model.n_batch]
            batch.add_run(chunk, at, seq, output_last=at + len(chunk) == len(tokens))
            if batch.decode(ctx) != 0:
                raise RuntimeError("prefill failed")
    llama_cpp.llama_synchronize(ctx)


def raw_decode(
    model: BatchedModel, n: int, prompt: int, gen: int, spread: bool = False, fill: bool = False
) -> dict[str, float]:
    """Prefill `n` prompts, then `gen` steps of one token per sequence, every row an output, no
    sampling. Times the whole step (decode + synchronize) and llama_decode's own return. With
    `spread` the sequences are every other one (0, 2, 4, ...), as slots left idle between
    running conversations leave them; with `fill` too, each idle one between gets a throwaway
    token per step, removed after it (the engine's `FILL_GAPS_UP_TO`)."""
    _clear(model)
    batch = _Batch(model.n_batch)
    seqs = [2 * k if spread else k for k in range(n)]
    gaps = [s + 1 for s in seqs[:-1]] if spread and fill else []
    _prefill(model, model.ctx, batch, [(seq, seq) for seq in seqs], prompt)
    token = _prompt(model, 1, seed=9999)[0]
    launch = 0.0
    start = time.perf_counter()
    for step in range(gen):
        batch.clear()
        for seq in sorted(seqs + gaps):
            if seq in gaps:
                batch.add_run([token], 0, seq, output_last=False)
            else:
                batch.add(token, prompt + step, seq)
        t0 = time.perf_counter()
        if batch.decode(model.ctx) != 0:
            raise RuntimeError(f"decode failed at step {step}")
        launch += time.perf_counter() - t0
        llama_cpp.llama_synchronize(model.ctx)
        for seq in gaps:
            llama_cpp.llama_memory_seq_rm(model.memory, seq, 0, -1)
    wall = time.perf_counter() - start
    return {
        "tok_per_s": n * gen / wall,
        "ms_per_step": 1000 * wall / gen,
        "decode_call_ms_per_step": 1000 * launch / gen,
    }


def _spin(seconds: float) -> None:
    """Hold the CPU (and the GIL) for `seconds`: the host's work on a step, simulated."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def raw_lanes(
    model: BatchedModel,
    n: int,
    prompt: int,
    gen: int,
    lanes: int,
    host_us_per_row: float,
    threads: bool = False,
) -> dict[str, float]:
    """`raw_decode` over `lanes` contexts on the same weights (`BatchedModel.lane`), n /
    lanes sequences each, from one thread: each lane's step is launched, then the next lane's
    previous step is waited for, given `host_us_per_row` µs a row of simulated host work
    (sampling and Python), and launched again. With one lane the GPU waits for the host work;
    with two or more it decodes one lane's step while the host works on another's. With
    `threads` each lane runs on a thread of its own (the simulated work holds the GIL, as an
    engine's Python would). Every row is an output, as in `raw_decode` and batched-bench."""
    if n % lanes:
        raise ValueError(f"{n} sequences do not split into {lanes} lanes")
    per = n // lanes
    contexts = [model.lane(per) for _ in range(lanes)]
    try:
        batches = [_Batch(model.n_batch) for _ in range(lanes)]
        for lane, context in enumerate(contexts):
            seeded = [(seq, lane * per + seq) for seq in range(per)]
            _prefill(model, context.ctx, batches[lane], seeded, prompt)
        token = _prompt(model, 1, seed=9999)[0]
        host = host_us_per_row * per / 1e6

        def step(lane: int, at: int) -> None:
            """Wait for the lane's last step, work on it, launch the next."""
            ctx = contexts[lane].ctx
            if at:
                llama_cpp.llama_synchronize(ctx)
                _spin(host)
            batch = batches[lane]
            batch.clear()
            for seq in range(per):
                batch.add(token, prompt + at, seq)
            if batch.decode(ctx) != 0:
                raise RuntimeError(f"decode failed at step {at}")

        def finish(lane: int) -> None:
            llama_cpp.llama_synchronize(contexts[lane].ctx)
            _spin(host)

        start = time.perf_counter()
        if threads:  # each lane its own thread, as engines of their own would be

            def run(lane: int) -> None:
                for at in range(gen):
                    step(lane, at)
                finish(lane)

            workers = [threading.Thread(target=run, args=(lane,)) for lane in range(lanes)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        else:
            for at in range(gen):
                for lane in range(lanes):
                    step(lane, at)
            for lane in range(lanes):
                finish(lane)
        wall = time.perf_counter() - start
    finally:
        for context in contexts:
            context.close()
    return {
        "tok_per_s": n * gen / wall,
        "ms_per_step": 1000 * wall / gen,
        "lanes": lanes,
        "threads": threads,
        "host_us_per_row": host_us_per_row,
    }


# The engine's parts that `--split` times: its methods, and the sampling tail's two functions as
# the scheduler module calls them.
SPLIT_METHODS = ("_admit", "_stage", "_overlapped", "_sample", "_finish_tails", "_accept", "_publish")
SPLIT_FUNCTIONS = ("read_rows", "prepare", "finish_prepared")


@contextlib.contextmanager
def split_timers() -> Iterator[collections.Counter[str]]:
    """Time the engine's parts (`SPLIT_METHODS`, `SPLIT_FUNCTIONS`) for as long as it is open:
    yields a Counter of seconds and calls by name. Each wrapped call adds about a microsecond,
    so the figures are a diagnostic of where a step's host time goes, not the step's cost."""
    spent: collections.Counter[str] = collections.Counter()  # seconds (floats) and calls

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0  # type: ignore[assignment]
                spent[name + " calls"] += 1

        return wrapper

    saved: list[tuple[Any, str, Any]] = [(Engine, n, getattr(Engine, n)) for n in SPLIT_METHODS]
    saved += [(scheduler, n, getattr(scheduler, n)) for n in SPLIT_FUNCTIONS]
    try:
        for owner, name, fn in saved:
            setattr(owner, name, timed(name, fn))
        yield spent
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


class _Done:
    def __init__(self, n: int) -> None:
        self.left = n
        self.errors: list[str] = []
        self.tokens = 0
        self.lock = threading.Lock()
        self.event = threading.Event()

    def sink(self, events: list[Event]) -> None:
        with self.lock:
            for kind, value in events:
                if kind == "error":
                    self.errors.append(str(value))
                if kind in ("done", "error"):
                    self.left -= 1
            if self.left == 0:
                self.event.set()


def configure_sampling(engine: Engine, variant: str) -> None:
    """The variant's switches (`configure`), and backend sampling on for the variants whose
    chains run in the decode graph, whatever the config's default."""
    engine._backend_sampling = _chains_of(variant)[0]
    configure(engine, variant)


def _chains_of(variant: str) -> tuple[bool, bool, bool, bool, bool]:
    """`build_chains`' switches for a variant: (in the graph, on the host, batched top-k, the
    host's tail over all rows, the whole chain in the graph)."""
    whole = whole_chain_in_graph(variant)
    batched = variant.startswith("engine-batched") or whole
    graph, host = batched or variant == "engine-graph", variant == "engine-host"
    return graph, host, batched, variant != "engine-batched-chain", whole


def generations(
    model: BatchedModel, n: int, prompt: int, gen: int, variant: str, params: SamplingParams, sink: Any
) -> list[Generation]:
    """`n` requests of `gen` tokens after `prompt` tokens each, with the variant's chains and a
    seed of their own, not yet submitted."""
    switches = _chains_of(variant)
    made = []
    for k in range(n):
        p = SamplingParams(**{**params.__dict__, "seed": 1234 + k})
        made.append(
            Generation.sampled_by(
                build_chains(model.model, p, *switches), p,
                prompt=_prompt(model, prompt, seed=k), max_tokens=gen, sink=sink,
            )
        )  # fmt: skip
    return made


def engine_run(
    model: BatchedModel,
    n: int,
    prompt: int,
    gen: int,
    variant: str,
    params: SamplingParams,
    split: bool = False,
) -> dict[str, Any]:
    """`n` generations of `gen` tokens through the real engine, submitted together; with
    `split`, the host time of the engine's parts too (`split_timers`), in ms per step. A
    variant's name may end in `#<anything>`: the same variant again, as a repeat."""
    variant = variant.split("#")[0]
    _clear(model)
    n_lanes = next((int(p[5:]) for p in variant.split("-") if p.startswith("lanes") and p[5:].isdigit()), 1)
    runner: Engine | Lanes
    if n_lanes > 1:  # contexts of their own; the model's stays idle
        threads = "threads" in variant.split("-")  # a thread per lane, not one for all
        runner = Lanes([model.lane(n // n_lanes) for _ in range(n_lanes)], one_thread=not threads)
        engines = runner.engines
    else:
        runner = Engine(model)
        engines = [runner]
    engine = engines[0]  # the per-step profile: the first lane's
    try:
        for each in engines:
            configure_sampling(each, variant)
        done = _Done(n)
        gens = generations(model, n, prompt, gen, variant, params, done.sink)
        before, top_k = engine.stats.summary(), graph_top_k.counts()
        tail_built = graph_tail.counts()
        timers: contextlib.AbstractContextManager[collections.Counter[str]] = (
            split_timers() if split else contextlib.nullcontext(collections.Counter())
        )
        with timers as spent, packing(variant):
            start = time.perf_counter()
            for g in gens:
                runner.submit(g)
            if not done.event.wait(600):
                raise TimeoutError("the engine did not finish")
            wall = time.perf_counter() - start
        after = engine.stats.summary()
        lane_steps = [e.stats.steps for e in engines]
    finally:
        runner.close()
        if isinstance(runner, Lanes):
            runner.close_models()
    if done.errors:
        raise RuntimeError(f"generation errors: {done.errors[:3]}")
    produced = sum(g.predicted_n for g in gens)
    row = after["decode_only_ms_per_step_by_sequences"].get(str(n // n_lanes), {})
    return {
        "tok_per_s": produced / wall,
        "tokens": produced,
        "lanes": n_lanes,
        "lane_steps": lane_steps,  # with lanes, the profile below is the first lane's
        "wall_s": wall,
        "ttft_ms_median": sorted(1000 * ((g.t_first or 0) - g.t_submit) for g in gens)[n // 2],
        "decode_only_step_ms": {k: row.get(k) for k in ("steps", "decode", "sample", "other", "decode_call")},
        "all_steps_ms": after["ms_per_step"],
        "decode_call_ms_per_step": after["decode_call_ms_per_step"],  # a new engine: its own steps only
        "overlapped_ms_per_step": after["overlapped_ms_per_step"],
        # Steps with prompt tokens: how many, their prompt tokens, ms per step (this run's only:
        # the engine is new for every run).
        "prompt_steps": after["prompt_steps"],
        "micro_batches": after["micro_batches"],  # passes over the weights (`micro_batches`)
        "graph_builds": after["graph_builds"],  # of those, graphs llama.cpp built afresh
        "steps": after["steps"] - before["steps"],
        "backend_sampled": after["backend_sampled"],
        "tail_rows": after["tail_rows"],
        "pooled_rows": after["pooled_rows"] - before["pooled_rows"],
        # Graph builds with the batched top-k: llama.cpp reuses a graph while a step's shape
        # and samplers stay the same, so far fewer than steps means the Python callbacks that
        # build it are not a per-step cost.
        "top_k_graph_builds": graph_top_k.counts()["matrices"] - top_k["matrices"],
        # ...and the ms per step spent in its Python callbacks while llama.cpp builds a graph.
        "top_k_build_ms_per_step": round(
            (graph_top_k.counts()["build_us"] - top_k["build_us"])
            / 1000
            / max(after["steps"] - before["steps"], 1),
            4,
        ),
        # engine-sampled: rows picked in the graph, rows it left to the CPU, and its graph builds.
        "graph_tail_rows": after["graph_tail_rows"] - before["graph_tail_rows"],
        "graph_tail_cpu_rows": after["graph_tail_cpu_rows"] - before["graph_tail_cpu_rows"],
        "graph_tail_builds": {k: v - tail_built[k] for k, v in graph_tail.counts().items()},
        # --split: host ms per step (all steps) in each timed part, and its calls.
        "split_ms_per_step": {
            name: round(1000 * spent[name] / max(after["steps"] - before["steps"], 1), 4)
            for name in (*SPLIT_METHODS, *SPLIT_FUNCTIONS)
            if spent[name + " calls"]
        },
    }


def write_config(path: Path, gguf: Path, args: argparse.Namespace, n_parallel: int) -> Path:
    entry = {
        "name": "bench",
        "gguf": str(gguf.resolve()),
        "engine": "batched",
        "n_parallel": n_parallel,
        "n_ctx": args.n_ctx,
        "n_batch": max(args.n_batch, n_parallel),
        "n_ubatch": args.n_ubatch,
        "n_gpu_layers": -1 if args.gpu else 0,
        "flash_attn": args.gpu,
        "n_threads": args.threads,
        "n_threads_batch": args.threads,
        "kv_unified": args.kv_unified,
    }
    # The engine's own choices unless asked: backend sampling on a GPU, sampling threads by cores.
    if args.backend_sampling is not None:
        entry["backend_sampling"] = bool(args.backend_sampling)
    if args.sampling_threads is not None:
        entry["n_threads_sampling"] = args.sampling_threads
    if args.warm_up is not None:
        entry["warm_up"] = bool(args.warm_up)
    path.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
    return path


def load_model(args: argparse.Namespace, n_parallel: int) -> BatchedModel:
    """`args.model` in this process, as the server loads a config entry with these settings
    (`write_config`): the benchmarks measure the engine the server runs."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp) / "c.json", args.model, args, n_parallel))
        return BatchedModel(config.models[0])


def run_header(args: argparse.Namespace) -> dict[str, Any]:
    """The start of a benchmark's JSON document: the model's name and the run's settings."""
    return {
        "model": args.label or args.model.name,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def write_results(results: dict[str, Any], out: Path | None) -> None:
    """One JSON document, to `out` or to stdout."""
    text = json.dumps(results, indent=1)
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        print(text)


def keep_progress(results: dict[str, Any], out: Path | None) -> None:
    """After each measured item: the results so far into `out`, so that a device call's
    deadline keeps what finished; without a file nothing (stdout gets the whole document once,
    at the end, from `write_results`)."""
    if out:
        write_results(results, out)


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The model and context options `write_config` reads (shared with `engine_turns`)."""
    ap.add_argument("--model", type=Path, required=True, help="a GGUF file")
    ap.add_argument("--label", default="", help="the model's name in the results")
    ap.add_argument("--n-ctx", type=int, default=8192, help="context per slot")
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--n-ubatch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--gpu", action="store_true", help="full offload and flash attention")
    ap.add_argument("--kv-unified", action="store_true", help="one KV pool for all slots")
    ap.add_argument(
        "--backend-sampling", type=int, choices=(0, 1), default=None, help="1: graph samplers on the CPU too"
    )
    ap.add_argument("--sampling-threads", type=int, default=None, help="n_threads_sampling (default: auto)")
    ap.add_argument(
        "--warm-up",
        type=int,
        choices=(0, 1),
        default=None,
        help="the entry's warm_up: 0 off, 1 on (default: the server's, on with --gpu)",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(ap)
    ap.add_argument("--levels", default="1,16,32,64", help="numbers of sequences, comma-separated")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence (batched-bench -npp)")
    ap.add_argument("--gen", type=int, default=256, help="generated tokens per sequence (batched-bench -ntg)")
    ap.add_argument(
        "--variants",
        default="raw,engine-batched,engine-sampled,engine-graph,engine-host,engine-llama",
        help="comma-separated; a name ending in #<tag> (engine-batched#2) runs that variant again",
    )
    ap.add_argument("--top-k-block", type=int, default=None, help="graph_top_k.BLOCK (values per block sort)")
    ap.add_argument("--top-k-preselect", type=int, default=None, help="graph_top_k.PRESELECT (0: off)")
    ap.add_argument(
        "--host-tail-min-rows",
        type=int,
        default=None,
        help="scheduler.HOST_TAIL_MIN_ROWS: fewer generations than this finish row by row with llama.cpp's "
        "chain (0: always over all rows with numpy)",
    )
    ap.add_argument(
        "--graph-tail-packed",
        type=int,
        choices=[0, 1],
        default=None,
        help="graph_tail.PACKED for engine-sampled: 1 the tokens in one array, 0 one per row",
    )
    ap.add_argument("--eog-bias", action="store_true", help="ban end-of-generation tokens (real weights)")
    ap.add_argument(
        "--repeat-penalty",
        type=float,
        default=1.0,
        help="the requests' repetition penalty (llama-cpp-python's server defaults to 1.1): llama.cpp's "
        "penalties over the whole row with engine-graph, after a batched top-k of k + 64 on the CPU "
        "with engine-batched, in the graph with engine-sampled",
    )
    ap.add_argument(
        "--split",
        action="store_true",
        help="also time the engine's host parts (admission, staging, sampling, the sampling tail, "
        "accepting tokens, events) in ms per step; the timers add about a microsecond a call",
    )
    ap.add_argument(
        "--host-us-per-row",
        type=float,
        default=25.0,
        help="`raw-host` / `raw-lanesN-host`: simulated host work a step, µs per row (the engine's sampling "
        "and Python took 23-26 µs a row at 16 rows on the 1B shape, H100, session 12)",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    set_switch_interval()  # as the server does: the engine thread gets the GIL back quickly
    variants = args.variants.split(",")
    if args.top_k_block:
        graph_top_k.BLOCK = args.top_k_block
    if args.top_k_preselect is not None:
        graph_top_k.PRESELECT = args.top_k_preselect
    if args.host_tail_min_rows is not None:
        scheduler.HOST_TAIL_MIN_ROWS = args.host_tail_min_rows
    if args.graph_tail_packed is not None:
        graph_tail.PACKED = bool(args.graph_tail_packed)
    slots = max(levels) * (2 if any("spread" in v for v in variants) else 1)
    t0 = time.perf_counter()
    model = load_model(args, slots)
    load_s = time.perf_counter() - t0
    params = SamplingParams(
        temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=args.repeat_penalty
    )
    if args.eog_bias:
        params.logit_bias = {t: -100.0 for t in range(model.n_vocab) if model.is_eog(t)}
    results: dict[str, Any] = run_header(args) | {"load_s": load_s, "levels": {}}
    try:
        for n in levels:
            row: dict[str, Any] = results["levels"].setdefault(str(n), {})
            for variant in variants:
                base = variant.split("#")[0]
                if base.startswith("raw-lanes") or base == "raw-host":
                    parts = base.split("-")
                    lanes = next((int(p[5:]) for p in parts if p.startswith("lanes")), 1)
                    host = args.host_us_per_row if "host" in parts else 0.0
                    threads = "threads" in parts
                    row[variant] = raw_lanes(model, n, args.prompt, args.gen, lanes, host, threads)
                elif base in ("raw", "raw-spread", "raw-spread-filled"):
                    spread, fill = "spread" in variant, "filled" in variant
                    row[variant] = raw_decode(model, n, args.prompt, args.gen, spread, fill)
                else:
                    row[variant] = engine_run(model, n, args.prompt, args.gen, variant, params, args.split)
                rate, split = row[variant]["tok_per_s"], row[variant].get("decode_only_step_ms", "")
                print(f"{results['model']} x{n} {variant}: {rate:.0f} tok/s {split}", file=sys.stderr)
                if "graph_builds" in row[variant]:
                    r = row[variant]
                    print(
                        f"  steps {r['steps']}, micro-batches {r['micro_batches']}, graphs built "
                        f"{r['graph_builds']}, top-k callbacks {r['top_k_build_ms_per_step']} ms/step",
                        file=sys.stderr,
                    )
                if "prompt_steps" in row[variant]:
                    print(f"  steps with prompt tokens: {row[variant]['prompt_steps']}", file=sys.stderr)
                if row[variant].get("split_ms_per_step"):
                    print(f"  host ms per step: {row[variant]['split_ms_per_step']}", file=sys.stderr)
                keep_progress(results, args.out)
    finally:
        model.close()
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
