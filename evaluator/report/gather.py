"""Reading a run for its report: the run document, then its turns in two streamed passes.

The summary (counts, timings, judge scores, turn-by-turn table) comes first in the report but
needs every turn, and the transcripts need every answer. Holding all answers of a long run in
memory to do both at once is what this module avoids: pass one reads the turns without their
text and keeps only numbers; pass two reads them again with text, one batch of conversations at
a time, while the renderer writes them out. Both passes stream typed turns from the store
(`Store.iter_responses`, the summary pass without texts). Judgements are fetched per batch of
conversations (`Store.evaluations`), never all at once.

Nothing here writes to the store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from evaluator.records import EvaluationRecord, ResponseRecord, RunRecord, sequence_run_id
from evaluator.report.model import (
    Conversation,
    EndpointSummary,
    RunHeader,
    ServerSummary,
    Summary,
    Turn,
    UsagePoint,
)
from evaluator.report.stats import (
    ScoreAccumulator,
    SummaryAccumulator,
    TextMetricsAccumulator,
    TurnAccumulator,
    outcome_columns,
)
from evaluator.store.liveness import as_utc, run_state
from evaluator.store.store import Store

# Targets (turn ids + conversation ids) per judgement query; Store.evaluations chunks at 500 too.
BATCH_TARGETS = 500

ConversationKey = tuple[str, str, str, int]  # model, sequence, experiment_key, run_index


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def turns_per_sequence(run: RunRecord) -> dict[str, int]:
    """Turns of each sequence as the run's config snapshot recorded them (for "planned")."""
    out: dict[str, int] = {}
    for seq in run.config_snapshot.get("sequences") or []:
        if isinstance(seq, dict) and isinstance(seq.get("turns"), list):
            out[str(seq.get("name"))] = len(seq["turns"])
    return out


def system_prompts(run: RunRecord) -> dict[str, str]:
    """Each sequence's system prompt from the config snapshot: turns store only their user text."""
    out: dict[str, str] = {}
    for seq in run.config_snapshot.get("sequences") or []:
        if isinstance(seq, dict) and isinstance(seq.get("system"), str):
            out[str(seq.get("name"))] = seq["system"]
    return out


def _servers(run: RunRecord) -> list[ServerSummary]:
    """`server_metadata` is what our server reported (its own wire schema), read defensively."""
    out = []
    for model, meta in sorted(run.server_metadata.items()):
        if not isinstance(meta, dict):
            continue
        out.append(
            ServerSummary(
                model=str(model),
                sha256=_str(meta.get("sha256")),
                quantization=_str(meta.get("quantization")),
                n_ctx=_int(meta.get("n_ctx")),
                engine=_str(meta.get("engine")),
                n_parallel=_int(meta.get("n_parallel")),
                gguf=_str(meta.get("gguf_source")),
                llama_cpp_python=_str(_dict(meta.get("server")).get("llama_cpp_python_version")),
            )
        )
    return out


def _endpoints(run: RunRecord) -> list[EndpointSummary]:
    """As stored: the snapshot holds the env-var name of a key, never the key."""
    out = []
    for entry in run.config_snapshot.get("models") or []:
        if isinstance(entry, dict) and entry.get("name") is not None:
            out.append(
                EndpointSummary(str(entry["name"]), _str(entry.get("model")), _str(entry.get("base_url")))
            )
    return out


def header(run: RunRecord, *, now: datetime | None = None) -> RunHeader:
    """The run document's facts, with the status a reader should see (`run_state`)."""
    state = run_state(run, now=now)
    pid, host = run.pid, run.host
    return RunHeader(
        run_id=run.id,
        status=state.status,
        status_hint=state.hint,
        stored_status=run.status,
        command=run.command,
        code_version=run.code_version,
        started_at=as_utc(run.started_at),
        finished_at=as_utc(run.finished_at),
        process=None if pid is None and host is None else f"pid {pid} on {host}",
        message=run.message,
        models=list(run.models),
        sequences=list(run.sequences),
        runs_per_sequence=run.runs_per_sequence,
        planned_turns=run.planned_turns,
        endpoints=_endpoints(run),
        servers=_servers(run),
    )


def plan_keys(run: RunRecord) -> list[str]:
    """The run's experiment keys in the order its models and sequences were given."""
    models, sequences = run.models, run.sequences
    pairs = {e.experiment_key: (e.model, e.sequence) for e in run.experiments}

    def rank(key: str) -> tuple[int, int, str, str, str]:
        model, sequence = pairs.get(key, ("", ""))
        m = models.index(model) if model in models else len(models)
        s = sequences.index(sequence) if sequence in sequences else len(sequences)
        return (m, s, model, sequence, key)

    return sorted(dict.fromkeys(run.experiment_keys), key=rank)


def _stream(store: Store, run: RunRecord, with_text: bool) -> Iterator[Turn]:
    """Every turn of the run's plan (whichever invocation wrote it), in conversation order:
    one sorted cursor per experiment key (one model x sequence), in plan order."""
    for key in plan_keys(run):
        for record in store.iter_responses(key, with_text=with_text):
            yield Turn.of(record)


def _conversation_key(turn: ResponseRecord) -> ConversationKey:
    return (turn.model, turn.sequence, turn.experiment_key, turn.run_index)


def _batches(
    turns: Iterable[Turn],
) -> Iterator[list[tuple[ConversationKey, list[Turn]]]]:
    """Whole conversations, grouped so that one judgement query covers up to BATCH_TARGETS ids."""
    batch: list[tuple[ConversationKey, list[Turn]]] = []
    targets = 0
    for key, group in itertools.groupby(turns, key=_conversation_key):
        turns = list(group)
        batch.append((key, turns))
        targets += len(turns) + 1
        if targets >= BATCH_TARGETS:
            yield batch
            batch, targets = [], 0
    if batch:
        yield batch


