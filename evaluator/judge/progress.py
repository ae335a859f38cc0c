"""What the user sees while judging and when it ends: a bar per target kind, then a summary."""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from evaluator.judge.judging import KindStats

KIND_LABELS = {"response": "responses", "sequence": "sequence runs"}


class JudgeProgress:
    """One bar per target kind: judgements settled of those to make, failures so far."""

    def __init__(self, console: Console, totals: dict[str, int]) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {
            kind: self.progress.add_task(KIND_LABELS[kind], total=total, failed="")
            for kind, total in totals.items()
            if total
        }

    def __enter__(self) -> JudgeProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, kind: str, stats: KindStats) -> None:
        if kind in self.tasks:
            self.progress.update(
                self.tasks[kind],
                completed=stats.settled,
                failed=f"[red]{stats.failed} failed[/red]" if stats.failed else "",
            )


def judge_summary_table(stats: dict[str, KindStats], title: str) -> Table:
    """Fits 80 columns: short headers, explained in the caption."""
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="earlier: judged before (kept); not judged: the turn failed or the run is incomplete; "
        "trimmed: judged with the oldest turns left out to fit the judge's context",
        caption_justify="left",
    )
    table.add_column("target", no_wrap=True)
    for col in ("judged", "earlier", "failed", "not judged", "trimmed"):
        table.add_column(col, justify="right", no_wrap=True)
    for kind, s in stats.items():
        table.add_row(
            KIND_LABELS[kind],
            str(s.judged),
            str(s.skipped),
            f"[red]{s.failed}[/red]" if s.failed else "0",
            str(s.not_judged),
            str(s.trimmed),
        )
    return table


@dataclass(frozen=True)
class DryRunRow:
    kind: str
    to_judge: int
    already: int
    not_judged: int
    prompt_tokens: int
    largest_prompt: int
    completion_tokens: int
    cost_usd: float | None
    no_cost_because: str | None = None  # which price is missing, when cost_usd is None


def dry_run_table(rows: list[DryRunRow], title: str) -> Table:
    table = Table(title=title)
    table.add_column("target", no_wrap=True)
    for col in (
        "to judge",
        "already judged",
        "not judged",
        "prompt tokens (est.)",
        "largest prompt (est.)",
        "completion tokens (max)",
        "cost (max)",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            KIND_LABELS[r.kind],
            str(r.to_judge),
            str(r.already),
            str(r.not_judged),
            f"{r.prompt_tokens:,}",
            f"{r.largest_prompt:,}",
            f"{r.completion_tokens:,}",
            f"${r.cost_usd:.4f}" if r.cost_usd is not None else str(r.no_cost_because),
        )
    return table
