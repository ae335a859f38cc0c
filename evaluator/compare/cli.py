"""`storybench-eval compare`: judge models' whole conversations side by side, in both orders.

Registered on the `storybench-eval` group through `evaluator.compare.register`; it takes the
consoles, `fail` and exit codes from evaluator/cli_common.py and never imports evaluator/cli.py.
"""

from __future__ import annotations

import asyncio
import difflib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evaluator.budget import count_prompt_tokens
from evaluator.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_OK,
    console,
    err_console,
    fail,
    print_failures,
    stopped_exit,
)
from evaluator.cli_options import db_option, mongo_option
from evaluator.client import RetryPolicy
from evaluator.compare.conversations import Selection, select_conversations
from evaluator.compare.judging import CompareStats, JudgeAborted, PairJudge
from evaluator.compare.pairs import Comparison, ModelPair, plan_comparisons, with_repeats
from evaluator.compare.prompt import pair_messages
from evaluator.config import ConfigError, ModelEntry, load_models
from evaluator.endpoint import EndpointError, probe
from evaluator.judge.cli import pick_judge
from evaluator.judge.judging import DEFAULT_REPEAT_TEMPERATURE
from evaluator.judge.options import judge_options
from evaluator.judge.rubric import Rubric, load_rubric
from evaluator.records import pairwise_id
from evaluator.store import Store, StoreError, open_store
from evaluator.workers import shared_work, worker_beats


def _names(csv: str | None) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in (csv or "").split(",") if n.strip()))


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--models",
    "models_csv",
    required=True,
    help="Models to compare (comma-separated model entry names as stored by `run`), two or more; "
    "with --baseline, the models compared against it.",
)
@click.option(
    "--baseline", default=None, help="Compare each model with this one only, instead of every pair."
)
@click.option(
    "--sequences", "sequences_csv", default=None, help="Only these sequences (comma-separated names)."
)
@judge_options(
    rubric_help="The rubric file; its `pairwise` block says what to weigh and the verdict scale "
    "(docs/leaderboard.md).",
    repeat_unit="ordered comparison",
)
@click.option("--dry-run", is_flag=True, help="Print the pairs with token and cost estimates; call no model.")
@mongo_option
@db_option
def compare_command(
    models_csv: str,
    judge_name: str | None,
    baseline: str | None,
    sequences_csv: str | None,
    rubric_path: Path,
    models_path: Path,
    concurrency: int | None,
    dry_run: bool,
    repeats: int,
    repeat_temperature: float,
    mongo_uri: str | None,
    db_name: str,
) -> None:
    """Judge models' whole conversations side by side, in both orders (re-run to resume).

    Conversations come from the store, from any runs: for each model, the configuration it was
    played with most recently (its latest generation), complete conversations only. Two models'
    conversations are paired when they played the same sequence content with the same run
    index, and each pair is judged twice, each model shown first once (times --repeat). Every
    verdict is stored once per (pair, order, judge, rubric version, repeat): a re-run judges
    only what is missing or failed, a larger --repeat adds repeats, an edited rubric judges
    afresh. Failed comparisons are stored with their reason,
    never given a verdict. `storybench-eval leaderboard` turns the verdicts into ratings.
    Exit codes: 0 done; 1 database failure; 2 bad configuration or usage; 3 some comparisons
    failed (re-run to retry them); 130 interrupted (re-run to resume).
    """
    models = _names(models_csv)
    if baseline is not None and baseline not in models:
        models = [baseline, *models]
    if len(models) < 2:
        fail("--models: name at least two models to compare (or one and a --baseline)", EXIT_CONFIG)
    try:
        rubric = load_rubric(rubric_path)
        if rubric.pairwise is None:
            raise ConfigError(
                f"{rubric_path}: has no 'pairwise' block, so there is nothing to compare with; "
                "add one (see docs/leaderboard.md and config/rubric.json)"
            )
        entries, settings = load_models(models_path)
        entry = pick_judge(entries, judge_name, rubric, models_path, rubric_path)
        entry.api_key()
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    sequences = set(_names(sequences_csv)) or None
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            code = _compare(
                store, rubric, entry, settings, models, baseline, sequences, concurrency, dry_run,
                Repeats(repeats, repeat_temperature),
            )  # fmt: skip
    except StoreError as exc:
        fail(str(exc), EXIT_FAILED)
    raise SystemExit(code)


