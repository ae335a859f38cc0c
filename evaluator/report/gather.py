"""Reading a run for its report: the run document, then its turns in two streamed passes.

The summary (counts, timings, judge scores, turn-by-turn table) comes first in the report but
needs every turn, and the transcripts need every answer. Holding all answers of a long run in
memory to do both at once is what this module avoids: pass one reads the turns without their
text and keeps only numbers; pass two reads them again with text, one batch of conversations at
a time, while the renderer writes them out. `Store.responses` returns a list, so both passes
use a sorted cursor on the same collection with a projection instead. Judgements are fetched
per batch of conversations (`Store.evaluations`), never all at once.

Nothing here writes to the store.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import ConnectionFailure, PyMongoError

from evaluator.records import sequence_run_id
from evaluator.report.model import (
    Conversation,
    EndpointSummary,
    Judgement,
    RunHeader,
    ServerSummary,
    Summary,
    Turn,
)
from evaluator.report.stats import (
    ScoreAccumulator,
    SummaryAccumulator,
    TurnAccumulator,
    number,
    outcome_columns,
)
from evaluator.store.connect import short_cause
from evaluator.store.errors import StoreError, StoreUnavailableError
from evaluator.store.liveness import as_utc, run_state
from evaluator.store.store import RESPONSES, Store, run_experiment_keys

# Within one experiment key (one model x sequence): a conversation's turns together, in order.
_ORDER = [("model", ASCENDING), ("sequence", ASCENDING), ("run_index", ASCENDING), ("turn_index", ASCENDING)]
_NUMBERS = (
    "_id", "experiment_key", "model", "sequence", "run_index", "turn_index", "turn_name", "seed",
    "outcome", "error", "finish_reason", "attempts", "messages_sent", "prompt_tokens",
    "completion_tokens", "cached_tokens", "prompt_tokens_estimated", "max_tokens_sent",
    "latency_s", "ttft_s", "tokens_per_s", "cost_usd",
)  # fmt: skip
SUMMARY_FIELDS: dict[str, int] = dict.fromkeys(_NUMBERS, 1)
TRANSCRIPT_FIELDS: dict[str, int] = dict.fromkeys((*_NUMBERS, "prompt", "response_text", "response_raw"), 1)
# Targets (turn ids + conversation ids) per judgement query; Store.evaluations chunks at 500 too.
BATCH_TARGETS = 500
CURSOR_BATCH = 200

ConversationKey = tuple[str, str, str, int]  # model, sequence, experiment_key, run_index


@contextlib.contextmanager
def _reading(store: Store, what: str) -> Iterator[None]:
    """pymongo errors -> StoreError naming the database (password hidden) and the next step."""
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailableError(
            f"the database at {store.display_uri} stopped answering while {what}: "
            f"{short_cause(exc)}; run the report again once it is back"
        ) from exc
    except PyMongoError as exc:
        raise StoreError(f"the database at {store.display_uri} refused {what}: {short_cause(exc)}") from exc


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def turns_per_sequence(run: dict[str, Any]) -> dict[str, int]:
    """Turns of each sequence as the run's config snapshot recorded them (for "planned")."""
    out: dict[str, int] = {}
    for seq in _dict(run.get("config_snapshot")).get("sequences") or []:
        if isinstance(seq, dict) and isinstance(seq.get("turns"), list):
            out[str(seq.get("name"))] = len(seq["turns"])
    return out


def system_prompts(run: dict[str, Any]) -> dict[str, str]:
    """Each sequence's system prompt from the config snapshot: turns store only their user text."""
    out: dict[str, str] = {}
    for seq in _dict(run.get("config_snapshot")).get("sequences") or []:
        if isinstance(seq, dict) and isinstance(seq.get("system"), str):
            out[str(seq.get("name"))] = seq["system"]
    return out


def _servers(run: dict[str, Any]) -> list[ServerSummary]:
    out = []
    for model, meta in sorted(_dict(run.get("server_metadata")).items()):
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


