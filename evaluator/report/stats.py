"""Aggregation: turns and judgements in, the summary's rows out. Pure functions, no store.

The accumulators take one turn or one judgement at a time, so the summary pass keeps only
numbers (never answer text) however long the run. Judgements are always grouped by judge
model AND rubric version: a mean across two rubrics, or two judges, would compare scales that
were never meant to be compared.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from evaluator.records import OUTCOMES, EvaluationRecord
from evaluator.report.model import (
    CriterionStat,
    GroupSummary,
    MetricsPoint,
    ScoreGroup,
    Turn,
    TurnCell,
    TurnRow,
)


def number(value: Any) -> float | None:
    """A stored value as a finite float; None for missing, bools, strings, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def p90(values: Iterable[float]) -> float | None:
    """Nearest-rank 90th percentile: a value that was actually observed, no interpolation."""
    items = sorted(values)
    if not items:
        return None
    return items[max(math.ceil(0.9 * len(items)) - 1, 0)]


def judgement_mean(scores: dict[str, Any]) -> float | None:
    """The unweighted mean of a judgement's numeric criteria (one number per judgement)."""
    return mean(v for v in (number(x) for x in scores.values()) if v is not None)


def outcome_columns(seen: Iterable[str]) -> list[str]:
    """The four outcomes the runner writes, then anything else found in the data."""
    return list(OUTCOMES) + sorted(set(seen) - set(OUTCOMES))


@dataclass
class _Mean:
    total: float = 0.0
    count: int = 0

    def add(self, value: float | None) -> None:
        if value is not None:
            self.total += value
            self.count += 1

    def stat(self) -> CriterionStat | None:
        return CriterionStat(self.total / self.count, self.count) if self.count else None

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class _Group:
    conversations: set[tuple[str, int]] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    ttft: _Mean = field(default_factory=_Mean)
    tokens_per_s: _Mean = field(default_factory=_Mean)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    cost_turns: int = 0


