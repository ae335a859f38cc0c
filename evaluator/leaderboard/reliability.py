"""How far a judge's numbers can be trusted, measured from its own stored judgements.

Every figure here is computed from what the store holds, none needs another LLM call:

- **Position bias**: the share of pairs whose two orders disagree in direction (a flip: each
  order preferred the conversation shown first, or each the one shown second), and the share of
  decided single verdicts won by the conversation shown first (0.5 for a judge without bias).
- **Re-judge spread** (`judge --repeat K`, `compare --repeat K`): per criterion, the pooled
  standard deviation of a target's scores across its repeats and the share of targets whose
  score changed; "not measured" (None, never 0) without repeats.
- **Agreement between judges**: per criterion, Spearman's rho (`scipy.stats.spearmanr`) and
  Krippendorff's alpha at the ordinal level (the `krippendorff` package) over the targets both
  judges scored (each judge's repeats averaged first); and Spearman's rho between the two
  leaderboards' orders.
- **Length bias**: Spearman's rho between a judged target's length and its rubric score, and the
  share of decided pairs won by the longer conversation (0.5 without bias); the length-
  controlled rating is in length_control.py.

Rates carry a 95% interval from the same cluster bootstrap over sequences as the ratings.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import krippendorff
import numpy as np
from scipy.stats import spearmanr

from evaluator.leaderboard.gather import Inputs
from evaluator.leaderboard.length_control import (
    LengthControlled,
    LengthVerdict,
    log_ratio,
    rate_length_controlled,
)
from evaluator.leaderboard.pairs import CombinedPair
from evaluator.leaderboard.ratings import MeanCI, cluster_bootstrap_mean
from evaluator.records import EvaluationRecord, PairwiseRecord

__all__ = [
    "Agreement",
    "JudgeReliability",
    "agreement",
    "judge_reliability",
    "mean_by_target",
    "rate_with_ci",
    "rejudge_spread",
    "spearman",
]


@dataclass(frozen=True)
class Agreement:
    spearman: float | None
    krippendorff_alpha: float | None
    targets: int

    def to_json(self) -> dict[str, Any]:
        return {
            "spearman": _r(self.spearman),
            "krippendorff_alpha": _r(self.krippendorff_alpha),
            "targets": self.targets,
        }


@dataclass
class JudgeReliability:
    judge: str
    position_flip_rate: MeanCI | None = None
    first_position_win_rate: MeanCI | None = None
    rejudge_sd: dict[str, float | None] = field(default_factory=dict)
    rejudge_changed: dict[str, float | None] = field(default_factory=dict)
    rejudge_targets: int = 0  # targets judged more than once
    judge_agreement: dict[str, dict[str, Agreement]] = field(default_factory=dict)  # other judge -> criterion
    leaderboard_spearman: dict[str, float | None] = field(default_factory=dict)  # other judge -> rho
    length_score_spearman: float | None = None
    longer_wins_rate: MeanCI | None = None
    length_unit: str = "completion tokens"
    length_beta: float | None = None  # the length-controlled fit's coefficient (log-odds per log ratio)
    self_judged: bool = False
    self_judged_left_out: int = 0  # judgements left out as self-judged

    def to_json(self) -> dict[str, Any]:
        return {
            "position_flip_rate": _rate(self.position_flip_rate),
            "position_flip_rate_ci": _ci(self.position_flip_rate),
            "first_position_win_rate": _rate(self.first_position_win_rate),
            "first_position_win_rate_ci": _ci(self.first_position_win_rate),
            "rejudge_sd": {k: _r(v) for k, v in self.rejudge_sd.items()},
            "rejudge_changed_share": {k: _r(v) for k, v in self.rejudge_changed.items()},
            "rejudged_targets": self.rejudge_targets,
            "judge_agreement": {
                other: {crit: a.to_json() for crit, a in by_crit.items()}
                for other, by_crit in self.judge_agreement.items()
            },
            "leaderboard_spearman": {k: _r(v) for k, v in self.leaderboard_spearman.items()},
            "length_score_spearman": _r(self.length_score_spearman),
            "longer_wins_rate": _rate(self.longer_wins_rate),
            "longer_wins_rate_ci": _ci(self.longer_wins_rate),
            "length_unit": self.length_unit,
            "length_beta": _r(self.length_beta),
            "self_judged": self.self_judged,
            "self_judged_left_out": self.self_judged_left_out,
        }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _rate(m: MeanCI | None) -> float | None:
    return None if m is None else _r(m.mean)


def _ci(m: MeanCI | None) -> list[float] | None:
    if m is None or m.ci is None:
        return None
    return [round(max(0.0, m.ci[0]), 4), round(min(1.0, m.ci[1]), 4)]


def rate_with_ci(values: Iterable[tuple[str, float]], *, resamples: int, seed: int) -> MeanCI | None:
    """A share (values 0/1) with its cluster-bootstrap interval; None without values."""
    values = list(values)
    if not values:
        return None
    return cluster_bootstrap_mean(values, resamples=resamples, seed=seed)


def mean_by_target(evaluations: Iterable[EvaluationRecord]) -> dict[str, dict[str, float]]:
    """target id -> criterion -> the mean of its repeats' numeric scores."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in evaluations:
        for name, value in e.scores.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                sums[e.target_id][name].append(float(value))
    return {t: {c: sum(v) / len(v) for c, v in crit.items()} for t, crit in sums.items()}


