"""`storybench-eval judge`: score a run's stored answers with an LLM judge.

Registered on the `storybench-eval` group through `evaluator.judge.register`; it takes the
consoles, `fail`, exit codes and run resolution from the leaf module evaluator/cli_common.py
and never imports evaluator/cli.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from evaluator.budget import count_prompt_tokens
from evaluator.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_OK,
    RUN_OR_LATEST,
    console,
    err_console,
    fail,
    print_failures,
    resolve_run_or_exit,
    stopped_exit,
)
from evaluator.cli_options import db_option, mongo_option
from evaluator.client import RetryPolicy
from evaluator.config import ConfigError, EvalSettings, ModelEntry, load_models, select
from evaluator.endpoint import EndpointError, probe
from evaluator.judge.judging import (
    DEFAULT_REPEAT_TEMPERATURE,
    Job,
    Judge,
    JudgeAborted,
    KindStats,
    split_judged,
)
from evaluator.judge.options import judge_options
from evaluator.judge.progress import DryRunRow, JudgeProgress, dry_run_table, judge_summary_table
from evaluator.judge.prompts import render
from evaluator.judge.rubric import Rubric, load_rubric
from evaluator.judge.targets import Collected, SelectionError, collect
from evaluator.records import TargetKind
from evaluator.store import Store, StoreError, open_store
from evaluator.workers import shared_work, worker_beats


@click.command("judge", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_id", required=False)
@click.option("--latest", is_flag=True, help="Judge the most recent run instead of RUN_ID.")
@click.option("--model", "models_csv", default=None, help="Only these models of the run (comma-separated).")
@click.option(
    "--sequence", "sequences_csv", default=None, help="Only these sequences of the run (comma-separated)."
)
@click.option(
    "--kind",
    type=click.Choice(["all", "response", "sequence"]),
    default="all",
    show_default=True,
    help="What to judge: each successful turn (response), each complete sequence run (sequence), or both.",
)
@judge_options(
    rubric_help="Criteria, scales and prompt templates (JSON; docs/judging.md).", repeat_unit="target"
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would be judged with token estimates; call no model.",
)
@mongo_option
@db_option
def judge_command(
    run_id: str | None,
    latest: bool,
    models_csv: str | None,
    sequences_csv: str | None,
    kind: str,
    judge_name: str | None,
    rubric_path: Path,
    models_path: Path,
    concurrency: int | None,
    dry_run: bool,
    repeats: int,
    repeat_temperature: float,
    mongo_uri: str | None,
    db_name: str,
) -> None:
    """Score a run's stored answers with an LLM judge (re-run to resume).

    Judges each successful turn of RUN_ID (id or unique prefix; or --latest) with the
    conversation before it as context, and each complete sequence run as a whole, against the
    rubric's criteria. Every valid judgement is stored once per target, judge, rubric version
    and repeat (--repeat K: K judgements per target): a re-run judges only what is missing, a
    larger K adds repeats, and an edited rubric judges afresh. Exit
    codes: 0 done; 1 database failure or no such run; 2 bad configuration or usage; 3 some
    judgements failed (re-run to retry them); 130 interrupted (re-run to resume).
    """
    if (run_id is None) == (not latest):
        fail(RUN_OR_LATEST, EXIT_CONFIG)
    try:
        rubric = load_rubric(rubric_path)
        models, settings = load_models(models_path)
        entry = pick_judge(models, judge_name, rubric, models_path, rubric_path)
        entry.api_key()  # a missing key fails now, naming the variable, before anything is sent
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    kinds: list[TargetKind] = [k for k in rubric.kinds if kind in ("all", k)]
    if not kinds:
        fail(f"{rubric_path}: has no '{kind}' block, so --kind {kind} judges nothing (docs/judging.md)")
    request = JudgeRequest(
        run_id, rubric, entry, settings, kinds, models_csv, sequences_csv, concurrency, dry_run,
        repeats, repeat_temperature,
    )  # fmt: skip
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            code = _judge(store, request)
    except StoreError as exc:
        fail(str(exc), EXIT_FAILED)
    raise SystemExit(code)


def pick_judge(
    models: list[ModelEntry], option: str | None, rubric: Rubric, models_path: Path, rubric_path: Path
) -> ModelEntry:
    """--judge, else the rubric's `judge`, else the first model of the models file."""
    name = option or rubric.judge
    if name is None:
        return models[0]
    try:
        return select(models, name, "model", models_path)[0]
    except ConfigError as exc:
        where = "--judge" if option else f"{rubric_path}: judge"
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class JudgeRequest:
    """What the command line asked for, validated."""

    run_id: str | None  # None: the latest run
    rubric: Rubric
    entry: ModelEntry  # the judge
    settings: EvalSettings
    kinds: list[TargetKind]
    models_csv: str | None
    sequences_csv: str | None
    concurrency: int | None
    dry_run: bool
    repeats: int = 1  # judgements per target
    repeat_temperature: float = DEFAULT_REPEAT_TEMPERATURE


