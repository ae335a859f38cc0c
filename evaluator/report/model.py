"""The report's data: typed values gathered from the store, shared by the HTML and Markdown writers.

Everything here is plain data so that the two renderers show the same numbers and the
aggregation can be tested without rendering. Text fields hold stored (untrusted) strings as
they are; escaping is the renderers' job, done once at output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pydantic import Field

from evaluator.charts import Chart, TurnPoint, TurnSeries, usage_by_turn_chart
from evaluator.records import EvaluationRecord, ResponseRecord, sequence_run_id


@dataclass(frozen=True)
class ServerSummary:
    """What identifies a local model's weights and settings (from `server_metadata`)."""

    model: str
    sha256: str | None
    quantization: str | None
    n_ctx: int | None
    engine: str | None
    n_parallel: int | None
    gguf: str | None
    llama_cpp_python: str | None


@dataclass(frozen=True)
class EndpointSummary:
    """Where a model was asked, as stored in the run's config snapshot (never a key)."""

    model: str
    model_id: str | None
    base_url: str | None


@dataclass(frozen=True)
class RunHeader:
    run_id: str
    status: str  # as shown: a stored "running" whose process is gone reads "abandoned"
    status_hint: str | None
    stored_status: str
    command: str
    code_version: str
    started_at: datetime | None
    finished_at: datetime | None
    process: str | None
    message: str | None
    models: list[str]
    sequences: list[str]
    runs_per_sequence: int | None
    planned_turns: int | None
    endpoints: list[EndpointSummary]
    servers: list[ServerSummary]


