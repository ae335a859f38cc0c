"""What the report says, independent of HTML or Markdown: tables of plain strings and phrases.

Both renderers draw from here so that a number reads the same in both formats. Values are
not escaped here (they may hold stored, untrusted text such as model names or error messages);
each renderer escapes every cell and phrase for its own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from evaluator.records import EvaluationRecord
from evaluator.report.model import (
    Conversation,
    CriterionStat,
    GroupSummary,
    ScoreGroup,
    Summary,
    Turn,
    TurnRow,
)
from evaluator.report.stats import number

NONE = "–"  # a value that is unknown or not applicable
# What an outcome means when the record carries no error text of its own.
_OUTCOME_MEANING = {
    "empty": "the model returned an empty answer (retried once)",
    "context_exhausted": "the history no longer left room for an answer",
    "error": "the request failed (it is retried when the same run command is run again)",
}


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns
    title: str | None = None
    note: str | None = None


def when(value: datetime | None) -> str:
    """UTC, so a report reads the same wherever it is opened."""
    if value is None:
        return NONE
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return NONE
    seconds = max(int((end - start).total_seconds()), 0)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def integer(value: float | None) -> str:
    return NONE if value is None else f"{round(value):,}"


def seconds(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f} s"


def decimal(value: float | None, places: int = 1) -> str:
    return NONE if value is None else f"{value:.{places}f}"


def stat(value: CriterionStat | None) -> str:
    return NONE if value is None else f"{value.mean:.2f} (n={value.count})"


def cached(group: GroupSummary) -> str:
    share = group.cached_share
    if share is None:
        return NONE
    return f"{share:.0%} ({group.cached_tokens:,} of {group.prompt_tokens:,})"


def cost(group: GroupSummary) -> str:
    if group.cost_usd is None:
        return NONE
    text = f"${group.cost_usd:.4f}"
    if group.cost_turns < group.turns_stored:
        text += f" ({group.cost_turns} of {group.turns_stored} turns priced)"
    return text


def judge_cost(cost_usd: float | None, priced: int, judgements: int) -> str:
    """What judgements cost by the judge entry's prices; NONE when none is priced."""
    if cost_usd is None:
        return NONE
    text = f"${cost_usd:.4f}"
    if priced < judgements:
        text += f" ({priced} of {judgements} judgements priced)"
    return text


def total_judge_cost(summary: Summary) -> str:
    """The judge cost of every judgement in the report, every judge and rubric together ("" for
    none judged): what scoring this run cost, beside what playing it cost."""
    if not summary.scores:
        return ""
    priced = [g.cost_usd for g in summary.scores if g.cost_usd is not None]
    total = sum(priced) if priced else None
    return judge_cost(total, sum(g.priced for g in summary.scores), sum(g.judgements for g in summary.scores))


def facts(summary: Summary) -> list[tuple[str, str]]:
    """The run's header as label/value pairs; empty values are left out by the renderers."""
    h = summary.header
    status = h.status if h.status == h.stored_status else f"{h.status} (stored as {h.stored_status})"
    return [
        ("run", h.run_id),
        ("status", status),
        ("why", h.status_hint or ""),
        ("message", h.message or ""),
        ("command", h.command),
        ("started", when(h.started_at)),
        ("finished", when(h.finished_at) if h.finished_at else ""),
        ("duration", duration(h.started_at, h.finished_at) if h.finished_at else ""),
        ("code version", h.code_version),
        ("process", h.process or ""),
        ("models", ", ".join(h.models)),
        ("sequences", ", ".join(h.sequences)),
        ("runs per sequence", "" if h.runs_per_sequence is None else str(h.runs_per_sequence)),
        ("planned turns", "" if h.planned_turns is None else f"{h.planned_turns:,}"),
        ("stored turns", f"{summary.turns_stored:,} in {summary.conversations:,} conversation(s)"),
        ("written by this run", f"{summary.turns_written:,}"),
        ("reused from earlier runs", f"{summary.turns_reused:,}" if summary.turns_reused else ""),
        ("judge cost", total_judge_cost(summary)),
        ("report generated", when(summary.generated_at)),
    ]


def models_table(summary: Summary) -> Table | None:
    """Endpoints for every model; for local models the exact file and how it was served."""
    servers = {s.model: s for s in summary.header.servers}
    endpoints = {e.model: e for e in summary.header.endpoints}
    names = list(dict.fromkeys(summary.models + list(endpoints) + list(servers)))
    if not names:
        return None
    rows = []
    for name in names:
        e, s = endpoints.get(name), servers.get(name)
        engine = NONE
        if s is not None and s.engine:
            engine = s.engine + (f" ({s.n_parallel} slots)" if s.n_parallel and s.n_parallel > 1 else "")
        rows.append(
            [
                name,
                (e.model_id if e else None) or NONE,
                (e.base_url if e else None) or NONE,
                (s.sha256 if s else None) or NONE,
                (s.quantization if s else None) or NONE,
                NONE if s is None or s.n_ctx is None else f"{s.n_ctx:,}",
                engine,
                (s.gguf if s else None) or NONE,
                (s.llama_cpp_python if s else None) or NONE,
            ]
        )
    headers = [
        "model", "model id", "endpoint", "model file sha256", "quantization", "n_ctx", "engine",
        "gguf", "llama-cpp-python",
    ]  # fmt: skip
    numeric = [False] * len(headers)
    numeric[5] = True
    note = "Local models (our server) list the served file and settings; hosted APIs only their endpoint."
    return Table(headers, rows, numeric, note=note)


