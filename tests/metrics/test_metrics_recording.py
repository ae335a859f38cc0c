"""Where the metrics go: a played turn's record, the store's write, the export and the report."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import respx

from evaluator.client import Completion, RetryPolicy
from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.metrics.backfill import backfill
from evaluator.plan import build_plan
from evaluator.records import TextMetrics
from evaluator.report.gather import conversations, summarize
from evaluator.report.render_html import render_html
from evaluator.report.render_md import render_md
from evaluator.runner import Runner
from evaluator.store import EXPORT_COLUMNS, Store, export_responses
from evaluator.store.export import LATE_FIELDS
from evaluator.text_metrics import text_metrics
from evaluator.turn_policy import TurnResult
from evaluator.turn_record import TurnContext, assistant_texts, turn_record
from tests.metrics.conftest import COPYING, EARLIER, seed
from tests.support.documents import T0, make_response, replaced
from tests.support.memory_store import memory_store
from tests.support.sse import sse

BASE = "http://hosted.test/v1"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def model() -> ModelEntry:
    return ModelEntry(name="hosted", base_url=BASE, model="m-1", max_tokens=50, seed=7, min_output_tokens=16)


def saga(n: int) -> Sequence:
    return Sequence(name="saga", turns=[PromptTurn(name=f"t{i}", text=f"Write part {i}.") for i in range(n)])


def test_an_ok_turn_is_recorded_with_metrics_of_its_answer_and_history() -> None:
    item = build_plan([model()], [saga(2)], 1).items[0]
    done = Completion(
        text="<think>the keeper climbs the stairs</think>" + COPYING, finish_reason="stop",
        prompt_tokens=10, completion_tokens=20, cached_tokens=None, ttft_s=0.1, latency_s=0.5,
        timings=None, attempts=1,
    )  # fmt: skip
    history = [{"role": "user", "content": "Write part 0."}, {"role": "assistant", "content": EARLIER}]
    ctx = TurnContext(item, 1, "run-1", 3, T0, assistant_texts(history))
    assert ctx.earlier_answers == (EARLIER,)
    rec = turn_record(ctx, TurnResult("ok", done, None, 1, 10, 50, {}), model())
    # Counted on the answer without its <think> block, against the earlier answer.
    assert rec.metrics == text_metrics(COPYING, "Write part 1.", [EARLIER])
    assert rec.metrics is not None and rec.metrics.words == 12 and rec.metrics.history_overlap == 0.4444
    failed = turn_record(ctx, TurnResult("error", None, "HTTP 500", 3, 10, 50, {}), model())
    assert failed.metrics is None


@respx.mock
def test_a_played_conversation_stores_the_metrics_a_backfill_would_compute() -> None:
    answers = iter([EARLIER, COPYING, EARLIER])
    respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse(next(answers)))
    store: Store = memory_store()
    policy = RetryPolicy(max_attempts=1, max_total_wait_s=5, initial_backoff_s=0.01, max_backoff_s=0.01)
    asyncio.run(Runner(build_plan([model()], [saga(3)], 1), store, "run-1", {}, policy, 2).run())
    played = {t.turn_index: t.metrics for t in store.model_responses(None)}
    assert played[0] is not None and played[0].history_overlap is None
    assert played[1] is not None and played[1].history_overlap == 0.4444
    assert played[2] is not None and played[2].history_overlap == 1.0  # turn 0's answer again
    store.db["responses"].update_many({}, {"$set": {"metrics": None}})  # as if stored before them
    assert backfill(store, store.model_responses(None)).computed == 3
    assert {t.turn_index: t.metrics for t in store.model_responses(None)} == played


def test_the_store_writes_metrics_on_ok_turns_only_and_keeps_the_rest_of_the_document() -> None:
    store: Store = memory_store()
    seed(store)
    ok = make_response(1, text=COPYING)
    empty = replaced(make_response(1, run_index=1, outcome="empty", text=""), finish_reason="stop")
    metrics = text_metrics(COPYING, ok.prompt, [EARLIER])
    before = store.db["responses"].find_one({"_id": ok.id})
    assert store.set_response_metrics(ok.id, metrics) is True
    after = store.db["responses"].find_one({"_id": ok.id})
    assert after is not None and before is not None
    assert after["metrics"] == metrics.model_dump() and isinstance(
        after["started_at"], type(before["started_at"])
    )
    assert {k: v for k, v in after.items() if k != "metrics"} == {
        k: v for k, v in before.items() if k != "metrics"
    }
    assert store.set_response_metrics(empty.id, metrics) is False  # not ok: keeps None
    assert store.set_response_metrics("no-such-turn", metrics) is False
    assert store.db["responses"].find_one({"_id": empty.id})["metrics"] is None  # type: ignore[index]


def test_export_flattens_the_metrics_into_columns_at_the_end(tmp_path: Path) -> None:
    store: Store = memory_store()
    seed(store)
    backfill(store, store.run_responses("run-a"))
    metric_columns = [c for c in EXPORT_COLUMNS if c.startswith("metric_")]
    assert metric_columns == [f"metric_{f}" for f in TextMetrics.model_fields]
    # Appended right after the joined columns; later fields (LATE_FIELDS) only after them.
    start = EXPORT_COLUMNS.index("sequence_evaluations") + 1
    assert list(EXPORT_COLUMNS[start : start + len(metric_columns)]) == metric_columns
    assert "metrics" not in EXPORT_COLUMNS
    assert list(EXPORT_COLUMNS[-len(LATE_FIELDS) :]) == list(LATE_FIELDS) == ["reasoning_tokens", "replica"]
    export_responses(store, "run-a", "jsonl", tmp_path / "t.jsonl")
    rows = {(r["run_index"], r["turn_index"]): r for r in map(json.loads, (tmp_path / "t.jsonl").open())}
    assert rows[(0, 1)]["metric_words"] == 12 and rows[(0, 1)]["metric_history_overlap"] == 0.4444
    assert rows[(0, 0)]["metric_history_overlap"] is None and rows[(1, 1)]["metric_words"] is None
    export_responses(store, "run-a", "csv", tmp_path / "t.csv")
    table = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text(encoding="utf-8"))))
    cells = {(r["run_index"], r["turn_index"]): r for r in table}
    assert cells[("0", "1")]["metric_distinct_2"] == "0.6364" and cells[("1", "1")]["metric_words"] == ""


def test_the_report_shows_metrics_by_turn_and_names_the_backfill_for_older_turns() -> None:
    store: Store = memory_store()
    seed(store)
    run = store.get_run("run-a")
    assert run is not None
    html_out, md_out = io.StringIO(), io.StringIO()
    render_html(summarize(store, run), None, html_out)
    assert "Text metrics by turn" in html_out.getvalue()
    assert "storybench-eval metrics run-a" in html_out.getvalue()  # none are computed yet
    backfill(store, store.run_responses("run-a"))
    summary = summarize(store, run)
    points = {(p.model, p.turn_index): p for p in summary.text_metrics}
    # Turn 0 of runs 0 and 1: 7 and 12 words; turn 1: run 0's copy (run 1's turn 1 is not ok).
    assert (points[("m1", 0)].ok_turns, points[("m1", 0)].measured, points[("m1", 0)].words_mean) == (
        2,
        2,
        9.5,
    )
    assert points[("m1", 0)].history_overlap_mean is None
    assert points[("m1", 1)].history_overlap_mean == 0.4444
    render_html(summary, conversations(store, run), html_out := io.StringIO())
    render_md(summary, None, md_out)
    html, md = html_out.getvalue(), md_out.getvalue()
    assert '<td class="n">0.444</td>' in html and "storybench-eval metrics run-a" not in html
    assert "### Text metrics by turn" in md and "| m1 | 1 | 1/1 | 12 | 0.636 | 0.444 | 0.000 |" in md


def test_docs_list_every_metrics_field() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    for name in TextMetrics.model_fields:
        assert f"| `{name}` |" in doc
