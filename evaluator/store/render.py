"""Rich renderings of stored runs for `storybench-eval runs` and `storybench-eval show RUN`.

A run stored as "running" is shown as its process's state says (evaluator/store/liveness.py):
"abandoned" when the process is gone, so a killed run never reads "running" forever. A run
played by several cooperating workers (docs/scale.md) says so: `runs` counts the workers of each
listed run, `show` lists them (host, pid, status, conversations done, last heartbeat).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from evaluator.records import ResponseRecord, RunRecord
from evaluator.store.liveness import (
    ABANDONED,
    RESUME,
    UNKNOWN,
    RunState,
    age,
    as_utc,
    co_workers,
    run_state,
)
from evaluator.store.store import RunTally

_STATUS_STYLE = {
    "running": "yellow",
    ABANDONED: "red",
    UNKNOWN: "dim",
    "completed": "green",
    "incomplete": "yellow",
    "interrupted": "magenta",
    "failed": "red",
}
_OUTCOME_STYLE = {"ok": "green", "empty": "yellow", "context_exhausted": "yellow", "error": "red"}


def _when(value: Any, seconds: bool = True) -> str:
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


def _duration(run: RunRecord) -> str:
    start, end = run.started_at, run.finished_at
    if end is None:
        return ""
    seconds = int((end - start).total_seconds())
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "" if value is None else fmt.format(value)


def _tally(run: RunRecord, tallies: dict[str, RunTally] | None) -> RunTally:
    """Counters derived from the stored turns when given (right even for a killed run, whose
    document never recorded them); else what the run document recorded."""
    if tallies is not None and run.id in tallies:
        return tallies[run.id]
    return RunTally(dict(run.counts), 0)


def _progress(tally: RunTally, planned: int) -> str:
    """written/planned, and the turns reused from earlier runs: "0/9 written, 9 reused"."""
    text = f"{tally.total_written}/{planned} written"
    return text + (f", {tally.reused} reused" if tally.reused else "")


def _turns_cell(tally: RunTally, planned: int, errors: str) -> str:
    """The runs table's turns: "5/9" written, then "+4 reused" and errors on lines below."""
    lines = [f"{tally.total_written}/{planned}"]
    if tally.reused:
        lines.append(f"+{tally.reused} reused")
    if errors:
        lines.append(f"{errors} err")
    return "\n".join(lines)


def _errors(tally: RunTally) -> str:
    errors = tally.written.get("error", 0)
    return str(errors) if errors else ""


def _status(state: RunState, workers: int = 1) -> Text:
    text = Text(state.status, style=_STATUS_STYLE.get(state.status, ""))
    if workers > 1:
        text.append(f"\n{workers} workers", style="dim")
    return text


def _legend(states: list[RunState]) -> str | None:
    """One line per derived status shown, so the table stays one line per run."""
    lines = []
    if any(s.status == ABANDONED for s in states):
        lines.append(f"{ABANDONED}: the run's process is gone; {RESUME} (storybench-eval show RUN says why)")
    if any(s.status == UNKNOWN for s in states):
        lines.append(f"{UNKNOWN}: stored as running by a version without heartbeats; {RESUME} if it stopped")
    return "\n".join(lines) or None


def _process(run: RunRecord) -> str:
    if run.pid is None and run.host is None:
        return ""
    return f"pid {run.pid} on {run.host}"


def _heartbeat(run: RunRecord) -> str:
    """Only while the run is stored as running: afterwards `finished` says more."""
    beat = as_utc(run.heartbeat_at)
    if run.status != "running" or beat is None:
        return ""
    return f"{_when(beat)} ({age(datetime.now(beat.tzinfo) - beat)} ago)"


