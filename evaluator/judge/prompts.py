"""The judge's prompt: the rubric's template filled in, fitted to the judge's context window.

A response target's earlier conversation is context, not the thing judged, so when the prompt
does not fit it loses its oldest turns first; the judged answer is never cut. A sequence target
IS the whole conversation (it is judged for continuity across turns), so it is never trimmed: a
conversation that does not fit is a failed judgement with the numbers, not a judgement of part
of it. The JSON schema sent as `response_format` lives here too, built from the criteria.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evaluator.budget import Counter, count_prompt_tokens, estimate_tokens
from evaluator.judge.rubric import PLACEHOLDER_RE, CriterionSpec, Rubric
from evaluator.judge.targets import Exchange, Target

__all__ = [
    "RETRY_NOTE_TOKENS",
    "DoesNotFit",
    "Fitted",
    "fit",
    "render",
    "response_format",
]

# Room kept free besides the reply's max_tokens: the retry after an invalid answer appends a
# short note to the prompt, and it must fit too.
RETRY_NOTE_TOKENS = 96
# Enumerating a scale's values lets llama.cpp's grammar enforce the range (its JSON-schema
# converter ignores minimum/maximum); larger scales fall back to minimum/maximum.
_MAX_ENUM = 101


class DoesNotFit(Exception):
    """Even the smallest prompt for this target leaves no room for the judge's reply."""


@dataclass(frozen=True)
class Fitted:
    messages: list[dict[str, str]]
    prompt_tokens: int  # our count: exact with our server's tokenizer, an estimate elsewhere
    left_out: int = 0  # earlier turns left out of a response target's context


def criteria_text(specs: list[CriterionSpec]) -> str:
    return "\n".join(f"- {c.name} ({c.min}-{c.max}): {c.description}" for c in specs)


def format_text(specs: list[CriterionSpec], rationale_max_chars: int) -> str:
    scores = ", ".join(f'"{c.name}": <integer {c.min}-{c.max}>' for c in specs)
    return (
        "Reply with only a JSON object, no other text, in exactly this shape:\n"
        f'{{"scores": {{{scores}}}, "rationale": "<why you gave these scores, at most '
        f'{rationale_max_chars} characters>"}}'
    )


def exchanges_text(exchanges: tuple[Exchange, ...] | list[Exchange]) -> str:
    return "\n\n".join(exchange_text(e) for e in exchanges)


def exchange_text(e: Exchange) -> str:
    n = e.turn_index + 1
    return f"[Turn {n}] User:\n{e.prompt}\n\n[Turn {n}] Writer:\n{e.answer}"


def _context_text(target: Target, left_out: int) -> str:
    kept = target.history[left_out:]
    if not target.history:
        return "(none: this is the first turn)"
    note = ""
    if left_out:
        first, last = target.history[0].turn_index + 1, target.history[left_out - 1].turn_index + 1
        turns = f"turn {first}" if first == last else f"turns {first}-{last}"
        note = f"({turns} left out here: the judge's context is too small for the whole conversation)"
    if not kept:
        return note
    return f"{note}\n\n{exchanges_text(kept)}" if note else exchanges_text(kept)


def fill(template: str, values: dict[str, str]) -> str:
    """One pass, so a placeholder inside an answer is left as the model wrote it."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def render(rubric: Rubric, target: Target, left_out: int = 0) -> list[dict[str, str]]:
    """The judge's messages for `target`, leaving out its `left_out` oldest context turns."""
    specs = rubric.criteria(target.kind)
    values = {
        "criteria": criteria_text(specs),
        "format": format_text(specs, rubric.rationale_max_chars),
        "system": target.system or "(none)",
        "turns": str(target.turns_total),
    }
    if target.kind == "response":
        values |= {
            "context": _context_text(target, left_out),
            "prompt": target.prompt,
            "answer": target.answer,
            "turn": str((target.turn_index or 0) + 1),
        }
    else:
        values["conversation"] = exchanges_text(target.history)
    messages = [{"role": "system", "content": rubric.system}] if rubric.system else []
    messages.append({"role": "user", "content": fill(rubric.template(target.kind), values)})
    return messages


