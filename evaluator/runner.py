"""Plays the plan: conversations turn by turn, full history every turn, every turn stored.

Turns of one conversation are strictly in order. Conversations run concurrently, bounded per
endpoint and overall; an endpoint that is our local llama-cpp-python server is served model by
model, because it holds one model and one conversation's cached prefix at a time. A conversation
holds its endpoint slot for all of its turns, so its prefix stays cached between turns.

Resume is driven by the store: finished turns are read back, the history is rebuilt from them,
and the conversation continues at the first missing turn.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from evaluator.budget import Counter, count_prompt_tokens, plan_budget
from evaluator.client import (
    Completion,
    ContextOverflow,
    FatalRequestError,
    GaveUp,
    RetryPolicy,
    chat_with_retries,
    make_client,
)
from evaluator.config import ModelEntry
from evaluator.endpoint import EndpointInfo, server_root, token_counter
from evaluator.plan import Plan, SequenceRun
from evaluator.records import (
    FINAL_OUTCOMES,
    SEQUENCE_ENDING_OUTCOMES,
    Outcome,
    ResponseRecord,
    utcnow,
)
from evaluator.text import is_blank, strip_think

DEFAULT_HOSTED_CONCURRENCY = 4


class StoreLike(Protocol):
    """The part of evaluator.store.Store the runner uses."""

    def save_response(self, rec: ResponseRecord) -> bool: ...

    def done_turns(
        self, experiment_keys: list[str]
    ) -> dict[tuple[str, str, str, int], list[dict[str, Any]]]: ...


@dataclass
class ModelStats:
    total: int = 0
    done: int = 0  # turns finished (this run or earlier), including turns skipped after an end
    written: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    completion_tokens: int = 0
    generation_s: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    aborted: str | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.generation_s if self.generation_s > 0 else None

    @property
    def errors(self) -> int:
        return self.outcomes.get("error", 0)


@dataclass
class ModelContext:
    entry: ModelEntry
    info: EndpointInfo
    counter: Counter | None
    policy: RetryPolicy
    client: Any = None  # AsyncOpenAI; built lazily inside the event loop

    @property
    def context_window(self) -> int | None:
        return self.info.context_window or self.entry.context_window


def history_messages(sequence_system: str | None, done: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rebuild the conversation from stored turns: the model's own earlier answers included."""
    messages: list[dict[str, str]] = []
    if sequence_system:
        messages.append({"role": "system", "content": sequence_system})
    for turn in sorted(done, key=lambda t: t["turn_index"]):
        messages.append({"role": "user", "content": turn["prompt"]})
        messages.append({"role": "assistant", "content": turn["response_text"]})
    return messages