def rejudge_spread(
    judgements: Iterable[tuple[str, dict[str, Any]]],
) -> tuple[dict[str, float | None], dict[str, float | None], int]:
    """(pooled within-target SD per criterion, share of targets whose score changed, targets
    with two or more repeats). Criteria without repeats map to None: not measured."""
    by_target: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    criteria: list[str] = []
    for target_id, scores in judgements:
        for name, value in scores.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_target[target_id][name].append(float(value))
                if name not in criteria:
                    criteria.append(name)
    sd: dict[str, float | None] = {}
    changed: dict[str, float | None] = {}
    repeated_targets = 0
    for target in by_target.values():
        if any(len(v) > 1 for v in target.values()):
            repeated_targets += 1
    for name in criteria:
        groups = [v[name] for v in by_target.values() if len(v.get(name, [])) > 1]
        if not groups:
            sd[name], changed[name] = None, None
            continue
        dof = sum(len(g) - 1 for g in groups)
        ss = sum(float(np.var(g) * len(g)) for g in groups)  # sum of squared deviations
        sd[name] = math.sqrt(ss / dof)
        changed[name] = sum(1 for g in groups if max(g) != min(g)) / len(groups)
    return sd, changed, repeated_targets


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho; None with fewer than 3 points or a constant side (undefined)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rho = spearmanr(x, y).statistic
    return None if rho is None or math.isnan(float(rho)) else float(rho)


def _alpha(a: list[float], b: list[float]) -> float | None:
    values = set(a) | set(b)
    if len(a) < 2 or len(values) < 2:
        return None
    try:
        alpha = krippendorff.alpha(
            reliability_data=np.array([a, b], dtype=float), level_of_measurement="ordinal",
            value_domain=sorted(values),
        )  # fmt: skip
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(alpha) else float(alpha)


def agreement(
    first: dict[str, dict[str, float]], second: dict[str, dict[str, float]]
) -> dict[str, Agreement]:
    """Per criterion (and "overall", the mean of a target's criteria) over the targets both
    judges scored: Spearman's rho and ordinal Krippendorff's alpha."""
    common = sorted(set(first) & set(second))
    criteria = sorted({c for t in common for c in first[t]} & {c for t in common for c in second[t]})
    out: dict[str, Agreement] = {}
    for name in criteria:
        pairs = [(first[t][name], second[t][name]) for t in common if name in first[t] and name in second[t]]
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        out[name] = Agreement(spearman(a, b), _alpha(a, b), len(pairs))
    if common:
        a = [sum(first[t].values()) / len(first[t]) for t in common]
        b = [sum(second[t].values()) / len(second[t]) for t in common]
        out["overall"] = Agreement(spearman(a, b), _alpha(a, b), len(common))
    return out


