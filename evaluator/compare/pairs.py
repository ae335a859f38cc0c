"""Which comparisons to make: every pair of the named models (or each against a baseline), on
every sequence and run index both completed, in both orders.

Both orders are judged because judges prefer a position (MT-Bench's GPT-4 flipped 12.9% of its
verdicts when the answers swapped places): the leaderboard combines the two, and a pair whose
orders disagree counts as a tie and as a position flip instead of as a win for whoever came first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

from evaluator.compare.conversations import Conversation, Selection

__all__ = ["Comparison", "ModelPair", "plan_comparisons", "with_repeats"]


@dataclass(frozen=True)
class Comparison:
    """One ordered comparison: `first` is shown as conversation A, `second` as B; `repeat` says
    which of `compare --repeat K`'s judgements of that order it is (0: the first)."""

    first: Conversation
    second: Conversation
    repeat: int = 0

    @property
    def label(self) -> str:
        f, s = self.first, self.second
        again = f", repeat {self.repeat}" if self.repeat else ""
        return f"{f.model} vs {s.model} / {f.sequence} run {f.run_index} ({f.model} shown first{again})"


@dataclass(frozen=True)
class ModelPair:
    """Two models and what they can be compared on."""

    model_a: str
    model_b: str
    matched: int  # conversations paired on (sequence content, run index)
    only_a: int  # conversations of A with no counterpart of B
    only_b: int


def plan_comparisons(
    selection: Selection, models: list[str], baseline: str | None = None
) -> tuple[list[Comparison], list[ModelPair]]:
    """Both orders of every matched pair of conversations, and per model pair how many matched.

    Model pairs: all pairs of `models` in the order given, or (baseline, m) for each other m.
    """
    if baseline is not None:
        model_pairs = [(baseline, m) for m in models if m != baseline]
    else:
        model_pairs = list(combinations(models, 2))
    comparisons: list[Comparison] = []
    summary: list[ModelPair] = []
    for a, b in model_pairs:
        of_b = {c.match_key: c for c in selection.of(b)}
        matched = 0
        for conv_a in sorted(selection.of(a), key=lambda c: (c.sequence, c.run_index)):
            conv_b = of_b.get(conv_a.match_key)
            if conv_b is None:
                continue
            matched += 1
            comparisons.append(Comparison(conv_a, conv_b))
            comparisons.append(Comparison(conv_b, conv_a))
        summary.append(ModelPair(a, b, matched, len(selection.of(a)) - matched, len(of_b) - matched))
    return comparisons, summary


def with_repeats(comparisons: list[Comparison], repeats: int) -> list[Comparison]:
    """Each comparison `repeats` times (repeat 0 .. repeats-1), repeat-major: an interrupted
    run has judged every order once before it judges any order again."""
    return [replace(c, repeat=k) for k in range(repeats) for c in comparisons]
