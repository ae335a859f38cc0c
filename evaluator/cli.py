"""`storybench-eval`: play multi-turn creative-writing sequences against models; store every turn."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from evaluator import compare, judge, leaderboard, metrics, report, viewer
from evaluator.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    console,
    fail,
    resolve_run_or_exit,
)
from evaluator.cli_options import db_option, mongo_option
from evaluator.config import (
    DEFAULT_MODELS_PATH,
    DEFAULT_PROMPTS_PATH,
    ConfigError,
    EvalSettings,
    ModelEntry,
    Sequence,
    load_models,
    load_prompts,
    select,
)
from evaluator.endpoint import EndpointError
from evaluator.evaluate import Evaluation, evaluate
from evaluator.heartbeat import heartbeat_interval
from evaluator.plan import build_plan, estimate
from evaluator.progress import plan_table
from evaluator.replicas import probe_all
from evaluator.store import (
    StoreError,
    export_responses,
    format_run_detail,
    format_runs_table,
    open_store,
)
from evaluator.store.liveness import co_workers
from evaluator.workers import lease_seconds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="storybench")
def cli() -> None:
    """Benchmark LLMs on long, multi-turn creative writing.

    `run` plays every prompt sequence (config/prompts.json) against every model
    (config/models.yaml), several runs each, sending the full chat history every turn, and
    stores every turn in MongoDB. Re-running the same command resumes where it stopped.
    `judge` scores a run's answers with an LLM judge (config/rubric.json); `runs`, `show` and
    `export` read the stored results; `report` writes one run as an HTML or Markdown page.
    """


def _load(
    models_path: Path, prompts_path: Path, models_csv: str | None, sequences_csv: str | None
) -> tuple[list[ModelEntry], EvalSettings, list[Sequence]]:
    models, settings = load_models(models_path)
    sequences = load_prompts(prompts_path)
    models = select(models, models_csv, "model", models_path)
    sequences = select(sequences, sequences_csv, "sequence", prompts_path)
    for model in models:
        model.api_key()  # a missing key fails now, naming the variable, before anything is sent
    return models, settings, sequences


@cli.command()
@click.option(
    "--config",
    "models_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODELS_PATH,
    show_default=True,
    help="Models to evaluate (YAML).",
)
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PROMPTS_PATH,
    show_default=True,
    help="Prompt sequences (JSON).",
)
@click.option("--models", "models_csv", default=None, help="Comma-separated model names (default: all).")
@click.option(
    "--sequences",
    "sequences_csv",
    default=None,
    help="Comma-separated sequence names (default: all).",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=None,
    help="Runs per sequence (default: settings.default_runs, 3). Run k uses seed+k.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Conversations in flight overall (default: settings.concurrency). Each endpoint "
    "is also bounded by its max_concurrency (default for our local server: its slot count).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Play only the first N conversations of the plan (models in the order given, then "
    "sequences, then runs), for a quick try; recorded in the run's config snapshot.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan with token and cost estimates; send nothing.")
@click.option(
    "--restart",
    is_flag=True,
    help="Start a new generation of the same configuration instead of resuming; earlier results are kept.",
)
@mongo_option
@db_option
def run(
    models_path: Path,
    prompts_path: Path,
    models_csv: str | None,
    sequences_csv: str | None,
    runs: int | None,
    concurrency: int | None,
    limit: int | None,
    dry_run: bool,
    restart: bool,
    mongo_uri: str | None,
    db_name: str,
) -> None:
    """Play the sequences against the models and store every turn (resumes by default).

    Start it on several machines with the same configuration and store (--mongo-uri) to share
    the work: each conversation is claimed in the store while one worker plays it, and a killed
    worker's conversations are finished by the others once its claims expire (3 heartbeats:
    STORYBENCH_HEARTBEAT_S, default 30 s; or STORYBENCH_LEASE_S). See docs/scale.md.
    """
    try:
        models, settings, sequences = _load(models_path, prompts_path, models_csv, sequences_csv)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    runs = runs or settings.default_runs
    concurrency = concurrency or settings.concurrency
    try:
        heartbeat_s = heartbeat_interval()
        lease_s = lease_seconds(heartbeat_s)
    except ValueError as exc:
        fail(str(exc))
    if dry_run:
        plan = build_plan(models, sequences, runs, limit=limit)
        console.print(plan_table(plan, estimate(plan)))
        return
    if limit is not None:  # only the models the first conversations belong to are probed and played
        models = build_plan(models, sequences, runs, limit=limit).models
    evaluation = Evaluation(
        models, sequences, settings, runs, concurrency, restart, heartbeat_s, limit=limit, lease_s=lease_s
    )
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            store.ensure_indexes()
            try:
                endpoints = asyncio.run(probe_all(models))
            except EndpointError as exc:
                fail(str(exc))
            result = evaluate(store, evaluation, endpoints)
    except StoreError as exc:
        fail(str(exc), code=EXIT_FAILED)
    sys.exit(result.exit_code)


@cli.command("runs")
@click.option("--limit", default=50, show_default=True, help="Most recent runs to list.")
@mongo_option
@db_option
def list_runs(limit: int, mongo_uri: str | None, db_name: str) -> None:
    """List runs: id, start time, models, progress, status."""
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            listed = store.list_runs(limit=limit)
            console.print(format_runs_table(listed, store.run_tallies(listed)))
    except StoreError as exc:
        fail(str(exc), code=EXIT_FAILED)


@cli.command()
@click.argument("run_id")
@mongo_option
@db_option
def show(run_id: str, mongo_uri: str | None, db_name: str) -> None:
    """Show one run (id or unique prefix) with its turns."""
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            found = resolve_run_or_exit(store, run_id)
            tally = store.run_tallies([found])[found.id]
            workers = co_workers(found, store.plan_runs(found.plan_key)) if found.plan_key else None
            console.print(format_run_detail(found, store.run_responses(found.id), tally, workers))
    except StoreError as exc:
        fail(str(exc), code=EXIT_FAILED)


@cli.command()
@click.option(
    "--run",
    "run_id",
    default=None,
    help="Only the turns of this run's plan, including turns an earlier interrupted "
    "invocation wrote (default: everything stored).",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Output file (refuses to overwrite unless --force).",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@mongo_option
@db_option
def export(run_id: str | None, fmt: str, out: Path, force: bool, mongo_uri: str | None, db_name: str) -> None:
    """Export stored turns (and judgements when present) with a stable column order."""
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            if run_id is not None:
                run_id = resolve_run_or_exit(store, run_id).id
            n = export_responses(store, run_id, fmt, out, overwrite=force)
    except StoreError as exc:
        fail(str(exc), code=EXIT_FAILED)
    console.print(f"Wrote {n} row(s) to {out}")


def main() -> None:
    cli()


# Commands that live in their own packages register themselves; they import only the leaf
# modules (cli_common, cli_options), never this one.
judge.register(cli)
compare.register(cli)
leaderboard.register(cli)
metrics.register(cli)
report.register(cli)
viewer.register(cli)


if __name__ == "__main__":
    main()
