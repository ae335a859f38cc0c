"""The results store: runs, turns and judgements in MongoDB (or the embedded nx-27017).

    from evaluator.store import open_store, StoreError

    with open_store() as store:          # --mongo-uri / STORYBENCH_MONGO_URI / embedded
        store.ensure_indexes()
        store.save_response(record)      # typed documents in (evaluator.records) ...
    runs = store.list_runs()          # ... and typed documents out, upgraded by migrations.py

The public API is exactly `__all__`; docs/store.md documents the collections and indexes.
"""

from __future__ import annotations

from evaluator.store.connect import URI_ENV, redact_uri
from evaluator.store.embedded import DATA_DIR_ENV, EmbeddedServer, default_data_dir
from evaluator.store.errors import (
    EmbeddedServerError,
    ExportError,
    StoreError,
    StoreUnavailableError,
)
from evaluator.store.export import COLUMNS as EXPORT_COLUMNS
from evaluator.store.export import FORMATS as EXPORT_FORMATS
from evaluator.store.export import export_responses
from evaluator.store.liveness import RunState, run_state
from evaluator.store.migrations import upgrade
from evaluator.store.render import format_run_detail, format_runs_table
from evaluator.store.store import (
    INDEXES,
    Store,
    open_store,
    read_document,
)

__all__ = [
    "DATA_DIR_ENV",
    "EXPORT_COLUMNS",
    "EXPORT_FORMATS",
    "INDEXES",
    "URI_ENV",
    "EmbeddedServer",
    "EmbeddedServerError",
    "ExportError",
    "RunState",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "default_data_dir",
    "export_responses",
    "format_run_detail",
    "format_runs_table",
    "open_store",
    "upgrade",
    "redact_uri",
    "read_document",
    "run_state",
]
