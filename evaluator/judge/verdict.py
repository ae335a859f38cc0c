"""Reading the judge's answer: the first JSON object with scores, every criterion in range.

Judges wrap JSON in prose, code fences or `<think>` blocks even when asked not to, and a grammar
is not available everywhere, so parsing is lenient about where the object is and how a criterion
is spelled ("Continuity" for "continuity") but strict about what gets stored: every criterion
present, an integer (7.0 and "7" count as 7), inside its scale. Anything else is an
`InvalidJudgement` with a reason that says what was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from evaluator.judge.rubric import CriterionSpec
from evaluator.text import strip_think

__all__ = ["InvalidJudgement", "Verdict", "excerpt", "json_objects", "parse_verdict"]

_INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")


class InvalidJudgement(ValueError):
    """The answer holds no usable judgement; `str()` says why."""


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, int]  # every criterion of the rubric, in its order
    rationale: str


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object that starts at a `{` of `text`, outermost first. Raw control characters
    (a newline) inside strings are accepted: llama.cpp's JSON grammar lets a model write them."""
    decoder = json.JSONDecoder(strict=False)
    found = []
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    return None


def parse_verdict(text: str, specs: list[CriterionSpec], finish_reason: str | None = None) -> Verdict:
    """The judgement in `text`; InvalidJudgement naming every problem otherwise."""
    cut = (
        " (the answer was cut off at max_tokens before its JSON was complete: raise max_tokens in the rubric)"
        if finish_reason == "length"
        else ""
    )
    cleaned = strip_think(text)
    if not cleaned:
        raise InvalidJudgement("the answer is empty" + cut)
    objects = json_objects(cleaned)
    if not objects:
        raise InvalidJudgement(f"no JSON object in the answer: {excerpt(cleaned)}{cut}")
    judged = next((o for o in objects if "scores" in o), None)
    if judged is None:
        raise InvalidJudgement(f'no "scores" in the answer\'s JSON: {excerpt(cleaned)}{cut}')
    scores = judged["scores"]
    if not isinstance(scores, dict):
        raise InvalidJudgement(f'"scores" is not an object: {excerpt(json.dumps(scores))}')
    given = {_norm(str(k)): v for k, v in scores.items()}
    problems: list[str] = []
    out: dict[str, int] = {}
    missing = [c.name for c in specs if _norm(c.name) not in given]
    if missing:
        problems.append(f"missing criteria: {', '.join(missing)}")
    for c in specs:
        if _norm(c.name) not in given:
            continue
        raw = given[_norm(c.name)]
        value = _as_int(raw)
        if value is None:
            problems.append(f"{c.name} = {json.dumps(raw)[:30]} is not an integer")
        elif not c.min <= value <= c.max:
            problems.append(f"{c.name} = {value} is outside its scale {c.min}-{c.max}")
        else:
            out[c.name] = value
    rationale = judged.get("rationale")
    if not isinstance(rationale, str):
        problems.append('"rationale" is missing or not a string')
    if problems:
        raise InvalidJudgement("; ".join(problems))
    assert isinstance(rationale, str)
    return Verdict(scores=out, rationale=rationale.strip())


def excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")
