"""Export stored turns (with their judgements) as JSON Lines or CSV with a stable column order.

One row per turn. COLUMNS is the order of both formats and is documented in docs/store.md;
new columns are only ever appended. Datetimes are ISO-8601 strings (UTC). In CSV, a missing
value is an empty cell and a nested value (params, evaluations, ...) is a JSON string; in
JSON Lines they stay JSON values. The file is written beside its target and renamed into
place, so an interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from evaluator.records import sequence_run_id
from evaluator.store.errors import ExportError
from evaluator.store.store import Store, run_experiment_keys
from evaluator.whole_file import WriteError, written_whole

Format = Literal["jsonl", "csv"]
FORMATS: tuple[str, ...] = ("jsonl", "csv")

# (column, source field in the `responses` document)
_RESPONSE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("response_id", "_id"),
    ("run_id", "run_id"),
    ("experiment_key", "experiment_key"),
    ("config_hash", "config_hash"),
    ("generation", "generation"),
    ("model", "model"),
    ("model_id", "model_id"),
    ("endpoint", "endpoint"),
    ("sequence", "sequence"),
    ("sequence_hash", "sequence_hash"),
    ("run_index", "run_index"),
    ("seed", "seed"),
    ("turn_index", "turn_index"),
    ("turn_name", "turn_name"),
    ("outcome", "outcome"),
    ("finish_reason", "finish_reason"),
    ("attempts", "attempts"),
    ("error", "error"),
    ("messages_sent", "messages_sent"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("cached_tokens", "cached_tokens"),
    ("prompt_tokens_estimated", "prompt_tokens_estimated"),
    ("max_tokens_sent", "max_tokens_sent"),
    ("latency_s", "latency_s"),
    ("ttft_s", "ttft_s"),
    ("tokens_per_s", "tokens_per_s"),
    ("cost_usd", "cost_usd"),
    ("started_at", "started_at"),
    ("finished_at", "finished_at"),
    ("params", "params"),
    ("server_timings", "server_timings"),
    ("prompt", "prompt"),
    ("response_text", "response_text"),
    ("response_raw", "response_raw"),
    ("schema_version", "schema_version"),
)
JOINED_COLUMNS: tuple[str, ...] = ("evaluations", "sequence_evaluations")
COLUMNS: tuple[str, ...] = tuple(c for c, _ in _RESPONSE_COLUMNS) + JOINED_COLUMNS
_EVALUATION_FIELDS = ("judge_model", "rubric_version", "scores", "rationale", "created_at")


def sequence_run_key(doc: dict[str, Any]) -> str:
    """Target id of the judgements of the whole sequence run a turn document belongs to."""
    return sequence_run_id(doc["experiment_key"], doc["model"], doc["sequence"], doc["run_index"])


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


def _judgement(doc: dict[str, Any]) -> dict[str, Any]:
    return {name: _jsonable(doc.get(name)) for name in _EVALUATION_FIELDS}


def response_row(
    doc: dict[str, Any],
    evaluations: Iterable[dict[str, Any]] = (),
    sequence_evaluations: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """One export row (JSON values, keys in COLUMNS order)."""
    row = {column: _jsonable(doc.get(source)) for column, source in _RESPONSE_COLUMNS}
    row["evaluations"] = [_judgement(e) for e in evaluations]
    row["sequence_evaluations"] = [_judgement(e) for e in sequence_evaluations]
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
        keys = run_experiment_keys(run)
    docs = store.responses(experiment_keys=keys)
    judged = _evaluations_by_target(store, docs)

    def refuse_a_file_that_appeared() -> None:
        if out.exists() and not overwrite:
            raise ExportError(f"{out} appeared while exporting; nothing was overwritten")

    try:
        with written_whole(out, newline="", sync=True, before_replace=refuse_a_file_that_appeared) as fh:
            rows = (
                response_row(d, judged.get(d["_id"], ()), judged.get(sequence_run_key(d), ())) for d in docs
            )
            return _write_csv(fh, rows) if fmt == "csv" else _write_jsonl(fh, rows)
    except WriteError as exc:  # disk full, `out` is a folder, ...: nothing half-written is left
        raise ExportError(str(exc)) from exc


def _evaluations_by_target(store: Store, docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    targets = [d["_id"] for d in docs] + [sequence_run_key(d) for d in docs]
    found: dict[str, list[dict[str, Any]]] = {}
    for ev in store.evaluations(targets):
        found.setdefault(ev["target_id"], []).append(ev)
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