def resume_point(item: SequenceRun, stored: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """First turn still to play, and the finished turns before it. len(turns) means complete."""
    by_index = {t["turn_index"]: t for t in stored if t.get("outcome") in FINAL_OUTCOMES}
    done: list[dict[str, Any]] = []
    for index in range(len(item.sequence.turns)):
        turn = by_index.get(index)
        if turn is None:
            return index, done
        if turn["outcome"] in SEQUENCE_ENDING_OUTCOMES:
            return len(item.sequence.turns), done
        done.append(turn)
    return len(item.sequence.turns), done


async def run_all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first failure cancels the rest and propagates (like a TaskGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def redact(text: str, secret: str | None) -> str:
    """`text` with the endpoint's API key masked: some providers echo the key in their errors,
    and error texts are stored and printed. Keys shorter than 8 characters are left alone."""
    if not secret or len(secret) < 8:
        return text
    return text.replace(secret, "***")


class RunAborted(Exception):
    """Stops the whole run (e.g. the database went away)."""


class Runner:
    def __init__(
        self,
        plan: Plan,
        store: StoreLike,
        run_id: str,
        endpoints: dict[str, EndpointInfo],
        policy: RetryPolicy,
        concurrency: int,
        on_progress: Callable[[str, ModelStats], None] | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.run_id = run_id
        self.policy = policy
        self.concurrency = max(1, concurrency)
        self.on_progress = on_progress or (lambda name, stats: None)
        self.contexts: dict[str, ModelContext] = {}
        self.store_failed: str | None = None  # why the first failed write failed
        for model in plan.models:
            info = endpoints.get(model.name) or EndpointInfo(base_url=model.base_url)
            counter = (
                token_counter(model.base_url, model.model, model.api_key())
                if info.is_storybench_server
                else None
            )
            self.contexts[model.name] = ModelContext(model, info, counter, policy)
        self.stats: dict[str, ModelStats] = {m.name: ModelStats(total=plan.turns_for(m)) for m in plan.models}

    # ---- scheduling -------------------------------------------------------------------------

    def endpoint_limit(self, ctx: ModelContext) -> int:
        if ctx.entry.max_concurrency:
            return ctx.entry.max_concurrency
        if ctx.info.is_storybench_server:
            return ctx.info.slots or 1
        return DEFAULT_HOSTED_CONCURRENCY

    async def run(self) -> dict[str, ModelStats]:
        stored = self.store.done_turns(sorted({i.experiment_key for i in self.plan.items}))
        pending: dict[str, list[tuple[SequenceRun, int, list[dict[str, Any]]]]] = defaultdict(list)
        for item in self.plan.items:
            start, done = resume_point(item, stored.get(item.key, []))
            stats = self.stats[item.model.name]
            stats.done += start if start < len(item.sequence.turns) else len(item.sequence.turns)
            if start < len(item.sequence.turns):
                pending[item.model.name].append((item, start, done))
        for name, stats in self.stats.items():
            self.on_progress(name, stats)

        overall = asyncio.Semaphore(self.concurrency)
        # Group models by endpoint: a local storybench server plays its models one at a time.
        groups: dict[str, list[ModelContext]] = defaultdict(list)
        for model in self.plan.models:
            ctx = self.contexts[model.name]
            key = server_root(model.base_url) if ctx.info.is_storybench_server else f"hosted:{model.name}"
            groups[key].append(ctx)
        endpoint_sems: dict[str, asyncio.Semaphore] = {}
        for model in self.plan.models:
            ctx = self.contexts[model.name]
            limit = self.endpoint_limit(ctx)
            root = server_root(model.base_url)
            if root not in endpoint_sems or limit < endpoint_sems[root]._value:
                endpoint_sems[root] = asyncio.Semaphore(limit)

        async def play_model(ctx: ModelContext) -> None:
            sem = endpoint_sems[server_root(ctx.entry.base_url)]
            ctx.client = make_client(ctx.entry.base_url, ctx.entry.api_key(), ctx.entry.request_timeout_s)
            try:
                await run_all(
                    self._bounded(overall, sem, ctx, item, start, done)
                    for item, start, done in pending.get(ctx.entry.name, [])
                )
            finally:
                await ctx.client.close()

        async def play_group(contexts: list[ModelContext]) -> None:
            for ctx in contexts:
                await play_model(ctx)

        await run_all(play_group(contexts) for contexts in groups.values())
        return self.stats

    async def _bounded(
        self,
        overall: asyncio.Semaphore,
        endpoint: asyncio.Semaphore,
        ctx: ModelContext,
        item: SequenceRun,
        start: int,
        done: list[dict[str, Any]],
    ) -> None:
        async with endpoint, overall:
            await self.play_conversation(ctx, item, start, done)

    # ---- one conversation ---------------------------------------------------------------------

    async def play_conversation(
        self, ctx: ModelContext, item: SequenceRun, start: int, done: list[dict[str, Any]]
    ) -> None:
        stats = self.stats[ctx.entry.name]
        messages = history_messages(item.sequence.system, done)
        turns = item.sequence.turns
        for index in range(start, len(turns)):
            if stats.aborted:
                return
            turn = turns[index]
            messages.append({"role": "user", "content": turn.text})
            record = await self.play_turn(ctx, item, index, messages)
            if self.store_failed is not None:  # another conversation's write already failed
                raise RunAborted(self.store_failed)
            try:
                self.store.save_response(record)
            except Exception as exc:  # the store raises StoreError; anything else is as fatal
                # Writes block the loop: without this, every conversation whose answer is
                # already in would wait out the database's timeout in turn before the run stops.
                self.store_failed = str(exc)
                raise RunAborted(str(exc)) from exc
            self._account(stats, ctx.entry, record)
            if record.outcome != "ok":
                # The rest of this conversation cannot be played: count it as settled for progress.
                if record.outcome in SEQUENCE_ENDING_OUTCOMES:
                    stats.done += len(turns) - index - 1
                self.on_progress(ctx.entry.name, stats)
                return
            messages.append({"role": "assistant", "content": record.response_text})
            self.on_progress(ctx.entry.name, stats)

    def _account(self, stats: ModelStats, entry: ModelEntry, rec: ResponseRecord) -> None:
        stats.done += 1
        stats.written += 1
        stats.outcomes[rec.outcome] += 1
        if rec.completion_tokens and rec.latency_s:
            stats.completion_tokens += rec.completion_tokens
            stats.generation_s += rec.latency_s - (rec.ttft_s or 0.0)
        if rec.ttft_s is not None:
            stats.ttfts.append(rec.ttft_s)
        if rec.prompt_tokens:
            stats.prompt_tokens += rec.prompt_tokens
            stats.cached_tokens += rec.cached_tokens or 0
        if rec.cost_usd:
            stats.cost_usd += rec.cost_usd
        if rec.outcome != "ok" and rec.error:
            stats.messages.append(
                f"{entry.name} / {rec.sequence} run {rec.run_index} turn {rec.turn_index + 1}: "
                f"{rec.outcome}: {rec.error}"
            )

    async def play_turn(
        self, ctx: ModelContext, item: SequenceRun, index: int, messages: list[dict[str, str]]
    ) -> ResponseRecord:
        entry = ctx.entry
        secret = entry.api_key()
        started_at = utcnow()
        turn = item.sequence.turns[index]
        params = entry.generation_params()
        params["seed"] = item.seed
        base = {
            "experiment_key": item.experiment_key,
            "config_hash": item.config_hash,
            "generation": item.generation,
            "run_id": self.run_id,
            "model": entry.name,
            "model_id": entry.model,
            "endpoint": entry.base_url,
            "sequence": item.sequence.name,
            "sequence_hash": item.sequence.content_hash,
            "run_index": item.run_index,
            "seed": item.seed,
            "turn_index": index,
            "turn_name": turn.name,
            "prompt": turn.text,
            "messages_sent": len(messages),
        }

        def record(outcome: Outcome, completion: Completion | None, **extra: Any) -> ResponseRecord:
            text = completion.text if completion else ""
            tps = None
            if completion and completion.completion_tokens and completion.latency_s:
                gen_s = completion.latency_s - (completion.ttft_s or 0.0)
                tps = completion.completion_tokens / gen_s if gen_s > 0 else None
            cost = None
            if completion and (entry.price_input_per_mtok or entry.price_output_per_mtok):
                cost = (
                    (completion.prompt_tokens or 0) * (entry.price_input_per_mtok or 0.0)
                    + (completion.completion_tokens or 0) * (entry.price_output_per_mtok or 0.0)
                ) / 1_000_000
            fields: dict[str, Any] = {
                **base,
                "response_raw": text,
                "response_text": strip_think(text),
                "finish_reason": completion.finish_reason if completion else None,
                "prompt_tokens": completion.prompt_tokens if completion else None,
                "completion_tokens": completion.completion_tokens if completion else None,
                "cached_tokens": completion.cached_tokens if completion else None,
                "latency_s": completion.latency_s if completion else None,
                "ttft_s": completion.ttft_s if completion else None,
                "tokens_per_s": tps,
                "server_timings": completion.timings if completion else None,
                "attempts": completion.attempts if completion else 0,
                "outcome": outcome,
                "error": None,
                "params": params,
                "started_at": started_at,
                "finished_at": utcnow(),
                "cost_usd": cost,
                # Read at call time: the count and budget in force when the turn ended.
                "prompt_tokens_estimated": prompt_tokens,
                "max_tokens_sent": budget.max_tokens,
            }
            fields.update(extra)
            if fields["error"]:
                fields["error"] = redact(fields["error"], secret)
            return ResponseRecord(**fields)

        try:
            prompt_tokens = await count_prompt_tokens(messages, ctx.counter)
        except Exception:  # a tokenizer hiccup must not lose the turn: fall back to the estimate
            prompt_tokens = await count_prompt_tokens(messages, None)
        budget = plan_budget(prompt_tokens, entry.max_tokens, ctx.context_window, entry.min_output_tokens)
        if budget.exhausted:
            return record(
                "context_exhausted",
                None,
                error=budget.message,
            )
        params["max_tokens"] = budget.max_tokens
        attempts = 0
        try:
            try:
                completion = await chat_with_retries(ctx.client, entry.model, messages, params, self.policy)
            except ContextOverflow as overflow:
                # Our count was an estimate; the endpoint said exactly how long the prompt is.
                if overflow.prompt_tokens is None or overflow.n_ctx is None:
                    raise
                attempts += overflow.attempts
                prompt_tokens = overflow.prompt_tokens
                budget = plan_budget(prompt_tokens, entry.max_tokens, overflow.n_ctx, entry.min_output_tokens)
                if budget.exhausted:
                    return record(
                        "context_exhausted",
                        None,
                        error=budget.message,
                        attempts=attempts,
                    )
                params["max_tokens"] = budget.max_tokens
                completion = await chat_with_retries(ctx.client, entry.model, messages, params, self.policy)
            attempts += completion.attempts
            if is_blank(completion.text):
                # One more try; a different seed, since the same seed replays the same answer.
                retry_params = dict(params)
                if retry_params.get("seed") is not None:
                    retry_params["seed"] = int(retry_params["seed"]) + 100_003
                completion = await chat_with_retries(
                    ctx.client, entry.model, messages, retry_params, self.policy
                )
                attempts += completion.attempts
                completion.attempts = attempts
                if is_blank(completion.text):
                    return record(
                        "empty",
                        completion,
                        error=(
                            "the model returned an empty answer twice "
                            f"(finish_reason={completion.finish_reason}, "
                            f"completion_tokens={completion.completion_tokens})"
                        ),
                    )
            completion.attempts = attempts
            return record(
                "ok",
                completion,
            )
        except ContextOverflow as exc:
            return record(
                "context_exhausted",
                None,
                error=f"the endpoint refused the history as too long: {exc}",
                attempts=attempts + exc.attempts,
            )
        except (FatalRequestError, GaveUp) as exc:
            if isinstance(exc, FatalRequestError) and exc.aborts_model:
                self.stats[entry.name].aborted = redact(
                    f"{entry.name}: {exc} (stopped this model: every request would fail alike)",
                    secret,
                )
            return record("error", None, error=str(exc), attempts=attempts + exc.attempts)