@dataclass(frozen=True)
class Repeats:
    """`--repeat` and `--repeat-temperature`: verdicts per ordered comparison and how repeats
    1..K-1 sample."""

    count: int = 1
    temperature: float = DEFAULT_REPEAT_TEMPERATURE


def _check_models(store: Store, selection: Selection, models: list[str]) -> None:
    missing = [m for m in models if not selection.of(m)]
    if not missing:
        return
    stored = sorted({r.model for r in store.model_responses(None, with_text=False)})
    lines = []
    for name in missing:
        if selection.incomplete[name]:
            lines.append(
                f"'{name}' has no complete conversation ({selection.incomplete[name]} incomplete): "
                "finish its run first"
            )
            continue
        close = difflib.get_close_matches(name, stored, n=1, cutoff=0.6)
        hint = f" - did you mean '{close[0]}'?" if close else ""
        lines.append(f"no stored conversations of model '{name}'{hint}")
    lines.append(f"models in the store: {', '.join(stored) or 'none (play some with `storybench-eval run`)'}")
    fail("\n".join(lines), EXIT_CONFIG)


def _pairs_table(
    pairs: list[ModelPair],
    todo: Counter[tuple[str, str]],
    done: Counter[tuple[str, str]],
    repeats: int = 1,
) -> Table:
    each = "2 comparisons each" if repeats == 1 else f"2 orders x {repeats} repeats each"
    table = Table(
        title=f"Model pairs (conversations matched on prompts and run index; {each})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("model A", "model B", "pairs", "A only", "B only", "to judge", "stored"):
        model = col.startswith("model")
        table.add_column(col, justify="left" if model else "right", overflow="fold", no_wrap=not model)
    for p in pairs:
        key = (p.model_a, p.model_b)
        table.add_row(
            escape(p.model_a), escape(p.model_b), str(p.matched), str(p.only_a), str(p.only_b),
            str(todo[key]), str(done[key]),
        )  # fmt: skip
    return table


def _pair_of(c: Comparison, baseline: str | None, order: list[str]) -> tuple[str, str]:
    a, b = c.first.model, c.second.model
    if baseline is not None:
        return (baseline, b if a == baseline else a)
    return (a, b) if order.index(a) < order.index(b) else (b, a)


def _compare(
    store: Store,
    rubric: Rubric,
    entry: ModelEntry,
    settings: object,
    models: list[str],
    baseline: str | None,
    sequences: set[str] | None,
    concurrency: int | None,
    dry_run: bool,
    repeats: Repeats | None = None,
) -> int:
    repeats = repeats or Repeats()
    selection = select_conversations(store, models, sequences)
    _check_models(store, selection, models)
    ordered, pairs = plan_comparisons(selection, models, baseline)
    comparisons = with_repeats(ordered, repeats.count)
    version = rubric.version_id
    stored = {r.id: r.status for r in store.pairwise(entry.name, version, with_text=False)}

    def doc_id(c: Comparison) -> str:
        return pairwise_id(c.first.id, c.second.id, entry.name, version, c.repeat)

    pending = [c for c in comparisons if stored.get(doc_id(c)) != "ok"]
    retrying = sum(1 for c in pending if doc_id(c) in stored)
    todo: Counter[tuple[str, str]] = Counter(_pair_of(c, baseline, models) for c in pending)
    done: Counter[tuple[str, str]] = Counter(_pair_of(c, baseline, models) for c in comparisons) - todo
    times = f" x {repeats.count} repeats" if repeats.count > 1 else ""
    console.print(
        f"Compare with judge [bold]{escape(entry.name)}[/bold] ({escape(entry.model)}), rubric "
        f"{escape(version)}: {len(comparisons)} comparisons "
        f"({len(ordered) // 2} pairs x 2 orders{times}), "
        f"{len(pending)} to judge ({retrying} failed before), "
        f"{len(comparisons) - len(pending)} already stored.",
        highlight=False,
    )
    console.print(_pairs_table(pairs, todo, done, repeats.count))
    for model in models:
        if selection.incomplete[model]:
            console.print(
                f"  {escape(model)}: {selection.incomplete[model]} incomplete conversation(s) left out "
                "(a turn failed or is missing)",
                highlight=False,
            )
    if not comparisons:
        fail(
            "the models share no complete conversation of the same sequence content and run index; "
            "play them on the same prompts (`storybench-eval run --models A,B`)",
            EXIT_CONFIG,
        )
    if dry_run:
        _print_dry_run(rubric, entry, pending)
        return EXIT_OK
    if not pending:
        console.print("Nothing to judge. `storybench-eval leaderboard` shows the ratings.")
        return EXIT_OK

    store.ensure_indexes()
    try:
        endpoint = asyncio.run(probe(entry))
    except EndpointError as exc:
        fail(str(exc), EXIT_CONFIG)
    policy = RetryPolicy.from_settings(settings)  # type: ignore[arg-type]
    limit = concurrency or endpoint.max_connections
    progress = Progress(
        TextColumn("comparisons"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), console=console,
    )  # fmt: skip
    task = progress.add_task("compare", total=len(pending), failed="")

    def on_progress(stats: CompareStats) -> None:
        failed = f"[red]{stats.failed} failed[/red]" if stats.failed else ""
        progress.update(task, completed=stats.settled, failed=failed)

    try:
        beats = worker_beats()
    except ValueError as exc:
        fail(str(exc))
    status, message = "completed", ""
    # Other `compare` processes with the same selection and judge share the comparisons.
    with progress, shared_work(store, "comparison", *beats) as worker:
        judge = PairJudge(
            rubric, endpoint, policy, store, limit,
            on_progress=on_progress, repeat_temperature=repeats.temperature, worker=worker,
        )  # fmt: skip
        try:
            asyncio.run(judge.run(pending))
        except KeyboardInterrupt:
            status = "interrupted"
            message = (
                "stopped by Ctrl-C; the verdicts made so far are stored; "
                "re-run the same command to judge the rest"
            )
        except JudgeAborted as exc:
            status, message = "failed", str(exc)
    stats = judge.stats
    verdicts = ", ".join(f"{n} x {label}" for label, n in stats.verdicts.most_common()) or "none"
    console.print(
        f"Judged {stats.judged}, failed {stats.failed}. Verdicts: {escape(verdicts)}", highlight=False
    )
    if judge.by_others:
        console.print(f"  {judge.by_others} compared by another worker meanwhile (docs/scale.md)")
    print_failures(stats.failures, "comparisons")
    code = stopped_exit(status, message, "comparing")
    if code is not None:
        return code
    if stats.failures:
        err_console.print(
            f"[yellow]{len(stats.failures)} comparison(s) failed; they are stored as failed with the "
            "reason and count for nothing; re-run the same command to retry them[/yellow]"
        )
        return EXIT_INCOMPLETE
    console.print(
        f"Stored in the {store.describe()}. Next: storybench-eval leaderboard --judge {escape(entry.name)}"
    )
    return EXIT_OK


def _print_dry_run(rubric: Rubric, entry: ModelEntry, pending: list[Comparison]) -> None:
    """Every pending comparison, repeats included, costs a prompt; each order is estimated once."""
    orders = {(c.first.id, c.second.id): c for c in pending}

    async def estimate_all() -> list[int]:
        return [await count_prompt_tokens(pair_messages(rubric, c), None) for c in orders.values()]

    size_of = dict(zip(orders, asyncio.run(estimate_all()), strict=True))
    sizes = [size_of[(c.first.id, c.second.id)] for c in pending]
    prompt = sum(sizes)
    completion = len(pending) * rubric.max_tokens
    cost = entry.cost_usd(prompt, completion)
    table = Table(
        title="Comparison plan (dry run: nothing sent; tokens estimated at 1 per 3 characters)",
        title_justify="left",
    )
    for col in ("comparison", "prompt tokens"):
        table.add_column(col, justify="right" if col != "comparison" else "left")
    for c, size in list(zip(pending, sizes, strict=True))[:20]:
        table.add_row(escape(c.label), str(size))
    if len(pending) > 20:
        table.add_row(f"... and {len(pending) - 20} more", "")
    console.print(table)
    cost_text = f"${cost:.4f}" if cost is not None else f"unknown ({escape(entry.missing_prices or '')})"
    console.print(
        f"{len(pending)} comparisons: about {prompt} prompt tokens (largest {max(sizes, default=0)}), "
        f"at most {completion} completion tokens; cost {cost_text}.",
        highlight=False,
    )
