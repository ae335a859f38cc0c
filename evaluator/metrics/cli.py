"""`storybench-eval metrics`: compute the judge-free text metrics of stored turns.

Registered on the `storybench-eval` group through `evaluator.metrics.register`; it takes the
consoles, `fail`, exit codes and run resolution from the leaf module evaluator/cli_common.py
and never imports evaluator/cli.py.

Two passes over the selected turns: the first reads no text and counts what is missing (all a
dry run needs, and nothing more is read when nothing is missing); the second streams the turns
with their text and writes the metrics, one turn at a time, under a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evaluator.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    console,
    err_console,
    fail,
    resolve_run_or_exit,
)
from evaluator.cli_options import db_option, mongo_option
from evaluator.metrics.backfill import BackfillStats, backfill, count
from evaluator.records import ResponseRecord
from evaluator.store import Store, StoreError, open_store
from evaluator.text_metrics import METRICS_VERSION

SCOPE = "give one of RUN_ID, --latest or --all (list runs with `storybench-eval runs`)"

# Turns of the selection, read afresh each call: with their texts (True) or without.
Source = Callable[[bool], Iterable[ResponseRecord]]


@click.command("metrics", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_id", required=False)
@click.option("--latest", is_flag=True, help="The most recent run instead of RUN_ID.")
@click.option("--all", "every", is_flag=True, help="Every turn in the store, of any run.")
@click.option("--dry-run", is_flag=True, help="Count the turns that need metrics; write nothing.")
@mongo_option
@db_option
def metrics_command(
    run_id: str | None, latest: bool, every: bool, dry_run: bool, mongo_uri: str | None, db_name: str
) -> None:
    """Compute judge-free text metrics for stored turns that lack them (re-run to resume).

    Words, distinct-1/2, and the share of the answer's 4-grams copied from the conversation's
    earlier answers or from the prompt (evaluator/text_metrics.py). New turns get them when they
    are stored; this fills in turns of RUN_ID (id or unique prefix), of --latest, or of --all
    runs that were stored before, or under an older metrics version. Turns already current are
    left alone. Exit codes: 0 done; 1 database failure or no such run; 2 bad usage; 130
    interrupted (re-run to resume).
    """
    if sum((run_id is not None, latest, every)) != 1:
        fail(SCOPE, EXIT_CONFIG)
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            code = _metrics(store, run_id, latest, dry_run)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILED)
    raise SystemExit(code)


def selection(store: Store, run_id: str | None, latest: bool) -> tuple[str, Source]:
    """What the command covers, in words, and how to read its turns."""
    if run_id is None and not latest:

        def every(with_text: bool) -> Iterable[ResponseRecord]:
            return store.model_responses(None, with_text=with_text)  # streamed: the store may be large

        return "every stored turn", every
    run = resolve_run_or_exit(store, run_id, latest=latest)
    turns = store.run_responses(run.id)  # one list: a run's turns fit in memory (the judge reads them so)

    def of_run(with_text: bool) -> Iterable[ResponseRecord]:
        return turns

    return f"run {run.id}", of_run


def _metrics(store: Store, run_id: str | None, latest: bool, dry_run: bool) -> int:
    scope, source = selection(store, run_id, latest)
    planned = count(source(False))
    console.print(
        f"Text metrics v{METRICS_VERSION}, {scope}: {planned.turns} turn(s), {planned.computed} to compute, "
        f"{planned.current} already current, {planned.not_ok} not ok (they keep none).",
        highlight=False,
    )
    if dry_run or not planned.computed:
        console.print(summary_table(planned, dry_run=dry_run))
        return EXIT_OK
    progress = Progress(
        TextColumn("turns"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = progress.add_task("turns", total=planned.turns)
    try:
        with progress:
            done = backfill(store, source(True), on_turn=lambda: progress.advance(task))
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]stopped by Ctrl-C; the metrics computed so far are stored; "
            "re-run the same command to compute the rest[/yellow]"
        )
        return EXIT_INTERRUPTED
    console.print(summary_table(done, dry_run=False))
    if done.vanished:
        err_console.print(
            f"[yellow]{done.vanished} turn(s) changed while computing; re-run to check[/yellow]"
        )
    return EXIT_OK


def summary_table(stats: BackfillStats, *, dry_run: bool) -> Table:
    table = Table(
        title=f"Text metrics v{METRICS_VERSION}" + (" (dry run: nothing written)" if dry_run else "")
    )
    for col in ("turns", "to compute" if dry_run else "computed", "already current", "not ok"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row(str(stats.turns), str(stats.computed), str(stats.current), str(stats.not_ok))
    return table
