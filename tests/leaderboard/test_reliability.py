"""The judge-reliability figures recover what a simulated judge was set to do: its position bias,
its preference for length, its noise between repeats, its agreement with another judge; and a
judge grading its own model is flagged and left out. No LLM in the loop: the simulated judges
(tests/support/sim_judge.py) are real HTTP servers driven through the real commands."""

from __future__ import annotations

import json
import math
import random
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from evaluator.leaderboard.reliability import agreement, rejudge_spread
from tests.leaderboard.conftest import Shared, add_scores, invoke, seed_models
from tests.support.documents import T0
from tests.support.sim_judge import SimJudge, davidson


def models_yaml(tmp_path: Path, judges: dict[str, str]) -> Path:
    path = tmp_path / "models.yaml"
    entries = "".join(
        f"  - name: {name}\n    base_url: {json.dumps(url)}\n    model: {name}-id\n    max_concurrency: 8\n"
        for name, url in judges.items()
    )
    path.write_text(
        "settings:\n  retry_max_attempts: 2\n  retry_initial_s: 0.01\n  retry_max_backoff_s: 0.05\n"
        f"models:\n{entries}"
    )
    return path


def board_json(*extra: str) -> dict[str, Any]:
    result = invoke("leaderboard", "--format", "json", "--resamples", "200", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_length_preference_shows_and_the_length_controlled_rating_removes_it(
    shared: Shared, tmp_path: Path
) -> None:
    """Three equally strong writers of different lengths; the judge adds 1.5 log-odds per unit
    of log length ratio. Tolerance: the longer-wins rate within 4 standard errors of the rate
    the setting implies; the length-controlled ratings' intervals contain the anchor's 1000."""
    truth = {"short": 0.0, "mid": 0.0, "long": 0.0}
    extra = {"short": 0, "mid": 12, "long": 40}
    with shared.open() as store:
        seed_models(store, list(truth), sequences=12, runs=3, extra_words=extra)
    preference, nu = 1.5, 0.4
    with SimJudge(strengths=truth, length_preference=preference, nu=nu, seed=11) as sim:
        config = models_yaml(tmp_path, {"sim": sim.base_url})
        result = invoke("compare", "--models", "short,mid,long", "--judge", "sim", "--config", str(config))
        assert result.exit_code == 0, result.output
        board = board_json("--anchor", "short")
    rows = {m["model"]: m for m in board["models"]}
    rel = board["reliability"]["sim"]
    # Words per conversation the judge sees: base text of each turn plus the padding (2 turns).
    # Words the judge counts per turn: "[Turn N] User: seqK turn T [Turn N] Writer:" (9) and the
    # answer "[writer:m] seqK run R turn T: the keeper climbs." (10), then the padding.
    base = 19
    words = {m: 2 * (base + extra[m]) for m in truth}
    win = loss = 0.0
    for a, b in combinations(truth, 2):
        x = math.log(words[a] / words[b])
        p_a, p_t, p_b = davidson(preference * x, 0.0, nu)
        a_wins, b_wins = p_a**2 + 2 * p_a * p_t, p_b**2 + 2 * p_b * p_t
        longer, shorter = (a_wins, b_wins) if words[a] > words[b] else (b_wins, a_wins)
        win, loss = win + longer, loss + shorter
    expected = win / (win + loss)
    decided = 3 * 12 * 3 * (win + loss) / 3
    assert abs(rel["longer_wins_rate"] - expected) < 4 * math.sqrt(expected * (1 - expected) / decided)
    assert rel["length_unit"] == "completion tokens" and rel["length_beta"] > 0.5
    assert rows["long"]["rating"] > rows["short"]["rating"] + 100  # the raw rating rewards length
    for model in ("mid", "long"):
        lo, hi = rows[model]["rating_length_controlled_ci"]
        assert lo <= 1000.0 <= hi, (model, rows[model])
    assert rel["length_score_spearman"] is None  # no rubric scores here: undefined, not 0


def test_two_judges_agree_as_much_as_they_were_set_to(shared: Shared, tmp_path: Path) -> None:
    """Both judges score round(quality + shared + own) with shared and own noise of sd 1: their
    agreement is what a large simulation of the same recipe gives, within 0.15."""
    quality = {"m0": 4.0, "m1": 5.0, "m2": 6.0, "m3": 7.0}
    with shared.open() as store:
        seed_models(store, list(quality), sequences=6, runs=2)
    common = {"qualities": quality, "score_noise": 1.0, "shared_noise": 1.0, "shared_seed": 3}
    with SimJudge(strengths={}, seed=1, **common) as one, SimJudge(strengths={}, seed=2, **common) as two:  # type: ignore[arg-type]
        config = models_yaml(tmp_path, {"j1": one.base_url, "j2": two.base_url})
        for judge in ("j1", "j2"):
            result = invoke("judge", "--latest", "--judge", judge, "--config", str(config))
            assert result.exit_code == 0, result.output
    board = board_json("--judge", "j1,j2")
    assert board["judge"] == "j1" and [b["judge"] for b in board["other_judges"]] == ["j2"]
    overall = board["reliability"]["j1"]["judge_agreement"]["j2"]["overall"]
    assert overall == board["reliability"]["j2"]["judge_agreement"]["j1"]["overall"]
    assert overall["targets"] == 4 * 6 * 2 * 3  # 2 turns and the whole conversation, each

    # The recipe simulated at large size: one criterion's score, and the mean of four criteria
    # (each criterion draws its own noise, so the "overall" mean agrees more).
    rng = random.Random(0)
    one_a, one_b, mean_a, mean_b = [], [], [], []
    for _ in range(20000):
        q = rng.choice(list(quality.values()))
        pairs = [(q + rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)) for _ in range(4)]
        a = [min(10, max(1, round(s + own))) for s, own, _ in pairs]
        b = [min(10, max(1, round(s + own))) for s, _, own in pairs]
        one_a.append(a[0])
        one_b.append(b[0])
        mean_a.append(sum(a) / 4)
        mean_b.append(sum(b) / 4)
    prose = board["reliability"]["j1"]["judge_agreement"]["j2"]["prose"]
    expected_one = float(spearmanr(one_a, one_b).statistic)
    expected_mean = float(spearmanr(mean_a, mean_b).statistic)
    assert abs(prose["spearman"] - expected_one) < 0.15, (prose, expected_one)
    assert abs(prose["krippendorff_alpha"] - expected_one) < 0.15, (prose, expected_one)
    assert abs(overall["spearman"] - expected_mean) < 0.1, (overall, expected_mean)
    # The same recipe orders the models the same way: the two tables agree.
    assert board["reliability"]["j1"]["leaderboard_spearman"]["j2"] == 1.0


