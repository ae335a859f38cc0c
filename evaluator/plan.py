"""The plan of work: which (model, sequence, run) conversations to play, before anything is sent."""

from __future__ import annotations

from dataclasses import dataclass

from evaluator.budget import TEMPLATE_TOKENS_PER_MESSAGE, estimate_tokens
from evaluator.config import ModelEntry, Sequence
from evaluator.records import config_hash, experiment_key


@dataclass(frozen=True)
class SequenceRun:
    """One conversation: a sequence played once against one model with one seed."""

    model: ModelEntry
    sequence: Sequence
    run_index: int
    seed: int | None
    config_hash: str
    generation: int

    @property
    def experiment_key(self) -> str:
        return experiment_key(self.config_hash, self.generation)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.experiment_key, self.model.name, self.sequence.name, self.run_index)


@dataclass(frozen=True)
class Plan:
    models: list[ModelEntry]
    sequences: list[Sequence]
    runs: int
    items: list[SequenceRun]

    @property
    def total_turns(self) -> int:
        return sum(len(item.sequence.turns) for item in self.items)

    def turns_for(self, model: ModelEntry) -> int:
        return sum(len(i.sequence.turns) for i in self.items if i.model.name == model.name)


def model_config_hashes(models: list[ModelEntry], sequences: list[Sequence]) -> dict[str, str]:
    """config hash per (model name, sequence name), joined as 'model/sequence'."""
    return {
        f"{m.name}/{s.name}": config_hash(m.fingerprint(), s.content_hash) for m in models for s in sequences
    }


def build_plan(
    models: list[ModelEntry],
    sequences: list[Sequence],
    runs: int,
    generations: dict[str, int] | None = None,
    limit: int | None = None,
) -> Plan:
    """The conversations in their one order: model by model (as given), within a model
    sequence by sequence (as given), within a sequence run 0, 1, ...

    `generations` maps a config hash to the generation to play (default 1). `limit` keeps only
    the first `limit` conversations of that order (`run --limit N`, a quick try); the models
    left without any are left out of the plan.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    generations = generations or {}
    items: list[SequenceRun] = []
    for model in models:
        for sequence in sequences:
            cfg = config_hash(model.fingerprint(), sequence.content_hash)
            for run_index in range(runs):
                items.append(
                    SequenceRun(
                        model=model,
                        sequence=sequence,
                        run_index=run_index,
                        seed=model.seed_for_run(run_index),
                        config_hash=cfg,
                        generation=generations.get(cfg, 1),
                    )
                )
    if limit is not None:
        items = items[:limit]
        playing = {item.model.name for item in items}
        models = [model for model in models if model.name in playing]
    return Plan(models=models, sequences=sequences, runs=runs, items=items)


@dataclass(frozen=True)
class Estimate:
    model: str
    conversations: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    no_cost_because: str | None  # which price is missing, when cost_usd is None


def estimate(plan: Plan) -> list[Estimate]:
    """Upper-bound tokens: every answer is assumed to use its full max_tokens."""
    rows = []
    for model in plan.models:
        items = [i for i in plan.items if i.model.name == model.name]
        prompt = completion = requests = 0
        for item in items:
            history = estimate_tokens(item.sequence.system or "") if item.sequence.system else 0
            for turn in item.sequence.turns:
                history += estimate_tokens(turn.text) + TEMPLATE_TOKENS_PER_MESSAGE
                prompt += history
                completion += model.max_tokens
                history += model.max_tokens + TEMPLATE_TOKENS_PER_MESSAGE
                requests += 1
        rows.append(
            Estimate(
                model.name,
                len(items),
                requests,
                prompt,
                completion,
                model.cost_usd(prompt, completion),
                model.missing_prices,
            )
        )
    return rows