def _judged(
    store: Store, batch: list[tuple[ConversationKey, list[Turn]]]
) -> dict[str, list[EvaluationRecord]]:
    """target id -> its judgements (ordered by judge, rubric version) for one batch."""
    targets: list[str] = []
    for (model, sequence, exp_key, run_index), turns in batch:
        targets.append(sequence_run_id(exp_key, model, sequence, run_index))
        targets.extend(t.id for t in turns)
    found: dict[str, list[EvaluationRecord]] = {}
    for judgement in store.evaluations(targets):
        found.setdefault(judgement.target_id, []).append(judgement)
    return found


def _conversation(
    key: ConversationKey,
    turns: list[Turn],
    judged: dict[str, list[EvaluationRecord]],
    planned: int | None,
    system: str | None,
) -> Conversation:
    model, sequence, exp_key, run_index = key
    for turn in turns:
        turn.judgements = judged.get(turn.response_id, [])
    conv = Conversation(
        model=model,
        sequence=sequence,
        run_index=run_index,
        experiment_key=exp_key,
        seed=turns[0].seed if turns else None,
        turns=turns,
        turns_planned=planned,
        system=system,
    )
    conv.judgements = judged.get(conv.key, [])
    return conv


def _walk(store: Store, run: RunRecord, with_text: bool) -> Iterator[Conversation]:
    planned, systems = turns_per_sequence(run), system_prompts(run)
    for batch in _batches(_stream(store, run, with_text)):
        judged = _judged(store, batch)
        for key, turns in batch:
            yield _conversation(key, turns, judged, planned.get(key[1]), systems.get(key[1]))


def conversations(store: Store, run: RunRecord) -> Iterator[Conversation]:
    """The transcripts, one conversation at a time, with their text and judgements."""
    return _walk(store, run, with_text=True)


@dataclass
class _Usage:
    ok: int = 0
    tokens: float = 0.0
    tokens_n: int = 0
    latency: float = 0.0
    latency_n: int = 0


class UsageAccumulator:
    """Completion tokens and latency of ok turns per (model, turn index), for the report's
    tokens-and-latency chart (a failed turn's numbers say nothing about the model)."""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, int], _Usage] = {}

    def add(self, model: str, turn: Turn) -> None:
        if turn.outcome != "ok":
            return
        cell = self._cells.setdefault((model, turn.turn_index), _Usage())
        cell.ok += 1
        if turn.completion_tokens is not None:
            cell.tokens += turn.completion_tokens
            cell.tokens_n += 1
        if turn.latency_s is not None:
            cell.latency += turn.latency_s
            cell.latency_n += 1

    def result(self, model_order: list[str]) -> list[UsagePoint]:
        def order(key: tuple[str, int]) -> tuple[int, str, int]:
            model, index = key
            return (model_order.index(model) if model in model_order else len(model_order), model, index)

        out = []
        for key in sorted(self._cells, key=order):
            c = self._cells[key]
            out.append(
                UsagePoint(
                    model=key[0],
                    turn_index=key[1],
                    ok_turns=c.ok,
                    completion_tokens_mean=c.tokens / c.tokens_n if c.tokens_n else None,
                    latency_mean=c.latency / c.latency_n if c.latency_n else None,
                )
            )
        return out


def summarize(store: Store, run: RunRecord, *, now: datetime | None = None) -> Summary:
    """Pass one: every number above the transcripts, reading no answer or prompt text."""
    head = header(run, now=now)
    groups, scores, per_turn = SummaryAccumulator(), ScoreAccumulator(), TurnAccumulator()
    usage, metrics = UsageAccumulator(), TextMetricsAccumulator()
    n_conversations = n_turns = written = reused = 0
    for conv in _walk(store, run, with_text=False):
        n_conversations += 1
        for turn in conv.turns:
            n_turns += 1
            if turn.run_id == run.id:
                written += 1
            elif turn.outcome != "error" and turn.finished_at < run.started_at:
                reused += 1
            groups.add(conv.model, conv.sequence, conv.experiment_key, conv.run_index, turn)
            per_turn.add_turn(conv.model, conv.sequence, turn)
            usage.add(conv.model, turn)
            metrics.add(conv.model, turn)
            for judgement in turn.judgements:
                scores.add(conv.model, conv.sequence, judgement)
                per_turn.add_judgement(conv.model, conv.sequence, turn.turn_index, judgement)
        for judgement in conv.judgements:
            scores.add(conv.model, conv.sequence, judgement)
    models = list(dict.fromkeys(head.models + [m for m, _ in groups.pairs()]))
    sequences = list(dict.fromkeys(head.sequences + [s for _, s in groups.pairs()]))
    plan = [(m, s) for m in head.models for s in head.sequences]
    return Summary(
        header=head,
        models=models,
        sequences=sequences,
        groups=groups.result(plan, head.runs_per_sequence, turns_per_sequence(run)),
        outcomes=outcome_columns(groups.outcomes_seen()),
        scores=scores.result(models, sequences),
        turn_rows=per_turn.result(sequences),
        conversations=n_conversations,
        turns_stored=n_turns,
        turns_written=written,
        turns_reused=reused,
        generated_at=now or datetime.now(timezone.utc),
        usage=usage.result(models),
        text_metrics=metrics.result(models),
    )
