"""Run a whole evaluation: the public entry point that `storybench-eval run` and the tests call.

One call plays a plan against probed endpoints and records it: the `runs` document (plan,
config snapshot, server metadata, process and heartbeat), the turns (through the Runner), and
the run's end (status, counts, message). It prints progress and the summary on the console,
as the command shows them, and returns the outcome with the exit code the command uses.

Every call is one worker (evaluator/workers.py): it claims each conversation before playing it,
so any number of `run` processes on the same configuration and store share the plan. Each
worker writes its own `runs` document (its process, heartbeat, counts and end, as one process
always did), and the workers of one plan share its `plan_key`: `show` lists them together. One
document per worker, rather than one run with a list of workers, keeps every write to a run
document with the one process that owns it (no contended updates, no run that must be joined
or closed by whoever comes last), and a killed worker's document reads "abandoned" on its own.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from evaluator.cli_common import (
    EXIT_FAILED,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    code_version,
    console,
    err_console,
)
from evaluator.client import RetryPolicy
from evaluator.config import EvalSettings, ModelEntry, Sequence
from evaluator.endpoint import Endpoint
from evaluator.heartbeat import Heartbeat, process_identity
from evaluator.plan import Plan, build_plan, model_config_hashes
from evaluator.progress import RunProgress, run_summary_table
from evaluator.records import (
    DEFAULT_HEARTBEAT_S,
    ExperimentEntry,
    RunRecord,
    RunStatus,
    sequence_run_id,
    stable_hash,
    utcnow,
)
from evaluator.runner import ModelStats, RunAborted, Runner
from evaluator.store import Store, StoreError
from evaluator.workers import LEASE_INTERVALS, Worker

# Lines of per-model messages printed after the summary; `show RUN` has them all.
SHOWN_MESSAGES = 10


@dataclass(frozen=True)
class Evaluation:
    """What to play: the validated configuration and the command line's choices."""

    models: list[ModelEntry]
    sequences: list[Sequence]
    settings: EvalSettings
    runs: int
    concurrency: int
    restart: bool = False
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    limit: int | None = None  # `run --limit N`: only the plan's first N conversations
    lease_s: float | None = None  # a claim's life unrenewed; None: LEASE_INTERVALS heartbeats

    @property
    def lease_seconds(self) -> float:
        return self.lease_s if self.lease_s is not None else LEASE_INTERVALS * self.heartbeat_s


@dataclass
class EvaluationResult:
    """How a run ended, with the exit code `storybench-eval run` returns for it."""

    run_id: str
    status: RunStatus
    message: str | None
    exit_code: int
    stats: dict[str, ModelStats] = field(default_factory=dict)


def snapshot(evaluation: Evaluation) -> dict[str, Any]:
    """Everything that shaped the run; model entries hold env-var names, never keys."""
    return {
        "models": [m.model_dump(mode="json") for m in evaluation.models],
        "sequences": [s.model_dump(mode="json") for s in evaluation.sequences],
        "runs": evaluation.runs,
        "concurrency": evaluation.concurrency,
        "settings": evaluation.settings.model_dump(mode="json"),
        "limit": evaluation.limit,
    }


def plan_for(store: Store, evaluation: Evaluation) -> Plan:
    """The plan at the generation to play: the current one (resume) or a new one (--restart)."""
    hashes = model_config_hashes(evaluation.models, evaluation.sequences)
    generations = {
        cfg: (store.next_generation(cfg) if evaluation.restart else store.current_generation(cfg))
        for cfg in set(hashes.values())
    }
    return build_plan(
        evaluation.models, evaluation.sequences, evaluation.runs, generations, limit=evaluation.limit
    )


def plan_key(plan: Plan) -> str:
    """What the workers of one plan share: a hash of its conversations (at their generations)."""
    conversations = sorted(
        sequence_run_id(i.experiment_key, i.model.name, i.sequence.name, i.run_index) for i in plan.items
    )
    return stable_hash(conversations)[:24]


def run_record(run_id: str, evaluation: Evaluation, plan: Plan, endpoints: dict[str, Endpoint]) -> RunRecord:
    host, pid = process_identity()
    started_at = utcnow()
    models, sequences = evaluation.models, evaluation.sequences
    return RunRecord(
        _id=run_id,
        started_at=started_at,
        status="running",
        command=" ".join(["storybench-eval", *sys.argv[1:]]),
        code_version=code_version(),
        config_snapshot=snapshot(evaluation),
        config_hashes={
            "models": {m.name: m.fingerprint() for m in models},
            "sequences": {s.name: s.content_hash for s in sequences},
            "experiments": model_config_hashes(models, sequences),
        },
        experiments=[
            ExperimentEntry(model=m, sequence=s, experiment_key=k, generation=g)
            for (m, s, k, g) in sorted(
                {(i.model.name, i.sequence.name, i.experiment_key, i.generation) for i in plan.items}
            )
        ],
        models=[m.name for m in models],
        sequences=[s.name for s in sequences],
        runs_per_sequence=evaluation.runs,
        planned_turns=plan.total_turns,
        server_metadata={name: e.metadata for name, e in endpoints.items() if e.metadata},
        host=host,
        pid=pid,
        heartbeat_at=started_at,
        heartbeat_s=evaluation.heartbeat_s,
        plan_key=plan_key(plan),
        conversations_done=0,
        lease_s=evaluation.lease_seconds,
    )


