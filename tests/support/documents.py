"""Builders of typed stored documents with realistic values, shared by every test folder.

One builder per document kind, so tests of the store, the runner, the judge and the report
build their records the same way (and a new required field is added in one place).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from evaluator.records import (
    EvaluationRecord,
    PairwiseRecord,
    ResponseRecord,
    RunRecord,
    StoredDocument,
    config_hash,
    experiment_key,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
CFG = config_hash({"name": "m1", "temperature": 0.7}, "seqhash")


def make_response(
    turn_index: int = 0,
    *,
    exp_key: str | None = None,
    model: str = "m1",
    sequence: str = "lighthouse",
    run_index: int = 0,
    outcome: str = "ok",
    text: str | None = None,
    run_id: str = "run-a",
    generation: int = 1,
    cfg: str = CFG,
) -> ResponseRecord:
    key = exp_key or experiment_key(cfg, generation)
    answer = f"Answer {turn_index} of {sequence}" if text is None else text
    return ResponseRecord(
        experiment_key=key,
        config_hash=cfg,
        generation=generation,
        run_id=run_id,
        model=model,
        model_id="smollm2-135m",
        endpoint="http://127.0.0.1:8000/v1",
        sequence=sequence,
        sequence_hash="seqhash",
        run_index=run_index,
        seed=100 + run_index,
        turn_index=turn_index,
        turn_name=f"turn-{turn_index}",
        prompt=f"Prompt {turn_index}",
        messages_sent=2 * turn_index + 2,
        response_raw=answer,
        response_text=answer,
        finish_reason="stop" if outcome == "ok" else None,
        prompt_tokens=40 + turn_index,
        completion_tokens=120,
        cached_tokens=30,
        prompt_tokens_estimated=41,
        max_tokens_sent=512,
        latency_s=1.25,
        ttft_s=0.1,
        tokens_per_s=96.0,
        attempts=1,
        outcome=outcome,  # type: ignore[arg-type]
        error="boom" if outcome == "error" else None,
        params={"temperature": 0.7, "stop": ["\n\n"], "extra_body": {"cache_prompt": True}},
        started_at=T0 + timedelta(seconds=turn_index),
        finished_at=T0 + timedelta(seconds=turn_index, milliseconds=1250),
        server_timings={"cache_n": 30} if outcome == "ok" else None,
        cost_usd=None,
    )


def make_run(run_id: str = "run-a", *, started: datetime = T0, experiments: Any = None) -> RunRecord:
    exps = experiments or [
        {"model": "m1", "sequence": "lighthouse", "experiment_key": experiment_key(CFG, 1), "generation": 1}
    ]
    return RunRecord(
        _id=run_id,
        started_at=started,
        status="running",
        command="storybench-eval run",
        code_version="0.1.0+test",
        config_snapshot={"runs": 1, "models": [{"name": "m1", "stream": True}]},
        config_hashes={"models": {"m1": "abc"}, "sequences": {"lighthouse": "seqhash"}},
        experiments=exps,
        models=["m1"],
        sequences=["lighthouse"],
        runs_per_sequence=1,
        planned_turns=3,
    )


def make_evaluation(
    target_id: str, judge: str = "judge-1", rubric: str = "v1", *, kind: str = "response"
) -> EvaluationRecord:
    return EvaluationRecord(
        target_id=target_id,
        target_kind=kind,  # type: ignore[arg-type]
        judge_model=judge,
        rubric_version=rubric,
        scores={"coherence": 4, "voice": 3.5},
        rationale='Keeps the lighthouse keeper\'s name, "Ada", consistent.',
        created_at=T0 + timedelta(hours=1),
    )


def make_pairwise(
    first: str = "k1-g1:m1:seq:r0",
    second: str = "k2-g1:m2:seq:r0",
    *,
    first_model: str = "m1",
    second_model: str = "m2",
    judge: str = "judge-1",
    rubric: str = "v1",
    score_first: float | None = 0.75,
    verdict: str | None = "A better",
    status: str = "ok",
    sequence_hash: str = "seqhash",
    run_index: int = 0,
    error: str | None = None,
) -> PairwiseRecord:
    return PairwiseRecord(
        first_conversation=first,
        second_conversation=second,
        first_model=first_model,
        second_model=second_model,
        sequence="seq",
        sequence_hash=sequence_hash,
        run_index=run_index,
        judge_model=judge,
        rubric_version=rubric,
        status=status,  # type: ignore[arg-type]
        verdict=verdict,
        score_first=score_first,
        rationale="A keeps the keeper's name; B renames her." if status == "ok" else "",
        error=error,
        created_at=T0 + timedelta(hours=2),
    )


D = TypeVar("D", bound=StoredDocument)


def replaced(record: D, **changes: Any) -> D:
    """`record` with `changes`, validated again (so `_id=""` recomputes a turn's id)."""
    if "_id" in changes:
        changes["id"] = changes.pop("_id")
    return type(record).model_validate(record.model_dump() | changes)
