"""What the user sees while a run plays and when it ends: a bar per model, then a summary."""

from __future__ import annotations

from statistics import median

from rich import box
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from evaluator.plan import Estimate, Plan
from evaluator.runner import ModelStats


class RunProgress:
    """One bar per model: turns settled of planned, generation speed, errors so far."""

    def __init__(self, console: Console, models: list[str], totals: dict[str, int]) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("turns"),
            TextColumn("{task.fields[speed]:>10}"),
            TextColumn("{task.fields[errors]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=totals[name], speed="", errors="") for name in models
        }

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, name: str, stats: ModelStats) -> None:
        tps = stats.tokens_per_s
        problems = stats.errors + stats.outcomes.get("empty", 0)
        self.progress.update(
            self.tasks[name],
            completed=min(stats.done, stats.total),
            speed=f"{tps:.1f} tok/s" if tps else "",
            errors=(f"[red]{problems} problem(s)[/red] " if problems else "")
            + (f"limit {stats.concurrency_limit}" if stats.concurrency_limit is not None else ""),
        )


def run_summary_table(stats: dict[str, ModelStats]) -> Group:
    """Two tables that each fit 80 columns: the turns (written by this run, reused from earlier
    runs of the same plan) and the speed and cost of what was written."""
    width = min(max([5, *(len(name) for name in stats)]), 24)
    turns = Table(title="Run summary: turns", title_justify="left", box=box.SIMPLE_HEAD)
    turns.add_column("model", min_width=width, overflow="fold")
    for col in ("ok", "empty", "ctx full", "errors", "reused"):
        turns.add_column(col, justify="right", no_wrap=True)
    speed = Table(
        title="Run summary: speed and cost (turns written)", title_justify="left", box=box.SIMPLE_HEAD
    )
    speed.add_column("model", min_width=width, overflow="fold")
    for col in ("tok/s", "TTFT p50", "cache reuse", "cost"):
        speed.add_column(col, justify="right", no_wrap=True)
    for name, s in stats.items():
        reuse = f"{100 * s.cached_tokens / s.prompt_tokens:.0f}%" if s.prompt_tokens else "-"
        turns.add_row(
            name,
            str(s.outcomes.get("ok", 0)),
            str(s.outcomes.get("empty", 0)),
            str(s.outcomes.get("context_exhausted", 0)),
            str(s.errors),
            str(s.reused),
        )
        speed.add_row(
            name,
            f"{s.tokens_per_s:.1f}" if s.tokens_per_s else "-",
            f"{median(s.ttfts):.2f}s" if s.ttfts else "-",
            reuse,
            f"${s.cost_usd:.4f}" if s.priced else "-",
        )
    reused = sum(s.reused for s in stats.values())
    written = sum(s.written for s in stats.values())
    note = Text(
        f"{written} turn(s) written by this run; {reused} already stored by earlier runs of the same "
        "plan were reused (not asked again)."
        if reused
        else f"{written} turn(s) written by this run."
    )
    return Group(turns, speed, note)


def plan_table(plan: Plan, estimates: list[Estimate]) -> Table:
    turns = sum(len(s.turns) for s in plan.sequences)
    table = Table(
        title=(
            f"Plan: {len(plan.models)} model(s) x {len(plan.sequences)} sequence(s) "
            f"({turns} turns) x {plan.runs} run(s) = {plan.total_turns} requests (dry run: nothing sent)"
        )
    )
    for col in (
        "model",
        "endpoint",
        "conversations",
        "requests",
        "prompt tokens (est.)",
        "completion tokens (max)",
        "cost (max)",
    ):
        table.add_column(col, justify="left" if col in ("model", "endpoint") else "right")
    by_name = {m.name: m for m in plan.models}
    for e in estimates:
        table.add_row(
            e.model,
            by_name[e.model].base_url,
            str(e.conversations),
            str(e.requests),
            f"{e.prompt_tokens:,}",
            f"{e.completion_tokens:,}",
            f"${e.cost_usd:.4f}" if e.cost_usd is not None else str(e.no_cost_because),
        )
    return table