@dataclass(frozen=True)
class GroupSummary:
    """One model x sequence of a run: what was played and how fast.

    Latency, time to first token and tokens/s are over "ok" turns (a failed request's timing
    says nothing about the model); cache reuse and cost over every turn that reports them.
    """

    model: str
    sequence: str
    conversations: int  # sequence runs with at least one stored turn
    runs_planned: int | None
    turns_planned: int | None
    turns_stored: int
    outcomes: dict[str, int]
    latency_mean: float | None
    latency_p90: float | None
    ttft_mean: float | None
    tokens_per_s_mean: float | None
    prompt_tokens: int  # over turns reporting both prompt and cached tokens
    cached_tokens: int
    cost_usd: float | None  # None when no turn has a price
    cost_turns: int  # turns with a known cost

    @property
    def not_stored(self) -> int | None:
        """Planned turns with no record: never reached after a sequence-ending outcome, or
        not played yet."""
        if self.turns_planned is None:
            return None
        return max(self.turns_planned - self.turns_stored, 0)

    @property
    def cached_share(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


@dataclass(frozen=True)
class CriterionStat:
    mean: float
    count: int


@dataclass(frozen=True)
class ScoreGroup:
    """Judge scores of one model x sequence by ONE judge model with ONE rubric version."""

    target_kind: str  # "response" (per turn) or "sequence" (per whole conversation)
    judge_model: str
    rubric_version: str
    model: str
    sequence: str
    judgements: int
    criteria: dict[str, CriterionStat]
    # What these judgements cost (their `details.cost_usd`, retried answers included); None when
    # none is priced (a judge entry without both prices), and how many of them were priced.
    cost_usd: float | None = None
    priced: int = 0


@dataclass(frozen=True)
class TurnCell:
    """One turn index of one sequence for one model, over its runs."""

    stored: int
    ok: int
    prompt_tokens_mean: float | None  # how far the history has grown
    completion_tokens_mean: float | None  # over "ok" turns
    # (judge model, rubric version) -> (mean of each judgement's mean criterion score, judgements)
    scores: dict[tuple[str, str], CriterionStat]


@dataclass(frozen=True)
class TurnRow:
    sequence: str
    turn_index: int
    turn_name: str
    cells: dict[str, TurnCell]  # by model


@dataclass(frozen=True)
class UsagePoint:
    """One model's "ok" turns at one turn index, over every sequence and run of the report:
    how long its answers are and how long they take as the conversation grows."""

    model: str
    turn_index: int  # 0-based, as stored
    ok_turns: int
    completion_tokens_mean: float | None  # over ok turns that report it
    latency_mean: float | None  # seconds, over ok turns that report it


@dataclass(frozen=True)
class MetricsPoint:
    """One model's ok turns at one turn index, over every sequence and run of the report: the
    means of their judge-free text metrics (evaluator/text_metrics.py), each over the turns
    that have that figure."""

    model: str
    turn_index: int  # 0-based, as stored
    ok_turns: int
    measured: int  # ok turns with metrics (older turns lack them until `storybench-eval metrics`)
    words_mean: float | None
    distinct_2_mean: float | None
    history_overlap_mean: float | None
    prompt_overlap_mean: float | None


def usage_chart(points: list[UsagePoint]) -> Chart | None:
    """The run report's "tokens and latency by turn" chart; None when no ok turn has a number.

    The x axis counts turns from 1 (the first turn is 1). No interval is drawn: the turns at
    one index come from different sequences, so their spread is not noise around one mean.
    """
    tokens: dict[str, list[TurnPoint]] = {}
    latency: dict[str, list[TurnPoint]] = {}
    for p in points:
        for value, into in ((p.completion_tokens_mean, tokens), (p.latency_mean, latency)):
            if value is not None:
                into.setdefault(p.model, []).append(
                    TurnPoint(p.turn_index + 1, value, None, None, p.ok_turns)
                )
    if not tokens and not latency:
        return None
    return usage_by_turn_chart(
        [TurnSeries(m, ps) for m, ps in tokens.items()], [TurnSeries(m, ps) for m, ps in latency.items()]
    )


class Turn(ResponseRecord):
    """A stored turn as the report shows it: the record plus its judgements. In the summary
    pass the texts are empty (`Store.iter_responses(with_text=False)`)."""

    judgements: list[EvaluationRecord] = Field(default_factory=list)
    """Judgements of this turn, by judge and rubric version."""

    @classmethod
    def of(cls, record: ResponseRecord) -> Turn:
        return cls.model_validate(record.model_dump())

    @property
    def response_id(self) -> str:
        return self.id

    @property
    def answer(self) -> str:
        return self.response_text

    @property
    def raw_answer(self) -> str | None:
        """The raw answer only when it differs from `answer` (e.g. `<think>` blocks)."""
        raw = self.response_raw
        return raw if raw.strip() and raw != self.response_text else None


@dataclass
class Conversation:
    """One run of one sequence against one model: its turns in order."""

    model: str
    sequence: str
    run_index: int
    experiment_key: str
    seed: int | None
    turns: list[Turn]
    turns_planned: int | None
    system: str | None = None  # the sequence's system prompt, from the run's config snapshot
    judgements: list[EvaluationRecord] = field(default_factory=list)  # of the whole conversation

    @property
    def key(self) -> str:
        """The target id of judgements of the whole conversation."""
        return sequence_run_id(self.experiment_key, self.model, self.sequence, self.run_index)


@dataclass(frozen=True)
class Summary:
    """Everything above the transcripts: gathered in one pass that reads no answer text."""

    header: RunHeader
    models: list[str]  # the plan's, then any found only in the data
    sequences: list[str]
    groups: list[GroupSummary]
    outcomes: list[str]  # the outcome columns to show, in order
    scores: list[ScoreGroup]
    turn_rows: list[TurnRow]
    conversations: int
    turns_stored: int
    generated_at: datetime
    turns_written: int = 0  # of those, written by this run (right even for a killed run)
    turns_reused: int = 0  # stored by earlier runs of the same plan before this one started, kept
    usage: list[UsagePoint] = field(default_factory=list)  # by model (plan order), then turn index
    text_metrics: list[MetricsPoint] = field(default_factory=list)  # by model (plan order), then turn