def test_one_judge_without_repeats_reports_not_measured_never_zero(shared: Shared) -> None:
    with shared.open() as store:
        convs = seed_models(store, ["a", "b"], sequences=3, runs=1)
        add_scores(store, convs["a"] + convs["b"], 6)
    rel = board_json()["reliability"]["sim"]
    assert rel["judge_agreement"] == {} and rel["leaderboard_spearman"] == {}
    assert set(rel["rejudge_sd"].values()) == {None} and rel["rejudged_targets"] == 0
    table = invoke("leaderboard")
    flat = " ".join(table.output.split())
    assert "re-judge spread: not measured" in flat and "judge agreement: not measured" in flat
    assert "storybench-eval metrics --all" in flat  # these turns were stored without text metrics


def test_a_judge_grading_its_own_model_is_flagged_and_left_out(shared: Shared) -> None:
    with shared.open() as store:
        convs = seed_models(store, ["a", "b"], sequences=3, runs=1)
        add_scores(store, convs["a"] + convs["b"], 6)
        # The same judge entry, now with the evaluated model's id (make_response's model_id).
        for doc in store.db["evaluations"].find({"target_id": {"$in": convs["a"]}}):
            doc["details"] = {"judge_model_id": "smollm2-135m"}
            store.db["evaluations"].replace_one({"_id": doc["_id"]}, doc)
    board = board_json()
    rel = board["reliability"]["sim"]
    assert rel["self_judged"] is True and rel["self_judged_left_out"] == 3  # the whole-conversation ones
    assert any("judge its own model" in n for n in board["notes"])
    kept = board_json("--allow-self-judge")
    assert kept["reliability"]["sim"]["self_judged_left_out"] == 0
    rows = {m["model"]: m for m in kept["models"]}
    assert rows["a"]["judged_conversations"] == 3


