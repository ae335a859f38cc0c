"""The pairwise judge's prompt and the reading of its verdict.

Both conversations are shown whole: the comparison is about the whole story, so nothing is
trimmed, and a pair that does not fit the judge's context fails with the numbers (like a
sequence judgement). The reply is a JSON object with the rationale FIRST and then the verdict,
one of the rubric's scale labels: a judge that writes its reasons before its decision decides
on them, and on our server the JSON schema becomes a grammar that enforces the label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from evaluator.compare.pairs import Comparison
from evaluator.judge.prompts import exchanges_text, fill
from evaluator.judge.rubric import PairwiseRubric, Rubric
from evaluator.judge.verdict import InvalidJudgement, excerpt, json_objects
from evaluator.text import strip_think

__all__ = ["Preference", "pair_messages", "pair_response_format", "parse_preference"]


@dataclass(frozen=True)
class Preference:
    verdict: str  # one of the scale's labels, as the rubric spells it
    share_first: float  # 1 (A much better) ... 0.5 (tie) ... 0 (B much better)
    rationale: str


def _criteria_text(block: PairwiseRubric) -> str:
    return "\n".join(f"- {c.name}: {c.description}" for c in block.criteria)


def _scale_text(block: PairwiseRubric) -> str:
    return ", ".join(f'"{label}"' for label in block.scale)


def _format_text(block: PairwiseRubric, rationale_max_chars: int) -> str:
    return (
        "Reply with only a JSON object, no other text, in exactly this shape:\n"
        f'{{"rationale": "<the decisive differences, at most {rationale_max_chars} characters>", '
        f'"verdict": "<one of {_scale_text(block)}>"}}'
    )


def pair_messages(rubric: Rubric, comparison: Comparison) -> list[dict[str, str]]:
    """The judge's messages for one ordered comparison."""
    block = rubric.pairwise
    if block is None:
        raise ValueError("the rubric has no pairwise block")
    first = comparison.first
    values = {
        "criteria": _criteria_text(block),
        "scale": _scale_text(block),
        "format": _format_text(block, rubric.rationale_max_chars),
        "system": first.system or "(none)",
        "turns": str(len(first.exchanges)),
        "conversation_a": exchanges_text(first.exchanges),
        "conversation_b": exchanges_text(comparison.second.exchanges),
    }
    messages = [{"role": "system", "content": rubric.system}] if rubric.system else []
    messages.append({"role": "user", "content": fill(block.template, values)})
    return messages


def preference_schema(block: PairwiseRubric, rationale_max_chars: int | None) -> dict[str, Any]:
    rationale: dict[str, Any] = {"type": "string"}
    if rationale_max_chars is not None:
        rationale["maxLength"] = rationale_max_chars
    return {
        "type": "object",
        "properties": {"rationale": rationale, "verdict": {"type": "string", "enum": list(block.scale)}},
        "required": ["rationale", "verdict"],
        "additionalProperties": False,
    }


def pair_response_format(rubric: Rubric) -> dict[str, Any] | None:
    """`response_format` for the rubric's mode, as the rubric's other judgements send it."""
    block = rubric.pairwise
    if block is None:
        return None
    mode = rubric.response_format
    if mode == "json_schema":
        return {"type": "json_object", "schema": preference_schema(block, rubric.rationale_max_chars)}
    if mode == "openai_json_schema":
        return {
            "type": "json_schema",
            "json_schema": {"name": "preference", "strict": True, "schema": preference_schema(block, None)},
        }
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def _norm(label: str) -> str:
    return " ".join(label.strip().lower().split())


def parse_preference(text: str, block: PairwiseRubric, finish_reason: str | None = None) -> Preference:
    """The verdict in `text`; InvalidJudgement saying what was wrong otherwise. A label is
    matched ignoring case and spacing, never guessed: an unknown label is not a verdict."""
    cut = (
        " (the answer was cut off at max_tokens before its JSON was complete: raise max_tokens in the rubric)"
        if finish_reason == "length"
        else ""
    )
    cleaned = strip_think(text)
    if not cleaned:
        raise InvalidJudgement("the answer is empty" + cut)
    found = next((o for o in json_objects(cleaned) if "verdict" in o), None)
    if found is None:
        raise InvalidJudgement(f'no JSON object with a "verdict" in the answer: {excerpt(cleaned)}{cut}')
    raw = found["verdict"]
    labels = {_norm(label): label for label in block.scale}
    label = labels.get(_norm(raw)) if isinstance(raw, str) else None
    problems = []
    if label is None:
        problems.append(f"verdict {json.dumps(raw)[:40]} is not one of {', '.join(block.scale)}")
    rationale = found.get("rationale")
    if not isinstance(rationale, str):
        problems.append('"rationale" is missing or not a string')
    if problems:
        raise InvalidJudgement("; ".join(problems))
    assert label is not None and isinstance(rationale, str)
    return Preference(label, block.share(label), rationale.strip())
