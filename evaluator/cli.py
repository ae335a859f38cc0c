"""`storybench-eval`: play multi-turn creative-writing sequences against models; store every turn."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from evaluator.cli_options import db_option, mongo_option
from evaluator.client import RetryPolicy
from evaluator.config import (
    ConfigError,
    EvalSettings,
    ModelEntry,
    Sequence,
    load_models,
    load_prompts,
    select,
)
from evaluator.endpoint import EndpointError, EndpointInfo, probe
from evaluator.heartbeat import Heartbeat, heartbeat_interval, process_identity
from evaluator.plan import build_plan, estimate, model_config_hashes
from evaluator.progress import RunProgress, plan_table, summary_table
from evaluator.records import DEFAULT_HEARTBEAT_S, RunRecord, utcnow
from evaluator.runner import ModelStats, RunAborted, Runner
from evaluator.store import (
    Store,
    StoreError,
    export_responses,
    format_run_detail,
    format_runs_table,
    open_store,
)

DEFAULT_MODELS = Path("config/models.yaml")
DEFAULT_PROMPTS = Path("config/prompts.json")

console = Console()
err_console = Console(stderr=True)

EXIT_CONFIG = 2
EXIT_INCOMPLETE = 3


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    sys.exit(code)


def code_version() -> str:
    try:
        version = metadata.version("storybench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{version}+{commit}" if commit else version


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


def _snapshot(
    models: list[ModelEntry],
    sequences: list[Sequence],
    runs: int,
    concurrency: int,
    settings: EvalSettings,
) -> dict[str, Any]:
    """Everything that shaped the run; model entries hold env-var names, never keys."""
    return {
        "models": [m.model_dump(mode="json") for m in models],
        "sequences": [s.model_dump(mode="json") for s in sequences],
        "runs": runs,
        "concurrency": concurrency,
        "settings": settings.model_dump(mode="json"),
    }


async def _probe_all(models: list[ModelEntry]) -> dict[str, EndpointInfo]:
    infos = await asyncio.gather(*(probe(m.base_url, m.model, m.api_key()) for m in models))
    return {m.name: info for m, info in zip(models, infos, strict=True)}


@cli.command()
@click.option(
    "--config",
    "models_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODELS,
    show_default=True,
    help="Models to evaluate (YAML).",
)
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PROMPTS,
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
    dry_run: bool,
    restart: bool,
    mongo_uri: str | None,
    db_name: str,
) -> None:
    """Play the sequences against the models and store every turn (resumes by default)."""
    try:
        models, settings, sequences = _load(models_path, prompts_path, models_csv, sequences_csv)
    except ConfigError as exc:
        fail(str(exc))
    runs = runs or settings.default_runs
    concurrency = concurrency or settings.concurrency
    try:
        heartbeat_s = heartbeat_interval()
    except ValueError as exc:
        fail(str(exc))
    if dry_run:
        plan = build_plan(models, sequences, runs)
        console.print(plan_table(plan, estimate(plan)))
        return
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            store.ensure_indexes()
            try:
                endpoints = asyncio.run(_probe_all(models))
            except EndpointError as exc:
                fail(str(exc))
            code = _run(
                store, models, sequences, settings, runs, concurrency, restart, endpoints, heartbeat_s
            )
    except StoreError as exc:
        fail(str(exc), code=1)
    sys.exit(code)


def _run(
    store: Store,
    models: list[ModelEntry],
    sequences: list[Sequence],
    settings: EvalSettings,
    runs: int,
    concurrency: int,
    restart: bool,
    endpoints: dict[str, EndpointInfo],
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
) -> int:
    hashes = model_config_hashes(models, sequences)
    generations = {
        cfg: (store.next_generation(cfg) if restart else store.current_generation(cfg))
        for cfg in set(hashes.values())
    }
    plan = build_plan(models, sequences, runs, generations)
    run_id = utcnow().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    host, pid = process_identity()
    started_at = utcnow()
    store.create_run(
        RunRecord(
            _id=run_id,
            started_at=started_at,
            status="running",
            command=" ".join(["storybench-eval", *sys.argv[1:]]),
            code_version=code_version(),
            config_snapshot=_snapshot(models, sequences, runs, concurrency, settings),
            config_hashes={
                "models": {m.name: m.fingerprint() for m in models},
                "sequences": {s.name: s.content_hash for s in sequences},
                "experiments": hashes,
            },
            experiments=[
                {"model": m, "sequence": s, "experiment_key": k, "generation": g}
                for (m, s, k, g) in sorted(
                    {(i.model.name, i.sequence.name, i.experiment_key, i.generation) for i in plan.items}
                )
            ],
            models=[m.name for m in models],
            sequences=[s.name for s in sequences],
            runs_per_sequence=runs,
            planned_turns=plan.total_turns,
            server_metadata={
                name: info.metadata for name, info in endpoints.items() if info.is_storybench_server
            },
            host=host,
            pid=pid,
            heartbeat_at=started_at,
            heartbeat_s=heartbeat_s,
        )
    )
    console.print(
        f"Run [bold]{run_id}[/bold]: {len(models)} model(s), {len(sequences)} "
        f"sequence(s), {runs} run(s), {plan.total_turns} turns planned."
    )
    policy = RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        max_total_wait_s=settings.retry_max_wait_s,
        initial_backoff_s=settings.retry_initial_s,
        max_backoff_s=settings.retry_max_backoff_s,
    )
    totals = {m.name: plan.turns_for(m) for m in models}
    status, message = "completed", None
    stats: dict[str, ModelStats] = {}
    # The heartbeat stops before the run's end is recorded, so its last beat never races it.
    beats = Heartbeat(lambda: store.heartbeat(run_id, utcnow()), heartbeat_s, what=f"run {run_id}")
    with RunProgress(console, [m.name for m in models], totals) as bars, beats:
        runner = Runner(plan, store, run_id, endpoints, policy, concurrency, on_progress=bars.update)
        stats = runner.stats
        try:
            asyncio.run(runner.run())
        except KeyboardInterrupt:
            status, message = "interrupted", "stopped by Ctrl-C; re-run the same command to resume"
        except RunAborted as exc:
            status, message = "failed", str(exc)
    counts: dict[str, int] = {}
    for s in stats.values():
        for outcome, n in s.outcomes.items():
            counts[outcome] = counts.get(outcome, 0) + n
    aborted = [s.aborted for s in stats.values() if s.aborted]
    incomplete = any(s.done < s.total for s in stats.values())
    if status == "completed" and (incomplete or counts.get("error")):
        status = "incomplete"
        message = "some turns failed or were not played; re-run the same command to retry them"
    try:
        store.update_run(run_id, status=status, finished_at=utcnow(), counts=counts, message=message)
    except StoreError as exc:
        err_console.print(f"[red]could not record the run's end: {escape(str(exc))}[/red]")
    console.print(summary_table(stats))
    for s in stats.values():
        for line in s.messages[:10]:
            console.print(f"  [yellow]{escape(line)}[/yellow]", highlight=False)
        if len(s.messages) > 10:
            console.print(f"  ... and {len(s.messages) - 10} more (storybench-eval show {run_id})")
    for line in aborted:
        err_console.print(f"[bold red]{escape(line)}[/bold red]", highlight=False)
    if status == "failed":
        err_console.print(f"[bold red]run failed:[/bold red] {escape(str(message))}", highlight=False)
        return 1
    if status == "interrupted":
        err_console.print(f"[yellow]{message}[/yellow]")
        return 130
    if status == "incomplete":
        err_console.print(f"[yellow]{message}[/yellow]")
        return EXIT_INCOMPLETE
    console.print(f"Stored in the {store.describe()}.\nSee the turns with: storybench-eval show {run_id}")
    return 0


@cli.command("runs")
@click.option("--limit", default=50, show_default=True, help="Most recent runs to list.")
@mongo_option
@db_option
def list_runs(limit: int, mongo_uri: str | None, db_name: str) -> None:
    """List runs: id, start time, models, progress, status."""
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            console.print(format_runs_table(store.list_runs(limit=limit)))
    except StoreError as exc:
        fail(str(exc), code=1)


@cli.command()
@click.argument("run_id")
@mongo_option
@db_option
def show(run_id: str, mongo_uri: str | None, db_name: str) -> None:
    """Show one run (id or unique prefix) with its turns."""
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            found = store.get_run(run_id)
            if found is None:
                fail(f"no run '{run_id}'; list them with `storybench-eval runs`", code=1)
                return
            console.print(format_run_detail(found, store.run_responses(found["_id"])))
    except StoreError as exc:
        fail(str(exc), code=1)


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
                found = store.get_run(run_id)
                if found is None:
                    fail(f"no run '{run_id}'; list them with `storybench-eval runs`", code=1)
                    return
                run_id = found["_id"]
            n = export_responses(store, run_id, fmt, out, overwrite=force)
    except StoreError as exc:
        fail(str(exc), code=1)
    console.print(f"Wrote {n} row(s) to {out}")


def main() -> None:
    cli()


# Commands that live in their own packages (they import this module's helpers when they run).
from evaluator.judge.cli import judge_command  # noqa: E402
from evaluator.report.cli import report_command  # noqa: E402

cli.add_command(judge_command)
cli.add_command(report_command)


if __name__ == "__main__":
    main()
