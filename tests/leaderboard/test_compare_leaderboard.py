"""The real compare -> store -> leaderboard path, driven by a simulated judge with known truth
(tests/support/sim_judge.py: a real HTTP server on 127.0.0.1), no LLM in the loop."""

from __future__ import annotations

import csv
import json
import math
from itertools import combinations
from pathlib import Path

from evaluator.judge.rubric import load_rubric
from tests.leaderboard.conftest import Shared, add_scores, invoke, models_yaml, seed_models, stored_pairwise
from tests.support.sim_judge import SimJudge, davidson

RUBRIC = load_rubric(Path("config/rubric.json"))
TRUTH = {"m0": 0.0, "m1": 0.8, "m2": 1.6, "m3": 2.4}  # natural log-strengths
BIAS = 1.0  # the judge favours the conversation shown first by this much log-odds


def compare(tmp_path: Path, sim: SimJudge, models: str, *extra: str) -> tuple[int, str]:
    result = invoke(
        "compare",
        "--models",
        models,
        "--judge",
        "sim",
        "--config",
        str(models_yaml(tmp_path, sim.base_url)),
        *extra,
    )
    return result.exit_code, result.output


def leaderboard_json(*extra: str) -> dict:
    result = invoke("leaderboard", "--format", "json", "--resamples", "200", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def expected_flip_rate(truth: dict[str, float], bias: float, nu: float) -> float:
    """P(the two orders of a pair disagree in direction), averaged over model pairs."""
    rates = []
    for a, b in combinations(truth, 2):
        a_first = davidson(truth[a] + bias, truth[b], nu)  # (A=a wins, tie, b wins)
        b_first = davidson(truth[b] + bias, truth[a], nu)  # (A=b wins, tie, a wins)
        rates.append(a_first[0] * b_first[0] + a_first[2] * b_first[2])
    return sum(rates) / len(rates)


def test_ratings_recover_the_true_order_and_the_flip_rate_matches_the_bias(
    shared: Shared, tmp_path: Path
) -> None:
    with shared.open() as store:
        convs = seed_models(store, list(TRUTH), sequences=12, runs=3)
        for k, model in enumerate(TRUTH):
            add_scores(store, convs[model], 4 + k)
    with SimJudge(strengths=TRUTH, position_bias=BIAS, nu=0.5, seed=1) as sim:
        code, out = compare(tmp_path, sim, ",".join(TRUTH))
        assert code == 0, out
        pairs = 6 * 12 * 3
        assert sim.requests == 2 * pairs  # both orders of every matched pair
        assert "432 to judge" in " ".join(out.split())

        board = leaderboard_json("--judge", "sim")
        assert board["judge"] == "sim" and board["rubric_version"] == RUBRIC.version_id
        rel = board["reliability"]["sim"]
        assert rel["self_judged"] is False and rel["rejudge_sd"]["pairwise_verdict"] is None  # no repeats
        rows = {m["model"]: m for m in board["models"]}
        assert [m["model"] for m in board["models"]] == ["m3", "m2", "m1", "m0"]
        assert rows["m0"]["rating"] == 1000.0  # the anchor: the first model rated
        for m in board["models"]:
            if m["model"] != "m0":  # the anchor is fixed: its interval has no width
                assert m["rating_ci"][0] < m["rating"] < m["rating_ci"][1]
            assert m["pairs"] == 3 * 12 * 3 and m["wins"] + m["ties"] + m["losses"] == m["pairs"]
            assert m["conversations"] == 36
        # Combining the two orders sharpens the outcomes (two agreeing draws make one win), so the
        # ratings are not on the single-verdict scale of the truth: the ORDER is what the path
        # must recover here; coverage of the true strengths is checked in-process on the
        # statistics functions (test_ratings.py). Far-apart models are told apart.
        assert rows["m3"]["rating_ci"][0] > rows["m1"]["rating_ci"][1]
        assert rows["m2"]["rating_ci"][0] > rows["m0"]["rating_ci"][1]
        # Rubric means: 4, 5, 6, 7 on the sequence criteria and 4.5.. on turns; intervals present.
        assert rows["m0"]["rubric_mean"] < rows["m1"]["rubric_mean"] < rows["m3"]["rubric_mean"]
        assert rows["m3"]["rubric_ci"] is not None
        assert [t["turn"] for t in rows["m3"]["score_by_turn"]] == [1, 2]
        assert rows["m3"]["score_by_turn"][1]["mean"] == 8.0  # prose = score + turn index

        stats = board["pairwise"]
        assert stats["pairs"] == pairs and stats["one_order_only"] == 0
        expected = expected_flip_rate(TRUTH, BIAS, 0.5)
        se = math.sqrt(expected * (1 - expected) / pairs)
        assert abs(stats["position_flip_rate"] - expected) < 4 * se, (stats, expected)
        assert stats["first_shown_preferred_rate"] > 0.6  # the bias shows
        assert rel["position_flip_rate"] == stats["position_flip_rate"]
        lo, hi = rel["position_flip_rate_ci"]  # 95%: may miss the truth 1 time in 20, so no check on that
        assert lo < rel["position_flip_rate"] < hi and hi - lo < 0.25

        # Re-running resumes: nothing is sent again.
        before = sim.requests
        code, out = compare(tmp_path, sim, ",".join(TRUTH))
        assert code == 0 and sim.requests == before
        assert "Nothing to judge" in out


def test_without_position_bias_few_pairs_flip(shared: Shared, tmp_path: Path) -> None:
    truth = {"a": 0.0, "b": 3.0}
    with shared.open() as store:
        seed_models(store, list(truth), sequences=10, runs=3)
    with SimJudge(strengths=truth, position_bias=0.0, nu=0.2, seed=3) as sim:
        assert compare(tmp_path, sim, "a,b")[0] == 0
        board = leaderboard_json()
    expected = expected_flip_rate(truth, 0.0, 0.2)
    assert expected < expected_flip_rate(truth, 1.5, 0.2) / 2
    se = math.sqrt(expected * (1 - expected) / 30)
    assert abs(board["pairwise"]["position_flip_rate"] - expected) < 4 * se
    assert [m["model"] for m in board["models"]] == ["b", "a"]


def test_a_judge_that_cannot_follow_the_schema_fails_loudly_and_nothing_is_defaulted(
    shared: Shared, tmp_path: Path
) -> None:
    truth = {"good": 1.0, "plain": 0.0, "odd": 0.5}
    with shared.open() as store:
        seed_models(store, list(truth), sequences=3, runs=1)
    with SimJudge(strengths=truth, broken={"odd"}) as sim:
        code, out = compare(tmp_path, sim, "good,plain,odd")
        assert code == 3, out
        flat = " ".join(out.split())
        assert "no valid verdict in two answers" in flat and "failed" in flat
        docs = stored_pairwise(shared)
        failed = [d for d in docs if d["status"] == "failed"]
        assert len(failed) == 2 * 2 * 3  # odd vs good and odd vs plain, 3 sequences, both orders
        assert all(d["verdict"] is None and d["score_first"] is None and d["error"] for d in failed)
        # Two requests each (the first answer, then one with a note): the failure is not a guess.
        assert sim.requests == 6 + 2 * 12  # good vs plain: 6; each of the 12 failed ones: 2

        board = leaderboard_json()
        assert board["pairwise"]["failed_comparisons"] == 12
        rows = {m["model"]: m for m in board["models"]}
        assert rows["odd"]["pairs"] == 0 and rows["odd"]["rating"] is None
        assert rows["good"]["pairs"] == 3

        # A re-run retries exactly the failed ones; once the judge answers they become verdicts.
        sim.broken.clear()
        before = sim.requests
        code, _ = compare(tmp_path, sim, "good,plain,odd")
        assert code == 0 and sim.requests - before == 12
        assert all(d["status"] == "ok" for d in stored_pairwise(shared))


def test_leaderboard_with_nothing_judged_says_what_to_run(shared: Shared) -> None:
    result = invoke("leaderboard")
    assert result.exit_code == 2
    assert "storybench-eval run" in result.output
    with shared.open() as store:
        seed_models(store, ["a", "b"], sequences=2, runs=1)
    result = invoke("leaderboard")
    assert result.exit_code == 2
    assert "storybench-eval judge" in result.output and "storybench-eval compare" in result.output


def test_one_model_gets_its_rubric_table_and_no_rating_with_the_reason(shared: Shared) -> None:
    with shared.open() as store:
        convs = seed_models(store, ["solo"], sequences=3, runs=2)
        add_scores(store, convs["solo"], 6)
    board = leaderboard_json()
    (row,) = board["models"]
    assert row["rating"] is None and row["rating_ci"] is None and row["rubric_mean"] is not None
    assert any("need two or more models" in note for note in board["notes"])
    table = invoke("leaderboard")
    assert (
        table.exit_code == 0
        and "solo" in table.output
        and "two or more models" in " ".join(table.output.split())
    )


def test_mixed_judges_or_rubric_versions_are_refused_with_the_option_that_selects_one(shared: Shared) -> None:
    with shared.open() as store:
        convs = seed_models(store, ["a", "b"], sequences=2, runs=1)
        add_scores(store, convs["a"] + convs["b"], 5, judge="j1")
        add_scores(store, convs["a"] + convs["b"], 6, judge="j2")
        add_scores(store, convs["a"], 7, judge="j1", rubric="9-deadbeef")
    result = invoke("leaderboard")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--judge j1 --rubric-version" in text and "--judge j2" in text and "9-deadbeef" in text
    board = leaderboard_json("--judge", "j2")
    assert {m["model"] for m in board["models"]} == {"a", "b"} and board["judge"] == "j2"
    assert invoke("leaderboard", "--judge", "j1").exit_code == 2  # still two rubric versions
    assert leaderboard_json("--judge", "j1", "--rubric-version", "9-deadbeef")["models"][0]["model"] == "a"


def test_different_contents_of_a_sequence_are_never_mixed(shared: Shared) -> None:
    with shared.open() as store:
        convs_a = seed_models(store, ["a"], sequences=2, runs=1, run_id="r-a")
        convs_b = seed_models(store, ["b"], sequences=2, runs=1, run_id="r-b", seq_hash={"seq1": "edited"})
        add_scores(store, convs_a["a"] + convs_b["b"], 5)
    result = invoke("leaderboard")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "sequence 'seq1'" in text and "--sequences" in text
    board = leaderboard_json("--sequences", "seq0")
    assert board["sequences"] == {"seq0": "hash-seq0"}


def test_compare_dry_run_prints_pairs_and_estimates_and_sends_nothing(shared: Shared, tmp_path: Path) -> None:
    with shared.open() as store:
        seed_models(store, ["a", "b", "c"], sequences=2, runs=1)
    with SimJudge(strengths={"a": 0, "b": 0, "c": 0}) as sim:
        code, out = compare(tmp_path, sim, "a,b,c", "--baseline", "a", "--dry-run")
        assert code == 0, out
        assert sim.requests == 0
    flat = " ".join(out.split())
    assert "8 comparisons" in flat and "prompt tokens" in flat and "cost unknown" in flat
    assert stored_pairwise(shared) == []


def test_compare_names_a_model_it_cannot_find(shared: Shared, tmp_path: Path) -> None:
    with shared.open() as store:
        seed_models(store, ["alpha", "beta"], sequences=1, runs=1)
    with SimJudge(strengths={}) as sim:
        code, out = compare(tmp_path, sim, "alpha,betta")
    assert code == 2
    assert "betta" in out and "did you mean 'beta'" in out


def test_only_complete_conversations_of_the_latest_generation_are_compared(
    shared: Shared, tmp_path: Path
) -> None:
    with shared.open() as store:
        seed_models(store, ["a", "b"], sequences=2, runs=1, broken_turn={"a": 0})
        seed_models(store, ["b"], sequences=2, runs=1, generation=2, run_id="run-2")
    with SimJudge(strengths={"a": 0.0, "b": 0.0}) as sim:
        code, out = compare(tmp_path, sim, "a,b")
        assert code == 0, out
    docs = stored_pairwise(shared)
    assert len(docs) == 2  # seq0 of a is incomplete: only seq1 is paired
    assert all(
        "-g2:b:" in (d["first_conversation"] if d["first_model"] == "b" else d["second_conversation"])
        for d in docs
    )
    assert "1 incomplete conversation" in " ".join(out.split())


def test_every_format_shows_the_same_numbers(shared: Shared, tmp_path: Path, monkeypatch: object) -> None:
    truth = {"alpha": 0.0, "beta": 1.5, "gamma": 3.0}
    with shared.open() as store:
        convs = seed_models(store, list(truth), sequences=4, runs=2)
        for k, model in enumerate(truth):
            add_scores(store, convs[model], 3 + 2 * k)
    with SimJudge(strengths=truth, seed=5) as sim:
        assert compare(tmp_path, sim, ",".join(truth))[0] == 0
    board = leaderboard_json("--anchor", "beta")
    assert next(m for m in board["models"] if m["model"] == "beta")["rating"] == 1000.0
    order = [m["model"] for m in board["models"]]

    md = tmp_path / "board.md"
    assert invoke("leaderboard", "-o", str(md), "--resamples", "200", "--anchor", "beta").exit_code == 0
    text = md.read_text()
    assert "](board.rating.png)" in text and "](board.by-turn.png)" in text
    for name in ("board.rating.png", "board.by-turn.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows_md = [line for line in text.splitlines() if line.startswith("| ") and "/" in line]
    ranked = [line.split("|")[2].strip() for line in rows_md]
    assert ranked[1:4] == order  # after the header row

    csv_path = tmp_path / "board.csv"
    assert invoke("leaderboard", "-o", str(csv_path), "--resamples", "200", "--anchor", "beta").exit_code == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["model"] for r in rows] == order
    assert {r["judge"] for r in rows} == {"sim"} and rows[0]["prompt_set"] == board["prompt_set"]
    assert [float(r["rating"]) for r in rows] == [m["rating"] for m in board["models"]]

    html_path = tmp_path / "board.html"
    assert invoke("leaderboard", "-o", str(html_path), "--resamples", "200").exit_code == 0
    page = html_path.read_text()
    assert "Content-Security-Policy" in page and "<script" not in page
    assert page.count("<svg") == 2 and "gamma" in page

    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    result = invoke("leaderboard", "--format", "html", "--resamples", "50")
    assert result.exit_code == 0 and (tmp_path / "reports" / "leaderboard.html").exists()
    assert invoke("leaderboard", "-o", str(tmp_path / "nowhere" / "x.html")).exit_code == 1