# ---- one judge's figures, from the inputs of its leaderboard ----------------------------------


def length_unit(inputs: Inputs) -> str:
    """Words when every conversation has its text metrics, else completion tokens."""
    convs = [c for cs in inputs.conversations.values() for c in cs]
    return "words" if convs and all(c.length("words") is not None for c in convs) else "completion tokens"


def judge_reliability(
    inputs: Inputs,
    combined: list[CombinedPair],
    shares: dict[tuple[str, str], tuple[float, PairwiseRecord]],
    per_conv: dict[str, dict[str, list[float]]],
    rated_models: list[str],
    anchor: str | None,
    resamples: int,
    seed: int,
) -> tuple[JudgeReliability, LengthControlled | None]:
    """The judge's figures, and the length-controlled ratings when every length is known."""
    rel = JudgeReliability(inputs.judge, self_judged=inputs.self_judged > 0)
    rel.self_judged_left_out = inputs.self_judged_left_out
    rel.position_flip_rate = rate_with_ci(
        ((c.verdict.cluster, 1.0 if c.flipped else 0.0) for c in combined), resamples=resamples, seed=seed
    )
    rel.first_position_win_rate = rate_with_ci(
        ((rec.sequence_hash, 1.0 if share > 0.5 else 0.0) for share, rec in shares.values() if share != 0.5),
        resamples=resamples,
        seed=seed,
    )
    rel.rejudge_sd, rel.rejudge_changed, rel.rejudge_targets = rejudge_spread(
        (e.target_id, e.scores) for e in inputs.evaluations
    )
    verdict_sd, verdict_changed, verdict_targets = rejudge_spread(
        (f"{r.first_conversation}|{r.second_conversation}", {"pairwise_verdict": r.score_first})
        for r in inputs.pairwise
        if r.status == "ok" and r.score_first is not None
    )
    if inputs.pairwise:
        rel.rejudge_sd["pairwise_verdict"] = verdict_sd.get("pairwise_verdict")
        rel.rejudge_changed["pairwise_verdict"] = verdict_changed.get("pairwise_verdict")
        rel.rejudge_targets += verdict_targets
    unit = length_unit(inputs)
    rel.length_unit = unit
    conv_by_id = {c.id: c for cs in inputs.conversations.values() for c in cs}
    lengths = {cid: c.length(unit) for cid, c in conv_by_id.items()}
    scored: list[tuple[float, float]] = []
    for cid, crit in per_conv.items():
        length = lengths.get(cid)
        values = [v for vs in crit.values() for v in vs]
        if length is not None and values:
            scored.append((length, sum(values) / len(values)))
    rel.length_score_spearman = spearman([x for x, _ in scored], [y for _, y in scored])
    longer = []
    for c in combined:
        la, lb = lengths.get(c.first_conversation), lengths.get(c.second_conversation)
        if c.verdict.score_a == 0.5 or la is None or lb is None or la == lb:
            continue
        a_won = c.verdict.score_a == 1.0
        longer.append((c.verdict.cluster, 1.0 if a_won == (la > lb) else 0.0))
    rel.longer_wins_rate = rate_with_ci(longer, resamples=resamples, seed=seed)
    if (
        len(rated_models) >= 2
        and combined
        and all(lengths.get(c.first_conversation) and lengths.get(c.second_conversation) for c in combined)
    ):
        lc_rows = [
            LengthVerdict(
                c.verdict.model_a,
                c.verdict.model_b,
                c.verdict.score_a,
                c.verdict.cluster,
                log_ratio(lengths[c.first_conversation] or 0.0, lengths[c.second_conversation] or 0.0),
            )
            for c in combined
        ]
        lc = rate_length_controlled(lc_rows, rated_models, anchor=anchor)
        rel.length_beta = lc.beta
        return rel, lc
    return rel, None
