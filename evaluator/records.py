"""The store's schema: one typed model per stored document kind, used to write AND to read.

Everything that crosses between the evaluator and MongoDB goes through these models, so the
runner, the judge, the store, the export and the report agree on one shape: the store writes
`model.to_doc()` and returns `Model.from_doc(doc)` (after `evaluator.store.migrations` upgraded
an older document). Each field's docstring is the documentation of the stored field
(docs/store.md points here). Cross-references are plain strings, never ObjectIds: the embedded
MongoDB-wire server cannot filter on ObjectId fields other than `_id`.

Bump SCHEMA_VERSION only together with a migration in evaluator/store/migrations.py.
It is one module of about 400 lines on purpose: the whole stored schema is read in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The version every document is written with; older ones are upgraded when read.
SCHEMA_VERSION = 2

# How a turn ended. Only "ok" lets the sequence continue; "error" is retried on resume;
# "empty" and "context_exhausted" are final outcomes that end the sequence and are reported.
Outcome = Literal["ok", "empty", "context_exhausted", "error"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
FINAL_OUTCOMES: frozenset[str] = frozenset({"ok", "empty", "context_exhausted"})
SEQUENCE_ENDING_OUTCOMES: frozenset[str] = frozenset({"empty", "context_exhausted"})

RunStatus = Literal["running", "completed", "incomplete", "interrupted", "failed"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)

TargetKind = Literal["response", "sequence"]

# A pairwise verdict is made or failed; a failed one keeps its reason and is retried on re-run.
PairStatus = Literal["ok", "failed"]

# How often a run refreshes `heartbeat_at` unless STORYBENCH_HEARTBEAT_S says otherwise. Readers
# use the interval a run recorded (`heartbeat_s`), this one for records written without it.
DEFAULT_HEARTBEAT_S = 30.0

_EXPERIMENT_KEY_RE = re.compile(r"^(?P<hash>.+)-g(?P<generation>\d+)$")


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


def parse_experiment_key(key: str) -> tuple[str, int] | None:
    """`<config hash>-g<generation>` -> (config hash, generation)."""
    match = _EXPERIMENT_KEY_RE.match(key)
    return (match["hash"], int(match["generation"])) if match else None


def response_id(exp_key: str, model: str, sequence: str, run_index: int, turn_index: int) -> str:
    """Deterministic `_id`: a resumed or retried turn maps to the same document on any MongoDB."""
    return f"{exp_key}:{model}:{sequence}:r{run_index}:t{turn_index}"


def sequence_run_id(exp_key: str, model: str, sequence: str, run_index: int) -> str:
    """Target id of a judgement of a whole sequence run: a turn's `_id` without `:t<turn>`."""
    return f"{exp_key}:{model}:{sequence}:r{run_index}"


