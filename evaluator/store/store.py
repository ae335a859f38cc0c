"""The results store: runs, per-turn responses and judgements in MongoDB through pymongo.

Every query here is one that the embedded nx-27017 server answers like MongoDB does:
string cross-references, single-document writes (no transactions), explicit index names,
no `find_one_and_replace`, no `$set` (it loses bool and datetime types on nx-27017), `ping`
instead of `server_info()`.
docs/store.md documents the collections, their indexes and the gaps.

It is one class of about 880 lines on purpose: every query the product makes is here (the claims'
queries beside it, in leases.py), next to the nx-27017 constraint it respects, so a port to
another MongoDB is read in one place.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from pydantic import ValidationError
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure

from evaluator.records import (
    OUTCOMES,
    RUN_STATUSES,
    SCHEMA_VERSION,
    ClaimKind,
    ClaimRecord,
    EvaluationRecord,
    PairwiseRecord,
    ResponseRecord,
    RunRecord,
    StoredDocument,
    TextMetrics,
    parse_experiment_key,
    stable_hash,
)
from evaluator.store import embedded as embedded_mod
from evaluator.store.connect import DEFAULT_DB_NAME, connect, redact_uri, resolve_uri, short_cause
from evaluator.store.errors import StoreError, StoreUnavailableError
from evaluator.store.leases import IsFree, Leases, expired
from evaluator.store.migrations import upgrade

RUNS, RESPONSES, EVALUATIONS = RunRecord.collection, ResponseRecord.collection, EvaluationRecord.collection
PAIRWISE, CLAIMS = PairwiseRecord.collection, ClaimRecord.collection
TurnKey = tuple[str, str, str, int]  # (experiment_key, model, sequence, run_index)
D = TypeVar("D", bound=StoredDocument)

RESPONSE_KEY = ("experiment_key", "model", "sequence", "run_index", "turn_index")
_TURN_ORDER = [(name, ASCENDING) for name in RESPONSE_KEY]
# Within one experiment key (one model x sequence): a conversation's turns together, in order.
_CONVERSATION_ORDER = [(name, ASCENDING) for name in ("model", "sequence", "run_index", "turn_index")]
# Documents per round trip when streaming turns (`iter_responses`).
CURSOR_BATCH = 200
# Up to this many ids, look-ups by id are one indexed equality query each (not `$in`).
FEW_IDS = 32
# Documents per page when reading a whole collection in pages (`Store._in_pages`).
PAGE = 200


@dataclass(frozen=True)
class RunTally:
    """What the stored turns say about one run, whatever its document recorded: a killed run
    never records its counters, so readers derive them (`Store.run_tallies`)."""

    written: dict[str, int]  # outcome -> turns of the plan this run wrote (as stored now)
    reused: int  # turns of the plan stored before the run started (it resumed from them)

    @property
    def total_written(self) -> int:
        return sum(self.written.values())


@dataclass(frozen=True)
class IndexSpec:
    collection: str
    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False


# Created by name at start-up (`ensure_indexes`). nx-27017 stores its own names
# (`idx_<collection>_<fields>`), so presence is verified by key pattern, never by name.
INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec(RUNS, "runs_started_at", (("started_at", DESCENDING),)),
    IndexSpec(RESPONSES, "responses_turn_unique", tuple(_TURN_ORDER), unique=True),
    IndexSpec(RESPONSES, "responses_run_id", (("run_id", ASCENDING),)),
    IndexSpec(
        RESPONSES,
        "responses_config_generation",
        (("config_hash", ASCENDING), ("generation", DESCENDING)),
    ),  # fmt: skip
    IndexSpec(
        EVALUATIONS,
        "evaluations_target_judge_rubric_repeat_unique",
        (
            ("target_id", ASCENDING),
            ("judge_model", ASCENDING),
            ("rubric_version", ASCENDING),
            ("repeat", ASCENDING),
        ),
        unique=True,
    ),  # fmt: skip
    IndexSpec(RESPONSES, "responses_model", (("model", ASCENDING),)),
    # nx-27017 uses single-field indexes for equality but not the compound one above that starts
    # with experiment_key (seen with explain()): reads of one experiment need this one.
    IndexSpec(RESPONSES, "responses_experiment_key", (("experiment_key", ASCENDING),)),
    IndexSpec(
        PAIRWISE,
        "pairwise_judge_rubric",
        (("judge_model", ASCENDING), ("rubric_version", ASCENDING)),
    ),  # fmt: skip
    # Cooperating workers (evaluator/workers.py): a run's fellow workers, a worker's claims.
    IndexSpec(RUNS, "runs_plan_key", (("plan_key", ASCENDING),)),
    IndexSpec(CLAIMS, "claims_owner", (("owner", ASCENDING),)),
    # The viewer (evaluator/viewer/): its search index reads the turns written since it last
    # looked, newest first; its caches key on the newest comparison (a retry replaces one).
    IndexSpec(RESPONSES, "responses_finished_at", (("finished_at", DESCENDING),)),
    IndexSpec(PAIRWISE, "pairwise_created_at", (("created_at", DESCENDING),)),
    # The viewer's conversation pages: one conversation's judgements and comparisons by
    # equality (nx-27017 plans neither `$in` nor the compound index that starts with target_id);
    # its leaderboard reads every judgement in pages by creation time.
    IndexSpec(EVALUATIONS, "evaluations_target_id", (("target_id", ASCENDING),)),
    IndexSpec(EVALUATIONS, "evaluations_created_at", (("created_at", ASCENDING),)),
    IndexSpec(PAIRWISE, "pairwise_first_conversation", (("first_conversation", ASCENDING),)),
    IndexSpec(PAIRWISE, "pairwise_second_conversation", (("second_conversation", ASCENDING),)),
)

# Unique indexes of earlier versions that would refuse what this version writes: dropped by
# `ensure_indexes` when a database still has them. (target, judge, rubric) refuses repeat 1.
RETIRED_UNIQUE_INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec(
        EVALUATIONS,
        "evaluations_target_judge_rubric_unique",
        (("target_id", ASCENDING), ("judge_model", ASCENDING), ("rubric_version", ASCENDING)),
        unique=True,
    ),  # fmt: skip
)

_RUN_FIELDS = frozenset(RunRecord.model_fields) - {"id", "schema_version", "revision"}
_UPDATE_ATTEMPTS = 5


def read_document(model: type[D], doc: dict[str, Any]) -> D:
    """A stored document, upgraded to the current schema, as its typed model. A document that
    does not fit (hand-edited, or written by a broken client) is a StoreError naming it."""
    upgraded = upgrade(model.collection, doc)
    try:
        return cast(D, model.from_doc(upgraded))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
            for err in exc.errors()[:3]
        )
        raise StoreError(
            f"{model.collection} document {doc.get('_id')!r} does not match the schema: {problems}"
        ) from exc


class Store:
    """Runs, responses and evaluations in one MongoDB database. Use through `open_store`."""

    def __init__(
        self,
        client: MongoClient[dict[str, Any]],
        db_name: str = DEFAULT_DB_NAME,
        *,
        uri: str,
        embedded: embedded_mod.EmbeddedServer | None = None,
    ) -> None:
        self.client = client
        self.db = client[db_name]
        self.db_name = db_name
        self.uri = uri
        self.embedded = embedded
        self._runs: Collection[dict[str, Any]] = self.db[RUNS]
        self._responses: Collection[dict[str, Any]] = self.db[RESPONSES]
        self._evaluations: Collection[dict[str, Any]] = self.db[EVALUATIONS]
        self._pairwise: Collection[dict[str, Any]] = self.db[PAIRWISE]
        self._leases = Leases(self.db[CLAIMS])
        self._closed = False
        # Called between the pages of a whole-collection read (`_in_pages`): the viewer pauses
        # its background reads there while it answers a page.
        self.between_pages: Callable[[], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def display_uri(self) -> str:
        return redact_uri(self.uri)

    def describe(self) -> str:
        """One line for logs and summaries: where the results are."""
        if self.embedded is not None:
            return (
                f"embedded nx-27017 at {self.display_uri} "
                f"(data in {self.embedded.data_dir / embedded_mod.DB_SUBDIR}), "
                f"database {self.db_name}"
            )
        return f"MongoDB at {self.display_uri}, database {self.db_name}"

    def close(self) -> None:
        """Close the client; release the embedded server (stopped if no one else uses it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close()
        finally:
            if self.embedded is not None:
                self.embedded.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """pymongo's connection and server errors -> StoreError with the next step."""
        try:
            yield
        except ConnectionFailure as exc:
            where = self.display_uri
            if self.embedded is not None:
                where += f" (embedded; log: {self.embedded.log_file})"
            raise StoreUnavailableError(
                f"the database at {where} stopped answering while {action}: "
                f"{short_cause(exc)}; finished turns are kept; re-run the same command to resume"
            ) from exc
        except DuplicateKeyError:
            raise
        except OperationFailure as exc:
            raise StoreError(
                f"the database at {self.display_uri} refused {action}: {short_cause(exc)}"
            ) from exc

    def ping(self) -> None:
        """Raise StoreUnavailableError if the database went away."""
        with self._guard("answering a ping"):
            self.client.admin.command("ping")

    def ensure_indexes(self) -> None:
        """Drop the retired unique indexes a database still has, create every index in INDEXES
        by name (idempotent), verify the unique ones exist."""
        with self._guard("creating indexes"):
            for spec in RETIRED_UNIQUE_INDEXES:
                for name in self._unique_index_names(spec):
                    self.db[spec.collection].drop_index(name)
            for spec in INDEXES:
                self.db[spec.collection].create_index(list(spec.keys), name=spec.name, unique=spec.unique)
            for spec in INDEXES:
                if spec.unique and not self._has_unique_index(spec):
                    raise StoreError(
                        f"the database at {self.display_uri} did not keep the unique index "
                        f"{spec.name} on {spec.collection}; writes would not be idempotent"
                    )

    def _has_unique_index(self, spec: IndexSpec) -> bool:
        """By field names: nx-27017 keeps neither our index names nor key directions."""
        return bool(self._unique_index_names(spec))

    def _unique_index_names(self, spec: IndexSpec) -> list[str]:
        """The names the server reports for unique indexes on exactly `spec`'s fields, in order
        (nx-27017 names them `idx_<collection>_<fields>`, not as we asked)."""
        wanted = [name for name, _ in spec.keys]
        return [
            name
            for name, info in self.db[spec.collection].index_information().items()
            if [field for field, _ in info["key"]] == wanted and info.get("unique")
        ]

    # -- runs ------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> None:
        doc = run.to_doc()
        doc["revision"] = 0
        doc["schema_version"] = SCHEMA_VERSION
        with self._guard(f"recording run {run.id}"):
            try:
                self._runs.insert_one(doc)
            except DuplicateKeyError as exc:
                raise StoreError(f"a run with id {run.id!r} already exists") from exc

    def update_run(self, run_id: str, **values: Any) -> None:
        """Change RunRecord fields (status, finished_at, counts, message, ...).

        Replaces the whole document (guarded by its `revision`) instead of `$set`: nx-27017
        turns a datetime or bool written by `$set` into a string or an int. The changed record
        is validated by RunRecord before it is written.
        """
        unknown = set(values) - _RUN_FIELDS
        if unknown:
            raise TypeError(f"update_run: not RunRecord fields: {sorted(unknown)}")
        if "status" in values and values["status"] not in RUN_STATUSES:
            raise ValueError(f"update_run: status must be one of {RUN_STATUSES}")
        with self._guard(f"updating run {run_id}"):
            if self._replace_run(run_id, values, only_running=False) is None:
                raise StoreError(f"no run {run_id!r} to update")

    def heartbeat(self, run_id: str, at: datetime, **values: Any) -> bool:
        """Record that the run's process is alive at `at` (with `values`, e.g. its
        `conversations_done`); False once the run is no longer "running" (or gone), so a late
        beat never touches a finished run.

        The same guarded replace as `update_run`, so `heartbeat_at` stays a BSON date on
        nx-27017 too (a `$set` would store it as a string). Called every few tens of seconds
        from the heartbeat thread; a failure raises StoreError like every store call.
        """
        with self._guard(f"refreshing the heartbeat of run {run_id}"):
            return bool(self._replace_run(run_id, {**values, "heartbeat_at": at}, only_running=True))

    def _replace_run(self, run_id: str, values: dict[str, Any], *, only_running: bool) -> bool | None:
        """Read, change, replace if nobody else did in between (by `revision`), else retry.

        None: no such run. False: `only_running` and the run is not "running". True: written.
        """
        for _ in range(_UPDATE_ATTEMPTS):
            doc = self._runs.find_one({"_id": run_id})
            if doc is None:
                return None
            if only_running and doc.get("status") != "running":
                return False
            revision = doc.get("revision")
            current = read_document(RunRecord, dict(doc))
            changed = RunRecord.model_validate(current.model_dump() | values)
            changed.revision = (revision or 0) + 1
            replacement = changed.to_doc()
            replacement.pop("_id")
            guard = {"$exists": False} if revision is None else revision
            if self._runs.replace_one({"_id": run_id, "revision": guard}, replacement).matched_count:
                return True
        raise StoreError(f"run {run_id!r} kept changing under us; nothing was updated")

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """Newest first."""
        with self._guard("listing runs"):
            docs = list(self._runs.find({}).sort("started_at", DESCENDING).limit(limit))
        return [read_document(RunRecord, d) for d in docs]

    def get_run(self, run_id: str) -> RunRecord | None:
        """By exact id or unique prefix; StoreError if the prefix matches several runs."""
        if not run_id:
            return None
        with self._guard(f"reading run {run_id}"):
            doc = self._runs.find_one({"_id": run_id})
            if doc is not None:
                return read_document(RunRecord, doc)
            matches = list(self._runs.find({"_id": {"$regex": "^" + re.escape(run_id)}}).limit(6))
        if len(matches) > 1:
            ids = ", ".join(str(m["_id"]) for m in matches[:5])
            raise StoreError(f"run id prefix {run_id!r} matches several runs ({ids}); give more")
        return read_document(RunRecord, matches[0]) if matches else None

    def plan_runs(self, plan_key: str, limit: int = 200) -> list[RunRecord]:
        """Runs that played the same plan (`plan_key`), newest first: a run's fellow workers
        are among them (evaluator/store/liveness.py `co_workers`)."""
        with self._guard("listing the workers of a plan"):
            docs = list(self._runs.find({"plan_key": plan_key}).sort("started_at", DESCENDING).limit(limit))
        return [read_document(RunRecord, d) for d in docs]

    def latest_run(self) -> RunRecord | None:
        """The most recently started run, or None when the store holds none."""
        runs = self.list_runs(limit=1)
        return runs[0] if runs else None

    # -- generations -----------------------------------------------------------------------

    def _max_generation(self, config_hash: str) -> int | None:
        found: list[int] = []
        with self._guard("reading generations"):
            doc = self._responses.find_one(
                {"config_hash": config_hash},
                projection={"generation": 1},
                sort=[("generation", DESCENDING)],
            )
            if doc is not None:
                found.append(int(doc["generation"]))
            # A `run --restart` registers its generation before the first turn is written.
            # $in, not equality: nx-27017 finds no array element by equality once indexed.
            for run in self._runs.find(
                {"experiment_config_hashes": {"$in": [config_hash]}}, projection={"experiments": 1}
            ):
                for entry in run.get("experiments", []):
                    parsed = parse_experiment_key(str(entry.get("experiment_key", "")))
                    if parsed and parsed[0] == config_hash:
                        found.append(parsed[1])
        return max(found) if found else None

    def current_generation(self, config_hash: str) -> int:
        """Highest generation stored for that configuration, or 1 if none."""
        return self._max_generation(config_hash) or 1

    def next_generation(self, config_hash: str) -> int:
        """1 + the highest generation stored for that configuration (1 if none)."""
        highest = self._max_generation(config_hash)
        return 1 if highest is None else highest + 1

    # -- responses -------------------------------------------------------------------------

    def save_response(self, rec: ResponseRecord) -> bool:
        """Store one turn exactly once; True if written.

        Inserts; an existing document with outcome "error" is replaced (a retried turn); an
        existing final outcome is left untouched and False is returned. Each write is one
        single-document operation, so a turn is never half-written.
        """
        if rec.outcome not in OUTCOMES:
            raise ValueError(f"save_response: unknown outcome {rec.outcome!r}")
        doc = rec.to_doc()
        doc["schema_version"] = SCHEMA_VERSION
        with self._guard(f"saving turn {rec.id}"):
            try:
                self._responses.insert_one(doc)
                return True
            except DuplicateKeyError:
                pass
            replacement = {k: v for k, v in doc.items() if k != "_id"}
            result = self._responses.replace_one({"_id": rec.id, "outcome": "error"}, replacement)
            return result.matched_count == 1

    def done_turns(self, experiment_keys: list[str]) -> dict[TurnKey, list[ResponseRecord]]:
        """(experiment_key, model, sequence, run_index) -> stored turns by turn_index."""
        out: dict[TurnKey, list[ResponseRecord]] = {}
        if not experiment_keys:
            return out
        with self._guard("reading finished turns"):
            query = {"experiment_key": {"$in": list(experiment_keys)}}
            docs = list(self._responses.find(query).sort(_TURN_ORDER))
        for doc in docs:
            rec = read_document(ResponseRecord, doc)
            out.setdefault(rec.conversation_key, []).append(rec)
        return out

    def responses(
        self, run_id: str | None = None, experiment_keys: list[str] | None = None
    ) -> list[ResponseRecord]:
        """Turns written by `run_id` and/or of `experiment_keys` (all when both None),
        ordered by model, sequence, run_index, turn_index, experiment_key."""
        query: dict[str, Any] = {}
        if run_id is not None:
            query["run_id"] = run_id
        if experiment_keys is not None:
            query["experiment_key"] = {"$in": list(experiment_keys)}
        order = [
            ("model", ASCENDING), ("sequence", ASCENDING), ("run_index", ASCENDING),
            ("turn_index", ASCENDING), ("experiment_key", ASCENDING),
        ]  # fmt: skip
        with self._guard("reading responses"):
            docs = list(self._responses.find(query).sort(order))
        return [read_document(ResponseRecord, d) for d in docs]

    def run_responses(self, run_id: str) -> list[ResponseRecord]:
        """Every stored turn of a run's plan, whichever invocation (resume) wrote it."""
        run = self.get_run(run_id)
        if run is None:
            raise StoreError(f"no run {run_id!r}; `storybench-eval runs` lists them")
        return self.responses(experiment_keys=run.experiment_keys)

    def run_tallies(self, runs: list[RunRecord]) -> dict[str, RunTally]:
        """Per run, the turns of its plan it wrote and those it reused. A run that recorded its
        end (with `reused`) says so itself; for any other run (killed, still playing) they are
        derived from the turns stored now, one indexed query per experiment, reading only
        `run_id`, `outcome` and `finished_at`."""
        out: dict[str, RunTally] = {}
        fields = {"run_id": 1, "outcome": 1, "finished_at": 1}
        for run in runs:
            if run.finished_at is not None and run.reused is not None:
                out[run.id] = RunTally(dict(run.counts), run.reused)
                continue
            written: dict[str, int] = {}
            reused = 0
            if run.experiment_keys:
                docs: list[dict[str, Any]] = []
                with self._guard(f"counting the turns of run {run.id}"):
                    # One equality query per experiment: nx-27017 uses an index for those, never
                    # for $in.
                    for key in dict.fromkeys(run.experiment_keys):
                        docs.extend(self._responses.find({"experiment_key": key}, projection=fields))
                started = run.started_at
                for doc in docs:
                    if doc.get("run_id") == run.id:
                        outcome = str(doc.get("outcome"))
                        written[outcome] = written.get(outcome, 0) + 1
                    elif doc.get("outcome") != "error" and isinstance(doc.get("finished_at"), datetime):
                        reused += _utc(doc["finished_at"]) < started
            out[run.id] = RunTally(written, reused)
        return out

    def iter_responses(self, experiment_key: str, *, with_text: bool = True) -> Iterator[ResponseRecord]:
        """The turns of one experiment key, a conversation's turns together and in order,
        streamed from a cursor (a long run's answers never sit in memory at once).

        `with_text=False` leaves the answer and prompt texts out of the query
        (ResponseRecord.TEXT_FIELDS); they read as "". The report's summary pass uses it.
        """
        projection = None if with_text else dict.fromkeys(ResponseRecord.TEXT_FIELDS, 0)
        blank = {} if with_text else dict.fromkeys(ResponseRecord.TEXT_FIELDS, "")
        with self._guard(f"reading the turns of {experiment_key}"):
            cursor = self._responses.find(
                {"experiment_key": experiment_key}, projection=projection, batch_size=CURSOR_BATCH
            )
            with cursor.sort(_CONVERSATION_ORDER):  # closed even when the reader stops early
                for doc in cursor:
                    yield read_document(ResponseRecord, doc | blank)

    def model_responses(
        self, models: list[str] | None, *, with_text: bool = True
    ) -> Iterator[ResponseRecord]:
        """Every stored turn of these model entries (all models when None), from any run, a
        conversation's turns together and in order; streamed from a cursor. The pairwise
        comparison and the leaderboard read across runs through this."""
        query: dict[str, Any] = {} if models is None else {"model": {"$in": list(models)}}
        projection = None if with_text else dict.fromkeys(ResponseRecord.TEXT_FIELDS, 0)
        blank = {} if with_text else dict.fromkeys(ResponseRecord.TEXT_FIELDS, "")
        order = [
            (name, ASCENDING) for name in ("model", "experiment_key", "sequence", "run_index", "turn_index")
        ]
        with self._guard("reading the models' turns"):
            cursor = self._responses.find(query, projection=projection, batch_size=CURSOR_BATCH)
            with cursor.sort(order):
                for doc in cursor:
                    yield read_document(ResponseRecord, doc | blank)

    def set_response_metrics(self, response_id: str, metrics: TextMetrics) -> bool:
        """Store the text metrics of one ok turn (`storybench-eval metrics` backfills them);
        False when no ok turn has that id (missing, or not ok: such turns keep None).

        Reads the turn and replaces the whole document, upgraded to the current schema, under
        the same `_id`; never `$set`, which loses types on nx-27017. An ok turn's texts never
        change once stored, so the read and the replace cannot disagree about the answer.
        """
        with self._guard(f"storing the text metrics of turn {response_id}"):
            doc = self._responses.find_one({"_id": response_id, "outcome": "ok"})
            if doc is None:
                return False
            record = read_document(ResponseRecord, doc)
            record.metrics = metrics
            replacement = record.to_doc()
            replacement["schema_version"] = SCHEMA_VERSION
            replacement.pop("_id")
            result = self._responses.replace_one({"_id": response_id, "outcome": "ok"}, replacement)
            return result.matched_count == 1

    # -- evaluations -----------------------------------------------------------------------

    def save_evaluation(self, rec: EvaluationRecord) -> bool:
        """Insert one judgement; False if (target, judge, rubric version, repeat) is already stored."""
        doc = rec.to_doc()
        doc["schema_version"] = SCHEMA_VERSION
        with self._guard(f"saving evaluation {rec.id}"):
            try:
                self._evaluations.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    def evaluations(self, target_ids: list[str]) -> list[EvaluationRecord]:
        """Judgements of those targets, ordered by target, judge, rubric version."""
        docs: list[dict[str, Any]] = []
        ids = list(dict.fromkeys(target_ids))
        order = [("target_id", ASCENDING), ("judge_model", ASCENDING), ("rubric_version", 1)]
        with self._guard("reading evaluations"):
            if len(ids) <= FEW_IDS:  # one indexed equality each: nx-27017 scans for `$in`
                for target in ids:
                    docs.extend(self._evaluations.find({"target_id": target}))
                docs.sort(key=lambda d: (d.get("target_id"), d.get("judge_model"), d.get("rubric_version")))
                return [read_document(EvaluationRecord, d) for d in docs]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                docs.extend(self._evaluations.find({"target_id": {"$in": chunk}}).sort(order))
        return [read_document(EvaluationRecord, d) for d in docs]

    def has_evaluation(self, evaluation_id: str) -> bool:
        """Whether the judgement with that `_id` is stored (another worker may have made it)."""
        with self._guard(f"reading evaluation {evaluation_id}"):
            return self._evaluations.find_one({"_id": evaluation_id}, projection={"_id": 1}) is not None

    def judge_evaluations(
        self, judge_model: str | None = None, rubric_version: str | None = None
    ) -> Iterator[EvaluationRecord]:
        """Stored judgements (of one judge and/or rubric version when given) without their
        rationale (read as ""), for the leaderboard."""
        query: dict[str, Any] = {}
        if judge_model is not None:
            query["judge_model"] = judge_model
        if rubric_version is not None:
            query["rubric_version"] = rubric_version
        with self._guard("reading evaluations"):
            cursor = self._evaluations.find(query, projection={"rationale": 0}, batch_size=1000)
            with cursor:
                for doc in cursor:
                    yield read_document(EvaluationRecord, doc | {"rationale": ""})

    # -- pairwise comparisons ----------------------------------------------------------------

    def save_pairwise(self, rec: PairwiseRecord) -> bool:
        """Store one comparison: inserted; an existing failed one is replaced (a retry); an
        existing verdict is kept and False returned. One single-document write each."""
        doc = rec.to_doc()
        doc["schema_version"] = SCHEMA_VERSION
        with self._guard(f"saving comparison {rec.id}"):
            try:
                self._pairwise.insert_one(doc)
                return True
            except DuplicateKeyError:
                pass
            replacement = {k: v for k, v in doc.items() if k != "_id"}
            result = self._pairwise.replace_one({"_id": rec.id, "status": "failed"}, replacement)
            return result.matched_count == 1

    def get_pairwise(self, pairwise_id: str) -> PairwiseRecord | None:
        """One stored comparison by its `_id`, or None."""
        with self._guard(f"reading comparison {pairwise_id}"):
            doc = self._pairwise.find_one({"_id": pairwise_id})
        return None if doc is None else read_document(PairwiseRecord, doc)

    def pairwise(
        self,
        judge_model: str | None = None,
        rubric_version: str | None = None,
        *,
        with_text: bool = True,
    ) -> Iterator[PairwiseRecord]:
        """Stored comparisons, of one judge and/or rubric version when given. `with_text=False`
        leaves the rationale out (read as ""): the leaderboard's pass."""
        query: dict[str, Any] = {}
        if judge_model is not None:
            query["judge_model"] = judge_model
        if rubric_version is not None:
            query["rubric_version"] = rubric_version
        projection = None if with_text else {"rationale": 0}
        blank: dict[str, Any] = {} if with_text else {"rationale": ""}
        with self._guard("reading pairwise comparisons"):
            cursor = self._pairwise.find(query, projection=projection, batch_size=1000)
            with cursor:
                for doc in cursor:
                    yield read_document(PairwiseRecord, doc | blank)

    # -- claims (cooperating workers: evaluator/workers.py, queries in evaluator/store/leases.py) --

    def claim_work(
        self,
        key: str,
        kind: ClaimKind,
        *,
        owner: str,
        host: str,
        pid: int,
        owner_started_at: datetime,
        now: datetime,
        lease_s: float,
        is_free: IsFree = expired,
    ) -> ClaimRecord | None:
        """Claim `key` for `owner` (insert, or take over a free claim); None while another
        worker holds it."""
        with self._guard(f"claiming {key}"):
            return self._leases.claim(
                key, kind, owner=owner, host=host, pid=pid, owner_started_at=owner_started_at,
                now=now, lease_s=lease_s, is_free=is_free,
            )  # fmt: skip

    def renew_claim(self, claim: ClaimRecord, now: datetime, lease_s: float) -> ClaimRecord | None:
        """The renewed claim, or None when another worker took it over."""
        with self._guard(f"renewing the claim on {claim.id}"):
            return self._leases.renew(claim, now, lease_s)

    def release_claim(self, claim: ClaimRecord) -> bool:
        """Delete our claim (the work is done or given up); False when it was no longer ours."""
        with self._guard(f"releasing the claim on {claim.id}"):
            return self._leases.release(claim)

    def get_claim(self, key: str) -> ClaimRecord | None:
        with self._guard(f"reading the claim on {key}"):
            return self._leases.get(key)

    def claims_of(self, owner: str) -> list[ClaimRecord]:
        """The claims a worker holds (or held when it died)."""
        with self._guard(f"reading the claims of {owner}"):
            return self._leases.held_by(owner)

    # -- viewer reads (storybench-eval view, evaluator/viewer/) ----------------------------------
    # Read-only look-ups of single documents and a bounded text search, for the web viewer.

    def get_response(self, response_id: str) -> ResponseRecord | None:
        """One stored turn by its `_id`, or None."""
        with self._guard(f"reading turn {response_id}"):
            doc = self._responses.find_one({"_id": response_id})
        return None if doc is None else read_document(ResponseRecord, doc)

    def responses_by_ids(self, response_ids: list[str]) -> list[ResponseRecord]:
        """Stored turns among these `_id`s, in the order given. By `_id` because nx-27017 plans
        `_id $in` with its index but scans for an equality on the compound index's first field."""
        ids = list(dict.fromkeys(response_ids))
        if not ids:  # nx-27017 scans the whole collection for an empty `$in` (1 s on 50,000 turns)
            return []
        with self._guard("reading turns by id"):
            found = {str(d["_id"]): d for d in self._responses.find({"_id": {"$in": ids}})}
        return [read_document(ResponseRecord, found[i]) for i in ids if i in found]

    def pairwise_of(self, conversation_ids: list[str]) -> list[PairwiseRecord]:
        """Stored comparisons that show one of these conversations (first or second), with
        their rationale. Two `$in` queries rather than `$or`, which nx-27017 may not plan; for
        a few conversations one indexed equality per id and side, as nx-27017 scans for `$in`."""
        ids = list(dict.fromkeys(conversation_ids))
        found: dict[str, dict[str, Any]] = {}
        with self._guard("reading the comparisons of conversations"):
            for field in ("first_conversation", "second_conversation"):
                queries = [{field: i} for i in ids] if len(ids) <= FEW_IDS else [{field: {"$in": ids}}]
                for query in queries:
                    for doc in self._pairwise.find(query).limit(2000):
                        found[str(doc["_id"])] = doc
        return [read_document(PairwiseRecord, d) for _, d in sorted(found.items())]

    def search_answers(self, text: str, limit: int = 50) -> list[ResponseRecord]:
        """Turns whose cleaned answer contains `text` (case-insensitive), at most `limit`: a
        bounded scan (a substring cannot use an index), the prompt left out."""
        query = {"response_text": {"$regex": re.escape(text), "$options": "i"}}
        with self._guard("searching the answers"):
            docs = list(self._responses.find(query, projection={"prompt": 0}).limit(limit))
        return [read_document(ResponseRecord, d | {"prompt": ""}) for d in docs]

    def collection_sizes(self) -> tuple[int, int, int, int]:
        """Documents in runs, responses, evaluations and pairwise, from the collections'
        metadata (no scan): a cheap fingerprint of what the viewer's cached leaderboard read."""
        with self._guard("counting documents"):
            return (
                self._runs.estimated_document_count(),
                self._responses.estimated_document_count(),
                self._evaluations.estimated_document_count(),
                self._pairwise.estimated_document_count(),
            )

    def change_marks(self) -> str:
        """A short digest that changes whenever what the viewer shows may have: the four
        collections' counts (metadata, no scan), the newest comparison's time (a retried failed
        comparison replaces one in place; index `pairwise_created_at`) and every run's
        revision (a run replaces its document when it beats and ends; the error turns it
        replaces keep the count). Text metrics backfilled in place change none of these."""
        counts = self.collection_sizes()
        with self._guard("reading the store's change marks"):
            newest = self._pairwise.find({}, {"created_at": 1}).sort("created_at", DESCENDING).limit(1)
            pair = [str(d.get("created_at")) for d in newest]
            runs = sorted(f"{d['_id']}@{d.get('revision')}" for d in self._runs.find({}, {"revision": 1}))
        return stable_hash([list(counts), pair, runs])[:24]

    def _in_pages(
        self,
        collection: Collection[dict[str, Any]],
        order: str,
        direction: int,
        projection: dict[str, Any] | None,
    ) -> Iterator[dict[str, Any]]:
        """Every document, one `skip`/`limit` page of PAGE at a time, sorted by an indexed time.
        nx-27017 answers a find by materialising all of it first, and answers nothing else
        meanwhile (seconds for 50,000 turns: every page of the viewer waits); a sorted page
        comes from the index in milliseconds, so other queries run between pages (a sort on
        two fields, to break ties, is a full scan there: documents of equal time keep the
        index's order, stable on both servers while the index exists). A write between pages
        may shift a document by one: read twice (callers count it once) or, for a turn replaced
        in place with a newer time, missed by this pass."""
        for skip in itertools.count(0, PAGE):
            if skip and self.between_pages is not None:
                self.between_pages()
            cursor = collection.find({}, projection).sort(order, direction)
            page = list(cursor.skip(skip).limit(PAGE))
            yield from page
            if len(page) < PAGE:
                return

    def answer_texts(self, *, newest_first: bool = False) -> Iterator[tuple[str, str, datetime]]:
        """(`_id`, cleaned answer, finished_at) of every stored turn, in pages by finish time
        (index `responses_finished_at`): the viewer's search index reads them all once, oldest
        first, then newest first until it reaches what it has already read."""
        fields = {"response_text": 1, "finished_at": 1}
        direction = DESCENDING if newest_first else ASCENDING
        with self._guard("reading the answers"):
            for doc in self._in_pages(self._responses, "finished_at", direction, fields):
                yield str(doc["_id"]), str(doc.get("response_text") or ""), _utc(doc["finished_at"])

    def all_responses(self, *, with_text: bool = False) -> list[ResponseRecord]:
        """Every stored turn (texts left out unless `with_text`: read as ""), read in pages by
        finish time so the database keeps answering others meanwhile (`_in_pages`); a turn
        read twice counts once. The viewer's leaderboard reads through this."""
        projection = None if with_text else dict.fromkeys(ResponseRecord.TEXT_FIELDS, 0)
        blank = {} if with_text else dict.fromkeys(ResponseRecord.TEXT_FIELDS, "")
        docs: dict[str, dict[str, Any]] = {}
        with self._guard("reading every turn"):
            for doc in self._in_pages(self._responses, "finished_at", ASCENDING, projection):
                docs[str(doc["_id"])] = doc
        return [read_document(ResponseRecord, d | blank) for d in docs.values()]

    def all_evaluations(self) -> list[EvaluationRecord]:
        """Every stored judgement without its rationale (read as ""), in pages by creation time
        (index `evaluations_created_at`; see `_in_pages`); the viewer's leaderboard."""
        docs: dict[str, dict[str, Any]] = {}
        with self._guard("reading every judgement"):
            for doc in self._in_pages(self._evaluations, "created_at", ASCENDING, {"rationale": 0}):
                docs[str(doc["_id"])] = doc
        return [read_document(EvaluationRecord, d | {"rationale": ""}) for d in docs.values()]

    def all_pairwise(self) -> list[PairwiseRecord]:
        """Every stored comparison without its rationale (read as ""), in pages by creation
        time (index `pairwise_created_at`; see `_in_pages`); the viewer's leaderboard."""
        docs: dict[str, dict[str, Any]] = {}
        with self._guard("reading every comparison"):
            for doc in self._in_pages(self._pairwise, "created_at", ASCENDING, {"rationale": 0}):
                docs[str(doc["_id"])] = doc
        return [read_document(PairwiseRecord, d | {"rationale": ""}) for d in docs.values()]

    def newest_finished_at(self) -> datetime | None:
        """When the newest stored turn finished (index `responses_finished_at`): a retried
        turn replaces its error turn in place, so this moves where the count does not."""
        with self._guard("reading the newest turn's time"):
            newest = list(
                self._responses.find({}, {"finished_at": 1}).sort("finished_at", DESCENDING).limit(1)
            )
        return _utc(newest[0]["finished_at"]) if newest else None

    def answer_texts_by_ids(self, response_ids: list[str]) -> dict[str, str]:
        """`_id` -> cleaned answer of the stored turns among these (`_id $in` is indexed on
        nx-27017): the viewer's search checks its candidates with this, untyped and small."""
        ids = list(dict.fromkeys(response_ids))
        if not ids:  # nx-27017 scans the whole collection for an empty `$in`
            return {}
        with self._guard("reading answers by id"):
            docs = self._responses.find({"_id": {"$in": ids}}, {"response_text": 1})
            return {str(d["_id"]): str(d.get("response_text") or "") for d in docs}

    def answers_by_ids(self, response_ids: list[str]) -> list[ResponseRecord]:
        """Stored turns among these `_id`s in the order given, without the prompt and raw
        answer (read as ""): the viewer's search results (`_id $in` is indexed on nx-27017)."""
        ids = list(dict.fromkeys(response_ids))
        if not ids:  # nx-27017 scans the whole collection for an empty `$in`
            return []
        blank = {"prompt": "", "response_raw": ""}
        with self._guard("reading turns by id"):
            found = {
                str(d["_id"]): d
                for d in self._responses.find({"_id": {"$in": ids}}, {"prompt": 0, "response_raw": 0})
            }
        return [read_document(ResponseRecord, found[i] | blank) for i in ids if i in found]


def open_store(
    uri: str | None = None,
    db_name: str = DEFAULT_DB_NAME,
    data_dir: Path | None = None,
) -> Store:
    """Connect (or start the embedded server) and return a Store; use it as a context manager.

    `uri` None -> `STORYBENCH_MONGO_URI` -> the embedded nx-27017 on `data_dir` (default
    `STORYBENCH_DATA_DIR` or ~/.local/share/storybench/mongo). Raises StoreError within a few
    seconds when the database is unreachable or refuses us. Closing the store releases the
    embedded server: it stops when no other StoryBench command still uses it.
    """
    resolved, source = resolve_uri(uri)
    server = None
    if resolved is None:
        server = embedded_mod.acquire(data_dir)
        resolved = server.uri
    try:
        client = connect(resolved, source)
    except BaseException:
        if server is not None:
            server.release()
        raise
    return Store(client, db_name, uri=resolved, embedded=server)


def _utc(value: datetime) -> datetime:
    """A stored time as an aware UTC time (some servers hand back naive UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
