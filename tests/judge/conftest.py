"""Judge test fixtures: a stored run to judge, an in-memory store with the real Store's read and
write semantics (for the fast tests; the integration tests use the real embedded nx-27017), the
judge endpoint's answers as an OpenAI-compatible stream, and the config files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from evaluator.judge.cli import judge_command
from evaluator.records import EvaluationRecord, ResponseRecord, RunRecord, config_hash, experiment_key
from evaluator.store import Store
from tests.support.documents import make_response, replaced
from tests.support.isolation import _no_user_database  # noqa: F401  (autouse fixture)
from tests.support.memory_store import memory_store as memory_store_of
from tests.support.sse import sse

REPO = Path(__file__).resolve().parents[2]
JUDGE_BASE = "http://judge.test/v1"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
CFG = config_hash({"model": "writer"}, "seqhash")
EXP = experiment_key(CFG, 1)
RUN_ID = "20261128-120000-abcdef"
SYSTEM = "You are a novelist."
TURNS = [
    ("premise", "A lighthouse keeper finds a brass key."),
    ("door", "The key opens a door in the lamp room."),
    ("ballad", "Retell the story as a ballad."),
]


def response(
    run_index: int, turn_index: int, outcome: str = "ok", answer: str | None = None
) -> ResponseRecord:
    """A turn of the judged run, built by the shared builder (tests/support/documents.py)."""
    name, prompt = TURNS[turn_index]
    text = f"Answer {turn_index + 1} of run {run_index}: Mara keeps the lamp." if answer is None else answer
    base = make_response(
        turn_index, exp_key=EXP, model="writer", sequence="lighthouse", run_index=run_index,
        outcome=outcome, text=text if outcome == "ok" else "", run_id=RUN_ID, cfg=CFG,
    )  # fmt: skip
    return replaced(
        base,
        model_id="writer-1",
        endpoint="http://writer.test/v1",
        seed=7 + run_index,
        turn_name=name,
        prompt=prompt,
        error=None if outcome == "ok" else "the model returned an empty answer twice",
    )


def run_record(run_id: str = RUN_ID, started: datetime = T0) -> RunRecord:
    return RunRecord(
        _id=run_id,
        started_at=started,
        status="completed",
        command="storybench-eval run",
        code_version="test",
        config_snapshot={
            "models": [{"name": "writer"}, {"name": "poet"}],
            "sequences": [
                {"name": "lighthouse", "system": SYSTEM, "turns": [{"name": n, "text": t} for n, t in TURNS]}
            ],
            "runs": 2,
        },
        config_hashes={},
        experiments=[{"model": "writer", "sequence": "lighthouse", "experiment_key": EXP, "generation": 1}],
        models=["writer", "poet"],
        sequences=["lighthouse"],
        runs_per_sequence=2,
        planned_turns=6,
    )


def seed(store: Any, answers: dict[tuple[int, int], str] | None = None) -> None:
    """Run 0: three ok turns (a complete sequence run). Run 1: turn 1 ok, turn 2 `empty` (the
    sequence run ended there): 4 responses and 1 sequence run to judge, 1 turn and 1 run not."""
    answers = answers or {}
    store.create_run(run_record())
    for t in range(3):
        store.save_response(response(0, t, answer=answers.get((0, t))))
    store.save_response(response(1, 0, answer=answers.get((1, 0))))
    store.save_response(response(1, 1, outcome="empty"))


class ObservedStore(Store):
    """The real Store over an in-memory MongoDB (tests/support/memory_store.py), counting the
    judge's saves and able to make them fail: the behaviour is the store's own."""

    saves = 0
    fail_saves_with: Exception | None = None

    def save_evaluation(self, rec: EvaluationRecord) -> bool:
        self.saves += 1
        if self.fail_saves_with is not None:
            raise self.fail_saves_with
        return super().save_evaluation(rec)

    @property
    def evals(self) -> dict[str, dict[str, Any]]:
        """The stored judgements as the database holds them, by `_id`."""
        return {d["_id"]: d for d in self.db["evaluations"].find({})}


@pytest.fixture
def memory_store(monkeypatch: pytest.MonkeyPatch) -> ObservedStore:
    """A seeded in-memory Store that `storybench-eval judge` opens instead of the database."""
    store = memory_store_of(ObservedStore)
    seed(store)
    monkeypatch.setattr("evaluator.judge.cli.open_store", lambda uri=None, db_name="storybench": store)
    return store


def models_yaml(tmp_path: Path, **judge: Any) -> Path:
    fields: dict[str, Any] = {"name": "judge", "base_url": JUDGE_BASE, "model": "judge-1", **judge}
    entry = "\n    ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items())
    text = (
        "settings:\n  retry_max_attempts: 3\n  retry_initial_s: 0.01\n  retry_max_backoff_s: 0.05\n"
        f"models:\n  - {entry}\n  - name: other\n    base_url: http://other.test/v1\n    model: o\n"
    )
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def shipped_rubric() -> dict[str, Any]:
    return json.loads((REPO / "config" / "rubric.json").read_text())


def rubric_file(tmp_path: Path, **changes: Any) -> Path:
    data = shipped_rubric()
    data.update(changes)
    path = tmp_path / "rubric.json"
    path.write_text(json.dumps(data))
    return path


def criteria_of(body: dict[str, Any]) -> list[str]:
    """The criteria a judge request asks for, read from its response_format schema."""
    schema = body["response_format"]["schema"]
    return list(schema["properties"]["scores"]["properties"])


def verdict(criteria: list[str], score: Any = 7, rationale: str = "Consistent and vivid.") -> str:
    return json.dumps({"scores": {c: score for c in criteria}, "rationale": rationale})


def good_judge(request: httpx.Request) -> httpx.Response:
    """A judge that always answers with a valid judgement of every criterion it is asked for."""
    return sse_text(verdict(criteria_of(json.loads(request.content))))


def sse_text(text: str, finish: str = "stop") -> httpx.Response:
    """`sse` splits on spaces and re-joins with a trailing space: JSON survives that."""
    return sse(text, finish=finish, prompt_tokens=500, completion_tokens=40)


def no_storybench_server() -> None:
    """The judge is a hosted API: its /storybench/models is a 404."""
    import respx

    respx.get("http://judge.test/storybench/models").mock(return_value=httpx.Response(404))


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(judge_command, list(args), env=env, catch_exceptions=False)


def judge_args(
    tmp_path: Path, *extra: str, models: Path | None = None, rubric: Path | None = None
) -> list[str]:
    return [
        RUN_ID,
        "--config",
        str(models or models_yaml(tmp_path)),
        "--rubric",
        str(rubric or REPO / "config" / "rubric.json"),
        *extra,
    ]


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone, for substring checks."""
    return re.sub(r"\s+", " ", text)


@pytest.fixture
def store_factory() -> Callable[[], ObservedStore]:
    return lambda: memory_store_of(ObservedStore)
