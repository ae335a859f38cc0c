"""What a report says about a run, checked on the gathered numbers and on the rendered HTML and
Markdown: counts per outcome, timings, cache reuse, judge means per judge and rubric version
(never mixed), the turn-by-turn table, failed turns marked with their reason."""

from __future__ import annotations

import html
import io
import re
import socket
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from evaluator.report.gather import conversations, summarize
from evaluator.report.render_html import render_html
from evaluator.report.render_md import render_md
from evaluator.store import Store
from tests.report.conftest import (
    EARLIER_RUN,
    EXHAUSTED,
    HTTP_ERROR,
    STRAY,
    Seeded,
    find_table,
    row,
    run_record,
)

pytestmark = pytest.mark.integration  # the real embedded nx-27017


def html_report(store: Store, run_id: str, transcripts: bool = True) -> str:
    run = store.get_run(run_id)
    assert run is not None
    out = io.StringIO()
    render_html(summarize(store, run), conversations(store, run) if transcripts else None, out)
    return out.getvalue()


def md_report(store: Store, run_id: str) -> str:
    run = store.get_run(run_id)
    assert run is not None
    out = io.StringIO()
    render_md(summarize(store, run), conversations(store, run), out)
    return out.getvalue()


def failures(document: str) -> list[str]:
    """The text of every failure box of an HTML report."""
    return [
        html.unescape(m) for m in re.findall(r'<div class="failure"><strong>(.*?)</strong></div>', document)
    ]


def test_summary_counts_every_outcome_per_model_and_sequence(store: Store, seeded: Seeded) -> None:
    run = store.get_run(seeded.run_id)
    assert run is not None
    summary = summarize(store, run)
    assert summary.outcomes == ["ok", "empty", "context_exhausted", "error"]
    groups = {(g.model, g.sequence): g for g in summary.groups}
    assert list(groups) == [("m1", "lighthouse"), ("m1", "harbor"), ("m2", "lighthouse"), ("m2", "harbor")]
    lh = groups[("m1", "lighthouse")]
    assert (lh.conversations, lh.turns_planned, lh.turns_stored, lh.not_stored) == (2, 6, 6, 0)
    assert lh.outcomes == {"ok": 5, "error": 1}
    assert lh.latency_mean == pytest.approx(3.0) and lh.latency_p90 == pytest.approx(5.0)
    assert lh.ttft_mean == pytest.approx(0.1) and lh.tokens_per_s_mean == pytest.approx(96.0)
    assert (lh.prompt_tokens, lh.cached_tokens) == (900, 200)  # the error turn reports neither
    assert lh.cost_usd is None
    assert groups[("m1", "harbor")].outcomes == {"ok": 4, "empty": 1}
    assert groups[("m1", "harbor")].not_stored == 1
    assert groups[("m2", "lighthouse")].outcomes == {"ok": 4, "context_exhausted": 1}
    # Run 1 never played; run 0 was written by an earlier, interrupted invocation of the plan.
    harbor = groups[("m2", "harbor")]
    assert (harbor.conversations, harbor.outcomes, harbor.not_stored) == (1, {"ok": 3}, 3)
    assert summary.turns_stored == 19 and summary.conversations == 7


def test_summary_table_in_html_and_markdown(store: Store, seeded: Seeded) -> None:
    document = html_report(store, seeded.run_id)
    rows = find_table(document, "latency p90")
    lh = row(rows, model="m1", sequence="lighthouse")
    assert lh["runs"] == "2/2" and lh["turns planned"] == "6"
    assert (lh["ok"], lh["empty"], lh["context_exhausted"], lh["error"], lh["not stored"]) == (
        "5",
        "0",
        "0",
        "1",
        "0",
    )
    assert (lh["latency mean"], lh["latency p90"], lh["TTFT mean"]) == ("3.00 s", "5.00 s", "0.10 s")
    assert lh["tokens/s"] == "96.0" and lh["prompt tokens from cache"] == "22% (200 of 900)"
    assert lh["cost"] == "–"
    harbor = row(rows, model="m2", sequence="harbor")
    assert (harbor["runs"], harbor["ok"], harbor["not stored"]) == ("1/2", "3", "3")

    markdown = md_report(store, seeded.run_id)
    assert "| m1 | lighthouse | 2/2 | 6 | 5 | 0 | 0 | 1 | 0 | 3.00 s | 5.00 s | 0.10 s | 96.0 |" in markdown
    assert "| m2 | lighthouse | 2/2 | 6 | 4 | 0 | 1 | 0 | 1 |" in markdown


