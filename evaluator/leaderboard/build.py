"""The leaderboard's numbers, from `Inputs` (gather.py) to one `Leaderboard`.

**Pairs.** Both orders of a pair are combined into one outcome (pairs.py); a pair whose orders
disagree is a tie and a position flip. The ratings use the outcome's direction (ratings.py);
the strength of a preference ("much better") stays in the stored verdicts.

**Rubric scores.** A conversation's score on a criterion is the mean of that criterion over its
judgements (each turn's and the whole conversation's); its overall score is the mean of every
criterion score its judgements gave. A model's mean is over its judged conversations, with a
95% cluster-bootstrap interval that resamples sequences (ratings.cluster_bootstrap_mean).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from evaluator.compare.conversations import Conversation
from evaluator.leaderboard.gather import Inputs
from evaluator.leaderboard.pairs import PairStats, combine_ordered, ordered_shares
from evaluator.leaderboard.ratings import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    MeanCI,
    cluster_bootstrap_mean,
    rank_ranges,
    rate,
)
from evaluator.leaderboard.reliability import JudgeReliability, judge_reliability, mean_by_target
from evaluator.records import TextMetrics

# Below this many sequences the intervals say more about the few sequences than about the models.
FEW_SEQUENCES = 5

__all__ = ["JudgeCost", "Leaderboard", "ModelRow", "TurnScore", "build", "judge_cost"]


@dataclass(frozen=True)
class TurnScore:
    turn: int  # 1-based
    score: MeanCI


@dataclass
class ModelRow:
    model: str
    rating: float | None = None
    rating_ci: tuple[float, float] | None = None
    rank_range: tuple[int, int] = (1, 1)
    rubric: MeanCI | None = None
    criteria: dict[str, MeanCI] = field(default_factory=dict)
    conversations: int = 0
    judged_conversations: int = 0
    pairs: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    answer_tokens: float | None = None  # mean completion tokens per answer
    by_turn: list[TurnScore] = field(default_factory=list)
    rating_lc: float | None = None  # length-controlled rating (length_control.py)
    rating_lc_ci: tuple[float, float] | None = None
    text_metrics: dict[str, float | None] = field(default_factory=dict)  # mean per answer
    text_metrics_turns: int = 0  # answers with metrics behind those means
    text_metrics_by_turn: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rating": _round(self.rating),
            "rating_ci": _pair(self.rating_ci),
            "rank_range": list(self.rank_range),
            "rubric_mean": _round(self.rubric.mean if self.rubric else None, 3),
            "rubric_ci": _pair(self.rubric.ci if self.rubric else None, 3),
            "criteria": {
                name: {"mean": _round(m.mean, 3), "ci": _pair(m.ci, 3), "n": m.n}
                for name, m in self.criteria.items()
            },
            "conversations": self.conversations,
            "judged_conversations": self.judged_conversations,
            "pairs": self.pairs,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "mean_answer_tokens": _round(self.answer_tokens, 1),
            "text_metrics": {k: _round(v, 4) for k, v in self.text_metrics.items()},
            "text_metrics_answers": self.text_metrics_turns,
            "text_metrics_by_turn": self.text_metrics_by_turn,
            "rating_length_controlled": _round(self.rating_lc),
            "rating_length_controlled_ci": _pair(self.rating_lc_ci),
            "score_by_turn": [
                {"turn": t.turn, "mean": _round(t.score.mean, 3), "ci": _pair(t.score.ci, 3), "n": t.score.n}
                for t in self.by_turn
            ],
        }


@dataclass
class Leaderboard:
    judge: str
    rubric_version: str
    prompt_set: str
    sequences: dict[str, str]
    rows: list[ModelRow]
    criteria: list[str]
    pair_stats: PairStats
    anchor: str | None
    resamples: int
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # failed comparisons: "label: reason"
    reliability: JudgeReliability = field(default_factory=lambda: JudgeReliability(""))
    other_reliability: dict[str, JudgeReliability] = field(default_factory=dict)  # side-by-side judges
    target_means: dict[str, dict[str, float]] = field(default_factory=dict)  # for judge agreement
    others: list[Leaderboard] = field(default_factory=list)  # judges shown beside this one
    judge_cost: JudgeCost = field(default_factory=lambda: JudgeCost(None, 0, 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "judge_cost_usd": _round(self.judge_cost.cost_usd, 6),
            "rubric_version": self.rubric_version,
            "prompt_set": self.prompt_set,
            "sequences": self.sequences,
            "anchor": self.anchor,
            "bootstrap_resamples": self.resamples,
            "models": [r.to_json() for r in self.rows],
            "pairwise": self.pair_stats.to_json(),
            "notes": self.notes,
            "reliability": {self.judge: self.reliability.to_json()}
            | {j: r.to_json() for j, r in self.other_reliability.items()},
        }


@dataclass(frozen=True)
class JudgeCost:
    """What the judgements and comparisons behind a table cost (their `details.cost_usd`, by the
    judge entry's prices, failed comparisons and retried answers included): None when none of
    them is priced; `priced` of `items` had a cost."""

    cost_usd: float | None
    priced: int
    items: int


def judge_cost(inputs: Inputs) -> JudgeCost:
    details = [e.details for e in inputs.evaluations] + [p.details for p in inputs.pairwise]
    costs = [
        float(c)
        for d in details
        if isinstance(c := d.get("cost_usd"), (int, float)) and not isinstance(c, bool)
    ]
    return JudgeCost(sum(costs) if costs else None, len(costs), len(details))


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _pair(ci: tuple[float, float] | None, digits: int = 1) -> list[float] | None:
    return None if ci is None else [round(ci[0], digits), round(ci[1], digits)]


def _conversation_scores(
    inputs: Inputs, target_means: dict[str, dict[str, float]]
) -> tuple[dict[str, dict[str, list[float]]], dict[tuple[str, int], list[float]]]:
    """conversation id -> criterion -> values; (conversation id, turn index) -> values of that
    turn's judgement (response kind). A target's repeats are averaged first, so a target judged
    three times weighs as much as one judged once."""
    owner: dict[str, tuple[str, int]] = {}
    for convs in inputs.conversations.values():
        for c in convs:
            for index, turn_id in enumerate(c.turn_ids):
                owner[turn_id] = (c.id, index)
    per_conv: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_turn: dict[tuple[str, int], list[float]] = defaultdict(list)
    for target, numbers in target_means.items():
        if target in owner:
            conv_id, index = owner[target]
            per_turn[(conv_id, index)].extend(numbers.values())
        else:
            conv_id = target
        for name, value in numbers.items():
            per_conv[conv_id][name].append(value)
    return per_conv, per_turn


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def build(
    inputs: Inputs,
    *,
    anchor: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Leaderboard:
    rows = {m: ModelRow(m) for m in inputs.models}
    notes = list(inputs.notes)
    target_means = mean_by_target(inputs.evaluations)
    per_conv, per_turn = _conversation_scores(inputs, target_means)
    criteria: list[str] = []
    for scores in per_conv.values():
        criteria.extend(name for name in scores if name not in criteria)

    for model, convs in inputs.conversations.items():
        row = rows[model]
        row.conversations = len(convs)
        tokens = [t for c in convs for t in c.completion_tokens if t is not None]
        row.answer_tokens = _mean([float(t) for t in tokens]) if tokens else None
        _text_metrics(row, convs)
        overall = []
        by_criterion: dict[str, list[tuple[str, float]]] = defaultdict(list)
        by_turn: dict[int, list[tuple[str, float]]] = defaultdict(list)
        for c in convs:
            scores = per_conv.get(c.id, {})
            if scores:
                overall.append((c.sequence_hash, _mean([v for vs in scores.values() for v in vs])))
                for name, vs in scores.items():
                    by_criterion[name].append((c.sequence_hash, _mean(vs)))
            for index in range(len(c.turn_ids)):
                values = per_turn.get((c.id, index))
                if values:
                    by_turn[index].append((c.sequence_hash, _mean(values)))
        row.judged_conversations = len(overall)
        if overall:
            row.rubric = cluster_bootstrap_mean(overall, resamples=resamples, seed=seed)
            row.criteria = {
                name: cluster_bootstrap_mean(by_criterion[name], resamples=resamples, seed=seed)
                for name in criteria
                if by_criterion.get(name)
            }
        row.by_turn = [
            TurnScore(index + 1, cluster_bootstrap_mean(values, resamples=resamples, seed=seed))
            for index, values in sorted(by_turn.items())
        ]

    stats = PairStats()
    shares = ordered_shares(inputs.pairwise, stats)
    combined = combine_ordered(shares, stats)
    verdicts = [c.verdict for c in combined]
    failures = [
        f"{p.first_model} vs {p.second_model} / {p.sequence} run {p.run_index} "
        f"({p.first_model} shown first): {p.error}"
        for p in inputs.pairwise
        if p.status != "ok"
    ]
    rated_models = [m for m in inputs.models if any(m in (v.model_a, v.model_b) for v in verdicts)]
    for v in verdicts:
        for model in (v.model_a, v.model_b):
            rows[model].pairs += 1
    chosen: str | None = None
    if len(rated_models) >= 2:
        chosen = anchor if anchor in rated_models else rated_models[0]
        try:
            ratings = rate(verdicts, rated_models, anchor=chosen, resamples=resamples, seed=seed)
        except ValueError as exc:
            notes.append(f"no ratings: {exc}")
            chosen = None
        else:
            for r in ratings:
                row = rows[r.model]
                row.rating, row.rating_ci, row.rank_range = r.rating, r.ci, r.rank_range
                row.wins, row.ties, row.losses = r.wins, r.ties, r.losses
    else:
        if verdicts or len(inputs.models) < 2:
            notes.append(
                "no pairwise ratings: they need two or more models compared with each other "
                "(`storybench-eval compare --models A,B --judge J`)"
            )
        else:
            notes.append(
                "no pairwise verdicts with both orders judged yet: run `storybench-eval compare "
                f"--models {','.join(inputs.models)} --judge {inputs.judge}`"
            )
    if anchor is not None and anchor not in rated_models:
        notes.append(f"--anchor {anchor} has no pairwise verdicts; the anchor is {chosen}")
    missing = sum(1 for cs in inputs.conversations.values() for c in cs for m in c.metrics if m is None)
    if missing:
        notes.append(
            f"{missing} answer(s) have no text metrics (stored before they existed): "
            "`storybench-eval metrics --all` computes them; until then lengths are completion tokens"
        )
    clusters = len(inputs.sequences)
    if 0 < clusters < FEW_SEQUENCES:
        notes.append(
            f"only {clusters} sequence(s): the intervals resample {clusters} sequence(s) and are "
            f"correspondingly wide (Student's t with {max(clusters - 1, 0)} degree(s) of freedom); "
            "comparable numbers need more sequences"
        )
    reliability, length_controlled = judge_reliability(
        inputs, combined, shares, per_conv, rated_models, chosen, resamples, seed
    )
    if length_controlled is not None:
        for model, value in length_controlled.ratings.items():
            rows[model].rating_lc = value
            rows[model].rating_lc_ci = length_controlled.ci.get(model)
    _rank_unrated(rows)
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            -(r.rating if r.rating is not None else float("-inf")),
            -(r.rubric.mean if r.rubric else float("-inf")),
            r.model,
        ),
    )
    return Leaderboard(
        judge=inputs.judge,
        rubric_version=inputs.rubric_version,
        prompt_set=inputs.prompt_set,
        sequences=inputs.sequences,
        rows=ordered,
        criteria=criteria,
        pair_stats=stats,
        anchor=chosen,
        resamples=resamples,
        notes=notes,
        failures=failures,
        reliability=reliability,
        target_means=target_means,
        judge_cost=judge_cost(inputs),
    )


_METRIC_NAMES = ("words", "distinct_1", "distinct_2", "history_overlap", "prompt_overlap")


def _metric_means(metrics: list[TextMetrics]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in _METRIC_NAMES:
        values = [float(v) for m in metrics if (v := getattr(m, name)) is not None]
        out[name] = _mean(values) if values else None
    return out


def _rounded(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 4) for k, v in values.items()}


def _text_metrics(row: ModelRow, convs: list[Conversation]) -> None:
    """Judge-free figures per answer, overall and by turn (turns stored without them are left
    out and counted: `storybench-eval metrics` computes them)."""
    by_turn: dict[int, list[TextMetrics]] = defaultdict(list)
    for c in convs:
        for index, m in enumerate(c.metrics):
            if m is not None:
                by_turn[index].append(m)
    every = [m for ms in by_turn.values() for m in ms]
    row.text_metrics_turns = len(every)
    if not every:
        return
    row.text_metrics = _metric_means(every)
    row.text_metrics_by_turn = [
        {"turn": index + 1, "n": len(ms)}
        | {k: None if v is None else round(v, 4) for k, v in _metric_means(ms).items()}
        for index, ms in sorted(by_turn.items())
    ]


def _rank_unrated(rows: dict[str, ModelRow]) -> None:
    """Without ratings, rank by rubric mean (ranges from its intervals, as for ratings)."""
    if any(r.rating is not None for r in rows.values()):
        rated = sorted((r for r in rows.values() if r.rating is not None), key=lambda r: -(r.rating or 0))
        for r in rows.values():
            if r.rating is None:
                r.rank_range = (len(rated) + 1, len(rows))
        return
    scored = {m: r.rubric for m, r in rows.items() if r.rubric is not None}
    intervals = {m: (s.ci if s.ci else (s.mean, s.mean)) for m, s in scored.items()}
    for m, ranks in rank_ranges(intervals).items():
        rows[m].rank_range = ranks
    for m, r in rows.items():
        if m not in scored:
            r.rank_range = (len(scored) + 1, len(rows))