def report_summary_table(summary: Summary) -> Table:
    headers = ["model", "sequence", "runs", "turns planned", *summary.outcomes, "not stored"]
    headers += ["latency mean", "latency p90", "TTFT mean", "tokens/s", "prompt tokens from cache", "cost"]
    rows = []
    for g in summary.groups:
        runs = str(g.conversations) + ("" if g.runs_planned is None else f"/{g.runs_planned}")
        row = [g.model, g.sequence, runs, integer(g.turns_planned)]
        row += [str(g.outcomes.get(o, 0)) for o in summary.outcomes]
        row += [integer(g.not_stored)]
        row += [seconds(g.latency_mean), seconds(g.latency_p90), seconds(g.ttft_mean)]
        row += [decimal(g.tokens_per_s_mean), cached(g), cost(g)]
        rows.append(row)
    numeric = [False, False] + [True] * (len(headers) - 2)
    note = (
        "runs: conversations with stored turns / planned. not stored: planned turns with no record "
        "(never reached after a sequence-ending outcome, or not played yet). Latency, TTFT and "
        "tokens/s are over ok turns; latency p90 is the nearest-rank 90th percentile."
    )
    return Table(headers, rows, numeric, note=note)


_SCORE_NOTE = (
    "mean (n = judgements with that criterion); judge cost: what these judgements cost by the "
    "judge entry's prices (retried answers included), – when it has none"
)


def score_tables(summary: Summary) -> list[Table]:
    """One table per (what was judged, judge model, rubric version): means never cross them."""
    tables: list[Table] = []
    grouped: dict[tuple[str, str, str], list[ScoreGroup]] = {}
    for group in summary.scores:
        grouped.setdefault((group.target_kind, group.judge_model, group.rubric_version), []).append(group)
    for (kind, judge, rubric), groups in grouped.items():
        criteria = sorted({name for g in groups for name in g.criteria})
        headers = ["model", "sequence", "judgements", *criteria, "judge cost"]
        rows = [
            [
                g.model,
                g.sequence,
                str(g.judgements),
                *(stat(g.criteria.get(c)) for c in criteria),
                judge_cost(g.cost_usd, g.priced, g.judgements),
            ]
            for g in groups
        ]
        what = "each turn" if kind == "response" else "whole conversations" if kind == "sequence" else kind
        title = f"judge {judge}, rubric {rubric}, judging {what}"
        numeric = [False, False] + [True] * (len(headers) - 2)
        tables.append(Table(headers, rows, numeric, title=title, note=_SCORE_NOTE))
    return tables


def turn_tables(summary: Summary) -> list[Table]:
    """Per sequence: turn index x model, so length and quality can be followed as the story grows."""
    tables = []
    by_sequence: dict[str, list[TurnRow]] = {}
    for row in summary.turn_rows:
        by_sequence.setdefault(row.sequence, []).append(row)
    for sequence, rows in by_sequence.items():
        models = [m for m in summary.models if any(m in r.cells for r in rows)]
        judges = sorted({k for r in rows for c in r.cells.values() for k in c.scores})
        headers = ["turn", "name"]
        for model in models:
            headers += [f"{model}: ok/stored", f"{model}: prompt tokens", f"{model}: answer tokens"]
            headers += [f"{model}: score {judge} {rubric}" for judge, rubric in judges]
        body = []
        for r in rows:
            line = [str(r.turn_index), r.turn_name]
            for model in models:
                c = r.cells.get(model)
                if c is None:
                    line += [NONE] * (3 + len(judges))
                    continue
                line += [
                    f"{c.ok}/{c.stored}",
                    integer(c.prompt_tokens_mean),
                    integer(c.completion_tokens_mean),
                ]
                line += [stat(c.scores.get(j)) for j in judges]
            body.append(line)
        numeric = [True, False] + [True] * (len(headers) - 2)
        note = (
            "Means over the runs: prompt tokens (the history sent), answer tokens of ok turns, and "
            "the score: each judgement's mean over its criteria, per judge and rubric version."
        )
        tables.append(Table(headers, body, numeric, title=f"sequence {sequence}", note=note))
    return tables


