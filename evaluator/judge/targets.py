"""What a judge run looks at: the stored turns of one run, turned into judgement targets.

Two kinds. A "response" target is one successful turn: the user's prompt of that turn, the
conversation before it (for context) and the answer. A "sequence" target is one complete run
of a sequence: every turn, judged for continuity across turns. Turns that did not end "ok" are
never judged, and a sequence run with such a turn (or with turns missing) is not complete; both
are counted so the summary can say what was left out and why.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from evaluator.records import ResponseRecord, RunRecord, TargetKind, sequence_run_id

__all__ = ["Collected", "Exchange", "SelectionError", "Target", "collect"]


class SelectionError(ValueError):
    """--model / --sequence named something the run does not have."""


@dataclass(frozen=True)
class Exchange:
    """One played turn: what the user asked and what the model answered."""

    turn_index: int
    prompt: str
    answer: str


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    target_id: str  # a response `_id`, or `sequence_run_id(...)` for a whole sequence run
    model: str
    sequence: str
    run_index: int
    turns_total: int  # turns in the sequence
    system: str | None  # the system prompt the model was given
    history: tuple[Exchange, ...]  # response: the turns before it; sequence: every turn
    turn_index: int | None = None  # response only
    prompt: str = ""  # response only: this turn's user text
    answer: str = ""  # response only: the judged answer (`<think>` blocks removed)

    @property
    def label(self) -> str:
        where = f"{self.model} / {self.sequence} run {self.run_index}"
        return f"{where} turn {self.turn_index + 1}" if self.turn_index is not None else where


@dataclass
class Collected:
    targets: list[Target] = field(default_factory=list)
    # kind -> reason -> targets left out (e.g. "turn outcome empty", "sequence run incomplete")
    not_judged: dict[str, Counter[str]] = field(default_factory=dict)

    def not_judged_total(self, kind: str) -> int:
        return sum(self.not_judged.get(kind, Counter()).values())


def _pick(wanted_csv: str | None, available: list[str], what: str, run_id: str) -> set[str] | None:
    if wanted_csv is None:
        return None
    wanted = [n.strip() for n in wanted_csv.split(",") if n.strip()]
    if not wanted:
        raise SelectionError(f"no {what} names given; the run has: {', '.join(available) or 'none'}")
    lines = []
    for name in wanted:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
            hint = f" - did you mean '{close[0]}'?" if close else ""
            lines.append(f"run {run_id} has no {what} '{name}'{hint}")
    if lines:
        lines.append(f"{what}s of run {run_id}: {', '.join(available) or 'none'}")
        raise SelectionError("\n".join(lines))
    return set(wanted)


def _sequence_specs(run: RunRecord) -> dict[str, dict[str, Any]]:
    """Sequence name -> its snapshot (system prompt, turns) as the run recorded it."""
    return {
        str(s["name"]): s
        for s in run.config_snapshot.get("sequences", [])
        if isinstance(s, dict) and isinstance(s.get("name"), str)
    }


def collect(
    run: RunRecord,
    docs: list[ResponseRecord],
    kinds: list[TargetKind],
    models_csv: str | None = None,
    sequences_csv: str | None = None,
) -> Collected:
    """The targets of a run's stored turns (`Store.run_responses`), in a stable order."""
    run_id = run.id
    models = run.models or sorted({d.model for d in docs})
    sequences = run.sequences or sorted({d.sequence for d in docs})
    want_models = _pick(models_csv, models, "model", run_id)
    want_sequences = _pick(sequences_csv, sequences, "sequence", run_id)
    specs = _sequence_specs(run)

    groups: dict[tuple[str, str, str, int], list[ResponseRecord]] = {}
    for doc in docs:
        if want_models is not None and doc.model not in want_models:
            continue
        if want_sequences is not None and doc.sequence not in want_sequences:
            continue
        groups.setdefault(doc.conversation_key, []).append(doc)

    out = Collected(not_judged={kind: Counter() for kind in kinds})
    for (exp_key, model, sequence, run_index), turns in sorted(groups.items(), key=lambda kv: kv[0][1:]):
        turns.sort(key=lambda d: d.turn_index)
        spec = specs.get(sequence, {})
        system = spec.get("system") if isinstance(spec.get("system"), str) else None
        spec_turns = spec.get("turns")
        total = len(spec_turns) if isinstance(spec_turns, list) else len(turns)
        ok = [d for d in turns if d.outcome == "ok"]
        exchanges = [Exchange(d.turn_index, d.prompt, d.response_text) for d in ok]
        if "response" in kinds:
            for doc in turns:
                if doc.outcome != "ok":
                    out.not_judged["response"][f"turn outcome {doc.outcome}"] += 1
                    continue
                index = doc.turn_index
                out.targets.append(
                    Target(
                        kind="response",
                        target_id=doc.id,
                        model=model,
                        sequence=sequence,
                        run_index=run_index,
                        turns_total=total,
                        system=system,
                        history=tuple(e for e in exchanges if e.turn_index < index),
                        turn_index=index,
                        prompt=doc.prompt,
                        answer=doc.response_text,
                    )
                )
        if "sequence" in kinds:
            if [e.turn_index for e in exchanges] != list(range(total)):
                out.not_judged["sequence"]["sequence run incomplete (a turn failed or is missing)"] += 1
                continue
            out.targets.append(
                Target(
                    kind="sequence",
                    target_id=sequence_run_id(exp_key, model, sequence, run_index),
                    model=model,
                    sequence=sequence,
                    run_index=run_index,
                    turns_total=total,
                    system=system,
                    history=tuple(exchanges),
                )
            )
    return out
