"""A played turn as its stored document: texts, token counts, speed, cost, text metrics, no secrets.

Kept apart from the turn policy (evaluator/turn_policy.py) so that what is decided and what is
written can change independently; `turn_record` is a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from evaluator.client import Completion, wire_params
from evaluator.config import ModelEntry
from evaluator.plan import SequenceRun
from evaluator.records import ResponseRecord, utcnow
from evaluator.text import strip_think
from evaluator.text_metrics import text_metrics
from evaluator.turn_policy import TurnResult

# Keys shorter than this are not masked: masking a 3-character key would mangle ordinary text.
MIN_REDACTED_KEY_CHARS = 8


@dataclass(frozen=True)
class TurnContext:
    """Where a turn belongs: the conversation, its position and the invocation writing it."""

    item: SequenceRun
    turn_index: int
    run_id: str
    messages_sent: int
    started_at: datetime
    earlier_answers: tuple[str, ...] = ()  # the conversation's answers before this turn, in order
    replica: str | None = None  # the server that answers it (`Endpoint.replica`: no credentials)


def assistant_texts(messages: Iterable[dict[str, str]]) -> tuple[str, ...]:
    """The model's earlier answers in a chat history (what `history_overlap` compares against)."""
    return tuple(m["content"] for m in messages if m.get("role") == "assistant")


def redact(text: str, secret: str | None) -> str:
    """`text` with the endpoint's API key masked: some providers echo the key in their errors,
    and error texts are stored and printed."""
    if not secret or len(secret) < MIN_REDACTED_KEY_CHARS:
        return text
    return text.replace(secret, "***")


def tokens_per_s(completion: Completion) -> float | None:
    """Completion tokens per second after the first token (generation speed, not latency)."""
    if not completion.completion_tokens or not completion.latency_s:
        return None
    generating = completion.latency_s - (completion.ttft_s or 0.0)
    return completion.completion_tokens / generating if generating > 0 else None


def turn_record(ctx: TurnContext, result: TurnResult, entry: ModelEntry) -> ResponseRecord:
    item = ctx.item
    turn = item.sequence.turns[ctx.turn_index]
    done = result.completion
    text = done.text if done else ""
    error = redact(result.error, entry.api_key()) if result.error else None
    answer = strip_think(text)
    metrics = text_metrics(answer, turn.text, list(ctx.earlier_answers)) if result.outcome == "ok" else None
    return ResponseRecord(
        run_id=ctx.run_id,
        experiment_key=item.experiment_key,
        config_hash=item.config_hash,
        generation=item.generation,
        model=entry.name,
        model_id=entry.model,
        endpoint=entry.base_url,
        sequence=item.sequence.name,
        sequence_hash=item.sequence.content_hash,
        run_index=item.run_index,
        seed=item.seed,
        turn_index=ctx.turn_index,
        turn_name=turn.name,
        outcome=result.outcome,
        finish_reason=done.finish_reason if done else None,
        attempts=result.attempts,
        error=error,
        messages_sent=ctx.messages_sent,
        prompt_tokens=done.prompt_tokens if done else None,
        completion_tokens=done.completion_tokens if done else None,
        cached_tokens=done.cached_tokens if done else None,
        prompt_tokens_estimated=result.prompt_tokens,
        max_tokens_sent=result.max_tokens,
        latency_s=done.latency_s if done else None,
        ttft_s=done.ttft_s if done else None,
        tokens_per_s=tokens_per_s(done) if done else None,
        cost_usd=entry.cost_usd(done.prompt_tokens, done.completion_tokens) if done else None,
        started_at=ctx.started_at,
        finished_at=utcnow(),
        params=wire_params(result.params),  # what the body carried (a reasoning model's limit)
        server_timings=done.timings if done else None,
        prompt=turn.text,
        response_text=answer,
        response_raw=text,
        metrics=metrics,
        reasoning_tokens=done.reasoning_tokens if done else None,
        replica=ctx.replica,
    )
