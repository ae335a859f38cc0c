"""`storybench-eval leaderboard`: every model in the store on one comparable table.

Registered on the `storybench-eval` group through `evaluator.leaderboard.register`; it takes the
consoles, `fail` and exit codes from evaluator/cli_common.py and never imports evaluator/cli.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import click
from rich import box
from rich.markup import escape
from rich.table import Table as RichTable

from evaluator.cli_common import EXIT_CONFIG, EXIT_FAILED, console, fail
from evaluator.cli_options import db_option, mongo_option
from evaluator.leaderboard.build import Leaderboard, build
from evaluator.leaderboard.gather import LeaderboardError, gather
from evaluator.leaderboard.judges import link_judges
from evaluator.leaderboard.ratings import DEFAULT_RESAMPLES, DEFAULT_SEED
from evaluator.leaderboard.render import (
    FORMATS,
    chart_file_names,
    charts,
    render_csv,
    render_html,
    render_json,
    render_md,
)
from evaluator.leaderboard.tables import (
    TERMINAL_HEADERS,
    criteria_table,
    facts,
    reliability_rows,
    summary_table,
    terminal_rows,
    text_metrics_table,
)
from evaluator.report.present import Table
from evaluator.store import StoreError, open_store
from evaluator.whole_file import WriteError, written_whole

DEFAULT_HTML = Path("reports/leaderboard.html")


def _names(csv: str | None) -> list[str] | None:
    names = [n.strip() for n in (csv or "").split(",") if n.strip()]
    return list(dict.fromkeys(names)) or None


def _rich(t: Table, *, two_lines: bool = False) -> RichTable:
    """`two_lines`: "mean (lo to hi)" cells become the mean over the interval, for 80 columns."""
    table = RichTable(
        title=t.title, title_justify="left", caption=t.note, caption_justify="left", box=box.SIMPLE_HEAD
    )
    for k, (header, numeric) in enumerate(zip(t.headers, t.numeric, strict=True)):
        width = 16 if k == 0 else None  # the model name: room for a usual name before it folds
        if numeric:
            table.add_column(escape(header), justify="right", overflow="fold", min_width=width)
        else:
            table.add_column(escape(header), justify="left", overflow="fold", min_width=width)
    for row in t.rows:
        cells = [c.replace(" (", "\n", 1).rstrip(")") if two_lines and " (" in c else c for c in row]
        table.add_row(*(escape(cell) for cell in cells))
    return table


@click.command("leaderboard", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--judge",
    default=None,
    help="Only this judge's verdicts and scores (needed when several judged); J1,J2 shows each "
    "judge's table side by side with their agreement.",
)
@click.option(
    "--rubric-version", default=None, help="Only this rubric version (needed when several were used)."
)
@click.option(
    "--models",
    "models_csv",
    default=None,
    help="Only these models (comma-separated; default: every judged model).",
)
@click.option(
    "--sequences", "sequences_csv", default=None, help="Only these sequences (comma-separated names)."
)
@click.option(
    "--anchor", default=None, help="The model fixed at rating 1000 (default: the first rated model)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (terminal, the default), md, html, json or csv; default from -o's suffix.",
)
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Write to this file (html without -o: {DEFAULT_HTML}). Markdown gets its charts as PNG "
    "files beside it.",
)
@click.option(
    "--resamples",
    type=click.IntRange(min=0),
    default=DEFAULT_RESAMPLES,
    show_default=True,
    help="Bootstrap resamples of sequences for the 95% intervals (0: no intervals).",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed of the bootstrap.")
@click.option(
    "--allow-self-judge",
    is_flag=True,
    help="Keep judgements where the judge is the judged model (same model id or weights); they are "
    "left out by default and always flagged.",
)
@mongo_option
@db_option
def leaderboard_command(
    judge: str | None,
    rubric_version: str | None,
    models_csv: str | None,
    sequences_csv: str | None,
    anchor: str | None,
    fmt: str | None,
    output: Path | None,
    resamples: int,
    seed: int,
    allow_self_judge: bool,
    mongo_uri: str | None,
    db_name: str,
) -> None:
    """Rank every judged model in the store, with 95% intervals.

    Across ALL runs: each model's latest configuration, complete conversations only (the ones
    `compare` uses). Per model: the pairwise rating (Bradley-Terry with ties, both orders of
    every pair combined) with its interval and rank range, wins/ties/losses, the rubric mean
    per criterion and overall with its interval, conversations and mean answer length. One
    table never mixes judges, rubric versions or sequence contents: it refuses and names the
    option that selects one. Exit codes: 0 done; 1 database failure; 2 nothing to show yet,
    a mix, or bad usage.
    """
    fmt = fmt or _format_for(output)
    named = _names(judge)
    judges: list[str | None] = list(named) if named else [None]
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            all_inputs = [
                gather(
                    store,
                    judge=one,
                    rubric_version=rubric_version,
                    models=_names(models_csv),
                    sequences=_names(sequences_csv),
                    allow_self_judge=allow_self_judge,
                )
                for one in judges
            ]
    except LeaderboardError as exc:
        fail(str(exc), EXIT_CONFIG)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILED)
    prompt_sets = {i.prompt_set for i in all_inputs}
    if len(prompt_sets) > 1:
        fail(
            "the judges scored different prompt sets ("
            + ", ".join(f"{i.judge}: {i.prompt_set}" for i in all_inputs)
            + "); side by side they must share one: choose the sequences with --sequences",
            EXIT_CONFIG,
        )
    board = link_judges([build(i, anchor=anchor, resamples=resamples, seed=seed) for i in all_inputs])
    try:
        written = _write(board, fmt, output)
    except WriteError as exc:
        fail(str(exc), EXIT_FAILED)
    if written is not None:
        console.print(f"Wrote {escape(str(written))}", highlight=False)


def _format_for(output: Path | None) -> str:
    if output is None:
        return "table"
    suffix = output.suffix.lower().lstrip(".")
    return (
        {"markdown": "md", "htm": "html"}.get(suffix, suffix)
        if suffix in {*FORMATS, "markdown", "htm"}
        else "table"
    )


def _write(board: Leaderboard, fmt: str, output: Path | None) -> Path | None:
    if fmt == "table":
        if output is not None:
            raise WriteError(
                f"{output}: the table format prints to the terminal; use --format md, html, json or csv"
            )
        _print_table(board)
        return None
    if fmt == "html" and output is None:
        output = DEFAULT_HTML
        output.parent.mkdir(parents=True, exist_ok=True)
    if output is None:  # md, json, csv to stdout
        out: TextIO = sys.stdout
        if fmt == "md":
            render_md(board, out)
        elif fmt == "json":
            render_json(board, out)
        else:
            render_csv(board, out)
        return None
    if not output.parent.is_dir():
        raise WriteError(f"the folder {output.parent} does not exist")
    if fmt == "md":
        files = chart_file_names(output, charts(board))
        for chart, name in files:
            chart.write_png(output.parent / name)
        with written_whole(output) as fh:
            render_md(board, fh, files)
    elif fmt == "html":
        with written_whole(output) as fh:
            render_html(board, fh, charts(board))
    elif fmt == "json":
        with written_whole(output) as fh:
            render_json(board, fh)
    else:
        with written_whole(output) as fh:
            render_csv(board, fh)
    return output


def _print_table(board: Leaderboard) -> None:
    for one in [board, *board.others]:
        if board.others:
            console.rule(f"judge {escape(one.judge)}")
        _print_one(one)


def _print_one(board: Leaderboard) -> None:
    for key, value in facts(board):
        console.print(f"[bold]{escape(key)}[/bold]: {escape(value)}", highlight=False)
    summary = summary_table(board)
    table = RichTable(title="Leaderboard", title_justify="left", box=box.SIMPLE_HEAD)
    for k, header in enumerate(TERMINAL_HEADERS):
        table.add_column(
            escape(header), justify="left" if k < 2 else "right", no_wrap=k != 1, overflow="fold", min_width=5
        )
    for row in terminal_rows(board):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    console.print(escape(summary.note or ""), highlight=False)
    crit = criteria_table(board)
    if crit is not None:
        console.print(_rich(crit, two_lines=True))
    metrics = text_metrics_table(board)
    if metrics is not None:
        console.print(_rich(metrics))
    console.print("[bold]Judge reliability[/bold]")
    for figure, value, how in reliability_rows(board.reliability):
        console.print(f"  {escape(figure)}: {escape(value)}", highlight=False)
        console.print(f"    [dim]{escape(how)}[/dim]", highlight=False)
    for note in board.notes:
        console.print(f"[yellow]note: {escape(note)}[/yellow]", highlight=False)
    for failure in board.failures[:10]:
        console.print(f"  [yellow]failed comparison: {escape(failure)}[/yellow]", highlight=False)
    if len(board.failures) > 10:
        console.print(f"  ... and {len(board.failures) - 10} more failed comparisons")
