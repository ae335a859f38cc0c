"""Long stories on this machine with the bundled model: how much of each turn's history our server
serves from its cache (issue 16, goal 3: at least 95% at every turn, on the CPU, real weights).

The synthetic GPU models' random answers do not re-tokenize to what was generated, so the GPU
runs cannot show this (BENCHMARKS.md); a real model's answers do. Same client and shape as
`multiturn_concurrency` (N conversations at once, full history every turn, answers streamed back
as text), our server only: the goal is ours alone, and native llama-server needs a build this
benchmark does not. End-of-generation tokens are banned with a logit bias so that every answer
has the full length and every story grows to its full depth.

    python -m benchmarks.story_cache --conversations 16 --turns 12 --answer 400 --turn-tokens 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_profile import lanes_of, snapshot
from benchmarks.harness import Setup
from benchmarks.multiturn_concurrency import play
from benchmarks.run import bundled_model, model_label
from benchmarks.servers import ModelSpec, eog_token_ids
from benchmarks.servers import ours as ours_server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=12)
    ap.add_argument("--answer", type=int, default=400, help="tokens per answer")
    ap.add_argument("--turn-tokens", type=int, default=200, help="new user tokens per turn (approx.)")
    ap.add_argument("--ctx", type=int, default=8192, help="context per conversation (slot)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lanes", type=int, default=None, help="our config's `lanes` (default: left out)")
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a GGUF file (default: the bundled model); a synthetic one (`benchmarks.gen_model --shape "
        "tiny`) writes random answers, which re-tokenize otherwise far more often than a real model's",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    a = ap.parse_args(argv)
    path = a.model or bundled_model()
    spec = ModelSpec(model_label(path), path, a.ctx, 0, False, a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        srv = ours_server(spec, Path(tmp), engine="batched", parallel=a.conversations, lanes=a.lanes).start()
        try:
            srv.wait_ready()
            ban = {str(t): -100.0 for t in eog_token_ids(path)}
            setup = Setup(
                label=spec.name, spec=spec, tools=None, ours=srv, native=None,  # type: ignore[arg-type]
                native_parallel=None, multiturn_max_tokens=a.answer, turn_tokens=a.turn_tokens,
                turns=a.turns, concurrency=[a.conversations], logit_bias=ban,
            )  # fmt: skip
            start = time.perf_counter()
            figures = asyncio.run(play(setup, "ours", a.conversations))
            wall = time.perf_counter() - start
            stats = asyncio.run(snapshot(srv)) or {}
        finally:
            srv.stop()
    lanes = lanes_of(stats)  # with lanes, each lane's stats

    def total(key: str) -> int | None:
        found = [lane.get(key) for lane in lanes if isinstance(lane, dict) and lane.get(key) is not None]
        return sum(found) if found else None

    shares = [figures[f"cache{t}"] for t in range(2, a.turns + 1) if f"cache{t}" in figures]
    out: dict[str, Any] = {
        "benchmark": "story_cache",
        "model": spec.name,
        "settings": vars(a) | {"out": str(a.out) if a.out else None, "model": str(path)},
        "wall_s": wall,
        "lowest_turn_share": min(shares) if shares else None,
        "figures": figures,
        # Prompts that kept their cache past a re-tokenized answer (server/engine/prefix.py).
        "prompts_respelled": total("prompts_respelled"),
        "tokens_respelled": total("tokens_respelled"),
        "warnings": setup.warnings,
    }
    text = json.dumps(out, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    for t in range(2, a.turns + 1):
        if f"cache{t}" in figures:
            print(
                f"turn {t}: history {figures[f'history{t}']:.0f} tokens, served from cache "
                f"{figures[f'cache{t}']:.1f}% (least-served conversation {figures[f'lowest{t}']:.1f}%)",
                file=sys.stderr,
            )
    print(
        f"prompts that kept their cache past a re-tokenized answer: {out['prompts_respelled']} "
        f"({out['tokens_respelled']} tokens)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
