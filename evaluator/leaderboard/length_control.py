"""A length-controlled rating: Davidson's model with a length covariate, rated at equal length.

Judges prefer longer answers (MT-Bench: the longer one wins 68% of pairs), so a model can climb
by writing more. As length-controlled win rates do (AlpacaEval 2's LC), the fit explains each
verdict by the two strengths AND the length difference, x = log(length_a / length_b):

    log-numerators  a = theta_i + beta * x / 2,  b = theta_j - beta * x / 2,
                    tie = log(nu) + (theta_i + theta_j) / 2,

and the rating reports theta, the strength the model would show against an equally long
conversation. beta > 0 means the judge rewards length. Fitted like ratings.py (maximum
likelihood with scipy's L-BFGS-B, the exact gradient, the same weak prior and scale) on one row
per verdict (the covariate differs per verdict, so verdicts cannot be pooled per pair). The
interval is cluster-robust like the raw rating's, but from the sandwich covariance instead of
a bootstrap (a refit per resample over every verdict took seconds at full size): per-sequence
score sums around the estimate, the same G/(G-1) correction and Student's t with G-1 degrees
of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.stats import t as student_t

from evaluator.leaderboard.ratings import LEVEL, POINTS_PER_LOG10_ODDS, PRIOR_SD, to_rating

__all__ = ["LengthControlled", "LengthVerdict", "log_ratio", "rate_length_controlled"]

Array = NDArray[np.float64]
Rows = tuple[NDArray[np.intp], NDArray[np.intp], Array, Array]  # model i, model j, x, outcome


@dataclass(frozen=True)
class LengthVerdict:
    model_a: str
    model_b: str
    score_a: float  # 1, 0.5 or 0
    cluster: str
    log_length_ratio: float  # log(length of a's conversation / length of b's)


@dataclass(frozen=True)
class LengthControlled:
    ratings: dict[str, float]
    ci: dict[str, tuple[float, float]]
    beta: float  # log-odds per unit of log length ratio: > 0 rewards length
    beta_ci: tuple[float, float] | None


@dataclass(frozen=True)
class _Terms:
    """Each verdict's three log-numerators (a: i wins, b: j wins, t: tie), shifted exponentials
    and their sum: what the likelihood, its gradient and the per-sequence scores share."""

    theta: Array
    a: Array
    b: Array
    t: Array
    top: Array
    e_a: Array
    e_b: Array
    e_t: Array
    norm: Array


def _terms(params: Array, rows: Rows, anchor: int) -> _Terms:
    pi, pj, x, _ = rows
    theta = np.insert(params[:-2], anchor, 0.0)
    log_nu, beta = params[-2], params[-1]
    a = theta[pi] + beta * x / 2
    b = theta[pj] - beta * x / 2
    t = log_nu + (theta[pi] + theta[pj]) / 2
    top = np.maximum(np.maximum(a, b), t)
    e_a, e_b, e_t = np.exp(a - top), np.exp(b - top), np.exp(t - top)
    return _Terms(theta, a, b, t, top, e_a, e_b, e_t, e_a + e_b + e_t)


def _nll(params: Array, rows: Rows, weights: Array, anchor: int) -> tuple[float, Array]:
    pi, pj, x, outcome = rows
    n_models = len(params) - 1
    terms = _terms(params, rows, anchor)
    theta, a, b, t = terms.theta, terms.a, terms.b, terms.t
    e_a, e_b, e_t, norm = terms.e_a, terms.e_b, terms.e_t, terms.norm
    log_d = terms.top + np.log(norm)
    wins = weights * (outcome == 0)
    ties = weights * (outcome == 1)
    losses = weights * (outcome == 2)
    ll = wins * (a - log_d) + losses * (b - log_d) + ties * (t - log_d)
    nll = -float(ll.sum()) + float((theta**2).sum()) / (2 * PRIOR_SD**2)
    p_i, p_j, p_t = e_a / norm, e_b / norm, e_t / norm
    # d(-ll)/da, d(-ll)/db, d(-ll)/dt per row
    ga = -wins + weights * p_i
    gb = -losses + weights * p_j
    gt = -ties + weights * p_t
    grad_theta = (
        np.bincount(pi, ga + gt / 2, minlength=n_models)
        + np.bincount(pj, gb + gt / 2, minlength=n_models)
        + theta / PRIOR_SD**2
    )
    grad_nu = float(gt.sum())
    grad_beta = float(((ga - gb) * x / 2).sum())
    return nll, np.concatenate([np.delete(grad_theta, anchor), [grad_nu, grad_beta]])


def _fit(
    rows: tuple[NDArray[np.intp], NDArray[np.intp], Array, Array],
    weights: Array,
    n: int,
    anchor: int,
    start: Array | None,
) -> Array:
    x0 = np.zeros(n + 1) if start is None else start
    result = minimize(_nll, x0, args=(rows, weights, anchor), jac=True, method="L-BFGS-B",
                      options={"ftol": 1e-13, "gtol": 1e-9})  # fmt: skip
    return np.asarray(result.x, dtype=np.float64)


def _cluster_scores(params: Array, rows: Rows, row_cluster: NDArray[np.intp], g: int, anchor: int) -> Array:
    """Per cluster, the gradient of its rows' negative log-likelihood (no prior): G x params."""
    pi, pj, x, outcome = rows
    n_models = len(params) - 1
    terms = _terms(params, rows, anchor)
    e_a, e_b, e_t, norm = terms.e_a, terms.e_b, terms.e_t, terms.norm
    ga = e_a / norm - (outcome == 0)
    gb = e_b / norm - (outcome == 2)
    gt = e_t / norm - (outcome == 1)
    scores = np.zeros((g, n_models + 2))
    for k in range(n_models):
        weight = np.where(pi == k, ga + gt / 2, 0.0) + np.where(pj == k, gb + gt / 2, 0.0)
        scores[:, k] = np.bincount(row_cluster, weight, minlength=g)
    scores[:, n_models] = np.bincount(row_cluster, gt, minlength=g)
    scores[:, n_models + 1] = np.bincount(row_cluster, (ga - gb) * x / 2, minlength=g)
    return np.delete(scores, anchor, axis=1)