def test_cost_is_summed_and_partial_pricing_is_said(store: Store) -> None:
    from tests.report.conftest import seed_run, turn_record

    seeded = seed_run(store)
    priced = turn_record("m2", "harbor", 1, 0, "ok", cost_usd=0.0125)
    store.save_response(priced)
    rows = find_table(html_report(store, seeded.run_id), "cost")
    assert row(rows, model="m2", sequence="harbor")["cost"] == "$0.0125 (1 of 4 turns priced)"


def test_the_run_header_shows_status_command_code_and_model_files(store: Store, seeded: Seeded) -> None:
    document = html_report(store, seeded.run_id)
    facts = dict(r for r in next(t for t in _tables(document) if t and t[0][0] == "run") if len(r) == 2)
    assert facts["run"] == seeded.run_id and facts["status"] == "completed"
    assert facts["command"] == "storybench-eval run --runs 2"
    assert facts["code version"] == "0.1.0+abc1234"
    assert facts["started"] == "2026-11-28 12:00:00 UTC" and facts["finished"] == "2026-11-28 12:03:07 UTC"
    assert facts["duration"] == "3m07s"
    models = find_table(document, "model file sha256")
    m1 = row(models, model="m1")
    assert m1["model file sha256"] == "9f" * 32 and m1["quantization"] == "Q8_0"
    assert (m1["n_ctx"], m1["engine"], m1["llama-cpp-python"]) == ("2,048", "batched (4 slots)", "0.3.36")
    m2 = row(models, model="m2")
    assert m2["endpoint"] == "https://api.example.test/v1" and m2["model file sha256"] == "–"


def _tables(document: str) -> list[list[list[str]]]:
    from tests.report.conftest import parse_tables

    return parse_tables(document).tables


def test_a_run_whose_process_is_gone_reads_abandoned(store: Store) -> None:
    now = datetime.now(timezone.utc)
    store.create_run(
        run_record(
            "20261128-130000-dead00",
            status="running",
            started_at=now - timedelta(hours=2),
            finished_at=None,
            host=f"not-{socket.gethostname()}",
            heartbeat_at=now - timedelta(hours=1),
        )
    )
    document = html_report(store, "20261128-130000-dead00")
    assert "abandoned (stored as running)" in document
    assert "no heartbeat from its process" in document and "re-run the same command to resume" in document


def test_judge_means_are_per_judge_and_rubric_version(store: Store, seeded: Seeded) -> None:
    run = store.get_run(seeded.run_id)
    assert run is not None
    scores = {
        (g.target_kind, g.judge_model, g.rubric_version, g.model, g.sequence): g
        for g in summarize(store, run).scores
    }
    assert set(scores) == {
        ("response", "judge-a", "v1", "m1", "lighthouse"),
        ("response", "judge-a", "v2", "m1", "lighthouse"),
        ("response", "judge-b", "v1", "m1", "lighthouse"),
        ("sequence", "judge-a", "arc-v1", "m1", "lighthouse"),
    }
    v1, v2 = (
        scores[("response", "judge-a", "v1", "m1", "lighthouse")],
        scores[("response", "judge-a", "v2", "m1", "lighthouse")],
    )
    assert (v1.judgements, v1.criteria["coherence"].mean, v1.criteria["coherence"].count) == (2, 3.0, 2)
    assert (v2.criteria["coherence"].mean, v2.criteria["voice"].mean, v2.criteria["voice"].count) == (
        9.0,
        8.0,
        1,
    )
    assert scores[("response", "judge-b", "v1", "m1", "lighthouse")].criteria["coherence"].mean == 1.0

    document = html_report(store, seeded.run_id)
    assert (
        row(find_table(document, "coherence", "judge judge-a, rubric v1,"), model="m1")["coherence"]
        == "3.00 (n=2)"
    )
    v2_row = row(find_table(document, "coherence", "judge judge-a, rubric v2,"), model="m1")
    assert (v2_row["coherence"], v2_row["voice"], v2_row["judgements"]) == ("9.00 (n=2)", "8.00 (n=1)", "2")
    assert (
        row(find_table(document, "coherence", "judge judge-b, rubric v1,"), model="m1")["coherence"]
        == "1.00 (n=1)"
    )
    arc = row(find_table(document, "arc", "judging whole conversations"), model="m1")
    assert arc["arc"] == "7.00 (n=1)"
    assert "6.00" not in document  # the mean a mix of v1 and v2 would give


