"""`storybench-eval metrics`: the backfill of stored turns, on the in-memory store."""

from __future__ import annotations

import pytest

from evaluator.records import ResponseRecord
from evaluator.text_metrics import text_metrics
from tests.metrics.conftest import COPYING, EARLIER, OTHER_EXP, ObservedStore, flat, invoke


def by_turn(store: ObservedStore, exp_key: str | None = None) -> dict[tuple[int, int], ResponseRecord]:
    return {
        (t.run_index, t.turn_index): t
        for t in store.model_responses(None)
        if exp_key is None or t.experiment_key == exp_key
    }


def plan_turns(store: ObservedStore) -> dict[tuple[int, int], ResponseRecord]:
    return {(t.run_index, t.turn_index): t for t in store.run_responses("run-a")}


def test_a_run_gets_metrics_conversation_by_conversation_in_turn_order(memory_store: ObservedStore) -> None:
    result = invoke("run-a")
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "5 turn(s), 4 to compute, 0 already current, 1 not ok" in out
    turns = plan_turns(memory_store)
    first, copying, third = (turns[(0, t)].metrics for t in range(3))
    assert first is not None and copying is not None and third is not None
    assert first.history_overlap is None  # the first turn has no history
    assert copying.history_overlap == 0.4444  # 4 of its 9 four-grams are in turn 0's answer
    assert copying == text_metrics(COPYING, "Prompt 1", [EARLIER])
    assert third == text_metrics(turns[(0, 2)].response_text, "Prompt 2", [EARLIER, COPYING])
    # Run 1 is a conversation of its own: run 0's answers are not its history.
    assert turns[(1, 0)].metrics is not None and turns[(1, 0)].metrics.history_overlap is None
    assert turns[(1, 1)].outcome == "empty" and turns[(1, 1)].metrics is None
    # The other experiment is not in run-a's plan: untouched.
    assert by_turn(memory_store, OTHER_EXP)[(0, 0)].metrics is None
    assert memory_store.writes == 4


def test_a_second_pass_changes_nothing_and_all_covers_every_run(memory_store: ObservedStore) -> None:
    invoke("run-a")
    before = plan_turns(memory_store)
    again = invoke("--latest")
    assert again.exit_code == 0 and memory_store.writes == 4  # nothing rewritten
    assert "0 to compute, 4 already current" in flat(again.output)
    assert plan_turns(memory_store) == before
    every = invoke("--all")
    assert every.exit_code == 0 and memory_store.writes == 5
    assert "6 turn(s), 1 to compute, 4 already current, 1 not ok" in flat(every.output)
    assert by_turn(memory_store, OTHER_EXP)[(0, 0)].metrics == text_metrics(EARLIER, "Prompt 0", [])


def test_a_new_metrics_version_recomputes_older_turns(
    memory_store: ObservedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke("--all")
    assert memory_store.writes == 5
    monkeypatch.setattr("evaluator.text_metrics.METRICS_VERSION", 2)
    monkeypatch.setattr("evaluator.metrics.backfill.METRICS_VERSION", 2)
    result = invoke("--all")
    assert "5 to compute, 0 already current" in flat(result.output)
    assert memory_store.writes == 10
    versions = {t.metrics.version for t in by_turn(memory_store).values() if t.metrics is not None}
    assert versions == {2}
    assert invoke("--all").exit_code == 0 and memory_store.writes == 10


def test_dry_run_counts_and_writes_nothing(memory_store: ObservedStore) -> None:
    result = invoke("--all", "--dry-run")
    assert result.exit_code == 0
    assert "6 turn(s), 5 to compute" in flat(result.output) and "dry run" in result.output
    assert memory_store.writes == 0
    assert all(t.metrics is None for t in by_turn(memory_store).values())


def test_an_interrupted_backfill_resumes_where_it_stopped(memory_store: ObservedStore) -> None:
    memory_store.interrupt_after = 2
    stopped = invoke("run-a")
    assert stopped.exit_code == 130 and "re-run the same command" in flat(stopped.output)
    assert sum(t.metrics is not None for t in plan_turns(memory_store).values()) == 2
    memory_store.interrupt_after = None
    resumed = invoke("run-a")
    assert resumed.exit_code == 0 and "2 to compute, 2 already current" in flat(resumed.output)
    assert memory_store.writes == 4
    turns = plan_turns(memory_store)
    # Metrics written after the resume still see the whole history.
    assert turns[(0, 2)].metrics == text_metrics(turns[(0, 2)].response_text, "Prompt 2", [EARLIER, COPYING])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "give one of RUN_ID, --latest or --all"),
        (("run-a", "--all"), 2, "give one of RUN_ID, --latest or --all"),
        (("--latest", "--all"), 2, "give one of RUN_ID, --latest or --all"),
        (("no-such-run",), 1, "no run 'no-such-run'"),
    ],
)
def test_usage_and_missing_runs(
    memory_store: ObservedStore, args: tuple[str, ...], code: int, message: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == code and message in flat(result.output)
    assert memory_store.writes == 0
