"""The statistics against a simulated judge with known truth (no LLM in the loop): ratings
recover the true order, 95% intervals cover the true strengths about 95% of the time, and the
cluster bootstrap of means covers the true mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluator.leaderboard.ratings import (
    BASE_RATING,
    PairVerdict,
    cluster_bootstrap_mean,
    rank_ranges,
    rate,
    to_rating,
)

MODELS = ["anchor", "strong", "stronger", "weak"]
THETA = np.array([0.0, 0.5, 1.0, -0.6])  # true log-odds strengths, the anchor at 0
NU = 0.6  # Davidson's tie parameter


def simulate(
    rng: np.random.Generator,
    *,
    sequences: int = 30,
    runs: int = 3,
    cluster_sd: float = 0.2,
    theta: np.ndarray = THETA,
) -> list[PairVerdict]:
    """Every pair of models on every sequence and run, drawn from the Davidson model. Each
    sequence shifts the strengths a little (a sequence may suit one model): verdicts of one
    sequence are correlated, which is why the bootstrap resamples sequences."""
    verdicts = []
    for s in range(sequences):
        shifted = theta + rng.normal(0.0, cluster_sd, len(theta))
        for _ in range(runs):
            for i in range(len(MODELS)):
                for j in range(i + 1, len(MODELS)):
                    a, b = math.exp(shifted[i]), math.exp(shifted[j])
                    t = NU * math.sqrt(a * b)
                    draw = rng.random() * (a + b + t)
                    score = 1.0 if draw < a else 0.0 if draw < a + b else 0.5
                    verdicts.append(PairVerdict(MODELS[i], MODELS[j], score, f"seq-{s}"))
    return verdicts


def test_ratings_recover_the_true_order_on_the_documented_scale() -> None:
    verdicts = simulate(np.random.default_rng(1), sequences=60)
    ratings = rate(verdicts, MODELS, resamples=200)
    assert [r.model for r in ratings] == ["stronger", "strong", "anchor", "weak"]
    by_model = {r.model: r for r in ratings}
    assert by_model["anchor"].rating == BASE_RATING and by_model["anchor"].ci is not None
    # 400 points per factor of 10 in the odds: theta 1.0 is about 174 points above the anchor.
    assert by_model["stronger"].rating == pytest.approx(float(to_rating(1.0)), abs=60)
    total = by_model["weak"]
    assert total.pairs == 60 * 3 * 3 and total.wins + total.ties + total.losses == total.pairs


def test_the_wins_ties_and_losses_are_counted_from_both_sides() -> None:
    verdicts = [
        PairVerdict("a", "b", 1.0, "s1"),
        PairVerdict("b", "a", 1.0, "s1"),  # b shown first and better
        PairVerdict("a", "b", 0.5, "s2"),
        PairVerdict("b", "c", 0.0, "s2"),
    ]
    by_model = {r.model: r for r in rate(verdicts, resamples=0)}
    assert (by_model["a"].wins, by_model["a"].ties, by_model["a"].losses) == (1, 1, 1)
    assert (by_model["b"].wins, by_model["b"].ties, by_model["b"].losses) == (1, 1, 2)
    assert (by_model["c"].wins, by_model["c"].losses) == (1, 0)
    assert all(r.ci is None for r in by_model.values())  # no bootstrap asked


def test_95_percent_intervals_cover_the_true_ratings_about_95_percent_of_the_time() -> None:
    """80 simulated leaderboards x 3 rated models = 240 intervals (each from 150 resamples), with
    sequences that shift the strengths (the correlation the cluster bootstrap is for)."""
    rng = np.random.default_rng(20261204)
    truth = dict(zip(MODELS, np.asarray(to_rating(THETA)).tolist(), strict=True))
    covered = trials = 0
    for n in range(80):
        verdicts = simulate(rng, sequences=30, runs=2)
        for r in rate(verdicts, MODELS, resamples=150, seed=n):
            if r.model == "anchor":
                continue
            assert r.ci is not None
            covered += r.ci[0] <= truth[r.model] <= r.ci[1]
            trials += 1
    assert 0.90 <= covered / trials <= 0.98, f"coverage {covered}/{trials}"


def test_an_undefeated_model_gets_a_finite_rating() -> None:
    verdicts = [PairVerdict("a", "b", 1.0, f"s{k}") for k in range(5)]
    (best, worst) = rate(verdicts, resamples=50)
    assert best.model == "a" and math.isfinite(best.rating) and best.rating > worst.rating


def test_models_never_compared_with_the_rest_have_no_common_scale() -> None:
    verdicts = [PairVerdict("a", "b", 1.0, "s1"), PairVerdict("c", "d", 0.0, "s1")]
    with pytest.raises(ValueError, match="do not connect"):
        rate(verdicts, resamples=0)
    with pytest.raises(ValueError, match="at least two models"):
        rate([], resamples=0)


def test_rank_ranges_follow_overlapping_intervals() -> None:
    ci = {"a": (1200.0, 1300.0), "b": (1100.0, 1250.0), "c": (1050.0, 1150.0), "d": (800.0, 900.0)}
    assert rank_ranges(ci) == {"a": (1, 2), "b": (1, 3), "c": (2, 3), "d": (4, 4)}


def test_the_bootstrap_is_repeatable_with_its_seed() -> None:
    verdicts = simulate(np.random.default_rng(5), sequences=10, runs=1)
    first = rate(verdicts, MODELS, resamples=100, seed=7)
    assert first == rate(verdicts, MODELS, resamples=100, seed=7)
    assert first != rate(verdicts, MODELS, resamples=100, seed=8)


def test_cluster_bootstrap_mean_covers_the_true_mean() -> None:
    rng = np.random.default_rng(11)
    covered = 0
    for n in range(200):
        values = []
        for s in range(25):
            shift = rng.normal(0.0, 1.0)  # a sequence is easier or harder for everyone
            values += [(f"seq-{s}", 6.0 + shift + rng.normal(0.0, 0.5)) for _ in range(3)]
        result = cluster_bootstrap_mean(values, resamples=400, seed=n)
        assert result.ci is not None and result.clusters == 25 and result.n == 75
        covered += result.ci[0] <= 6.0 <= result.ci[1]
    assert 0.90 <= covered / 200 <= 0.99


def test_a_mean_of_one_cluster_has_no_interval() -> None:
    result = cluster_bootstrap_mean([("s", 4.0), ("s", 6.0)])
    assert (result.mean, result.ci, result.clusters) == (5.0, None, 1)
    with pytest.raises(ValueError):
        cluster_bootstrap_mean([])