def evaluate(store: Store, evaluation: Evaluation, endpoints: dict[str, Endpoint]) -> EvaluationResult:
    """Play `evaluation` against `endpoints` (by model name), storing every turn; resumable.

    Raises StoreError when the run cannot even be recorded; once it is, every ending
    (completed, incomplete, interrupted, failed) is recorded and returned.
    """
    plan = plan_for(store, evaluation)
    run_id = utcnow().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    store.create_run(run_record(run_id, evaluation, plan, endpoints))
    models = evaluation.models
    console.print(
        f"Run [bold]{run_id}[/bold]: {len(models)} model(s), {len(evaluation.sequences)} "
        f"sequence(s), {evaluation.runs} run(s), {plan.total_turns} turns planned."
    )
    policy = RetryPolicy.from_settings(evaluation.settings)
    totals = {m.name: plan.turns_for(m) for m in models}
    status: RunStatus = "completed"
    message: str | None = None
    worker = Worker(store, "conversation", evaluation.lease_seconds, owner=run_id)
    bars = RunProgress(console, [m.name for m in models], totals)
    runner = Runner(
        plan, store, run_id, endpoints, policy, evaluation.concurrency, on_progress=bars.update, worker=worker
    )

    def beat() -> bool:
        """Renew this worker's claims first (a late renewal lets another worker take over),
        then the run's own heartbeat with the conversations done so far."""
        try:
            worker.renew_all()
        finally:
            alive = store.heartbeat(run_id, utcnow(), conversations_done=runner.conversations_done)
        return alive

    # The heartbeat stops before the run's end is recorded, so its last beat never races it.
    beats = Heartbeat(beat, evaluation.heartbeat_s, what=f"run {run_id}")
    with bars, beats:
        try:
            asyncio.run(runner.run())
        except KeyboardInterrupt:
            status, message = "interrupted", "stopped by Ctrl-C; re-run the same command to resume"
        except RunAborted as exc:
            status, message = "failed", str(exc)
        finally:
            worker.release_all()  # claims of an interrupted run: free for the others at once
    stats = runner.stats
    counts: dict[str, int] = {}
    for s in stats.values():
        for outcome, n in s.outcomes.items():
            counts[outcome] = counts.get(outcome, 0) + n
    incomplete = any(s.done < s.total for s in stats.values())
    if status == "completed" and (incomplete or counts.get("error")):
        status = "incomplete"
        message = "some turns failed or were not played; re-run the same command to retry them"
    if worker.store_gone:  # recording the end would only wait out the same server selection
        err_console.print("[red]the run's end is not recorded: the store stopped answering; "
                          "`runs` will show this run as abandoned[/red]")  # fmt: skip
    else:
        _record_end(store, run_id, status, message, counts, stats, runner)
    code = _report_end(store, run_id, status, message, stats)
    return EvaluationResult(run_id, status, message, code, stats)


def _record_end(
    store: Store,
    run_id: str,
    status: RunStatus,
    message: str | None,
    counts: dict[str, int],
    stats: dict[str, ModelStats],
    runner: Runner,
) -> None:
    try:
        store.update_run(
            run_id,
            status=status,
            finished_at=utcnow(),
            counts=counts,
            reused=sum(s.reused for s in stats.values()),
            message=message,
            flow_control=runner.flow_snapshot(),
            conversations_done=runner.conversations_done,
        )
    except StoreError as exc:
        err_console.print(f"[red]could not record the run's end: {escape(str(exc))}[/red]")


def _report_end(
    store: Store, run_id: str, status: RunStatus, message: str | None, stats: dict[str, ModelStats]
) -> int:
    """The summary, per-model messages and the closing line; the exit code for `status`."""
    console.print(run_summary_table(stats))
    for s in stats.values():
        for line in s.messages[:SHOWN_MESSAGES]:
            console.print(f"  [yellow]{escape(line)}[/yellow]", highlight=False)
        if len(s.messages) > SHOWN_MESSAGES:
            console.print(
                f"  ... and {len(s.messages) - SHOWN_MESSAGES} more (storybench-eval show {run_id})"
            )
    for s in stats.values():
        if s.aborted:
            err_console.print(f"[bold red]{escape(s.aborted)}[/bold red]", highlight=False)
    if status == "failed":
        err_console.print(f"[bold red]run failed:[/bold red] {escape(str(message))}", highlight=False)
        return EXIT_FAILED
    if status == "interrupted":
        err_console.print(f"[yellow]{message}[/yellow]")
        return EXIT_INTERRUPTED
    if status == "incomplete":
        err_console.print(f"[yellow]{message}[/yellow]")
        return EXIT_INCOMPLETE
    console.print(f"Stored in the {store.describe()}.\nSee the turns with: storybench-eval show {run_id}")
    return EXIT_OK