def _endpoints(run: dict[str, Any]) -> list[EndpointSummary]:
    """As stored: the snapshot holds the env-var name of a key, never the key."""
    out = []
    for entry in _dict(run.get("config_snapshot")).get("models") or []:
        if isinstance(entry, dict) and entry.get("name") is not None:
            out.append(
                EndpointSummary(str(entry["name"]), _str(entry.get("model")), _str(entry.get("base_url")))
            )
    return out


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def header(run: dict[str, Any], *, now: datetime | None = None) -> RunHeader:
    """The run document's facts, with the status a reader should see (`run_state`)."""
    state = run_state(run, now=now)
    pid, host = run.get("pid"), run.get("host")
    return RunHeader(
        run_id=str(run.get("_id", "")),
        status=state.status,
        status_hint=state.hint,
        stored_status=str(run.get("status") or ""),
        command=str(run.get("command") or ""),
        code_version=str(run.get("code_version") or ""),
        started_at=as_utc(run.get("started_at")),
        finished_at=as_utc(run.get("finished_at")),
        process=None if pid is None and host is None else f"pid {pid} on {host}",
        message=_str(run.get("message")),
        models=_names(run.get("models")),
        sequences=_names(run.get("sequences")),
        runs_per_sequence=_int(run.get("runs_per_sequence")),
        planned_turns=_int(run.get("planned_turns")),
        endpoints=_endpoints(run),
        servers=_servers(run),
    )


def turn_from_doc(doc: dict[str, Any]) -> Turn:
    text = doc.get("response_text")
    answer = "" if text is None else str(text)
    raw = doc.get("response_raw")
    return Turn(
        response_id=str(doc.get("_id", "")),
        turn_index=_int(doc.get("turn_index")) or 0,
        turn_name=str(doc.get("turn_name") or ""),
        outcome=str(doc.get("outcome") or "unknown"),
        error=_str(doc.get("error")),
        finish_reason=_str(doc.get("finish_reason")),
        attempts=_int(doc.get("attempts")),
        messages_sent=_int(doc.get("messages_sent")),
        prompt_tokens=_int(doc.get("prompt_tokens")),
        completion_tokens=_int(doc.get("completion_tokens")),
        cached_tokens=_int(doc.get("cached_tokens")),
        prompt_tokens_estimated=_int(doc.get("prompt_tokens_estimated")),
        max_tokens_sent=_int(doc.get("max_tokens_sent")),
        latency_s=number(doc.get("latency_s")),
        ttft_s=number(doc.get("ttft_s")),
        tokens_per_s=number(doc.get("tokens_per_s")),
        cost_usd=number(doc.get("cost_usd")),
        prompt=str(doc.get("prompt") or ""),
        answer=answer,
        raw_answer=str(raw) if isinstance(raw, str) and raw.strip() and raw != answer else None,
    )


def judgement_from_doc(doc: dict[str, Any]) -> Judgement:
    return Judgement(
        target_kind=str(doc.get("target_kind") or "response"),
        judge_model=str(doc.get("judge_model") or ""),
        rubric_version=str(doc.get("rubric_version") or ""),
        scores=_dict(doc.get("scores")),
        rationale=str(doc.get("rationale") or ""),
    )


def plan_keys(run: dict[str, Any]) -> list[str]:
    """The run's experiment keys in the order its models and sequences were given."""
    models, sequences = _names(run.get("models")), _names(run.get("sequences"))
    pairs = {
        str(e["experiment_key"]): (str(e.get("model", "")), str(e.get("sequence", "")))
        for e in run.get("experiments") or []
        if isinstance(e, dict) and "experiment_key" in e
    }

    def rank(key: str) -> tuple[int, int, str, str, str]:
        model, sequence = pairs.get(key, ("", ""))
        m = models.index(model) if model in models else len(models)
        s = sequences.index(sequence) if sequence in sequences else len(sequences)
        return (m, s, model, sequence, key)

    return sorted(dict.fromkeys(run_experiment_keys(run)), key=rank)


