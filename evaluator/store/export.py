"""Export stored turns (with their judgements) as JSON Lines or CSV with a stable column order.

One row per turn. COLUMNS is the order of both formats and is documented in docs/store.md;
new columns are only ever appended. A turn's text metrics (`metrics`) are flattened into
`metric_<field>` columns at the end, empty for a turn without them. Datetimes are ISO-8601
strings (UTC). In CSV, a missing value is an empty cell and a nested value (params,
evaluations, ...) is a JSON string; in JSON Lines they stay JSON values. The file is written
beside its target and renamed into place, so an interrupted export never leaves a
half-written file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from evaluator.records import EvaluationRecord, ResponseRecord, TextMetrics
from evaluator.store.errors import ExportError
from evaluator.store.store import Store
from evaluator.whole_file import WriteError, written_whole

Format = Literal["jsonl", "csv"]
FORMATS: tuple[str, ...] = ("jsonl", "csv")


# ResponseRecord fields added after the metric columns existed: exported after them, in order.
LATE_FIELDS: tuple[str, ...] = ("reasoning_tokens", "replica")


def _response_columns() -> tuple[tuple[str, str], ...]:
    """(column, stored field): `_id` first as `response_id`, then ResponseRecord's fields in
    declaration order, `schema_version` last (as it has been since the first export). The
    nested `metrics` is not one of them: it is flattened into METRIC_COLUMNS. Fields added
    after the metrics (LATE_FIELDS) come after them, so no existing column ever moves."""
    left_out = ("_id", "schema_version", "metrics", *LATE_FIELDS)
    stored = [f for f in ResponseRecord.field_names() if f not in left_out]
    return (("response_id", "_id"), *((f, f) for f in stored), ("schema_version", "schema_version"))


_RESPONSE_COLUMNS = _response_columns()
JOINED_COLUMNS: tuple[str, ...] = ("evaluations", "sequence_evaluations")
# (column, TextMetrics field), appended after the joined columns when the metrics came.
_METRIC_COLUMNS = tuple((f"metric_{name}", name) for name in TextMetrics.model_fields)
METRIC_COLUMNS: tuple[str, ...] = tuple(c for c, _ in _METRIC_COLUMNS)
COLUMNS: tuple[str, ...] = (
    tuple(c for c, _ in _RESPONSE_COLUMNS) + JOINED_COLUMNS + METRIC_COLUMNS + LATE_FIELDS
)
_EVALUATION_FIELDS = ("judge_model", "rubric_version", "scores", "rationale", "created_at")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)  # ObjectId, Decimal128, ...


def _judgement(rec: EvaluationRecord) -> dict[str, Any]:
    doc = rec.to_doc()
    return {name: _jsonable(doc.get(name)) for name in _EVALUATION_FIELDS}


def response_row(
    rec: ResponseRecord,
    evaluations: Iterable[EvaluationRecord] = (),
    sequence_evaluations: Iterable[EvaluationRecord] = (),
) -> dict[str, Any]:
    """One export row (JSON values, keys in COLUMNS order)."""
    doc = rec.to_doc()
    row = {column: _jsonable(doc.get(source)) for column, source in _RESPONSE_COLUMNS}
    row["evaluations"] = [_judgement(e) for e in evaluations]
    row["sequence_evaluations"] = [_judgement(e) for e in sequence_evaluations]
    metrics = rec.metrics.model_dump() if rec.metrics is not None else {}
    row.update({column: metrics.get(field) for column, field in _METRIC_COLUMNS})
    row.update({name: _jsonable(doc.get(name)) for name in LATE_FIELDS})
    return row


def csv_cell(value: Any) -> str:
    """How a row value is written in CSV."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def export_responses(
    store: Store,
    run_id: str | None,
    fmt: str,
    out_path: Path | str,
    *,
    overwrite: bool = False,
) -> int:
    """Write the turns of `run_id`'s plan (all turns when None) to `out_path`; return the rows.

    A run's plan includes turns an earlier, interrupted invocation wrote before it resumed.
    Refuses an existing file unless `overwrite`. Raises ExportError / StoreError.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or allow overwriting")
    if not out.parent.is_dir():
        raise ExportError(f"the folder {out.parent} does not exist")

    keys: list[str] | None = None
    if run_id is not None:
        run = store.get_run(run_id)
        if run is None:
            raise ExportError(f"no run {run_id!r}; `storybench-eval runs` lists them")
        keys = run.experiment_keys
    docs = store.responses(experiment_keys=keys)
    judged = _evaluations_by_target(store, docs)

    def refuse_a_file_that_appeared() -> None:
        if out.exists() and not overwrite:
            raise ExportError(f"{out} appeared while exporting; nothing was overwritten")

    try:
        with written_whole(out, newline="", sync=True, before_replace=refuse_a_file_that_appeared) as fh:
            rows = (response_row(d, judged.get(d.id, ()), judged.get(d.conversation_id, ())) for d in docs)
            return _write_csv(fh, rows) if fmt == "csv" else _write_jsonl(fh, rows)
    except WriteError as exc:  # disk full, `out` is a folder, ...: nothing half-written is left
        raise ExportError(str(exc)) from exc


def _evaluations_by_target(store: Store, docs: list[ResponseRecord]) -> dict[str, list[EvaluationRecord]]:
    targets = [d.id for d in docs] + [d.conversation_id for d in docs]
    found: dict[str, list[EvaluationRecord]] = {}
    for ev in store.evaluations(targets):
        found.setdefault(ev.target_id, []).append(ev)
    return found


def _write_jsonl(fh: IO[str], rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def _write_csv(fh: IO[str], rows: Iterable[dict[str, Any]]) -> int:
    writer = csv.writer(fh)
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow([csv_cell(row[c]) for c in COLUMNS])
        count += 1
    return count
