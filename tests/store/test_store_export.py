"""Export round-trips (jsonl and csv) and the CLI renderings, on a real database."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from evaluator.records import EvaluationRecord, ResponseRecord, RunRecord, sequence_run_id
from evaluator.store import (
    EXPORT_COLUMNS,
    INDEXES,
    ExportError,
    Store,
    export_responses,
    format_run_detail,
    format_runs_table,
)
from evaluator.store.export import csv_cell

DOCS = Path(__file__).resolve().parents[2] / "docs" / "store.md"
TRICKY = 'She said, "Stay."\nThe lamp\tturned — 灯台, ünïcode; a comma, a quote " and a newline\r\n'


@pytest.fixture
def filled(
    store: Store,
    response_factory: Callable[..., ResponseRecord],
    run_factory: Callable[..., RunRecord],
    evaluation_factory: Callable[..., EvaluationRecord],
) -> Store:
    store.create_run(run_factory("run-a"))
    recs = [
        response_factory(1, text=TRICKY),
        response_factory(0),
        response_factory(2, outcome="error", text=""),
        response_factory(0, run_index=1),
    ]
    for rec in recs:
        store.save_response(rec)
    store.save_evaluation(evaluation_factory(recs[1].id))
    store.save_evaluation(evaluation_factory(recs[1].id, judge="judge-0"))
    seq_eval = evaluation_factory(sequence_run_id(recs[0].experiment_key, "m1", "lighthouse", 0))
    seq_eval.target_kind = "sequence"
    store.save_evaluation(seq_eval)
    # Another experiment, not in run-a's plan.
    store.save_response(response_factory(0, exp_key="other-g1"))
    return store


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_round_trip(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "turns.jsonl"
    assert export_responses(filled, "run-a", "jsonl", out) == 4
    rows = read_jsonl(out)
    assert all(list(row) == list(EXPORT_COLUMNS) for row in rows)
    assert [(r["run_index"], r["turn_index"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    by_turn = {(r["run_index"], r["turn_index"]): r for r in rows}
    assert by_turn[(0, 1)]["response_text"] == TRICKY
    assert by_turn[(0, 0)]["started_at"] == "2026-11-28T12:00:00+00:00"
    assert by_turn[(0, 0)]["params"] == {
        "temperature": 0.7,
        "stop": ["\n\n"],
        "extra_body": {"cache_prompt": True},
    }
    assert [e["judge_model"] for e in by_turn[(0, 0)]["evaluations"]] == ["judge-0", "judge-1"]
    assert by_turn[(0, 1)]["evaluations"] == []
    assert len(by_turn[(0, 2)]["sequence_evaluations"]) == 1  # judged as a whole sequence run
    assert by_turn[(1, 0)]["sequence_evaluations"] == []
    assert by_turn[(0, 2)]["cost_usd"] is None
    assert export_responses(filled, None, "jsonl", tmp_path / "all.jsonl") == 5


def test_csv_round_trip_matches_jsonl(filled: Store, tmp_path: Path) -> None:
    export_responses(filled, "run-a", "jsonl", tmp_path / "t.jsonl")
    assert export_responses(filled, "run-a", "csv", tmp_path / "t.csv") == 4
    with open(tmp_path / "t.csv", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert header == list(EXPORT_COLUMNS)
    expected = [[csv_cell(v) for v in row.values()] for row in read_jsonl(tmp_path / "t.jsonl")]
    assert rows == expected
    text_col = header.index("response_text")
    assert rows[1][text_col] == TRICKY  # commas, quotes, tabs and CR/LF survive CSV
    assert json.loads(rows[0][header.index("evaluations")])[0]["scores"] == {"coherence": 4, "voice": 3.5}


def test_export_refuses_to_overwrite_and_leaves_no_temp_files(filled: Store, tmp_path: Path) -> None:
    out = tmp_path / "turns.csv"
    out.write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_responses(filled, None, "csv", out)
    assert out.read_text() == "keep me"
    assert export_responses(filled, None, "csv", out, overwrite=True) == 5
    assert out.read_text().startswith("response_id,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turns.csv"]
    with pytest.raises(ExportError, match="format"):
        export_responses(filled, None, "xlsx", tmp_path / "x.xlsx")
    with pytest.raises(ExportError, match="no run"):
        export_responses(filled, "missing", "csv", tmp_path / "y.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turns.csv"]


def test_renderings(filled: Store) -> None:
    console = Console(width=200, record=True, color_system=None)
    console.print(format_runs_table(filled.list_runs()))
    run = filled.get_run("run-a")
    assert run is not None
    console.print(format_run_detail(run, filled.run_responses("run-a")))
    console.print(format_runs_table([]))
    text = console.export_text()
    assert "run-a" in text and "lighthouse" in text and "no runs stored yet" in text
    assert "error" in text and "boom" in text


def test_docs_list_every_index_and_column() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    for spec in INDEXES:
        assert f"`{spec.name}`" in doc
    documented = re.search(r"<!-- columns -->\n(.*?)\n<!-- /columns -->", doc, re.S)
    assert documented is not None
    assert documented.group(1).strip() == ", ".join(EXPORT_COLUMNS)