def _stream(store: Store, run: dict[str, Any], fields: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Every turn of the run's plan (whichever invocation wrote it), in conversation order:
    one sorted cursor per experiment key (one model x sequence), in plan order."""
    for key in plan_keys(run):
        with _reading(store, f"reading the turns of run {run.get('_id')}"):
            cursor = store.db[RESPONSES].find(
                {"experiment_key": key}, projection=fields, batch_size=CURSOR_BATCH
            )
            with cursor.sort(_ORDER):  # closed even when the reader stops early
                yield from cursor


def _conversation_key(doc: dict[str, Any]) -> ConversationKey:
    return (
        str(doc.get("model", "")),
        str(doc.get("sequence", "")),
        str(doc.get("experiment_key", "")),
        _int(doc.get("run_index")) or 0,
    )


def _batches(
    docs: Iterable[dict[str, Any]],
) -> Iterator[list[tuple[ConversationKey, list[dict[str, Any]]]]]:
    """Whole conversations, grouped so that one judgement query covers up to BATCH_TARGETS ids."""
    batch: list[tuple[ConversationKey, list[dict[str, Any]]]] = []
    targets = 0
    for key, group in itertools.groupby(docs, key=_conversation_key):
        turns = list(group)
        batch.append((key, turns))
        targets += len(turns) + 1
        if targets >= BATCH_TARGETS:
            yield batch
            batch, targets = [], 0
    if batch:
        yield batch


def _judged(
    store: Store, batch: list[tuple[ConversationKey, list[dict[str, Any]]]]
) -> dict[str, list[Judgement]]:
    """target id -> its judgements (ordered by judge, rubric version) for one batch."""
    targets: list[str] = []
    for (model, sequence, exp_key, run_index), docs in batch:
        targets.append(sequence_run_id(exp_key, model, sequence, run_index))
        targets.extend(str(d.get("_id")) for d in docs)
    found: dict[str, list[Judgement]] = {}
    for doc in store.evaluations(targets):
        found.setdefault(str(doc.get("target_id")), []).append(judgement_from_doc(doc))
    return found


def _conversation(
    key: ConversationKey,
    docs: list[dict[str, Any]],
    judged: dict[str, list[Judgement]],
    planned: int | None,
    system: str | None,
) -> Conversation:
    model, sequence, exp_key, run_index = key
    turns = [turn_from_doc(d) for d in docs]
    for turn in turns:
        turn.judgements = judged.get(turn.response_id, [])
    conv = Conversation(
        model=model,
        sequence=sequence,
        run_index=run_index,
        experiment_key=exp_key,
        seed=_int(docs[0].get("seed")) if docs else None,
        turns=turns,
        turns_planned=planned,
        system=system,
    )
    conv.judgements = judged.get(conv.key, [])
    return conv


def _walk(store: Store, run: dict[str, Any], fields: dict[str, int]) -> Iterator[Conversation]:
    planned, systems = turns_per_sequence(run), system_prompts(run)
    for batch in _batches(_stream(store, run, fields)):
        judged = _judged(store, batch)
        for key, docs in batch:
            yield _conversation(key, docs, judged, planned.get(key[1]), systems.get(key[1]))


def conversations(store: Store, run: dict[str, Any]) -> Iterator[Conversation]:
    """The transcripts, one conversation at a time, with their text and judgements."""
    return _walk(store, run, TRANSCRIPT_FIELDS)


def summarize(store: Store, run: dict[str, Any], *, now: datetime | None = None) -> Summary:
    """Pass one: every number above the transcripts, reading no answer or prompt text."""
    head = header(run, now=now)
    groups, scores, per_turn = SummaryAccumulator(), ScoreAccumulator(), TurnAccumulator()
    n_conversations = n_turns = 0
    for conv in _walk(store, run, SUMMARY_FIELDS):
        n_conversations += 1
        for turn in conv.turns:
            n_turns += 1
            groups.add(conv.model, conv.sequence, conv.experiment_key, conv.run_index, turn)
            per_turn.add_turn(conv.model, conv.sequence, turn)
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
        generated_at=now or datetime.now(timezone.utc),
    )
