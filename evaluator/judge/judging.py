"""Judging: one request per target through the evaluator's own client, each valid judgement
stored once. About 420 lines on purpose: sending, the one retry with a note, fitting to the
judge's context and recording are one flow, read top to bottom.

The judge is called like any evaluated model (evaluator/client.py: the same retries, Retry-After
and error classes), with temperature 0 and the rubric's seed so a judgement repeats. `--repeat K`
adds judgements 1 .. K-1 of each target to measure the judge's spread: each with its own seed
(`repeat_seed`) and a temperature above 0, because at temperature 0 another seed changes nothing
and many providers ignore seeds anyway. A reasoning judge (`reasoning: true`) takes no
temperature at all (`judge_params`): it is sent `max_completion_tokens` and its
`reasoning_effort`, its details say `temperature: null`, and its repeats differ only by seed. An answer
that is not a valid judgement is asked for once more, with a note saying what was wrong (at
temperature 0 the same prompt would replay the same answer); a second invalid answer is a
failure that is reported, never stored. Each judgement is saved as soon as it is made, so Ctrl-C
keeps what was judged and a re-run judges only what is missing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from evaluator.budget import count_prompt_tokens
from evaluator.client import (
    Completion,
    ContextOverflow,
    FatalRequestError,
    GaveUp,
    RetryPolicy,
    chat_with_retries,
)
from evaluator.config import ModelEntry
from evaluator.endpoint import Endpoint
from evaluator.judge.prompts import DoesNotFit, Fitted, fit, render, response_format
from evaluator.judge.rubric import KINDS, Rubric
from evaluator.judge.targets import Target
from evaluator.judge.verdict import InvalidJudgement, Verdict, parse_verdict
from evaluator.records import EvaluationRecord, evaluation_id, utcnow
from evaluator.runner import share_bounded
from evaluator.store import Store, StoreError
from evaluator.store_writer import StoreWriter
from evaluator.turn_record import redact
from evaluator.workers import Worker

__all__ = [
    "DEFAULT_REPEAT_TEMPERATURE",
    "Failure",
    "Job",
    "Judge",
    "JudgeAborted",
    "KindStats",
    "judge_model_sha256",
    "judge_params",
    "judged_cost",
    "repeat_sampling",
    "repeat_seed",
    "split_judged",
]

_NOTE_REASON_CHARS = 160
_OVERFLOW_RETRIES = 4
# Repeat k >= 1 of a judgement samples at this temperature unless --repeat-temperature says otherwise.
DEFAULT_REPEAT_TEMPERATURE = 0.7
# Repeat k is sent with the rubric's seed + REPEAT_SEED_STEP * k: far from seed + 1, the seed of
# the retry after an invalid answer, so no two requests of one target share a seed.
REPEAT_SEED_STEP = 1000


def repeat_seed(rubric_seed: int, repeat: int) -> int:
    """The seed of repeat `repeat` (repeat 0: the rubric's seed, as before repeats existed)."""
    return rubric_seed + REPEAT_SEED_STEP * repeat


def repeat_sampling(rubric_seed: int, repeat: int, repeat_temperature: float) -> tuple[float, int]:
    """(temperature, seed) of one repeat: repeat 0 is today's deterministic judgement, later
    repeats sample (a different seed alone changes nothing at temperature 0). Shared with
    `compare`, so a rubric judgement and a verdict repeat alike."""
    temperature = 0.0 if repeat == 0 else repeat_temperature
    return temperature, repeat_seed(rubric_seed, repeat)


def judge_params(entry: ModelEntry, temperature: float, seed: int, max_tokens: int) -> dict[str, Any]:
    """The sampling part of a judge request (rubric judge and `compare` alike).

    A reasoning judge refuses `temperature` and `max_tokens` (OpenAI answers 400): it is sent
    `max_completion_tokens`, which also bounds its hidden reasoning, and the entry's
    `reasoning_effort` when set; `temperature` is None in what this returns for the record.
    """
    if not entry.reasoning:
        return {"temperature": temperature, "seed": seed, "max_tokens": max_tokens}
    params: dict[str, Any] = {"seed": seed, "max_completion_tokens": max_tokens}
    if entry.reasoning_effort is not None:
        params["reasoning_effort"] = entry.reasoning_effort
    return params


def judged_cost(entry: ModelEntry, completions: list[Completion]) -> dict[str, Any]:
    """Tokens and cost of every answer a judgement took (a retried one costs both answers), for
    its details: `cost_usd` by the one rule (evaluator/cost.py), None unless the judge entry has
    both prices. Reasoning tokens are already in `completion_tokens` (and priced with them)."""
    prompt = sum(c.prompt_tokens or 0 for c in completions)
    completion = sum(c.completion_tokens or 0 for c in completions)
    reasoning = [c.reasoning_tokens for c in completions if c.reasoning_tokens is not None]
    reported = any(c.completion_tokens is not None for c in completions)
    return {
        "prompt_tokens": prompt if any(c.prompt_tokens is not None for c in completions) else None,
        "completion_tokens": completion if reported else None,
        "reasoning_tokens": sum(reasoning) if reasoning else None,
        "cost_usd": entry.cost_usd(prompt, completion) if completions else None,
    }


def judge_model_sha256(endpoint: Endpoint) -> str | None:
    """The judge's model file SHA-256 when our server serves it (its metadata says), else None:
    what the leaderboard compares with the evaluated models' files to find self-judging."""
    value = endpoint.metadata.get("sha256")
    return str(value) if value else None


class JudgeAborted(Exception):
    """Stops judging: the database went away (what was saved is kept)."""


@dataclass
class KindStats:
    to_judge: int = 0
    judged: int = 0
    skipped: int = 0  # already judged by this judge with this rubric version
    failed: int = 0
    not_judged: int = 0  # the turn failed / the sequence run is incomplete
    trimmed: int = 0  # judged with earlier turns left out of the context

    @property
    def settled(self) -> int:
        return self.judged + self.failed


@dataclass(frozen=True)
class Job:
    """One judgement to make: a target and which repeat of its judgement (0: the first)."""

    target: Target
    repeat: int = 0

    @property
    def kind(self) -> str:
        return self.target.kind

    @property
    def label(self) -> str:
        return self.target.label + (f" (repeat {self.repeat})" if self.repeat else "")


@dataclass(frozen=True)
class Failure:
    kind: str
    label: str
    reason: str


def split_judged(
    targets: list[Target],
    stored: list[EvaluationRecord],
    judge: str,
    rubric_version: str,
    repeats: int = 1,
) -> tuple[list[Job], list[Job], set[str]]:
    """(to judge, already judged, judge model ids the stored judgements name) for this judge and
    rubric version, `repeats` judgements per target: a re-run sends nothing for what is stored,
    and a larger `repeats` adds only the new repeats. Repeat-major order, so an interrupted run
    has given every target its first judgement before any second one."""
    mine = [e for e in stored if e.judge_model == judge and e.rubric_version == rubric_version]
    done = {(e.target_id, e.repeat) for e in mine}
    jobs = [Job(t, k) for k in range(repeats) for t in targets]
    pending = [j for j in jobs if (j.target.target_id, j.repeat) not in done]
    skipped = [j for j in jobs if (j.target.target_id, j.repeat) in done]
    model_ids = {str(e.details["judge_model_id"]) for e in mine if e.details.get("judge_model_id")}
    return pending, skipped, model_ids


class Judge:
    def __init__(
        self,
        rubric: Rubric,
        endpoint: Endpoint,
        policy: RetryPolicy,
        store: Store,
        run_id: str | None,
        concurrency: int,
        on_progress: Callable[[str, KindStats], None] | None = None,
        repeat_temperature: float = DEFAULT_REPEAT_TEMPERATURE,
        worker: Worker | None = None,
    ) -> None:
        self.rubric = rubric
        self.repeat_temperature = repeat_temperature
        self.worker = worker  # claims each judgement when set (cooperating workers)
        self.by_others = 0  # judgements another worker stored while this one waited
        self.endpoint = endpoint
        self.policy = policy
        self.store = store
        self.run_id = run_id
        self.concurrency = max(1, concurrency)
        self.on_progress = on_progress or (lambda kind, stats: None)
        self.version = rubric.version_id
        self.stats: dict[str, KindStats] = {kind: KindStats() for kind in KINDS}
        self.failures: list[Failure] = []
        self.aborted: str | None = None  # the judge endpoint refused us for good (401/403/404)
        self.store_failed: str | None = None
        self.writer = StoreWriter()  # closed when `run` ends: one run per Judge
        self._secret = endpoint.entry.api_key()

    async def run(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.stats[job.kind].to_judge += 1
        try:
            await share_bounded(
                jobs, self.judge_one, self.concurrency, self.worker, self._claim_key, self._judged
            )
        except StoreError as exc:  # a claim or a read under it: the database is gone
            raise JudgeAborted(str(exc)) from exc
        finally:
            self.writer.close()
            await self.endpoint.aclose()

    def _evaluation_id(self, job: Job) -> str:
        return evaluation_id(job.target.target_id, self.endpoint.entry.name, self.version, job.repeat)

    def _claim_key(self, job: Job) -> str:
        return f"judgement:{self._evaluation_id(job)}"

    def _judged(self, job: Job) -> bool:
        """Stored meanwhile by another worker (checked under our claim, in a thread)."""
        if not self.store.has_evaluation(self._evaluation_id(job)):
            return False
        self.by_others += 1
        return True

    # ---- one target -------------------------------------------------------------------------

    def _fail(self, job: Job, reason: str) -> None:
        self.stats[job.kind].failed += 1
        self.failures.append(Failure(job.kind, job.label, redact(reason, self._secret)))
        self.on_progress(job.kind, self.stats[job.kind])

    def _params(self, kind: str, repeat: int) -> dict[str, Any]:
        temperature, seed = repeat_sampling(self.rubric.seed, repeat, self.repeat_temperature)
        params = judge_params(self.endpoint.entry, temperature, seed, self.rubric.max_tokens)
        fmt = response_format(self.rubric, kind)
        if fmt is not None:
            params["response_format"] = fmt
        if self.endpoint.entry.extra_body:
            params["extra_body"] = copy.deepcopy(self.endpoint.entry.extra_body)
        return params

    async def _fit(self, target: Target, window: int | None, scale: float = 1.0) -> Fitted:
        try:
            return await fit(self.rubric, target, self.endpoint.count_tokens, window, scale=scale)
        except (httpx.HTTPError, ValueError, KeyError):
            # A tokenizer hiccup must not lose the judgement: fall back to the estimate.
            return await fit(self.rubric, target, None, window, scale=scale)

    async def judge_one(self, job: Job) -> None:
        if self.store_failed is not None:
            raise JudgeAborted(self.store_failed)
        if self.aborted is not None:
            self._fail(job, f"not sent: {self.aborted}")
            return
        target = job.target
        try:
            fitted = await self._fit(target, self.endpoint.context_window)
        except DoesNotFit as exc:
            self._fail(job, str(exc))
            return
        entry, specs = self.endpoint.entry, self.rubric.criteria(target.kind)
        params = self._params(target.kind, job.repeat)
        first_problem: str | None = None
        answers: list[Completion] = []  # every answer paid for, for the judgement's cost
        try:
            completion, fitted, attempts = await self._send(target, fitted, params)
            answers.append(completion)
            try:
                verdict = parse_verdict(completion.text, specs, completion.finish_reason)
            except InvalidJudgement as exc:
                first_problem = str(exc)
                params = {**params, "seed": params["seed"] + 1}
                completion = await chat_with_retries(
                    self.endpoint.chat_client(),
                    entry.model,
                    with_note(fitted.messages, first_problem),
                    params,
                    self.policy,
                )
                attempts += completion.attempts
                answers.append(completion)
                try:
                    verdict = parse_verdict(completion.text, specs, completion.finish_reason)
                except InvalidJudgement as again:
                    reason = f"no valid judgement in two answers: first {first_problem}; then {again}"
                    self._fail(job, reason)
                    return
        except DoesNotFit as exc:
            self._fail(job, str(exc))
            return
        except ContextOverflow as exc:
            self._fail(job, f"the judge refused the prompt as too long: {exc}")
            return
        except FatalRequestError as exc:
            reason = str(exc)
            if "response_format" in reason or "json_schema" in reason or "grammar" in reason:
                reason += (
                    "; this endpoint may not take the rubric's response_format: set it to "
                    "json_object or none in the rubric"
                )
            if exc.aborts_model:
                self.aborted = f"the judge endpoint refused an earlier request ({exc})"
            self._fail(job, reason)
            return
        except GaveUp as exc:
            self._fail(job, str(exc))
            return
        await self._save(job, verdict, answers, fitted, attempts, first_problem, params)

    async def _send(
        self, target: Target, fitted: Fitted, params: dict[str, Any]
    ) -> tuple[Completion, Fitted, int]:
        """Send; when the endpoint says the prompt is too long, fit again with its numbers (or,
        without them, leave out more of the oldest context) and resend."""
        attempts = 0
        window = self.endpoint.context_window
        scale = 1.0
        for _ in range(_OVERFLOW_RETRIES):
            try:
                completion = await chat_with_retries(
                    self.endpoint.chat_client(),
                    self.endpoint.entry.model,
                    fitted.messages,
                    params,
                    self.policy,
                )
            except ContextOverflow as overflow:
                attempts += overflow.attempts
                if target.kind == "sequence" or fitted.left_out >= len(target.history):
                    raise
                if overflow.prompt_tokens and overflow.n_ctx:
                    scale *= overflow.prompt_tokens / max(1, fitted.prompt_tokens)
                    window = overflow.n_ctx
                    fitted = await self._fit(target, window, scale)
                else:
                    remaining = len(target.history) - fitted.left_out
                    left_out = fitted.left_out + max(1, (remaining + 1) // 2)
                    messages = render(self.rubric, target, left_out)
                    fitted = Fitted(messages, await count_prompt_tokens(messages, None), left_out)
                continue
            return completion, fitted, attempts + completion.attempts
        raise ContextOverflow(
            f"still too long after leaving out {fitted.left_out} earlier turn(s)", attempts=attempts
        )

    async def _save(
        self,
        job: Job,
        verdict: Verdict,
        answers: list[Completion],
        fitted: Fitted,
        attempts: int,
        first_problem: str | None,
        params: dict[str, Any],
    ) -> None:
        target = job.target
        entry = self.endpoint.entry
        completion = answers[-1]  # the answer that was a judgement
        stats = self.stats[target.kind]
        rationale = verdict.rationale
        if fitted.left_out:
            total = len(target.history)
            rationale = (
                f"[context trimmed: the oldest {fitted.left_out} of {total} earlier turns were left "
                f"out to fit the judge's context] {rationale}"
            )
        record = EvaluationRecord(
            target_id=target.target_id,
            target_kind=target.kind,
            judge_model=entry.name,
            rubric_version=self.version,
            scores=dict(verdict.scores),
            rationale=rationale,
            created_at=utcnow(),
            run_id=self.run_id,
            repeat=job.repeat,
            details={
                "judge_model_id": entry.model,
                "judge_model_sha256": judge_model_sha256(self.endpoint),
                "judge_endpoint": entry.base_url,
                "response_format": self.rubric.response_format,
                "scales": {c.name: [c.min, c.max] for c in self.rubric.criteria(target.kind)},
                "context_turns": len(target.history) if target.kind == "response" else None,
                "context_turns_left_out": fitted.left_out,
                "prompt_tokens_estimated": fitted.prompt_tokens,
                "finish_reason": completion.finish_reason,
                "latency_s": completion.latency_s,
                # Tokens and cost of both answers when the first was not a judgement; the cost by
                # the one rule (evaluator/cost.py): None unless the judge entry has both prices.
                **judged_cost(entry, answers),
                "attempts": attempts,
                "retried_after": first_problem,
                "temperature": params.get("temperature"),  # None: a reasoning judge takes none
                "reasoning_effort": params.get("reasoning_effort"),
                "seed": params["seed"],
            },
        )
        try:  # off the event loop: a database round trip never stalls other judge requests
            await self.writer.write(self.store.save_evaluation, record)
        except Exception as exc:  # StoreError; anything else is as fatal
            self.store_failed = str(exc)
            raise JudgeAborted(str(exc)) from exc
        stats.judged += 1
        if fitted.left_out:
            stats.trimmed += 1
        self.on_progress(target.kind, stats)


def with_note(messages: list[dict[str, str]], problem: str) -> list[dict[str, str]]:
    """The same prompt with a note on what was wrong: at temperature 0 an unchanged prompt
    would replay the same invalid answer."""
    reason = problem if len(problem) <= _NOTE_REASON_CHARS else problem[: _NOTE_REASON_CHARS - 3] + "..."
    note = (
        f"\n\n(Your previous reply could not be used: {reason}. Reply again with only the JSON "
        "object described above.)"
    )
    out = [dict(m) for m in messages]
    out[-1]["content"] += note
    return out