def format_runs_table(runs: list[RunRecord], tallies: dict[str, RunTally] | None = None) -> Table:
    """Runs newest first: id, start, models, plan (sequences x runs), turns written/planned
    (and reused) with errors, status. Durations are in `format_run_detail`. Laid out for 80
    columns: model names and the turns cell wrap instead of being cut."""
    table = Table(
        title="StoryBench runs",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("run", no_wrap=True, min_width=8)
    table.add_column("started", no_wrap=True, min_width=10)
    table.add_column("models", min_width=8, ratio=1, overflow="fold")
    table.add_column("plan", no_wrap=True, justify="right", min_width=4)
    table.add_column("turns", justify="right", min_width=9)
    table.add_column("status", no_wrap=True, min_width=6)
    states = [run_state(run) for run in runs]
    for run, state in zip(runs, states, strict=True):
        tally = _tally(run, tallies)
        errors = _errors(tally)
        table.add_row(
            run.id,
            _when(run.started_at, seconds=False),
            Text(", ".join(run.models)),
            f"{len(run.sequences)}x{run.runs_per_sequence}",
            _turns_cell(tally, run.planned_turns, errors),
            _status(state, len(co_workers(run, runs))),  # among the listed runs
        )
    if not runs:
        table.caption = "no runs stored yet: `storybench-eval run` starts one"
    else:
        table.caption = _legend(states)
    table.caption_justify = "left"
    return table


def _preview(text: Any, width: int = 70) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def workers_table(workers: list[RunRecord]) -> Table:
    """The workers of one plan that ran together: one line each."""
    table = Table(
        title="workers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for name, justify in (
        ("run", "left"), ("host", "left"), ("pid", "right"), ("status", "left"),
        ("conversations", "right"), ("last heartbeat", "left"),
    ):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for worker in workers:
        beat = as_utc(worker.heartbeat_at)
        table.add_row(
            worker.id,
            worker.host or "",
            _num(worker.pid, "{}"),
            _status(run_state(worker)),
            _num(worker.conversations_done),
            "" if beat is None else f"{_when(beat)} ({age(datetime.now(beat.tzinfo) - beat)} ago)",
        )
    return table


def format_run_detail(
    run: RunRecord,
    responses: list[ResponseRecord],
    tally: RunTally | None = None,
    workers: list[RunRecord] | None = None,
) -> RenderableType:
    """A run's facts, then its workers when there were several, then one line per stored turn
    (ordered as given)."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    outcomes = Counter(r.outcome for r in responses)
    state = run_state(run)
    counted = tally if tally is not None else _tally(run, None)
    errors = _errors(counted)
    for label, value in (
        ("run", run.id),
        ("status", _status(state)),
        ("why", Text(state.hint or "")),
        ("process", _process(run)),
        ("heartbeat", _heartbeat(run)),
        ("started", _when(run.started_at)),
        ("finished", _when(run.finished_at)),
        ("duration", _duration(run)),
        ("command", Text(run.command)),
        ("code version", run.code_version),
        ("models", ", ".join(run.models)),
        ("sequences", ", ".join(run.sequences)),
        ("runs per sequence", str(run.runs_per_sequence)),
        ("turns", _progress(counted, run.planned_turns) + (f", {errors} errors" if errors else "")),
        ("conversations", f"{run.conversations_done} played to the end" if run.conversations_done else ""),
        ("stored turns", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none"),
        ("message", Text(run.message or "")),
    ):
        if value:
            facts.add_row(label, value)

    turns = Table(
        title="turns", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for name, justify in (
        ("model", "left"), ("sequence", "left"), ("run", "right"), ("turn", "right"),
        ("outcome", "left"), ("in/out", "right"), ("cached", "right"), ("secs", "right"),
        ("tok/s", "right"),
    ):  # fmt: skip
        turns.add_column(name, justify=justify, no_wrap=True, min_width=len(name))  # type: ignore[arg-type]
    turns.add_column("answer (or error)", min_width=12, ratio=1, no_wrap=True, overflow="ellipsis")
    for r in responses:
        outcome = r.outcome
        shown = r.error if outcome == "error" else r.response_text
        attempts = r.attempts
        turns.add_row(
            r.model,
            r.sequence,
            str(r.run_index),
            str(r.turn_index),
            Text(outcome + (f" x{attempts}" if attempts > 1 else ""),
                 style=_OUTCOME_STYLE.get(outcome, "")),
            f"{_num(r.prompt_tokens)}/{_num(r.completion_tokens)}",
            _num(r.cached_tokens),
            _num(r.latency_s, "{:.1f}"),
            _num(r.tokens_per_s, "{:.0f}"),
            Text(_preview(shown, 200)),  # stored text, never console markup
        )  # fmt: skip
    if not responses:
        turns.caption = "no turns stored for this run"
    if workers is not None and len(workers) > 1:
        return Group(facts, workers_table(workers), turns)
    return Group(facts, turns)