class StoredDocument(BaseModel):
    """Common behaviour of every stored document: `_id` in MongoDB, `.id` in Python.

    Fields unknown to this version are ignored on read (a document written by a newer minor
    version still reads); a document whose `schema_version` is newer than SCHEMA_VERSION is
    refused by the migrations before it gets here.
    """

    model_config = ConfigDict(populate_by_name=True, use_attribute_docstrings=True, extra="ignore")
    collection: ClassVar[str]

    id: str = Field(default="", alias="_id")
    """The document's `_id`: a deterministic string, so writes are idempotent."""
    schema_version: int = SCHEMA_VERSION
    """The version of this schema the document was written with (older ones are upgraded on read)."""

    @field_validator("*", mode="after")
    @classmethod
    def _bson_time(cls, value: Any) -> Any:
        """Times as MongoDB keeps them: UTC, whole milliseconds (a naive time is UTC). So a
        document reads back equal to what was written, on any MongoDB."""
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.astimezone(timezone.utc).replace(microsecond=value.microsecond // 1000 * 1000)
        return value

    def to_doc(self) -> dict[str, Any]:
        """The MongoDB document (datetimes stay datetimes, `_id` by its Mongo name)."""
        return self.model_dump(by_alias=True)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Any:
        """Validate a stored (already upgraded) document into this model."""
        return cls.model_validate(doc)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Stored field names in declaration order (`_id` first): export columns and projections
        derive from this, so a new field needs no second list."""
        return tuple(f.alias or name for name, f in cls.model_fields.items())


class TextMetrics(BaseModel):
    """Judge-free figures of one answer, computed when the turn is stored (evaluator/text_metrics.py).

    Deterministic functions of the stored texts, so they can be recomputed for old turns
    (`storybench-eval metrics`) and compared across models without any judge.
    """

    model_config = ConfigDict(use_attribute_docstrings=True, extra="ignore")

    version: int
    """Definition version of these figures (evaluator/text_metrics.py METRICS_VERSION)."""
    words: int
    """Words in the answer (`<think>` blocks removed)."""
    distinct_1: float | None
    """Distinct words / words (None for an empty answer): low means repetitive."""
    distinct_2: float | None
    """Distinct word pairs / word pairs (None below two words)."""
    history_overlap: float | None
    """Share of the answer's word 4-grams already in the conversation's earlier answers (None on
    the first turn or below four words): high means the model copies its own history."""
    prompt_overlap: float | None
    """Share of the answer's word 4-grams found in this turn's user prompt (None below four words)."""


class ResponseRecord(StoredDocument):
    """One turn of one run of one sequence against one model (collection `responses`).

    Field order is the export's column order (evaluator/store/export.py): append new fields.
    """

    collection: ClassVar[str] = "responses"
    # The texts a summary pass leaves out (`Store.iter_responses(with_text=False)`).
    TEXT_FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response_raw", "response_text")

    run_id: str
    """The `runs` document of the invocation that wrote this turn."""
    experiment_key: str
    """`<config hash>-g<generation>`: the configuration and generation this turn belongs to."""
    config_hash: str
    """Hash of what determines an answer: endpoint, model id, generation parameters, sequence."""
    generation: int
    """1 + the number of `run --restart`s of this configuration before this turn was written."""
    model: str
    """Model entry name in config/models.yaml."""
    model_id: str
    """The model id the endpoint expects."""
    endpoint: str
    """Base URL of the endpoint; never the key."""
    sequence: str
    """Prompt sequence name (config/prompts.json)."""
    sequence_hash: str
    """Content hash of the sequence: an edited prompt is a new experiment."""
    run_index: int
    """Which of the runs of this sequence (0-based); run k uses seed + k."""
    seed: int | None
    """The seed sent with every turn of this run, when the model entry sets one."""
    turn_index: int
    """Position of this turn in the sequence (0-based)."""
    turn_name: str
    """The turn's name in the sequence."""
    outcome: Outcome
    """How the turn ended: ok, empty, context_exhausted (final) or error (retried on resume)."""
    finish_reason: str | None
    """The endpoint's finish reason (`stop`, `length`, ...)."""
    attempts: int
    """Requests made for this turn (retries included)."""
    error: str | None
    """What went wrong, for any outcome but ok; API keys masked."""
    messages_sent: int
    """Chat messages sent with this turn (system + every earlier turn + this one): proves full history."""
    prompt_tokens: int | None
    """Prompt tokens as the endpoint reported them."""
    completion_tokens: int | None
    """Completion tokens as the endpoint reported them."""
    cached_tokens: int | None
    """Prompt tokens the server reused from its cache, when reported."""
    prompt_tokens_estimated: int | None
    """Our count of the prompt before sending (the context budget)."""
    max_tokens_sent: int | None
    """The `max_tokens` sent, after capping to what fits the context."""
    latency_s: float | None
    """Seconds from sending to the last token."""
    ttft_s: float | None
    """Seconds from sending to the first token."""
    tokens_per_s: float | None
    """Completion tokens per second after the first token."""
    cost_usd: float | None = None
    """Cost from the model entry's prices; None when a price is missing."""

    started_at: datetime
    """When the first request of this turn was sent (UTC)."""
    finished_at: datetime
    """When the turn was recorded (UTC)."""
    params: dict[str, Any]
    """Generation parameters sent (temperature, top_p, seed, ...)."""
    server_timings: dict[str, Any] | None = None
    """The server's `timings` block (llama.cpp-style, incl. `cache_n`) when it sends one."""
    prompt: str
    """This turn's user text; the full history is rebuilt from earlier turns."""
    response_text: str
    """The answer with `<think>` blocks removed: what the next turn sends back."""
    response_raw: str
    """The answer as the endpoint returned it."""
    metrics: TextMetrics | None = None
    """Judge-free text figures of the answer; None for turns stored before they existed (or
    not ok): `storybench-eval metrics` computes them."""
    reasoning_tokens: int | None = None
    """Of `completion_tokens`, those a reasoning model spent thinking before its answer
    (`usage.completion_tokens_details.reasoning_tokens`; billed as output and already in
    `completion_tokens` and `cost_usd`); None when the endpoint does not report them."""
    replica: str | None = None
    """The server that answered this turn, its URL without credentials: one of the entry's
    `base_urls` (a conversation moves to another replica when its own is drained,
    evaluator/replicas.py), else its `base_url`; None in turns stored before replicas existed."""

    @model_validator(mode="after")
    def _default_id(self) -> ResponseRecord:
        if not self.id:
            self.id = response_id(
                self.experiment_key, self.model, self.sequence, self.run_index, self.turn_index
            )
        return self

    @property
    def conversation_id(self) -> str:
        """Target id of the judgements of the whole sequence run this turn belongs to."""
        return sequence_run_id(self.experiment_key, self.model, self.sequence, self.run_index)

    @property
    def conversation_key(self) -> tuple[str, str, str, int]:
        """(experiment_key, model, sequence, run_index): the store's key of one conversation."""
        return (self.experiment_key, self.model, self.sequence, self.run_index)


class ExperimentEntry(BaseModel):
    """One model x sequence of a run's plan and the generation it plays."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="ignore")

    model: str
    """Model entry name."""
    sequence: str
    """Sequence name."""
    experiment_key: str
    """`<config hash>-g<generation>`."""
    generation: int
    """The generation of the configuration this run plays."""


class RunRecord(StoredDocument):
    """One `storybench-eval run` invocation (collection `runs`)."""

    collection: ClassVar[str] = "runs"

    started_at: datetime
    """When the invocation started (UTC)."""
    status: RunStatus
    """As recorded: running, completed, incomplete, interrupted or failed. Readers derive
    "abandoned" for a "running" run whose process is gone (evaluator/store/liveness.py)."""
    command: str
    """The command line."""
    code_version: str
    """StoryBench version and git commit."""
    config_snapshot: dict[str, Any]
    """Models (env-var names of keys, never keys), sequences, runs, concurrency, settings."""
    config_hashes: dict[str, Any]
    """{"models": {name: fingerprint}, "sequences": {name: hash}, "experiments": {...}}."""
    experiments: list[ExperimentEntry]
    """The plan: every model x sequence with its experiment key and generation."""
    models: list[str]
    """Model names in the order given."""
    sequences: list[str]
    """Sequence names in the order given."""
    runs_per_sequence: int
    """Runs of each sequence."""
    planned_turns: int
    """Turns in the plan."""
    server_metadata: dict[str, Any] = Field(default_factory=dict)
    """Per local model: what our server reported (model file SHA-256, settings, versions)."""
    finished_at: datetime | None = None
    """When the run recorded its end; None while running (or when killed)."""
    counts: dict[str, int] = Field(default_factory=dict)
    """Outcome -> turns written by this invocation (recorded at its end; readers derive them
    from the stored turns for a run that never recorded its end)."""
    reused: int | None = None
    """Turns of the plan stored by earlier runs and kept, recorded at the end (None before)."""
    message: str | None = None
    """Why the run ended as it did, for any status but completed."""
    host: str | None = None
    """Host name of the run's process (None in records from before it existed)."""
    pid: int | None = None
    """Process id of the run's process."""
    heartbeat_at: datetime | None = None
    """Refreshed every `heartbeat_s` seconds while the run plays."""
    heartbeat_s: float | None = None
    """The heartbeat interval in force."""
    revision: int = 0
    """Bumped by every replace: updates are compare-and-swap on it (no `$set`, see the store)."""
    experiment_keys: list[str] = Field(default_factory=list)
    """Derived from `experiments`: flat strings, queryable on nx-27017 (which cannot match inside
    arrays of documents)."""
    experiment_config_hashes: list[str] = Field(default_factory=list)
    """Derived from `experiments`: the configuration hashes, for generation lookups."""
    flow_control: dict[str, Any] = Field(default_factory=dict)
    """Per endpoint at the run's end: the adaptive concurrency limit, its lowest value, how often
    it was halved, the most requests in flight, and the rate limits in force."""
    plan_key: str | None = None
    """Hash of the plan's conversations (every experiment key x sequence x run index played):
    the workers started on the same configuration share it, so `show` lists a run's workers
    (evaluator/store/liveness.py `co_workers`). None in records from before workers existed."""
    conversations_done: int | None = None
    """Conversations this worker played to their end (or found finished), refreshed with its
    heartbeat and recorded at its end; None before workers existed."""
    lease_s: float | None = None
    """How long this worker's claim on a conversation lasts without a renewal (evaluator/workers.py)."""

    @model_validator(mode="after")
    def _derive_lists(self) -> RunRecord:
        keys = [e.experiment_key for e in self.experiments]
        self.experiment_keys = keys
        parsed = (parse_experiment_key(k) for k in keys)
        self.experiment_config_hashes = list(dict.fromkeys(p[0] for p in parsed if p))
        return self


class EvaluationRecord(StoredDocument):
    """One judgement (collection `evaluations`): unique per (target, judge model, rubric version,
    repeat)."""

    collection: ClassVar[str] = "evaluations"

    target_id: str
    """A response `_id` (kind "response") or a sequence-run id (kind "sequence")."""
    target_kind: TargetKind
    """What was judged: one turn or a whole conversation."""
    judge_model: str
    """The judge's model entry name."""
    rubric_version: str
    """The rubric's version with its content hash: an edited rubric judges afresh."""
    scores: dict[str, Any]
    """Criterion -> score."""
    rationale: str
    """The judge's explanation."""
    created_at: datetime
    """When the judgement was stored (UTC)."""
    run_id: str | None = None
    """The run whose turns were judged."""
    details: dict[str, Any] = Field(default_factory=dict)
    """How the judgement was made: judge model id and endpoint, tokens, attempts, how much
    context was left out. Never a key."""
    repeat: int = 0
    """Which repeat of this judgement: 0 the first; `judge --repeat K` adds 1 .. K-1, each with
    its own seed (documents from before repeats existed read as 0)."""

    @model_validator(mode="after")
    def _default_id(self) -> EvaluationRecord:
        if not self.id:
            self.id = evaluation_id(self.target_id, self.judge_model, self.rubric_version, self.repeat)
        return self


def evaluation_id(target_id: str, judge_model: str, rubric_version: str, repeat: int = 0) -> str:
    """Deterministic `_id` of one judgement: (target, judge, rubric version, repeat); repeat 0
    has no suffix."""
    suffix = f"|r{repeat}" if repeat else ""
    return f"{target_id}|{judge_model}|{rubric_version}{suffix}"


def pairwise_id(first: str, second: str, judge_model: str, rubric_version: str, repeat: int = 0) -> str:
    """Deterministic `_id` of one ordered comparison: (conversation shown first, shown second,
    judge, rubric version, repeat). The other order of the same two conversations is another
    document; repeat 0 has no suffix."""
    suffix = f"|r{repeat}" if repeat else ""
    return f"{first}|{second}|{judge_model}|{rubric_version}{suffix}"


class PairwiseRecord(StoredDocument):
    """One side-by-side judgement of two whole conversations in one order (collection
    `pairwise`): unique per (conversation shown first, shown second, judge, rubric version,
    repeat).

    Both orders of a pair are stored as two documents; the leaderboard combines them (a pair
    whose two orders disagree in direction is a tie and a position flip).
    """

    collection: ClassVar[str] = "pairwise"

    first_conversation: str
    """Sequence-run id (`<experiment key>:<model>:<sequence>:r<run>`) of the conversation shown
    first ("A")."""
    second_conversation: str
    """Sequence-run id of the conversation shown second ("B")."""
    first_model: str
    """Model entry name of the conversation shown first."""
    second_model: str
    """Model entry name of the conversation shown second."""
    sequence: str
    """Prompt sequence name both conversations played."""
    sequence_hash: str
    """Content hash of that sequence: only conversations of the same prompts are compared."""
    run_index: int
    """The run index both conversations share (run k of each model uses its seed + k)."""
    judge_model: str
    """The judge's model entry name."""
    rubric_version: str
    """The rubric's version with its content hash (the pairwise block included)."""
    status: PairStatus
    """ok (a verdict) or failed (no verdict: `error` says why; retried by a re-run)."""
    verdict: str | None
    """The label the judge chose from the rubric's pairwise scale; None when failed."""
    score_first: float | None
    """The verdict as the first conversation's share: 1 (first much better) ... 0.5 (tie) ... 0."""
    rationale: str
    """The judge's explanation ("" when failed)."""
    error: str | None
    """Why no verdict was stored, for a failed comparison; API keys masked."""
    created_at: datetime
    """When the comparison was stored (UTC)."""
    details: dict[str, Any] = Field(default_factory=dict)
    """How it was judged: judge model id and endpoint, tokens, latency, cost, attempts. Never a key."""
    repeat: int = 0
    """Which repeat of this comparison: 0 the first; `compare --repeat K` adds 1 .. K-1."""

    @model_validator(mode="after")
    def _default_id(self) -> PairwiseRecord:
        if not self.id:
            self.id = pairwise_id(
                self.first_conversation,
                self.second_conversation,
                self.judge_model,
                self.rubric_version,
                self.repeat,
            )
        return self

    @property
    def pair_key(self) -> tuple[str, str]:
        """The two conversations, order-free: both orders of a pair share it."""
        a, b = sorted((self.first_conversation, self.second_conversation))
        return (a, b)


ClaimKind = Literal["conversation", "judgement", "comparison"]


class ClaimRecord(StoredDocument):
    """One piece of work held by one worker process (collection `claims`): a lease.

    Cooperating workers (`run`, `judge`, `compare` started on the same configuration and store)
    claim each conversation, judgement or comparison here before asking a model for it. Every
    write is one single-document operation: a claim is an insert on the deterministic `_id`
    (DuplicateKeyError: someone holds it), a renewal and a takeover replace the document only if
    its `revision` is still the one read, a release deletes it only if `owner` is still us. The
    document is gone once the work is done; a dead worker's claim stays until it expires and
    another worker takes it over (evaluator/store/leases.py).
    """

    collection: ClassVar[str] = "claims"

    kind: ClaimKind
    """What is claimed: a conversation (`run`), a judgement (`judge`) or a comparison (`compare`)."""
    owner: str
    """The worker holding it: a `run` worker's run id, or `judgement-<host>-<pid>-...` / `comparison-...`."""
    host: str
    """Host name of the owner's process."""
    pid: int
    """Process id of the owner's process: on the same host a dead pid frees the claim at once."""
    owner_started_at: datetime
    """When the owner's process started its work (UTC): a reused pid is not the owner."""
    claimed_at: datetime
    """When the current owner claimed it (UTC)."""
    expires_at: datetime
    """The lease's end (UTC, by the owner's clock): renewed by the owner's heartbeat; after it,
    any worker may take the claim over."""
    revision: int = 0
    """Bumped by every renewal and takeover: both replace only the revision they read, so of
    two racing writers exactly one wins."""
    takeovers: int = 0
    """How many times the claim passed from an expired (or dead) owner to another worker."""
    previous_owner: str | None = None
    """The owner it was taken over from, if any."""


DOCUMENT_KINDS: tuple[type[StoredDocument], ...] = (
    RunRecord,
    ResponseRecord,
    EvaluationRecord,
    PairwiseRecord,
    ClaimRecord,
)
