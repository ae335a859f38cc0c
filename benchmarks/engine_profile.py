"""Our batched engine's per-step profile (decode / sampling / other ms), read around a benchmark run.

Issue 6 asks that sampling and Python work stay under 15% of a step at 16 sequences. Neither the
client nor native llama-server can see that split: only the engine times each step (llama_decode,
the samplers, the Python around them). It keeps cumulative counters since the server started
(`loaded_model_settings.stats` of GET /storybench/models), so one run's share is the difference of
two snapshots taken around it. The llama-cpp-python engine has no such counters, and an older
server may lack some keys: then nothing is recorded, silently.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from benchmarks.common import Record, make_record
from benchmarks.servers import ServerProcess

T = TypeVar("T")
Stats = dict[str, Any]
_PARTS = ("decode", "sample", "other")
OURS_ONLY = "none: ours only"  # reference_name of records without a native counterpart
# The engine's cumulative counters (`EngineStats.summary`) a run's note carries.
COUNTERS = ("steps", "micro_batches", "graph_builds", "gap_fillers", "held_rows")


@dataclass(frozen=True)
class StepSplit:
    """Mean milliseconds per decode-only step (no prompt tokens in the batch) over `steps` steps."""

    steps: int
    decode_ms: float
    sample_ms: float
    other_ms: float

    @property
    def share(self) -> float:
        """Sampling + other (Python) as a percentage of the whole step."""
        total = self.decode_ms + self.sample_ms + self.other_ms
        return 100.0 * (self.sample_ms + self.other_ms) / total if total > 0 else float("nan")


PROMPT = "prompt"  # `step_split`'s name for the steps with prompt tokens


def _row(stats: Stats, n: int | str | None) -> dict[str, Any] | None:
    """{steps, decode, sample, other}: of the decode-only steps with `n` sequences, of the steps
    with prompt tokens (`PROMPT`), or of all steps (None)."""
    if n is None:
        means = stats.get("ms_per_step")
        return {"steps": stats.get("steps"), **means} if isinstance(means, dict) else None
    if n == PROMPT:
        prompt = stats.get("prompt_steps")
        return prompt if isinstance(prompt, dict) else None
    rows = stats.get("decode_only_ms_per_step_by_sequences")
    row = rows.get(str(n)) if isinstance(rows, dict) else None
    return row if isinstance(row, dict) else None


def step_split(before: Stats | None, after: Stats | None, n: int | str | None) -> StepSplit | None:
    """The decode-only steps with exactly `n` generating sequences (None: all steps; `PROMPT`: the
    steps with prompt tokens) taken between two snapshots. The server reports means per step;
    means times step counts give totals, whose difference is the run's. None when either
    snapshot or the row is missing, or no such step."""
    if before is None or after is None:
        return None
    a = _row(after, n)
    if a is None:
        return None
    b = _row(before, n) or {"steps": 0, **dict.fromkeys(_PARTS, 0.0)}
    try:
        steps = int(a["steps"]) - int(b["steps"])
        totals = {k: float(a[k]) * int(a["steps"]) - float(b[k]) * int(b["steps"]) for k in _PARTS}
    except (KeyError, TypeError, ValueError):
        return None
    if steps <= 0:
        return None
    return StepSplit(steps, totals["decode"] / steps, totals["sample"] / steps, totals["other"] / steps)


def lanes_of(stats: Stats | None) -> list[Stats | None]:
    """Each lane's stats: a server with `"lanes"` reports `{"lanes": [...]}`, one engine's each;
    otherwise the one engine's."""
    lanes = (stats or {}).get("lanes")
    if isinstance(lanes, list) and lanes:
        return [lane if isinstance(lane, dict) else None for lane in lanes]
    return [stats]


def counter_delta(before: Stats | None, after: Stats | None, key: str) -> int | None:
    """How much a cumulative counter (e.g. `tokens_generated`) grew between two snapshots."""
    if before is None or after is None:
        return None
    try:
        return int(after[key]) - int(before.get(key) or 0)
    except (KeyError, TypeError, ValueError):
        return None


async def snapshot(server: ServerProcess) -> Stats | None:
    """The engine's cumulative stats, or None (no batched engine, or the server did not answer)."""
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.get(f"{server.root_url}/storybench/models")
            stats = response.json().get("loaded_model_settings", {}).get("stats")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return stats if isinstance(stats, dict) else None