class SummaryAccumulator:
    """Per model x sequence counts and timings."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], _Group] = {}

    def add(self, model: str, sequence: str, experiment_key: str, run_index: int, turn: Turn) -> None:
        g = self._groups.setdefault((model, sequence), _Group())
        g.conversations.add((experiment_key, run_index))
        g.outcomes[turn.outcome] += 1
        if turn.outcome == "ok":
            if turn.latency_s is not None:
                g.latencies.append(turn.latency_s)
            g.ttft.add(turn.ttft_s)
            g.tokens_per_s.add(turn.tokens_per_s)
        if turn.prompt_tokens is not None and turn.cached_tokens is not None:
            g.prompt_tokens += turn.prompt_tokens
            g.cached_tokens += turn.cached_tokens
        if turn.cost_usd is not None:
            g.cost += turn.cost_usd
            g.cost_turns += 1

    def outcomes_seen(self) -> set[str]:
        return {o for g in self._groups.values() for o in g.outcomes}

    def pairs(self) -> list[tuple[str, str]]:
        return list(self._groups)

    def result(
        self,
        order: list[tuple[str, str]],
        runs_planned: int | None,
        turns_per_sequence: dict[str, int],
    ) -> list[GroupSummary]:
        """Rows in `order` (the run's plan), then any pair found only in the data."""
        rows = []
        for model, sequence in list(dict.fromkeys(order + sorted(self._groups))):
            g = self._groups.get((model, sequence), _Group())
            per_run = turns_per_sequence.get(sequence)
            rows.append(
                GroupSummary(
                    model=model,
                    sequence=sequence,
                    conversations=len(g.conversations),
                    runs_planned=runs_planned,
                    turns_planned=None if per_run is None or runs_planned is None else per_run * runs_planned,
                    turns_stored=sum(g.outcomes.values()),
                    outcomes=dict(g.outcomes),
                    latency_mean=mean(g.latencies),
                    latency_p90=p90(g.latencies),
                    ttft_mean=g.ttft.value,
                    tokens_per_s_mean=g.tokens_per_s.value,
                    prompt_tokens=g.prompt_tokens,
                    cached_tokens=g.cached_tokens,
                    cost_usd=g.cost if g.cost_turns else None,
                    cost_turns=g.cost_turns,
                )
            )
        return rows


class ScoreAccumulator:
    """Mean of each criterion per model x sequence x target kind x judge x rubric version."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str, str, str, str], dict[str, _Mean]] = {}
        self._judgements: Counter[tuple[str, str, str, str, str]] = Counter()
        self._costs: dict[tuple[str, str, str, str, str], _Mean] = {}

    def add(self, model: str, sequence: str, judgement: EvaluationRecord) -> None:
        key = (judgement.target_kind, judgement.judge_model, judgement.rubric_version, model, sequence)
        self._judgements[key] += 1
        self._costs.setdefault(key, _Mean()).add(number(judgement.details.get("cost_usd")))
        criteria = self._groups.setdefault(key, {})
        for name, value in judgement.scores.items():
            score = number(value)
            if score is not None:
                criteria.setdefault(str(name), _Mean()).add(score)

    def result(self, model_order: list[str], sequence_order: list[str]) -> list[ScoreGroup]:
        """Grouped by (target kind, judge, rubric version), rows in plan order within each."""

        def rank(items: list[str], name: str) -> tuple[int, str]:
            return (items.index(name) if name in items else len(items), name)

        keys = sorted(
            self._judgements,
            key=lambda k: (
                k[0] != "response",
                k[1],
                k[2],
                rank(model_order, k[3]),
                rank(sequence_order, k[4]),
            ),
        )
        out = []
        for key in keys:
            kind, judge, rubric, model, sequence = key
            stats = {name: m.stat() for name, m in sorted(self._groups.get(key, {}).items())}
            cost = self._costs.get(key, _Mean())
            out.append(
                ScoreGroup(
                    target_kind=kind,
                    judge_model=judge,
                    rubric_version=rubric,
                    model=model,
                    sequence=sequence,
                    judgements=self._judgements[key],
                    criteria={n: s for n, s in stats.items() if s is not None},
                    cost_usd=cost.total if cost.count else None,
                    priced=cost.count,
                )
            )
        return out


@dataclass
class _Cell:
    stored: int = 0
    ok: int = 0
    prompt_tokens: _Mean = field(default_factory=_Mean)
    completion_tokens: _Mean = field(default_factory=_Mean)
    scores: dict[tuple[str, str], _Mean] = field(default_factory=dict)


class TurnAccumulator:
    """Turn index x model, per sequence: does length (and quality) hold as the story grows?"""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, int], dict[str, _Cell]] = {}
        self._names: dict[tuple[str, int], str] = {}

    def add_turn(self, model: str, sequence: str, turn: Turn) -> None:
        cell = self._cells.setdefault((sequence, turn.turn_index), {}).setdefault(model, _Cell())
        self._names.setdefault((sequence, turn.turn_index), turn.turn_name)
        cell.stored += 1
        cell.prompt_tokens.add(None if turn.prompt_tokens is None else float(turn.prompt_tokens))
        if turn.outcome == "ok":
            cell.ok += 1
            cell.completion_tokens.add(
                None if turn.completion_tokens is None else float(turn.completion_tokens)
            )

    def add_judgement(self, model: str, sequence: str, turn_index: int, judgement: EvaluationRecord) -> None:
        if judgement.target_kind != "response":
            return
        cell = self._cells.setdefault((sequence, turn_index), {}).setdefault(model, _Cell())
        key = (judgement.judge_model, judgement.rubric_version)
        cell.scores.setdefault(key, _Mean()).add(judgement_mean(judgement.scores))

    def result(self, sequence_order: list[str]) -> list[TurnRow]:
        def order(key: tuple[str, int]) -> tuple[int, str, int]:
            seq, index = key
            rank = sequence_order.index(seq) if seq in sequence_order else len(sequence_order)
            return (rank, seq, index)

        rows = []
        for key in sorted(self._cells, key=order):
            cells = {}
            for model, c in self._cells[key].items():
                stats = {k: m.stat() for k, m in sorted(c.scores.items())}
                cells[model] = TurnCell(
                    stored=c.stored,
                    ok=c.ok,
                    prompt_tokens_mean=c.prompt_tokens.value,
                    completion_tokens_mean=c.completion_tokens.value,
                    scores={k: s for k, s in stats.items() if s is not None},
                )
            rows.append(TurnRow(key[0], key[1], self._names.get(key, ""), cells))
        return rows


@dataclass
class _Metrics:
    ok: int = 0
    measured: int = 0
    words: _Mean = field(default_factory=_Mean)
    distinct_2: _Mean = field(default_factory=_Mean)
    history_overlap: _Mean = field(default_factory=_Mean)
    prompt_overlap: _Mean = field(default_factory=_Mean)


class TextMetricsAccumulator:
    """Means of the ok turns' text metrics per (model, turn index), over every sequence and run:
    does a model's answer get shorter, more repetitive or more copied as the story grows?"""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, int], _Metrics] = {}

    def add(self, model: str, turn: Turn) -> None:
        if turn.outcome != "ok":
            return
        cell = self._cells.setdefault((model, turn.turn_index), _Metrics())
        cell.ok += 1
        m = turn.metrics
        if m is None:
            return
        cell.measured += 1
        cell.words.add(float(m.words))
        cell.distinct_2.add(m.distinct_2)
        cell.history_overlap.add(m.history_overlap)
        cell.prompt_overlap.add(m.prompt_overlap)

    def result(self, model_order: list[str]) -> list[MetricsPoint]:
        def order(key: tuple[str, int]) -> tuple[int, str, int]:
            model, index = key
            return (model_order.index(model) if model in model_order else len(model_order), model, index)

        return [
            MetricsPoint(
                model=key[0],
                turn_index=key[1],
                ok_turns=c.ok,
                measured=c.measured,
                words_mean=c.words.value,
                distinct_2_mean=c.distinct_2.value,
                history_overlap_mean=c.history_overlap.value,
                prompt_overlap_mean=c.prompt_overlap.value,
            )
            for key, c in sorted(self._cells.items(), key=lambda item: order(item[0]))
        ]