def test_rejudge_spread_and_agreement_on_fixed_numbers() -> None:
    from evaluator.records import EvaluationRecord

    def ev(target: str, repeat: int, score: int) -> EvaluationRecord:
        return EvaluationRecord(
            target_id=target, target_kind="response", judge_model="j", rubric_version="v",
            scores={"prose": score}, rationale="", created_at=T0, repeat=repeat,
        )  # fmt: skip

    sd, changed, n = rejudge_spread(
        (e.target_id, e.scores) for e in [ev("t1", 0, 5), ev("t1", 1, 7), ev("t2", 0, 4), ev("t2", 1, 4)]
    )
    assert n == 2 and changed == {"prose": 0.5}
    assert sd["prose"] == math.sqrt((2 + 0) / 2)  # pooled: squared deviations 1 + 1, two degrees of freedom
    sd, changed, n = rejudge_spread((e.target_id, e.scores) for e in [ev("t1", 0, 5), ev("t2", 0, 4)])
    assert sd == {"prose": None} and changed == {"prose": None} and n == 0
    same = {f"t{k}": {"prose": float(k % 7)} for k in range(30)}
    result = agreement(same, same)["prose"]
    assert result.spearman == 1.0 and result.krippendorff_alpha == 1.0 and result.targets == 30
    noise = np.random.default_rng(0)
    other = {t: {"prose": v["prose"] + float(noise.integers(-3, 4))} for t, v in same.items()}
    weaker = agreement(same, other)["prose"]
    assert weaker.spearman is not None and weaker.spearman < 0.9


def test_rejudge_spread_recovers_the_judges_noise(shared: Shared, tmp_path: Path) -> None:
    """`judge --repeat 3` against a judge whose every score carries noise of sd 1 (then rounded):
    the pooled within-target sd is what a large simulation of that recipe gives, within 0.15,
    and most targets change between repeats."""
    quality = {"a": 5.0, "b": 6.0}
    with shared.open() as store:
        seed_models(store, list(quality), sequences=6, runs=2)
    with SimJudge(strengths={}, qualities=quality, score_noise=1.0, seed=4) as sim:
        config = models_yaml(tmp_path, {"sim": sim.base_url})
        result = invoke("judge", "--latest", "--judge", "sim", "--config", str(config), "--repeat", "3")
        assert result.exit_code == 0, result.output
    rel = board_json()["reliability"]["sim"]
    assert rel["rejudged_targets"] == 2 * 6 * 2 * 3
    rng = random.Random(1)
    deviations = []
    for _ in range(5000):
        center = rng.choice(list(quality.values()))
        scores = [min(10, max(1, round(center + rng.gauss(0, 1)))) for _ in range(3)]
        mean = sum(scores) / 3
        deviations.append(sum((s - mean) ** 2 for s in scores) / 2)
    expected = math.sqrt(sum(deviations) / len(deviations))
    for criterion in ("prose", "coherence"):
        assert abs(rel["rejudge_sd"][criterion] - expected) < 0.15, (criterion, rel["rejudge_sd"], expected)
        assert rel["rejudge_changed_share"][criterion] > 0.5