def test_turn_by_turn_table_follows_length_and_score(store: Store, seeded: Seeded) -> None:
    rows = find_table(html_report(store, seeded.run_id), "m1: ok/stored", "sequence lighthouse")
    first, second, third = (row(rows, turn=str(i)) for i in range(3))
    m1_first = [first[f"m1: {c}"] for c in ("ok/stored", "prompt tokens", "answer tokens")]
    assert first["name"] == "premise" and m1_first == ["2/2", "100", "10"]
    assert first["m1: score judge-a v1"] == "3.00 (n=1)" and first["m1: score judge-a v2"] == "9.00 (n=1)"
    assert first["m1: score judge-b v1"] == "1.00 (n=1)"
    assert second["m1: score judge-a v2"] == "8.00 (n=1)" and second["m1: answer tokens"] == "20"
    assert third["m1: ok/stored"] == "1/2" and third["m1: score judge-a v1"] == "–"
    assert third["m2: ok/stored"] == "1/1"  # run 0 of m2 stopped at turn 1 (context exhausted)


def test_failed_turns_are_marked_with_their_reason(store: Store, seeded: Seeded) -> None:
    document = html_report(store, seeded.run_id)
    shown = failures(document)
    assert f"error: {HTTP_ERROR}" in shown
    assert f"context_exhausted: {EXHAUSTED}" in shown
    assert "empty: the model returned an empty answer (retried once)" in shown
    assert len(shown) == 3
    assert document.count('<details class="conv bad">') == 3 and document.count('<details class="conv">') == 4

    markdown = md_report(store, seeded.run_id)
    assert (
        "> ⚠ **error: HTTP 500 from http://127.0.0.1:8080/v1 after 5 attempts: upstream crashed**" in markdown
    )
    assert (
        "> ⚠ **context\\_exhausted: context exhausted: the history is 2010 tokens of a 2048-token context"
        in markdown
    )
    assert "> ⚠ **empty: the model returned an empty answer (retried once)**" in markdown


def test_transcripts_hold_every_turn_in_order_with_its_judgements(store: Store, seeded: Seeded) -> None:
    document = html_report(store, seeded.run_id)
    assert document.count('<article class="turn">') == 19
    first = document.index("m1 lighthouse r0 t0: the keeper lit the lamp.")
    assert first < document.index("m1 lighthouse r0 t1") < document.index("m1 lighthouse r1 t0")
    assert "judge-a (rubric v1): coherence 4, voice 2" in document
    assert "judge-a arc-v1: keeps the keeper&#x27;s name." in document  # the conversation's judgement
    assert "m2 harbor r0 t2" in document  # written by the earlier invocation of the same plan
    assert STRAY not in document and EARLIER_RUN not in document
    assert "Write the storm." in document
    assert document.count("<pre>You are a novelist. Lighthouse stories only.</pre>") == 4  # from the snapshot


def test_no_transcripts_leaves_them_out(store: Store, seeded: Seeded) -> None:
    document = html_report(store, seeded.run_id, transcripts=False)
    assert "<article" not in document and "Left out (--no-transcripts)" in document
    assert find_table(document, "latency p90")


def test_the_summary_pass_reads_no_text(store: Store, seeded: Seeded) -> None:
    """The summary pass asks the store for turns without their texts; the transcripts with."""
    asked: list[bool] = []
    real = store.iter_responses

    def spy(key: str, *, with_text: bool = True) -> Any:
        asked.append(with_text)
        return real(key, with_text=with_text)

    store.iter_responses = spy  # type: ignore[method-assign]
    run = store.get_run(seeded.run_id)
    assert run is not None
    summary = summarize(store, run)
    assert asked and not any(asked) and summary.turns_stored == 19
    asked.clear()
    texts = [t.answer for c in conversations(store, run) for t in c.turns]
    assert asked and all(asked) and any(texts)
