"""Numbered migrations: a stored document of an older `schema_version` is upgraded when read.

Documents are upgraded in memory, one version step at a time, and never rewritten in place:
a read-only command (`runs`, `report`, `export`) must not write, several versions of
StoryBench may share one database, and nx-27017 has no multi-document transactions to make a
bulk rewrite safe. A document written by a NEWER StoryBench is refused with a message that
says to upgrade, instead of being read wrongly.

To change the schema: bump `evaluator.records.SCHEMA_VERSION` to N+1, add a function for each
collection whose documents change under `MIGRATIONS[collection][N]`, and extend
tests/store/test_migrations.py with a version-N document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluator.records import SCHEMA_VERSION, parse_experiment_key
from evaluator.store.errors import StoreError

Document = dict[str, Any]
Migration = Callable[[Document], Document]

# Documents written before `schema_version` existed are version 1.
FIRST_VERSION = 1


def _runs_1_to_2(doc: Document) -> Document:
    """Version 1 runs may lack the derived string lists (written before they existed) and the
    revision counter; version 2 always has them."""
    experiments = [e for e in doc.get("experiments") or [] if isinstance(e, dict) and "experiment_key" in e]
    keys = [str(e["experiment_key"]) for e in experiments]
    parsed = (parse_experiment_key(k) for k in keys)
    doc.setdefault("experiment_keys", keys)
    doc.setdefault("experiment_config_hashes", list(dict.fromkeys(p[0] for p in parsed if p)))
    doc.setdefault("revision", 0)
    for entry in experiments:  # written by hand-made plans before `generation` was recorded
        if "generation" not in entry:
            found = parse_experiment_key(str(entry["experiment_key"]))
            entry["generation"] = found[1] if found else 1
    return doc


def _responses_1_to_2(doc: Document) -> Document:
    """Version 1 turns may lack `server_timings` and `cost_usd` (added after the first
    release); absent means "not reported", which version 2 stores as null."""
    doc.setdefault("server_timings", None)
    doc.setdefault("cost_usd", None)
    return doc


def _evaluations_1_to_2(doc: Document) -> Document:
    """Version 1 judgements kept `details` only when the judge wrote them; version 2 always has
    the field (empty when unknown)."""
    if not isinstance(doc.get("details"), dict):
        doc["details"] = {}
    return doc


MIGRATIONS: dict[str, dict[int, Migration]] = {
    "runs": {1: _runs_1_to_2},
    "responses": {1: _responses_1_to_2},
    "evaluations": {1: _evaluations_1_to_2},
}


def upgrade(collection: str, doc: Document) -> Document:
    """`doc` (a fresh dict from the database) brought to SCHEMA_VERSION, step by step."""
    version = doc.get("schema_version", FIRST_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < FIRST_VERSION:
        raise StoreError(
            f"{collection} document {doc.get('_id')!r} has an invalid schema_version {version!r}"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{collection} document {doc.get('_id')!r} was written by a newer StoryBench (schema "
            f"version {version}; this one reads up to {SCHEMA_VERSION}); upgrade StoryBench"
        )
    steps = MIGRATIONS.get(collection, {})
    while version < SCHEMA_VERSION:
        step = steps.get(version)
        if step is not None:
            doc = step(doc)
        version += 1
    doc["schema_version"] = version
    return doc
