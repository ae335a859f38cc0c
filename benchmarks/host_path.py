"""The host's part of a decode-only step, with no GPU needed (issue 16): what the engine does
between the end of one step's wait (`llama_synchronize`) and its next `llama_decode` call, the
time a GPU sits idle, split as the engine splits a step (`sample`: picking the step's tokens;
`other`: accepting them, events, admission and building the next batch), and the work that
overlaps the decode on a GPU (`OVERLAP`), in microseconds a step.

Why: on the 1B shape the GPU's decode is within a few percent of `llama-batched-bench`, and what
keeps the engine under 90% of it at 16 and 32 conversations is this host time (BENCHMARKS.md,
issue 16). `engine_steps` measures it only on a GPU, where every lent machine's host differs; on
the CPU its decode streams the weights through the caches and makes the host's work two to
three times slower than it is beside a GPU (session 11). Here a few real steps fill llama.cpp's
output buffers, then `llama_decode` is skipped: every later step samples the same rows again
(the last real step's candidates, fresh draws), so only the host's work is timed, with warm
caches, on any machine, and on a GPU machine's host in seconds.

What it is not: a model of the GPU (a step's own decode is not here), nor of end-of-generation
tokens (they are ignored, so every request runs its length, as random-weight models' do).

    python -m benchmarks.host_path --model MODEL.gguf [--levels 8,16,32,64] [--variants ...]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.engine_steps import (
    _clear,
    _Done,
    add_model_arguments,
    configure_sampling,
    generations,
    keep_progress,
    load_model,
    packing,
    run_header,
    split_timers,
    write_results,
)
from server.engine.app import set_switch_interval
from server.engine.model import BatchedModel
from server.engine.sampling import SamplingParams
from server.engine.scheduler import Engine, _Batch

VARIANTS = "engine-batched,engine-batched-numpy,engine-batched-chain"


class Decodes:
    """What `skippable_decodes` did: real decodes, then, once `skip` is set, skipped ones."""

    def __init__(self) -> None:
        self.skip = False
        self.real = 0
        self.skipped = 0


@contextlib.contextmanager
def skippable_decodes() -> Iterator[Decodes]:
    """`_Batch.decode` decodes until the yielded `Decodes.skip` is set, then returns at once,
    leaving llama.cpp's output buffers as the last real decode left them."""
    decode, seen = _Batch.decode, Decodes()

    def maybe(batch: _Batch, ctx: Any) -> int:
        if seen.skip:
            seen.skipped += 1
            return 0
        seen.real += 1
        return decode(batch, ctx)

    _Batch.decode = maybe  # type: ignore[method-assign,assignment]
    try:
        yield seen
    finally:
        _Batch.decode = decode  # type: ignore[method-assign]


def run(
    model: BatchedModel,
    n: int,
    args: argparse.Namespace,
    variant: str,
    params: SamplingParams,
    eog: list[int],
) -> dict[str, Any]:
    """`n` requests through an engine driven from this thread: their prompts and `args.warmup`
    real decode-only steps, then `args.steps` steps with the decode skipped, which are timed.
    The `eog` tokens do not end a request here."""
    _clear(model)
    engine = Engine(model, cond=threading.Condition())  # no thread of its own: this one drives it
    try:
        configure_sampling(engine, variant)
        engine._eog.update(dict.fromkeys(eog, False))  # every request runs its length
        done, length = _Done(n), args.warmup + args.steps + 1
        for gen in generations(model, n, args.prompt, length, variant, params, done.sink):
            engine.submit(gen)
        timers: contextlib.AbstractContextManager[Any] = (
            split_timers() if args.split else contextlib.nullcontext(None)
        )
        spent = None
        with packing(variant), skippable_decodes() as decodes:
            while engine.stats.decode_only.get(n, [0])[0] < args.warmup:  # prompts, then real steps
                step(engine)
            before, overlapped = list(engine.stats.decode_only[n]), engine.stats.overlapped_s
            decodes.skip = True
            with timers as spent:
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(engine)
                wall = time.perf_counter() - start
            after, overlapped = engine.stats.decode_only[n], engine.stats.overlapped_s - overlapped
    finally:
        engine.close()
    steps, decode, sample, busy = (a - b for a, b in zip(after[:4], before[:4], strict=True))
    us = 1e6 / max(steps, 1)
    result: dict[str, Any] = {
        "steps": steps,
        "real_decodes": decodes.real,
        "skipped_decodes": decodes.skipped,
        # What a GPU would wait for: the engine's own split of a decode-only step.
        "host_us_per_step": round((busy - decode) * us, 1),
        "sample_us_per_step": round(sample * us, 1),
        "other_us_per_step": round((busy - decode - sample) * us, 1),
        # What a GPU's decode hides (`OVERLAP`): the text of the tokens fed, the next tails' settings.
        "overlapped_us_per_step": round(overlapped * us, 1),
        "wall_us_per_step": round(wall * 1e6 / max(args.steps, 1), 1),
    }
    if spent is not None:
        result["split_us_per_step"] = {
            name: round(1e6 * spent[name] / max(steps, 1), 1) for name in spent if not name.endswith(" calls")
        }
    return result


def step(engine: Engine) -> None:
    launched = engine.launch_step()
    if launched is None:
        raise RuntimeError("the engine ran out of work before the measurement ended")
    engine.finish_step(launched)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(ap)
    ap.add_argument("--levels", default="8,16,32,64", help="numbers of sequences, comma-separated")
    ap.add_argument("--variants", default=VARIANTS, help="engine_steps.configure names; #<tag> repeats one")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    ap.add_argument("--warmup", type=int, default=4, help="real decode-only steps before the timed ones")
    ap.add_argument("--steps", type=int, default=300, help="timed steps, each with its decode skipped")
    ap.add_argument("--repeat-penalty", type=float, default=1.0, help="the requests' repetition penalty")
    ap.add_argument(
        "--split", action="store_true", help="also time the engine's parts (engine_steps --split)"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = ap.parse_args(argv)
    if args.backend_sampling is None:
        args.backend_sampling = 1  # the GPU's sampling path, also on the CPU
    levels = [int(x) for x in args.levels.split(",")]
    set_switch_interval()
    model = load_model(args, max(levels))
    params = SamplingParams(
        temperature=0.7, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=args.repeat_penalty
    )
    eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
    results: dict[str, Any] = run_header(args) | {"levels": {}}
    try:
        for n in levels:
            row = results["levels"].setdefault(str(n), {})
            for variant in args.variants.split(","):
                row[variant] = run(model, n, args, variant.split("#")[0], params, eog)
                r = row[variant]
                print(
                    f"{results['model']} x{n} {variant}: host {r['host_us_per_step']} µs a step "
                    f"(sample {r['sample_us_per_step']}, other {r['other_us_per_step']}; "
                    f"overlapped {r['overlapped_us_per_step']})",
                    file=sys.stderr,
                )
                keep_progress(results, args.out)
    finally:
        model.close()
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