@dataclass
class Profiler:
    """One StepSplit per run of ours at `n` sequences, and records from them. With lanes
    (`"lanes"` in ours' config) the split is the first lane's, at its share of the `n`
    sequences (its steps are the period in which every lane steps once); the counters are
    summed over the lanes."""

    server: ServerProcess
    n: int
    splits: list[StepSplit] = field(default_factory=list)
    every: list[StepSplit] = field(default_factory=list)  # all steps, prompt chunks included
    prompts: list[StepSplit] = field(default_factory=list)  # the steps with prompt tokens
    generated: int = 0
    backend_sampled: int | None = None
    # Engine counters over the runs: steps, passes over the weights, graphs built afresh,
    # throwaway gap tokens, steps with prompt tokens (`EngineStats`); absent from older servers.
    counters: dict[str, int] = field(default_factory=dict)
    lanes: int = 1

    async def measure(self, run: Awaitable[T]) -> T:
        before = await snapshot(self.server)
        result = await run
        after = await snapshot(self.server)
        lanes = list(zip(lanes_of(before), lanes_of(after), strict=False))
        self.lanes = len(lanes)
        first_before, first_after = lanes[0]
        split = step_split(first_before, first_after, self.n // self.lanes)
        if split is None:
            return result
        self.splits.append(split)
        every = step_split(first_before, first_after, None)
        prompts = step_split(first_before, first_after, PROMPT)
        if every is not None:
            self.every.append(every)
            # A run with no prompt step still has a row, so that runs line up with `every`.
            self.prompts.append(prompts or StepSplit(0, 0.0, 0.0, 0.0))
        for b, a in lanes:
            self.generated += counter_delta(b, a, "tokens_generated") or 0
            for key in COUNTERS:
                self._add(key, counter_delta(b, a, key))
            self._add(
                "prompt steps",
                counter_delta((b or {}).get("prompt_steps"), (a or {}).get("prompt_steps"), "steps"),
            )
            picked = counter_delta(b, a, "backend_sampled")
            if picked is not None:
                self.backend_sampled = (self.backend_sampled or 0) + picked
        return result

    def _add(self, key: str, grew: int | None) -> None:
        if grew is not None:
            self.counters[key] = self.counters.get(key, 0) + grew

    def records(self, benchmark: str, model: str) -> list[Record]:
        if not self.splits:
            return []
        n, s = self.n, self.splits
        rows = (
            f"{n} generating sequences"
            if self.lanes == 1
            else (f"{n // self.lanes} generating sequences in the first of {self.lanes} lanes")
        )
        note = (
            f"our engine's own timing (GET /storybench/models stats, difference around each run): "
            f"decode-only steps with {rows}, "
            f"{' / '.join(str(x.steps) for x in s)} steps per run; no native counterpart"
        )
        if self.every:
            e = self.every
            note += (
                "; all steps (prompt chunks and fewer sequences included), ms decode / sampling / other: "
                + ", ".join(f"{x.decode_ms:.2f} / {x.sample_ms:.2f} / {x.other_ms:.2f}" for x in e)
            )
        if self.every:
            note += "; " + _rest(s, self.every, self.prompts)
        if self.backend_sampled is not None:
            picked = f"{self.backend_sampled} of {self.generated}"
            note += f"; tokens picked in the decode graph (backend sampling): {picked}"
        if self.counters:
            note += "; engine counters over the runs: " + ", ".join(
                f"{k} {v}" for k, v in self.counters.items()
            )
        head = f"ours engine step at {n} sequences:"

        def rec(metric: str, unit: str, values: list[float]) -> Record:
            return make_record(benchmark, model, n, f"{head} {metric}", unit, values, [],
                               better="lower", reference_name=OURS_ONLY, note=note)  # fmt: skip

        return [
            rec("decode", "ms", [x.decode_ms for x in s]),
            rec("sampling", "ms", [x.sample_ms for x in s]),
            rec("other (Python, between steps)", "ms", [x.other_ms for x in s]),
            rec("sampling + other, share of the step", "%", [x.share for x in s]),
        ]


def _rest(full: list[StepSplit], every: list[StepSplit], prompts: list[StepSplit]) -> str:
    """Where the steps that are not full decode steps went, per run: the steps with prompt
    tokens, and the decode-only steps with fewer sequences (all steps less those two kinds),
    each as a count and mean ms a step (decode + sampling + other). In a long story these are
    a quarter of the run's time (BENCHMARKS.md, issue 16, session 15)."""

    def total(x: StepSplit) -> float:
        return x.steps * (x.decode_ms + x.sample_ms + x.other_ms)

    runs = []
    for f, e, p in zip(full, every, prompts, strict=False):
        fewer = e.steps - f.steps - p.steps
        fewer_ms = (total(e) - total(f) - total(p)) / fewer if fewer > 0 else 0.0
        prompt_ms = total(p) / p.steps if p.steps else 0.0
        runs.append(f"{p.steps} at {prompt_ms:.2f} ms / {fewer} at {fewer_ms:.2f} ms")
    return "steps with prompt tokens / decode-only steps with fewer sequences, ms a step: " + ", ".join(runs)
