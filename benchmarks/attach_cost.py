"""What a request's first token waits for when its slot gets a new graph chain (issue 16).

With backend sampling a request's sampling chain is attached to its slot's sequence
(`llama_set_sampler`), and llama.cpp then re-plans its compute buffers at the next decode
(`sched_reserve`). A slot keeps its chain for the next request with the same settings, so the
cost falls on each slot's first request, and on every request whose settings differ from the
slot's last. `scheduler.READY_CHAINS` attaches the chain of a request that sets no sampling
field to every slot at start. This measures, in-process (no HTTP), the time to first token of:

- `fresh`: new conversations one after another, each into a slot not used before;
- `again`: new conversations into slots used before, with the same settings;
- `switching`: settings alternating between greedy and the defaults (a judge and a writer on
  one model), each into a used slot;

with `READY_CHAINS` off and on, alternating (`--repeats`). Each request: a short prompt of its
own, `--gen` tokens, the API's default settings (`sampling.request_defaults`).

    python -m benchmarks.attach_cost --model M.gguf --gpu --parallel 16 --out attach.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_steps import _clear, keep_progress, load_model, run_header, write_results
from server.engine import scheduler
from server.engine.model import BatchedModel
from server.engine.sampling import SamplingParams, chains_for, request_defaults
from server.engine.scheduler import Engine, Event, Generation

WORDS = [
    "Amber",
    "Bright",
    "Cold",
    "Dusty",
    "Early",
    "Frozen",
    "Golden",
    "Hidden",
    "Iron",
    "Jade",
    "Kind",
    "Lonely",
    "Misty",
    "Noble",
    "Old",
    "Pale",
]


def first_token_ms(engine: Engine, prompt: list[int], gen: int, params: SamplingParams) -> float:
    """One request through the engine; its time to first token in ms."""
    done = threading.Event()

    def sink(events: list[Event]) -> None:
        if any(kind in ("done", "error") for kind, _ in events):
            done.set()

    g = Generation.sampled_by(
        chains_for(engine.model, params), params, prompt=prompt, max_tokens=gen, sink=sink
    )
    engine.submit(g)
    if not done.wait(120):
        raise TimeoutError("a request did not finish within 120 s")
    assert g.t_first is not None and g.finish_reason is not None, g.finish_reason
    return (g.t_first - g.t_submit) * 1000.0


def run(model: BatchedModel, ready: bool, n: int, gen: int, tag: int) -> dict[str, Any]:
    """The three phases on a new engine (`ready`: `READY_CHAINS`)."""
    scheduler.READY_CHAINS = ready
    _clear(model)
    engine = Engine(model)
    defaults, greedy = request_defaults(), SamplingParams(temperature=0.0)

    def prompt(k: int) -> list[int]:  # a new conversation each time: it shares no slot's cache
        word = WORDS[k % len(WORDS)]
        return model.completion_prompt(f"{word} {k + 100 * tag} dragons woke up in the valley and sang")

    try:
        first_token_ms(engine, prompt(-1), gen, defaults)  # the first decodes of each shape
        fresh = [first_token_ms(engine, prompt(k), gen, defaults) for k in range(n - 1)]
        again = [first_token_ms(engine, prompt(n + k), gen, defaults) for k in range(n)]
        switching = [
            first_token_ms(engine, prompt(2 * n + k), gen, greedy if k % 2 else defaults) for k in range(n)
        ]
        stats = engine.stats.summary()
    finally:
        engine.close()  # detaches its chains: the next engine on this context starts bare
    out: dict[str, Any] = {"ready": ready}
    for name, values in (("fresh", fresh), ("again", again), ("switching", switching)):
        out[name] = {"median_ms": statistics.median(values), "max_ms": max(values), "ms": values}
    out["chains"] = {k: stats.get(k) for k in ("chains_attached", "chains_reused", "chains_ready")}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a GGUF file")
    ap.add_argument("--label", default="")
    ap.add_argument("--gpu", action="store_true", help="full offload and flash attention")
    ap.add_argument("--parallel", type=int, default=16, help="slots")
    ap.add_argument("--gen", type=int, default=8, help="tokens per request")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="each of READY_CHAINS off and on, alternating")
    ap.add_argument(
        "--backend-sampling", type=int, choices=(0, 1), default=None, help="force it (default: on a GPU)"
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    a = ap.parse_args(argv)
    a.n_batch, a.n_ubatch, a.kv_unified, a.sampling_threads, a.warm_up = 512, 512, False, None, None
    model = load_model(a, a.parallel)
    results: dict[str, Any] = run_header(a)
    runs: list[dict[str, Any]] = []
    try:
        for r in range(a.repeats):
            for ready in (False, True):
                start = time.perf_counter()
                runs.append(run(model, ready, a.parallel, a.gen, len(runs)) | {"repeat": r})
                row = runs[-1]
                print(
                    f"ready={ready}: first token, median ms: fresh {row['fresh']['median_ms']:.1f}, "
                    f"again {row['again']['median_ms']:.1f}, switching {row['switching']['median_ms']:.1f}; "
                    f"{row['chains']} ({time.perf_counter() - start:.1f} s)",
                    file=sys.stderr,
                )
                results["runs"] = runs
                keep_progress(results, a.out)
    finally:
        model.close()
    write_results(results, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
