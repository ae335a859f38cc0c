"""What llama.cpp's own speed allows a long-story run over HTTP, from the run's own record
(issue 16, goal 3): the ceiling that a ratio against native llama-server can reach.

A story run (`multiturn_concurrency`: C conversations x T turns of A-token answers, every turn
the whole history) needs T x A decode steps of C rows, each at the depth its conversations have
reached, and evaluates every turn's prompt tokens that its cache does not hold. This takes:

- the depths and the prompt tokens from the run's own per-turn notes (each turn's history,
  previous prompt + answer, and the tokens ours served from cache, per conversation);
- the time of a decode step of C rows at a depth, interpolated linearly between measured
  depths: `benchmarks.prompt_cost`'s steady steps and/or `llama-batched-bench` rows with C
  sequences (a row's generation runs at depth PP + TG / 2). Both copy every row's logits out;
- the prompt speed: batched-bench's S_PP (its prompts of 512-token micro-batches).

and gives the run's tokens over (decode steps + prompt tokens / S_PP): the speed of llama.cpp's
own loop doing exactly the run's work with nothing else (no sampling, no HTTP, no gaps), and
the same with every step at the shallowest measured depth. Against the native server's tok/s
in the same record, that is the largest ratio any server on this llama.cpp could show.

    python -m benchmarks.story_bound --http http-llama-1b.json --prompt-cost prompt-cost-llama-1b.json \\
        --bench batched-bench-deep-llama-1b.txt
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.steps_report import batched_bench_table

_AGGREGATE = re.compile(r"aggregate generated tok/s \((\d+) turns of (\d+)-token answers\)")
_TURN = re.compile(r"turn (\d+) history served from cache")
_NOTE = re.compile(r"history ([\d,.]+) / [\d,.]+ tokens .*?cached ([\d,.]+) / [\d,.]+")


@dataclass
class Story:
    """One story run's shape, from its record: per conversation, each turn's prompt and the part
    of it the cache served."""

    conversations: int
    answer: int
    prompts: list[float]  # each turn's prompt tokens (the last extrapolated)
    cached: list[float]  # of those, served from cache (turn 1: none)
    ours: float  # tok/s
    native: float


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def read_story(path: Path) -> Story:
    """The story run in a `benchmarks.run --out-json` file (the first multiturn record set)."""
    records = json.loads(path.read_text(encoding="utf-8"))["records"]
    runs = [r for r in records if r["benchmark"] == "multiturn_concurrency"]
    head = next((r for r in runs if _AGGREGATE.fullmatch(r["metric"])), None)
    if head is None:
        raise ValueError(f"{path}: no multiturn_concurrency aggregate record")
    match = _AGGREGATE.fullmatch(head["metric"])
    assert match is not None
    turns, answer = int(match[1]), int(match[2])
    if turns < 2:
        raise ValueError(f"{path}: a run of {turns} turn has no history notes to take depths from")
    history: dict[int, tuple[float, float]] = {}
    for r in runs:
        turn, note = _TURN.fullmatch(r["metric"]), _NOTE.search(r.get("note", ""))
        if turn and note:
            history[int(turn[1])] = (_number(note[1]), _number(note[2]))
    if sorted(history) != list(range(2, turns + 1)):
        raise ValueError(f"{path}: turns 2-{turns} need their history notes, found {sorted(history)}")
    # Turn t's history is turn t-1's prompt and answer: so the prompts of turns 1..T-1.
    prompts = [history[t][0] - answer for t in range(2, turns + 1)]
    growth = prompts[-1] - prompts[-2] if len(prompts) > 1 else answer
    prompts.append(prompts[-1] + growth)
    cached = [0.0] + [history[t][1] for t in range(2, turns + 1)]
    return Story(head["concurrency"], answer, prompts, cached, head["ours"], head["reference"])


def decode_steps(
    prompt_cost: Path | None, benches: list[Path], conversations: int
) -> tuple[list[float], list[float]]:
    """(depths, ms a decode step of `conversations` rows), rising: `prompt_cost`'s steady steps
    (its slots must number `conversations`) and the batched-bench rows with that many sequences."""
    points: dict[float, float] = {}
    if prompt_cost is not None:
        cost = json.loads(prompt_cost.read_text(encoding="utf-8"))
        if cost["settings"]["slots"] != conversations:
            raise ValueError(f"{prompt_cost}: {cost['settings']['slots']} slots, the run had {conversations}")
        for depth, row in cost["depths"].items():
            points[float(depth)] = row["decode_step_ms"]
    for row in _rows(benches, conversations):
        points[row["PP"] + row["TG"] / 2] = 1000 * conversations / row["S_TG"]
    if len(points) < 2:
        have = sorted(points)
        raise ValueError(f"need decode steps of {conversations} rows at two depths or more, have {have}")
    depths = sorted(points)
    return depths, [points[d] for d in depths]


def _rows(benches: list[Path], conversations: int) -> list[dict[str, float]]:
    """The batched-bench rows with `conversations` sequences, every prompt length."""
    return [row for bench in benches for row in batched_bench_table(bench) if row["B"] == conversations]


def prompt_speed(benches: list[Path], conversations: int) -> float:
    """batched-bench's S_PP at its deepest prompt with `conversations` sequences."""
    rows = _rows(benches, conversations)
    if not rows:
        raise ValueError(f"no llama-batched-bench row with {conversations} sequences")
    return max(rows, key=lambda r: r["PP"])["S_PP"]


