"""Computing text metrics for stored turns that lack current ones (`storybench-eval metrics`).

A turn's `history_overlap` depends on the answers before it, so turns are taken conversation by
conversation, in turn order; the earlier answers are the conversation's earlier ok turns, the
same history the runner sent back when it played the turn. A turn whose metrics carry the
current METRICS_VERSION is left alone, so the backfill is idempotent and resumes where an
interrupted one stopped; a bumped version recomputes every older turn.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from evaluator.records import ResponseRecord
from evaluator.store import Store
from evaluator.text_metrics import METRICS_VERSION, text_metrics


@dataclass
class BackfillStats:
    """What a backfill found and did, turn by turn."""

    turns: int = 0  # turns read
    computed: int = 0  # ok turns given metrics (counted, not written, in a dry run)
    current: int = 0  # ok turns whose metrics were already of METRICS_VERSION
    not_ok: int = 0  # turns that did not end ok: they keep no metrics
    vanished: int = 0  # ok turns that were gone (or no longer ok) when their metrics were written


def needs_metrics(turn: ResponseRecord) -> bool:
    """An ok turn with no metrics, or metrics of an older definition."""
    return turn.outcome == "ok" and (turn.metrics is None or turn.metrics.version < METRICS_VERSION)


def count(turns: Iterable[ResponseRecord]) -> BackfillStats:
    """What a backfill of `turns` would do, without computing anything (texts may be absent)."""
    stats = BackfillStats()
    for turn in turns:
        stats.turns += 1
        if turn.outcome != "ok":
            stats.not_ok += 1
        elif needs_metrics(turn):
            stats.computed += 1
        else:
            stats.current += 1
    return stats


def conversations(turns: Iterable[ResponseRecord]) -> Iterator[list[ResponseRecord]]:
    """Consecutive turns of one conversation (the store's iterators keep them together), each
    conversation in turn order."""
    for _, group in itertools.groupby(turns, key=lambda t: t.conversation_key):
        yield sorted(group, key=lambda t: t.turn_index)


def backfill(
    store: Store,
    turns: Iterable[ResponseRecord],
    *,
    dry_run: bool = False,
    on_turn: Callable[[], None] = lambda: None,
) -> BackfillStats:
    """Compute and store the metrics of every ok turn of `turns` that needs them (a dry run
    stores nothing). `turns` must carry their texts; `on_turn` is called after each turn."""
    stats = BackfillStats()
    for conversation in conversations(turns):
        earlier: list[str] = []
        for turn in conversation:
            stats.turns += 1
            if turn.outcome != "ok":
                stats.not_ok += 1
            elif not needs_metrics(turn):
                stats.current += 1
            elif dry_run or store.set_response_metrics(
                turn.id, text_metrics(turn.response_text, turn.prompt, earlier)
            ):
                stats.computed += 1
            else:
                stats.vanished += 1
            if turn.outcome == "ok":
                earlier.append(turn.response_text)
            on_turn()
    return stats