def _hessian(params: Array, rows: Rows, weights: Array, anchor: int) -> Array:
    """Central differences of the exact gradient (the prior included)."""
    n = len(params)
    h = np.zeros((n, n))
    step = 1e-5
    for k in range(n):
        up, down = params.copy(), params.copy()
        up[k] += step
        down[k] -= step
        h[:, k] = (_nll(up, rows, weights, anchor)[1] - _nll(down, rows, weights, anchor)[1]) / (2 * step)
    return (h + h.T) / 2


def rate_length_controlled(
    verdicts: Sequence[LengthVerdict],
    models: Sequence[str],
    *,
    anchor: str | None = None,
    level: float = LEVEL,
) -> LengthControlled:
    """Ratings at equal length (same scale and anchor as `ratings.rate`) and beta."""
    index = {m: k for k, m in enumerate(models)}
    clusters: dict[str, int] = {}
    pi, pj, x, outcome, cl = [], [], [], [], []
    for v in verdicts:
        pi.append(index[v.model_a])
        pj.append(index[v.model_b])
        x.append(v.log_length_ratio)
        outcome.append(0 if v.score_a == 1.0 else 1 if v.score_a == 0.5 else 2)
        cl.append(clusters.setdefault(v.cluster, len(clusters)))
    rows: Rows = (np.array(pi, dtype=np.intp), np.array(pj, dtype=np.intp), np.array(x, dtype=np.float64),
                  np.array(outcome, dtype=np.float64))  # fmt: skip
    row_cluster = np.array(cl, dtype=np.intp)
    anchor_index = index[anchor] if anchor is not None else 0
    n = len(models)
    weights = np.ones(len(verdicts))
    point = _fit(rows, weights, n, anchor_index, None)
    theta = np.insert(point[:-2], anchor_index, 0.0)
    ratings = np.asarray(to_rating(theta))
    ci: dict[str, tuple[float, float]] = {}
    beta_ci = None
    g = len(clusters)
    if g > 1:
        # Cluster-robust (sandwich) covariance: H^-1 (sum over sequences of s s^T) H^-1, with the
        # bootstrap's small-sample corrections (G/(G-1), Student's t with G-1 degrees of freedom).
        scores = _cluster_scores(point, rows, row_cluster, g, anchor_index)
        bread = np.linalg.pinv(_hessian(point, rows, weights, anchor_index))
        cov = bread @ (scores.T @ scores) @ bread * (g / (g - 1))
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        t = float(student_t.ppf(0.5 + level / 2, g - 1))
        se_theta = np.insert(se[:-2], anchor_index, 0.0)
        half = se_theta * POINTS_PER_LOG10_ODDS / math.log(10.0) * t
        ci = {m: (float(ratings[k] - half[k]), float(ratings[k] + half[k])) for k, m in enumerate(models)}
        beta_ci = (float(point[-1] - t * se[-1]), float(point[-1] + t * se[-1]))
    return LengthControlled(
        ratings={m: float(ratings[k]) for k, m in enumerate(models)},
        ci=ci,
        beta=float(point[-1]),
        beta_ci=beta_ci,
    )


def log_ratio(length_a: float, length_b: float) -> float:
    """The covariate: log of the length ratio (0 when either length is unknown or zero)."""
    if length_a <= 0 or length_b <= 0:
        return 0.0
    return math.log(length_a / length_b)
