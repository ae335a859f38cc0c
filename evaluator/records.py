"""The store's schema: the documents the evaluator writes and the keys that make writes idempotent.

Everything that crosses from the run loop into MongoDB goes through these types, so the store
and the runner agree on one shape. Cross-references are plain strings, never ObjectIds: the
embedded MongoDB-wire server cannot filter on ObjectId fields other than `_id`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

# How a turn ended. Only "ok" lets the sequence continue; "error" is retried on resume;
# "empty" and "context_exhausted" are final outcomes that end the sequence and are reported.
Outcome = Literal["ok", "empty", "context_exhausted", "error"]
FINAL_OUTCOMES: frozenset[str] = frozenset({"ok", "empty", "context_exhausted"})
SEQUENCE_ENDING_OUTCOMES: frozenset[str] = frozenset({"empty", "context_exhausted"})

RUN_STATUSES = ("running", "completed", "incomplete", "interrupted", "failed")

# How often a run refreshes `heartbeat_at` unless STORYBENCH_HEARTBEAT_S says otherwise. Readers
# use the interval a run recorded (`heartbeat_s`), this one for records written without it.
DEFAULT_HEARTBEAT_S = 30.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def stable_hash(obj: Any) -> str:
    """SHA-256 of a canonical JSON rendering, so dict ordering never changes a key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def config_hash(model_fingerprint: dict[str, Any], sequence_hash: str) -> str:
    """What determines an answer: the model entry with its generation parameters and the prompts.

    A changed prompt or parameter yields a new hash and so a fresh experiment; the same
    configuration yields the same hash and resumes.
    """
    return stable_hash({"model": model_fingerprint, "sequence": sequence_hash})[:32]


def experiment_key(cfg_hash: str, generation: int) -> str:
    """`run --restart` bumps the generation: same configuration, new results, old ones kept."""
    return f"{cfg_hash}-g{generation}"


def response_id(exp_key: str, model: str, sequence: str, run_index: int, turn_index: int) -> str:
    """Deterministic `_id`: a resumed or retried turn maps to the same document on any MongoDB."""
    return f"{exp_key}:{model}:{sequence}:r{run_index}:t{turn_index}"


def sequence_run_id(exp_key: str, model: str, sequence: str, run_index: int) -> str:
    """Target id of a judgement of a whole sequence run: a turn's `_id` without `:t<turn>`."""
    return f"{exp_key}:{model}:{sequence}:r{run_index}"


@dataclass
class ResponseRecord:
    """One turn of one run of one sequence against one model (collection `responses`)."""

    experiment_key: str
    config_hash: str
    generation: int
    run_id: str  # the `runs` document of the invocation that wrote this turn
    model: str  # entry name in config/models.yaml
    model_id: str  # id the endpoint expects
    endpoint: str  # base URL, never the key
    sequence: str
    sequence_hash: str
    run_index: int
    seed: int | None
    turn_index: int
    turn_name: str
    prompt: str  # this turn's user text; the full history is rebuilt from earlier turns
    messages_sent: int  # number of chat messages sent (proves full history)
    response_raw: str
    response_text: str  # `<think>` blocks removed
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None  # prompt tokens the server reused from its cache, when reported
    prompt_tokens_estimated: int | None  # our count before sending (context budget)
    max_tokens_sent: int | None
    latency_s: float | None
    ttft_s: float | None
    tokens_per_s: float | None
    attempts: int
    outcome: Outcome
    error: str | None
    params: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    server_timings: dict[str, Any] | None = None
    cost_usd: float | None = None
    _id: str = field(default="")

    def __post_init__(self) -> None:
        if not self._id:
            self._id = response_id(
                self.experiment_key, self.model, self.sequence, self.run_index, self.turn_index
            )

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunRecord:
    """One `storybench-eval run` invocation (collection `runs`)."""

    _id: str
    started_at: datetime
    status: str
    command: str
    code_version: str
    config_snapshot: dict[str, Any]  # models (no keys), sequences, runs, concurrency
    config_hashes: dict[str, Any]  # {"models": {name: fingerprint hash}, "sequences": {name: hash}}
    experiments: list[dict[str, Any]]  # [{model, sequence, experiment_key, generation}]
    models: list[str]
    sequences: list[str]
    runs_per_sequence: int
    planned_turns: int
    server_metadata: dict[str, Any] = field(default_factory=dict)  # per local model
    finished_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)  # outcome -> turns written this run
    message: str | None = None
    # Where the run's process lives and when it last said so: a run whose process was killed
    # never records its end, and these let `runs`/`show` tell it from a live one. None in
    # records written before they existed.
    host: str | None = None  # socket.gethostname()
    pid: int | None = None
    heartbeat_at: datetime | None = None  # refreshed every heartbeat_s seconds while it plays
    heartbeat_s: float | None = None

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvaluationRecord:
    """One judgement (collection `evaluations`): unique per (target, judge model, rubric version)."""

    target_id: str  # a response `_id` or a sequence-run key
    target_kind: Literal["response", "sequence"]
    judge_model: str
    rubric_version: str
    scores: dict[str, Any]
    rationale: str
    created_at: datetime
    run_id: str | None = None
    _id: str = field(default="")

    def __post_init__(self) -> None:
        if not self._id:
            self._id = f"{self.target_id}|{self.judge_model}|{self.rubric_version}"

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)