def metrics_table(summary: Summary) -> Table | None:
    """Judge-free text metrics of ok turns per model and turn index; None when no turn is ok."""
    if not summary.text_metrics:
        return None
    headers = ["model", "turn", "with metrics/ok", "words", "distinct-2", "history overlap", "prompt overlap"]
    rows = [
        [
            p.model,
            str(p.turn_index),
            f"{p.measured}/{p.ok_turns}",
            integer(p.words_mean),
            decimal(p.distinct_2_mean, 3),
            decimal(p.history_overlap_mean, 3),
            decimal(p.prompt_overlap_mean, 3),
        ]
        for p in summary.text_metrics
    ]
    note = (
        "Means over ok turns of every sequence and run. distinct-2: distinct word pairs / word pairs "
        "(low: repetitive). history overlap: share of the answer's word 4-grams already in the "
        "conversation's earlier answers (high: it copies its history; none on the first turn). "
        "prompt overlap: share found in the turn's prompt."
    )
    missing = sum(p.ok_turns - p.measured for p in summary.text_metrics)
    if missing:
        note += (
            f" {missing} ok turn(s) were stored before these metrics existed: "
            f"`storybench-eval metrics {summary.header.run_id}` computes them."
        )
    numeric = [False] + [True] * (len(headers) - 1)
    return Table(headers, rows, numeric, title="Text metrics by turn", note=note)


def failure(turn: Turn) -> str | None:
    """Why a turn is not a normal answer; None for an ok turn with text."""
    if turn.outcome == "ok":
        return None if turn.answer.strip() else "ok, but no answer text was stored"
    reason = turn.error or _OUTCOME_MEANING.get(turn.outcome, "no error message was recorded")
    return f"{turn.outcome}: {reason}"


def turn_facts(turn: Turn) -> list[str]:
    """Short phrases for a turn's line: tokens, timings, attempts."""
    out = []
    if turn.prompt_tokens is not None:
        cache = "" if turn.cached_tokens is None else f" ({turn.cached_tokens:,} from cache)"
        out.append(f"prompt {turn.prompt_tokens:,} tokens{cache}")
    elif turn.prompt_tokens_estimated is not None:
        out.append(f"prompt ~{turn.prompt_tokens_estimated:,} tokens (estimated)")
    if turn.completion_tokens is not None:
        out.append(f"answer {turn.completion_tokens:,} tokens")
    if turn.max_tokens_sent is not None:
        out.append(f"max_tokens {turn.max_tokens_sent:,}")
    if turn.latency_s is not None:
        out.append(f"{turn.latency_s:.2f} s")
    if turn.ttft_s is not None:
        out.append(f"TTFT {turn.ttft_s:.2f} s")
    if turn.tokens_per_s is not None:
        out.append(f"{turn.tokens_per_s:.1f} tok/s")
    if turn.finish_reason:
        out.append(f"finish {turn.finish_reason}")
    if turn.attempts is not None and turn.attempts != 1:
        out.append(f"{turn.attempts} attempts")
    if turn.messages_sent is not None:
        out.append(f"{turn.messages_sent} messages sent")
    if turn.cost_usd is not None:
        out.append(f"${turn.cost_usd:.4f}")
    return out


def score_value(value: Any) -> str:
    num = number(value)
    if num is None:
        return str(value)
    return str(int(num)) if num.is_integer() else f"{num:g}"


def judgement_line(j: EvaluationRecord, judged_model_id: str | None = None) -> str:
    """One judgement; flagged when the judge is the judged model (same model id or weights are
    what the leaderboard checks; the id is what a report knows)."""
    scores = ", ".join(f"{name} {score_value(v)}" for name, v in j.scores.items()) or "no scores"
    repeat = f", repeat {j.repeat}" if j.repeat else ""
    judge_id = j.details.get("judge_model_id")
    own = " [self-judged: the judge is this model]" if judged_model_id and judge_id == judged_model_id else ""
    return f"{j.judge_model} (rubric {j.rubric_version}{repeat}): {scores}{own}"


def unplayed(conv: Conversation) -> str | None:
    """Why a conversation has fewer turns than its sequence, so a short transcript is explained."""
    if conv.turns_planned is None or not conv.turns or len(conv.turns) >= conv.turns_planned:
        return None
    last = conv.turns[-1]
    first = last.turn_index + 1
    missing = (
        f"turn {first}" if first == conv.turns_planned - 1 else f"turns {first}-{conv.turns_planned - 1}"
    )
    if last.outcome in ("empty", "context_exhausted"):
        return f"{missing} not played: the conversation ended with {last.outcome} at turn {last.turn_index}"
    return f"{missing} not stored (not played yet, or the run stopped); re-running the run command resumes"


def outcome_counts(turns: list[Turn]) -> str:
    counts: dict[str, int] = {}
    for t in turns:
        counts[t.outcome] = counts.get(t.outcome, 0) + 1
    return ", ".join(f"{o} {n}" for o, n in counts.items())
