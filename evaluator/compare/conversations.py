"""Which stored conversations stand for a model: read across every run in the store.

A model is a model entry name. Its conversations of one sequence are taken from ONE experiment:
the configuration (model entry settings x sequence content) played most recently, and of that
configuration the latest generation (`run --restart` starts a new one and keeps the old). So a
model re-run with a new temperature is compared as it is now, never as a mix of old and new
settings, and a restarted experiment replaces its previous results. A conversation counts only
when it is complete: every turn of its sequence ended "ok". The pairwise comparison and the
leaderboard both select through here, so a rating and a rubric mean describe the same
conversations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from evaluator.judge.targets import Exchange
from evaluator.records import ResponseRecord, RunRecord, TextMetrics, parse_experiment_key, sequence_run_id
from evaluator.store import Store

__all__ = ["Conversation", "Selection", "select_conversations", "build_selection"]


@dataclass(frozen=True)
class Conversation:
    """One complete run of one sequence by one model."""

    id: str  # sequence-run id: what rubric judgements of the whole conversation target
    model: str
    sequence: str
    sequence_hash: str
    run_index: int
    experiment_key: str
    system: str | None
    exchanges: tuple[Exchange, ...]  # every turn; texts are "" when read without text
    turn_ids: tuple[str, ...]  # the turns' response `_id`s, in order
    completion_tokens: tuple[int | None, ...]  # per turn, as the endpoint counted them
    latency_s: tuple[float | None, ...]
    model_id: str = ""  # the id the endpoint was sent: a judge with the same id judges itself
    run_id: str = ""  # the run that played the first turn (its server metadata names the weights)
    words: tuple[int | None, ...] = ()  # per turn, from the stored text metrics (None: not computed)
    model_sha256: str | None = None  # the weights' SHA-256 our server reported for this model
    metrics: tuple[TextMetrics | None, ...] = ()  # per turn: the judge-free text figures

    def length(self, unit: str) -> float | None:
        """The conversation's answer length in words or completion tokens (None: unknown)."""
        values = self.words if unit == "words" else self.completion_tokens
        if not values or any(v is None for v in values):
            return None
        return float(sum(v for v in values if v is not None))

    @property
    def match_key(self) -> tuple[str, int]:
        """Two models' conversations are compared when they played the same prompts (content
        hash) with the same run index."""
        return (self.sequence_hash, self.run_index)


@dataclass
class Selection:
    """model -> its complete conversations, and what was left out and why."""

    conversations: dict[str, list[Conversation]] = field(default_factory=dict)
    incomplete: Counter[str] = field(default_factory=Counter)  # model -> conversations left out
    superseded: Counter[str] = field(default_factory=Counter)  # model -> older experiments ignored

    def of(self, model: str) -> list[Conversation]:
        return self.conversations.get(model, [])

    def models(self) -> list[str]:
        return [m for m, convs in self.conversations.items() if convs]

    def all(self) -> list[Conversation]:
        return [c for convs in self.conversations.values() for c in convs]


def _sequence_spec(run: RunRecord | None, sequence: str) -> dict[str, Any]:
    if run is None:
        return {}
    for spec in run.config_snapshot.get("sequences", []):
        if isinstance(spec, dict) and spec.get("name") == sequence:
            return spec
    return {}


def select_conversations(
    store: Store,
    models: list[str] | None = None,
    sequences: set[str] | None = None,
    *,
    with_text: bool = True,
) -> Selection:
    """The complete conversations of `models` (all models when None), of `sequences` (all
    when None), from every run in the store."""
    runs: dict[str, RunRecord | None] = {}

    def run_of(run_id: str) -> RunRecord | None:
        if run_id not in runs:
            runs[run_id] = store.get_run(run_id)
        return runs[run_id]

    records = (
        r
        for r in store.model_responses(models, with_text=with_text)
        if sequences is None or r.sequence in sequences
    )
    return build_selection(records, run_of, models)


def build_selection(
    records: Iterable[ResponseRecord],
    run_of: Any,
    models: list[str] | None = None,
) -> Selection:
    """`select_conversations` on records already read; `run_of(run_id)` gives a run document
    (its snapshot says how many turns a sequence has)."""
    by_experiment: dict[str, list[ResponseRecord]] = {}
    for rec in records:
        by_experiment.setdefault(rec.experiment_key, []).append(rec)

    # (model, sequence) -> experiment key -> (config hash, generation, last activity)
    candidates: dict[tuple[str, str], list[tuple[str, str, int, datetime]]] = {}
    for key, recs in by_experiment.items():
        parsed = parse_experiment_key(key)
        cfg, generation = parsed if parsed else (key, recs[0].generation)
        last = max(r.finished_at for r in recs)
        candidates.setdefault((recs[0].model, recs[0].sequence), []).append((key, cfg, generation, last))

    out = Selection()
    for name in models or []:
        out.conversations.setdefault(name, [])
    for (model, sequence), options in sorted(candidates.items()):
        latest_cfg = max(options, key=lambda o: o[3])[1]
        chosen = max((o for o in options if o[1] == latest_cfg), key=lambda o: o[2])[0]
        out.superseded[model] += len(options) - 1
        convs = out.conversations.setdefault(model, [])
        recs = by_experiment[chosen]
        run = run_of(recs[0].run_id)
        spec = _sequence_spec(run, sequence)
        served = run.server_metadata.get(model) if run is not None else None
        sha = served.get("sha256") if isinstance(served, dict) else None
        spec_turns = spec.get("turns")
        by_run: dict[int, list[ResponseRecord]] = {}
        for rec in recs:
            by_run.setdefault(rec.run_index, []).append(rec)
        for run_index, turns in sorted(by_run.items()):
            turns.sort(key=lambda r: r.turn_index)
            total = len(spec_turns) if isinstance(spec_turns, list) else max(r.turn_index for r in turns) + 1
            if [r.turn_index for r in turns] != list(range(total)) or any(r.outcome != "ok" for r in turns):
                out.incomplete[model] += 1
                continue
            system = spec.get("system") if isinstance(spec.get("system"), str) else None
            convs.append(
                Conversation(
                    id=sequence_run_id(chosen, model, sequence, run_index),
                    model=model,
                    sequence=sequence,
                    sequence_hash=turns[0].sequence_hash,
                    run_index=run_index,
                    experiment_key=chosen,
                    system=system,
                    exchanges=tuple(Exchange(r.turn_index, r.prompt, r.response_text) for r in turns),
                    turn_ids=tuple(r.id for r in turns),
                    completion_tokens=tuple(r.completion_tokens for r in turns),
                    latency_s=tuple(r.latency_s for r in turns),
                    model_id=turns[0].model_id,
                    run_id=turns[0].run_id,
                    words=tuple(r.metrics.words if r.metrics else None for r in turns),
                    metrics=tuple(r.metrics for r in turns),
                    model_sha256=sha if isinstance(sha, str) else None,
                )
            )
    return out