def _judge(store: Store, req: JudgeRequest) -> int:
    rubric, entry, settings, kinds = req.rubric, req.entry, req.settings, req.kinds
    run = resolve_run_or_exit(store, req.run_id, latest=req.run_id is None)
    resolved_id = run.id
    try:
        collected = collect(run, store.run_responses(resolved_id), kinds, req.models_csv, req.sequences_csv)
    except SelectionError as exc:
        fail(str(exc), EXIT_CONFIG)
    version = rubric.version_id
    stored = store.evaluations([t.target_id for t in collected.targets])
    pending, skipped, stored_model_ids = split_judged(
        collected.targets, stored, entry.name, version, req.repeats
    )
    each = f" ({req.repeats} per target)" if req.repeats > 1 else ""
    console.print(
        f"Run [bold]{resolved_id}[/bold]: judge [bold]{escape(entry.name)}[/bold] "
        f"({escape(entry.model)}), rubric {escape(version)}: {len(pending)} to judge{each}, "
        f"{len(skipped)} already judged, "
        f"{sum(collected.not_judged_total(k) for k in kinds)} not judged (turn failed or run incomplete).",
        highlight=False,
    )
    if stored_model_ids - {entry.model}:
        err_console.print(
            f"[yellow]note: judgements stored under judge '{escape(entry.name)}' were made by model id(s) "
            f"{escape(', '.join(sorted(stored_model_ids)))}, the entry now says {escape(entry.model)}; "
            "they are kept and not re-judged. Give the judge entry a new name to judge afresh.[/yellow]"
        )
    if req.dry_run:
        console.print(_dry_run(rubric, entry, kinds, collected, pending, skipped, resolved_id))
        return EXIT_OK

    stats: dict[str, KindStats] = {k: KindStats() for k in kinds}
    for k in kinds:
        stats[k].skipped = sum(1 for t in skipped if t.kind == k)
        stats[k].not_judged = collected.not_judged_total(k)
    title = f"Judge summary: {entry.name}, rubric {version}, run {resolved_id}"
    if not pending:
        console.print(judge_summary_table(stats, title))
        _print_not_judged(console, collected)
        return EXIT_OK

    store.ensure_indexes()
    try:
        endpoint = asyncio.run(probe(entry))
    except EndpointError as exc:
        fail(str(exc), EXIT_CONFIG)
    policy = RetryPolicy.from_settings(settings)
    limit = req.concurrency or endpoint.max_connections
    window = endpoint.context_window
    console.print(
        f"Judge endpoint {escape(entry.base_url)}: "
        f"{f'{window}-token context' if window else 'context window unknown (prompts are not trimmed)'}, "
        f"{limit} request(s) in flight.",
        highlight=False,
    )
    totals: dict[str, int] = {k: sum(1 for t in pending if t.kind == k) for k in kinds}
    status, message = "completed", None
    try:
        beats = worker_beats()
    except ValueError as exc:
        fail(str(exc))
    # Other `judge` processes on the same run, judge and rubric share the targets (docs/scale.md).
    with JudgeProgress(console, totals) as bars, shared_work(store, "judgement", *beats) as worker:
        judge = Judge(
            rubric, endpoint, policy, store, resolved_id, limit,
            on_progress=bars.update, repeat_temperature=req.repeat_temperature, worker=worker,
        )  # fmt: skip
        try:
            asyncio.run(judge.run(pending))
        except KeyboardInterrupt:
            status = "interrupted"
            message = (
                "stopped by Ctrl-C; the judgements made so far are stored; "
                "re-run the same command to judge the rest"
            )
        except JudgeAborted as exc:
            status, message = "failed", str(exc)
    for k in kinds:
        done = judge.stats[k]
        stats[k].judged, stats[k].failed, stats[k].trimmed = done.judged, done.failed, done.trimmed
    console.print(judge_summary_table(stats, title))
    if judge.by_others:
        console.print(f"  {judge.by_others} judged by another worker meanwhile (docs/scale.md)")
    _print_not_judged(console, collected)
    print_failures([(f.label, f.reason) for f in judge.failures], "judgements")
    code = stopped_exit(status, message, "judging")
    if code is not None:
        return code
    if judge.failures:
        err_console.print(
            f"[yellow]{len(judge.failures)} judgement(s) failed and were not stored; "
            "re-run the same command to retry them[/yellow]"
        )
        return EXIT_INCOMPLETE
    console.print(f"Stored in the {store.describe()}.")
    return EXIT_OK


def _print_not_judged(console: Any, collected: Collected) -> None:
    for kind, reasons in collected.not_judged.items():
        for reason, n in sorted(reasons.items()):
            console.print(f"  not judged ({kind}): {n} x {escape(reason)}", highlight=False)


def _dry_run(
    rubric: Rubric,
    entry: ModelEntry,
    kinds: list[TargetKind],
    collected: Collected,
    pending: list[Job],
    skipped: list[Job],
    run_id: str,
) -> Any:
    """Every pending judgement, repeats included, costs a prompt: one estimate per target."""
    targets = {j.target.target_id: j.target for j in pending}

    async def estimate_all() -> list[int]:
        return [await count_prompt_tokens(render(rubric, t), None) for t in targets.values()]

    sizes = dict(zip(targets, asyncio.run(estimate_all()), strict=True))
    rows = []
    for k in kinds:
        mine = [sizes[j.target.target_id] for j in pending if j.kind == k]
        completion = len(mine) * rubric.max_tokens
        rows.append(
            DryRunRow(
                kind=k,
                to_judge=len(mine),
                already=sum(1 for t in skipped if t.kind == k),
                not_judged=collected.not_judged_total(k),
                prompt_tokens=sum(mine),
                largest_prompt=max(mine, default=0),
                completion_tokens=completion,
                cost_usd=entry.cost_usd(sum(mine), completion),
                no_cost_because=entry.missing_prices,
            )
        )
    return dry_run_table(
        rows,
        f"Judge plan for run {run_id} (dry run: nothing sent; tokens estimated at 1 per 3 "
        "characters, before any trimming)",
    )
