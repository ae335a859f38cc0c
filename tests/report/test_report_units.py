"""The report's pure parts: statistics, paths, phrases. No database."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.report.model import Conversation, Turn
from evaluator.report.output import default_path, format_for
from evaluator.report.present import failure, unplayed
from evaluator.report.stats import ScoreAccumulator, judgement_mean, mean, number, p90
from tests.support.documents import make_evaluation, make_response


def turn(index: int, outcome: str = "ok", **changes: object) -> Turn:
    answer = "text" if outcome == "ok" else ""
    fields: dict[str, object] = dict(
        _id=f"x:t{index}", outcome=outcome, error=None, finish_reason=None, attempts=1, messages_sent=2,
        prompt_tokens=None, completion_tokens=None, cached_tokens=None, prompt_tokens_estimated=None,
        max_tokens_sent=None, latency_s=None, ttft_s=None, tokens_per_s=None, cost_usd=None,
        response_text=answer, response_raw=answer,
    )  # fmt: skip
    if "answer" in changes:
        changes["response_text"] = changes["response_raw"] = changes.pop("answer")
    fields.update(changes)
    return Turn.of(make_response(index).model_copy(update=fields))


def test_numbers_ignore_what_is_not_a_finite_number() -> None:
    assert [number(v) for v in (3, 2.5, True, "4", None, float("nan"), float("inf"))] == [
        3.0, 2.5, None, None, None, None, None,
    ]  # fmt: skip
    assert mean([]) is None and mean([1.0, 2.0]) == 1.5
    assert judgement_mean({"a": 4, "b": 2, "note": "fine", "flag": True}) == 3.0
    assert judgement_mean({"note": "fine"}) is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([7.0], 7.0), ([1.0, 2.0, 3.0, 4.0, 5.0], 5.0), ([float(i) for i in range(1, 11)], 9.0),
     ([float(i) for i in range(1, 21)], 18.0)],
)  # fmt: skip
def test_p90_is_nearest_rank(values: list[float], expected: float | None) -> None:
    assert p90(values) == expected


def test_scores_are_never_mixed_across_rubric_versions_or_judges() -> None:
    acc = ScoreAccumulator()
    for judge, rubric, score in (("a", "v1", 2), ("a", "v1", 4), ("a", "v2", 9), ("b", "v1", 1)):
        acc.add("m", "s", make_evaluation("t", judge, rubric).model_copy(update={"scores": {"c": score}}))
    groups = {(g.judge_model, g.rubric_version): g for g in acc.result(["m"], ["s"])}
    assert {k: (g.criteria["c"].mean, g.criteria["c"].count) for k, g in groups.items()} == {
        ("a", "v1"): (3.0, 2),
        ("a", "v2"): (9.0, 1),
        ("b", "v1"): (1.0, 1),
    }


def test_default_path_is_a_safe_file_name() -> None:
    assert default_path("20261128-120000-abc123", "html") == Path("reports/20261128-120000-abc123.html")
    assert default_path("../../etc/passwd", "md") == Path("reports/_.._etc_passwd.md")
    assert default_path("", "html") == Path("reports/run.html")


def test_format_follows_the_option_then_the_suffix() -> None:
    assert format_for(None, None) == "html"
    assert format_for(Path("r.md"), None) == "md" and format_for(Path("r.MARKDOWN"), None) == "md"
    assert format_for(Path("r.md"), "html") == "html" and format_for(Path("r.txt"), "md") == "md"


def test_a_turn_that_is_not_ok_always_says_why() -> None:
    assert failure(turn(0)) is None
    assert failure(turn(0, answer="  ")) == "ok, but no answer text was stored"
    assert failure(turn(0, "error", error="HTTP 500")) == "error: HTTP 500"
    assert failure(turn(0, "empty")) == "empty: the model returned an empty answer (retried once)"


def test_a_short_conversation_is_explained() -> None:
    def conv(*turns: Turn) -> Conversation:
        return Conversation("m", "s", 0, "k-g1", None, list(turns), turns_planned=5)

    assert unplayed(conv(turn(0), turn(1, "context_exhausted"))) == (
        "turns 2-4 not played: the conversation ended with context_exhausted at turn 1"
    )
    assert unplayed(conv(*(turn(i) for i in range(4)))).startswith("turn 4 not stored")  # type: ignore[union-attr]
    assert unplayed(conv(*(turn(i) for i in range(5)))) is None