def bound(story: Story, depths: list[float], step_ms: list[float], s_pp: float) -> dict[str, Any]:
    """llama.cpp's own speed at the run's work: decode steps at the stories' depths (linear in
    depth, so a turn's A steps cost A steps at its middle depth), prompts at S_PP."""
    c, a = story.conversations, story.answer
    middles = np.array(story.prompts) + a / 2
    decode_s = float(np.interp(middles, depths, step_ms).sum()) * a / 1000
    shallow_s = step_ms[0] * a * len(story.prompts) / 1000
    prompt_tokens = c * sum(p - k for p, k in zip(story.prompts, story.cached, strict=True))
    prompt_s = prompt_tokens / s_pp
    tokens = c * a * len(story.prompts)
    at_depth, shallowest = tokens / (decode_s + prompt_s), tokens / (shallow_s + prompt_s)
    return {
        "tokens": tokens,
        "prompt_tokens": round(prompt_tokens),
        "decode_s": round(decode_s, 2),
        "prompt_s": round(prompt_s, 2),
        "bound_tok_per_s": round(at_depth),
        "bound_at_shallowest_tok_per_s": round(shallowest),
        "ours_tok_per_s": story.ours,
        "native_tok_per_s": story.native,
        "ours_share_of_bound": round(story.ours / at_depth, 3),
        "bound_over_native": round(at_depth / story.native, 2),
        "shallowest_over_native": round(shallowest / story.native, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--http", type=Path, required=True, help="the story run's benchmarks.run --out-json file")
    ap.add_argument("--prompt-cost", type=Path, default=None, help="benchmarks.prompt_cost output")
    ap.add_argument(
        "--bench", type=Path, action="append", default=[], help="llama-batched-bench output (repeatable)"
    )
    args = ap.parse_args(argv)
    try:
        story = read_story(args.http)
        depths, step_ms = decode_steps(args.prompt_cost, args.bench, story.conversations)
        result = bound(story, depths, step_ms, prompt_speed(args.bench, story.conversations))
    except (OSError, ValueError, KeyError) as exc:
        print(f"story_bound: {exc}", file=sys.stderr)
        return 2
    result["decode_steps"] = {f"{d:.0f}": round(ms, 3) for d, ms in zip(depths, step_ms, strict=True)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
