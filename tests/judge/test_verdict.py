"""Reading the judge's answer: lenient about where the JSON is, strict about what is stored."""

from __future__ import annotations

import pytest

from evaluator.judge.rubric import CriterionSpec
from evaluator.judge.verdict import InvalidJudgement, parse_verdict

SPECS = [CriterionSpec("continuity", "", 1, 10), CriterionSpec("prose_quality", "", 0, 5)]


@pytest.mark.parametrize(
    "text",
    [
        '{"scores": {"continuity": 8, "prose_quality": 3}, "rationale": "Good."}',
        'Here is my verdict:\n```json\n{"scores": {"continuity": 8, "prose_quality": 3}, '
        '"rationale": "Good."}\n```\nHope this helps!',
        '<think>{"scores": {"continuity": 1}} is wrong</think>{"scores": {"continuity": 8, '
        '"prose_quality": 3}, "rationale": "Good."}',
        '{"note": "first"} {"scores": {"Continuity": 8.0, "prose quality": "3"}, "rationale": " Good. "}',
        '{"scores": {"continuity": 8, "prose-quality": 3, "extra": 99}, "rationale": "Good."}',
        '{"scores": {"continuity": 8, "prose_quality": 3}, "rationale": "Good."}\n{"scores": {}}',
    ],
)
def test_the_first_judgement_is_found_wherever_it_is(text: str) -> None:
    verdict = parse_verdict(text, SPECS)
    assert verdict.scores == {"continuity": 8, "prose_quality": 3}
    assert verdict.rationale == "Good."


def test_a_raw_newline_inside_the_rationale_is_accepted() -> None:
    text = '{"scores": {"continuity": 2, "prose_quality": 0}, "rationale": "Line one.\nLine two."}'
    assert parse_verdict(text, SPECS).rationale == "Line one.\nLine two."


@pytest.mark.parametrize(
    ("text", "finish", "expected"),
    [
        ("", "stop", "the answer is empty"),
        ("I would give it an 8.", "stop", "no JSON object in the answer: 'I would give it an 8.'"),
        ('{"scores": {"continuity": 8, "prose_q', "length", "cut off at max_tokens"),
        ('{"score": 8}', "stop", 'no "scores" in the answer'),
        ('{"scores": [8, 3], "rationale": ""}', "stop", '"scores" is not an object'),
        ('{"scores": {"continuity": 8}, "rationale": "x"}', "stop", "missing criteria: prose_quality"),
        (
            '{"scores": {"continuity": 11, "prose_quality": 3}, "rationale": "x"}',
            "stop",
            "outside its scale 1-10",
        ),
        ('{"scores": {"continuity": 0, "prose_quality": 3}, "rationale": "x"}', "stop", "continuity = 0"),
        (
            '{"scores": {"continuity": 8, "prose_quality": -1}, "rationale": "x"}',
            "stop",
            "outside its scale 0-5",
        ),
        (
            '{"scores": {"continuity": 7.5, "prose_quality": 3}, "rationale": "x"}',
            "stop",
            "is not an integer",
        ),
        (
            '{"scores": {"continuity": true, "prose_quality": 3}, "rationale": "x"}',
            "stop",
            "is not an integer",
        ),
        (
            '{"scores": {"continuity": "high", "prose_quality": 3}, "rationale": "x"}',
            "stop",
            "is not an integer",
        ),
        ('{"scores": {"continuity": 8, "prose_quality": 3}}', "stop", '"rationale" is missing'),
        ('{"scores": {"continuity": 8, "prose_quality": 3}, "rationale": 5}', "stop", "not a string"),
    ],
)
def test_unusable_answers_say_why(text: str, finish: str, expected: str) -> None:
    with pytest.raises(InvalidJudgement) as caught:
        parse_verdict(text, SPECS, finish)
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    text = '{"scores": {"continuity": 42}, "rationale": null}'
    with pytest.raises(InvalidJudgement) as caught:
        parse_verdict(text, SPECS)
    message = str(caught.value)
    assert "missing criteria: prose_quality" in message and "continuity = 42" in message
    assert '"rationale" is missing' in message