async def fit(
    rubric: Rubric,
    target: Target,
    counter: Counter | None,
    context_window: int | None,
    *,
    scale: float = 1.0,
) -> Fitted:
    """The largest prompt for `target` that leaves `max_tokens` (+ the retry note) free.

    `scale` corrects our counts after the endpoint said exactly how long a prompt was. Without
    a known context window nothing is trimmed: the endpoint's own refusal is handled upstream.
    """

    async def count(messages: list[dict[str, str]]) -> int:
        return math.ceil(await count_prompt_tokens(messages, counter) * scale)

    full = render(rubric, target)
    if context_window is None:
        return Fitted(full, await count(full))
    limit = context_window - rubric.max_tokens - RETRY_NOTE_TOKENS
    tokens = await count(full)
    if tokens <= limit:
        return Fitted(full, tokens)
    if target.kind == "sequence" or not target.history:
        what = "the whole conversation" if target.kind == "sequence" else "the judged answer with its prompt"
        fix = (
            "sequence runs are never trimmed: use a judge with a larger context"
            if target.kind == "sequence"
            else "use a judge with a larger context"
        )
        raise DoesNotFit(_too_long(what, tokens, context_window, rubric.max_tokens, fix))
    n = len(target.history)
    bare = render(rubric, target, left_out=n)
    base = await count(bare)
    if base > limit:
        raise DoesNotFit(
            _too_long(
                "the judged answer alone (no earlier turns)",
                base,
                context_window,
                rubric.max_tokens,
                "use a judge with a larger context or lower max_tokens in the rubric",
            )
        )
    # Estimate from each turn's own count, then settle it with counts of the whole prompt: leave
    # out more while it does not fit; keep one more turn while that still fits.
    sizes = [math.ceil(await _text_tokens(exchange_text(e), counter) * scale) + 2 for e in target.history]
    left_out = 1
    while left_out < n and base + sum(sizes[left_out:]) > limit:
        left_out += 1

    async def attempt(k: int) -> Fitted | None:
        if k == n:
            return Fitted(bare, base, n)
        messages = render(rubric, target, k)
        tokens = await count(messages)
        return Fitted(messages, tokens, k) if tokens <= limit else None

    found = await attempt(left_out)
    while found is None:  # ends: leaving out every turn fits (checked above)
        left_out += 1
        found = await attempt(left_out)
    while found.left_out > 1:  # leaving out none is the whole prompt, which did not fit
        fewer = await attempt(found.left_out - 1)
        if fewer is None:
            break
        found = fewer
    return found


async def _text_tokens(text: str, counter: Counter | None) -> int:
    return await counter(text) if counter is not None else estimate_tokens(text)


def _too_long(what: str, tokens: int, window: int, max_tokens: int, fix: str) -> str:
    return (
        f"{what} needs about {tokens} prompt tokens; the judge's context is {window} tokens, "
        f"{max_tokens + RETRY_NOTE_TOKENS} of them kept for its reply (max_tokens {max_tokens} + "
        f"{RETRY_NOTE_TOKENS}); {fix}"
    )


# Structured output


def _score_schema(spec: CriterionSpec) -> dict[str, Any]:
    if spec.max - spec.min < _MAX_ENUM:
        return {"type": "integer", "enum": list(range(spec.min, spec.max + 1))}
    return {"type": "integer", "minimum": spec.min, "maximum": spec.max}


def judgement_schema(specs: list[CriterionSpec], rationale_max_chars: int | None) -> dict[str, Any]:
    """JSON schema of {"scores": {criterion: int}, "rationale": str}; every criterion required."""
    rationale: dict[str, Any] = {"type": "string"}
    if rationale_max_chars is not None:
        rationale["maxLength"] = rationale_max_chars  # bounds the reply, so it closes its JSON
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "object",
                "properties": {c.name: _score_schema(c) for c in specs},
                "required": [c.name for c in specs],
                "additionalProperties": False,
            },
            "rationale": rationale,
        },
        "required": ["scores", "rationale"],
        "additionalProperties": False,
    }


def response_format(rubric: Rubric, kind: str) -> dict[str, Any] | None:
    """The `response_format` request field for the rubric's mode (None: send none)."""
    specs = rubric.criteria(kind)
    mode = rubric.response_format
    if mode == "json_schema":  # llama.cpp / llama-cpp-python: turned into a grammar
        return {"type": "json_object", "schema": judgement_schema(specs, rubric.rationale_max_chars)}
    if mode == "openai_json_schema":  # OpenAI structured outputs, vLLM; strict mode has no maxLength
        return {
            "type": "json_schema",
            "json_schema": {"name": "judgement", "strict": True, "schema": judgement_schema(specs, None)},
        }
    if mode == "json_object":
        return {"type": "json_object"}
    return None
