"""The length-controlled rating on verdicts simulated from known strengths and a known length
preference: it recovers equal strengths that the raw rating tells apart, and its cluster-robust
95% intervals cover the true strengths about 95% of the time."""

from __future__ import annotations

import math

import numpy as np

from evaluator.leaderboard.length_control import LengthVerdict, log_ratio, rate_length_controlled
from evaluator.leaderboard.ratings import PairVerdict, rate, to_rating

MODELS = ["a", "b", "c", "d"]


def simulate(
    theta: dict[str, float], length: dict[str, float], beta: float, sequences: int, seed: int
) -> list[LengthVerdict]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(sequences):
        for _ in range(2):
            for i, a in enumerate(MODELS):
                for b in MODELS[i + 1 :]:
                    x = math.log(length[a] / length[b]) + rng.normal(0, 0.1)
                    ea = math.exp(theta[a] + beta * x / 2)
                    eb = math.exp(theta[b] - beta * x / 2)
                    et = 0.5 * math.exp((theta[a] + theta[b]) / 2)
                    u = rng.random() * (ea + eb + et)
                    score = 1.0 if u < ea else 0.0 if u < ea + eb else 0.5
                    out.append(LengthVerdict(a, b, score, f"s{s}", x))
    return out


def test_equal_writers_of_different_lengths_are_rated_equal_at_equal_length() -> None:
    theta = dict.fromkeys(MODELS, 0.0)
    length = {"a": 200.0, "b": 300.0, "c": 500.0, "d": 800.0}
    verdicts = simulate(theta, length, beta=1.5, sequences=30, seed=1)
    raw = {
        r.model: r.rating
        for r in rate(
            [PairVerdict(v.model_a, v.model_b, v.score_a, v.cluster) for v in verdicts], MODELS, resamples=0
        )
    }
    assert raw["d"] > raw["a"] + 150  # the raw rating pays for length
    lc = rate_length_controlled(verdicts, MODELS, anchor="a")
    assert lc.beta_ci is not None and lc.beta_ci[0] < 1.5 < lc.beta_ci[1]
    for model in MODELS[1:]:
        lo, hi = lc.ci[model]
        assert lo < 1000.0 < hi, (model, lc.ratings[model], lc.ci[model])


def test_intervals_cover_the_true_strengths_about_95_percent_of_the_time() -> None:
    theta = {"a": 0.0, "b": 0.4, "c": -0.3, "d": 0.8}
    length = {"a": 300.0, "b": 250.0, "c": 600.0, "d": 400.0}
    covered = total = 0
    for rep in range(120):
        lc = rate_length_controlled(
            simulate(theta, length, beta=1.0, sequences=20, seed=100 + rep), MODELS, anchor="a"
        )
        for model in MODELS[1:]:
            lo, hi = lc.ci[model]
            total += 1
            covered += lo <= float(to_rating(theta[model])) <= hi
    assert 0.88 <= covered / total <= 0.99, covered / total


def test_log_ratio_is_zero_when_a_length_is_unknown() -> None:
    assert log_ratio(0.0, 10.0) == 0.0 and log_ratio(20.0, 10.0) == math.log(2.0)
