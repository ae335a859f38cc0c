"""Judging comparisons: one request per ordered pair, each outcome stored once.

Like the rubric judge (evaluator/judge/judging.py): the evaluator's own client with its
retries, temperature 0 and the rubric's seed (repeats 1..K-1 of `--repeat K` sample with their
own seed and a temperature above 0, as `judge --repeat` does; a reasoning judge takes no
temperature, `judge_params`), one more request with a note after an answer that is not a
verdict. Unlike it, a comparison that still has no verdict is STORED as failed
with its reason: the leaderboard lists failures instead of guessing, nothing is ever given a
default verdict, and a re-run retries exactly the failed ones (`Store.save_pairwise` replaces
a failed document, never a verdict).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evaluator.budget import count_prompt_tokens
from evaluator.client import (
    Completion,
    ContextOverflow,
    FatalRequestError,
    GaveUp,
    RetryPolicy,
    chat_with_retries,
)
from evaluator.compare.pairs import Comparison
from evaluator.compare.prompt import Preference, pair_messages, pair_response_format, parse_preference
from evaluator.endpoint import Endpoint
from evaluator.judge.judging import (
    DEFAULT_REPEAT_TEMPERATURE,
    JudgeAborted,
    judge_model_sha256,
    judge_params,
    judged_cost,
    repeat_sampling,
    with_note,
)
from evaluator.judge.prompts import RETRY_NOTE_TOKENS
from evaluator.judge.rubric import Rubric
from evaluator.judge.verdict import InvalidJudgement
from evaluator.records import PairwiseRecord, pairwise_id, utcnow
from evaluator.runner import share_bounded
from evaluator.store import Store, StoreError
from evaluator.store_writer import StoreWriter
from evaluator.turn_record import redact
from evaluator.workers import Worker

__all__ = ["CompareStats", "PairJudge", "JudgeAborted"]


@dataclass
class CompareStats:
    to_judge: int = 0
    judged: int = 0
    failed: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # label -> count
    failures: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)

    @property
    def settled(self) -> int:
        return self.judged + self.failed


class PairJudge:
    def __init__(
        self,
        rubric: Rubric,
        endpoint: Endpoint,
        policy: RetryPolicy,
        store: Store,
        concurrency: int,
        on_progress: Callable[[CompareStats], None] | None = None,
        repeat_temperature: float = DEFAULT_REPEAT_TEMPERATURE,
        worker: Worker | None = None,
    ) -> None:
        if rubric.pairwise is None:
            raise ValueError("the rubric has no pairwise block")
        self.rubric = rubric
        self.worker = worker  # claims each comparison when set (cooperating workers)
        self.by_others = 0  # comparisons another worker stored while this one waited
        self.repeat_temperature = repeat_temperature
        self.block = rubric.pairwise
        self.endpoint = endpoint
        self.policy = policy
        self.store = store
        self.concurrency = max(1, concurrency)
        self.on_progress = on_progress or (lambda stats: None)
        self.version = rubric.version_id
        self.stats = CompareStats()
        self.aborted: str | None = None  # the endpoint refused us for good (401/403/404)
        self.store_failed: str | None = None
        self.writer = StoreWriter()
        self._secret = endpoint.entry.api_key()

    async def run(self, comparisons: list[Comparison]) -> None:
        self.stats.to_judge += len(comparisons)
        try:
            await share_bounded(
                comparisons, self.judge_one, self.concurrency, self.worker, self._claim_key, self._stored
            )
        except StoreError as exc:  # a claim or a read under it: the database is gone
            raise JudgeAborted(str(exc)) from exc
        finally:
            self.writer.close()
            await self.endpoint.aclose()

    def _pairwise_id(self, comparison: Comparison) -> str:
        first, second = comparison.first.id, comparison.second.id
        return pairwise_id(first, second, self.endpoint.entry.name, self.version, comparison.repeat)

    def _claim_key(self, comparison: Comparison) -> str:
        return f"comparison:{self._pairwise_id(comparison)}"

    def _stored(self, comparison: Comparison) -> bool:
        """Stored meanwhile by another worker (checked under our claim, in a thread): a verdict,
        or a failure recorded since this worker started (older failures are retried)."""
        found = self.store.get_pairwise(self._pairwise_id(comparison))
        if found is None or self.worker is None:
            return False
        if found.status == "ok" or found.created_at >= self.worker.started_at:
            self.by_others += 1
            return True
        return False

    def _params(self, repeat: int) -> dict[str, Any]:
        temperature, seed = repeat_sampling(self.rubric.seed, repeat, self.repeat_temperature)
        params = judge_params(self.endpoint.entry, temperature, seed, self.rubric.max_tokens)
        fmt = pair_response_format(self.rubric)
        if fmt is not None:
            params["response_format"] = fmt
        if self.endpoint.entry.extra_body:
            params["extra_body"] = copy.deepcopy(self.endpoint.entry.extra_body)
        return params

    async def _too_long(self, messages: list[dict[str, str]]) -> str | None:
        window = self.endpoint.context_window
        if window is None:
            return None
        try:
            tokens = await count_prompt_tokens(messages, self.endpoint.count_tokens)
        except Exception:  # a tokenizer hiccup must not lose the comparison: use the estimate
            tokens = await count_prompt_tokens(messages, None)
        room = window - self.rubric.max_tokens - RETRY_NOTE_TOKENS
        if tokens <= room:
            return None
        return (
            f"the two conversations need about {tokens} prompt tokens; the judge's context is "
            f"{window} tokens, {self.rubric.max_tokens + RETRY_NOTE_TOKENS} of them kept for its reply; "
            "conversations are never trimmed for a comparison: use a judge with a larger context"
        )

    async def judge_one(self, comparison: Comparison) -> None:
        if self.store_failed is not None:
            raise JudgeAborted(self.store_failed)
        if self.aborted is not None:
            await self._save(comparison, None, f"not sent: {self.aborted}", {})
            return
        messages = pair_messages(self.rubric, comparison)
        too_long = await self._too_long(messages)
        if too_long is not None:
            await self._save(comparison, None, too_long, {})
            return
        params = self._params(comparison.repeat)
        entry = self.endpoint.entry
        model = entry.model
        answers: list[Completion] = []  # every answer paid for, for the comparison's cost
        try:
            completion = await chat_with_retries(
                self.endpoint.chat_client(), model, messages, params, self.policy
            )
            answers.append(completion)
            attempts = completion.attempts
            try:
                preference = parse_preference(completion.text, self.block, completion.finish_reason)
                retried_after = None
            except InvalidJudgement as exc:
                retried_after = str(exc)
                params = {**params, "seed": params["seed"] + 1}
                completion = await chat_with_retries(
                    self.endpoint.chat_client(),
                    model,
                    with_note(messages, retried_after),
                    params,
                    self.policy,
                )
                attempts += completion.attempts
                answers.append(completion)
                try:
                    preference = parse_preference(completion.text, self.block, completion.finish_reason)
                except InvalidJudgement as again:
                    reason = f"no valid verdict in two answers: first {retried_after}; then {again}"
                    # No verdict, but both answers were paid for: their cost is stored too.
                    spent = {**judged_cost(entry, answers), "attempts": attempts}
                    await self._save(comparison, None, reason, spent)
                    return
        except ContextOverflow as exc:
            spent = judged_cost(entry, answers) if answers else {}  # an invalid first answer was paid for
            await self._save(comparison, None, f"the judge refused the prompt as too long: {exc}", spent)
            return
        except FatalRequestError as exc:
            if exc.aborts_model:
                self.aborted = f"the judge endpoint refused an earlier request ({exc})"
            await self._save(comparison, None, str(exc), judged_cost(entry, answers) if answers else {})
            return
        except GaveUp as exc:
            await self._save(comparison, None, str(exc), judged_cost(entry, answers) if answers else {})
            return
        details = {
            "finish_reason": completion.finish_reason,
            "latency_s": completion.latency_s,
            # Tokens and cost of both answers when the first was not a verdict; the cost by the
            # one rule (evaluator/cost.py): None unless the judge entry has both prices.
            **judged_cost(entry, answers),
            "attempts": attempts,
            "retried_after": retried_after,
            "seed": params["seed"],
        }
        await self._save(comparison, preference, None, details)

    async def _save(
        self,
        comparison: Comparison,
        preference: Preference | None,
        error: str | None,
        details: dict[str, Any],
    ) -> None:
        entry = self.endpoint.entry
        first, second = comparison.first, comparison.second
        temperature, seed = repeat_sampling(self.rubric.seed, comparison.repeat, self.repeat_temperature)
        if error is not None:
            error = redact(error, self._secret)
        record = PairwiseRecord(
            first_conversation=first.id,
            second_conversation=second.id,
            first_model=first.model,
            second_model=second.model,
            sequence=first.sequence,
            sequence_hash=first.sequence_hash,
            run_index=first.run_index,
            judge_model=entry.name,
            rubric_version=self.version,
            status="ok" if preference is not None else "failed",
            verdict=preference.verdict if preference else None,
            score_first=preference.share_first if preference else None,
            rationale=preference.rationale if preference else "",
            error=error,
            created_at=utcnow(),
            repeat=comparison.repeat,
            details={
                "judge_model_id": entry.model,
                "judge_model_sha256": judge_model_sha256(self.endpoint),
                "judge_endpoint": entry.base_url,
                "response_format": self.rubric.response_format,
                "temperature": None if entry.reasoning else temperature,  # a reasoning judge takes none
                "reasoning_effort": entry.reasoning_effort,
                "seed": seed,  # a verdict made on the retry says seed + 1 (from `details`)
                **details,
            },
        )
        try:  # off the event loop: a database round trip never stalls other requests
            await self.writer.write(self.store.save_pairwise, record)
        except Exception as exc:  # StoreError; anything else is as fatal
            self.store_failed = str(exc)
            raise JudgeAborted(str(exc)) from exc
        if preference is not None:
            self.stats.judged += 1
            self.stats.verdicts[preference.verdict] += 1
        else:
            self.stats.failed += 1
            self.stats.failures.append((comparison.label, error or ""))
        self.on_progress(self.stats)
