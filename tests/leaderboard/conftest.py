"""Leaderboard test fixtures: a store seeded with complete conversations of several models
(answers marked `[writer:<model>]` for the simulated judge), the CLI commands opened on it,
and a models file whose judge entry points at the simulated judge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from click.testing import CliRunner, Result

from evaluator.cli import cli
from evaluator.records import EvaluationRecord, ResponseRecord, RunRecord, config_hash, experiment_key
from evaluator.store import Store
from tests.support.documents import T0, make_pairwise, make_response, replaced
from tests.support.isolation import _no_user_database  # noqa: F401  (autouse fixture)
from tests.support.memory_store import MEMORY_URI
from tests.support.sim_judge import SimJudge

SYSTEM = "You are a novelist."


class Shared:
    """One in-memory database that every command of a test opens (each open is a new Store,
    as it is for the real commands)."""

    def __init__(self) -> None:
        self.client: Any = mongomock.MongoClient(tz_aware=True)
        self.db_name = "leaderboard_test"

    def open(self, uri: str | None = None, db_name: str = "storybench") -> Store:
        return Store(self.client, self.db_name, uri=MEMORY_URI)


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Shared:
    db = Shared()
    for where in (
        "evaluator.compare.cli.open_store",
        "evaluator.leaderboard.cli.open_store",
        "evaluator.judge.cli.open_store",
    ):
        monkeypatch.setattr(where, db.open)
    with db.open() as store:
        store.ensure_indexes()
    return db


def seed_models(
    store: Store,
    models: list[str],
    *,
    sequences: int = 6,
    runs: int = 2,
    turns: int = 2,
    seq_hash: dict[str, str] | None = None,
    run_id: str = "run-1",
    generation: int = 1,
    broken_turn: dict[str, int] | None = None,
    extra_words: dict[str, int] | None = None,
) -> dict[str, list[str]]:
    """Complete conversations of every model on `sequences` x `runs`; returns model -> the
    conversations' sequence-run ids. `broken_turn[model] = k` makes its k-th conversation fail."""
    names = [f"seq{s}" for s in range(sequences)]
    seq_hash = seq_hash or {}
    specs = [
        {
            "name": n,
            "system": SYSTEM,
            "turns": [{"name": f"t{t}", "text": f"{n} turn {t}"} for t in range(turns)],
        }
        for n in names
    ]
    experiments = []
    out: dict[str, list[str]] = {}
    for model in models:
        for name in names:
            h = seq_hash.get(name, f"hash-{name}")
            cfg = config_hash({"name": model}, h)
            key = experiment_key(cfg, generation)
            experiments.append(
                {"model": model, "sequence": name, "experiment_key": key, "generation": generation}
            )
            for r in range(runs):
                out.setdefault(model, []).append(f"{key}:{model}:{name}:r{r}")
                for t in range(turns):
                    broken = broken_turn is not None and broken_turn.get(model) == len(out[model]) - 1
                    padding = (extra_words or {}).get(model, 0)
                    rec = make_response(
                        t, exp_key=key, model=model, sequence=name, run_index=r, run_id=run_id,
                        generation=generation, cfg=cfg,
                        outcome="empty" if broken and t == turns - 1 else "ok",
                        text=f"[writer:{model}] {name} run {r} turn {t}: the keeper climbs."
                        + " more" * padding,
                    )  # fmt: skip
                    store.save_response(
                        replaced(
                            rec,
                            sequence_hash=h,
                            prompt=f"{name} turn {t}",
                            completion_tokens=100 + 10 * t + padding,
                        )
                    )
    store.create_run(
        RunRecord(
            _id=run_id,
            started_at=T0,
            status="completed",
            command="storybench-eval run",
            code_version="test",
            config_snapshot={"sequences": specs, "runs": runs},
            config_hashes={},
            experiments=experiments,
            models=models,
            sequences=names,
            runs_per_sequence=runs,
            planned_turns=len(models) * sequences * runs * turns,
        )
    )
    return out


def add_scores(
    store: Store,
    conversations: list[str],
    score: int,
    *,
    judge: str = "sim",
    rubric: str | None = None,
    turns: int = 2,
) -> None:
    """A sequence judgement and a judgement per turn, every criterion = `score`."""
    from evaluator.judge.rubric import load_rubric

    version = rubric or load_rubric(Path("config/rubric.json")).version_id
    for conv in conversations:
        records = [EvaluationRecord(target_id=conv, target_kind="sequence", judge_model=judge,
                                    rubric_version=version, scores={"coherence": score, "consistency": score},
                                    rationale="", created_at=T0 + timedelta(hours=1))]  # fmt: skip
        for t in range(turns):
            records.append(
                EvaluationRecord(
                    target_id=f"{conv}:t{t}",
                    target_kind="response",
                    judge_model=judge,
                    rubric_version=version,
                    scores={"prose": score + t},
                    rationale="",
                    created_at=T0 + timedelta(hours=1),
                )  # fmt: skip
            )
        for rec in records:
            store.save_evaluation(rec)


def add_ordered_verdicts(
    store: Store,
    conversations: dict[str, list[str]],
    models: list[str],
    *,
    judge: str = "judge",
    rubric: str = "v1",
) -> None:
    """Both orders of every pair of `models`' matched conversations, the later model in `models`
    always preferred ("A better" / "B better"): a leaderboard whose order is `models` reversed."""
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            for conv_a, conv_b in zip(conversations[a], conversations[b], strict=True):
                for first, second, fm, sm in ((conv_a, conv_b, a, b), (conv_b, conv_a, b, a)):
                    better = models.index(fm) > models.index(sm)
                    store.save_pairwise(
                        make_pairwise(
                            first,
                            second,
                            first_model=fm,
                            second_model=sm,
                            judge=judge,
                            rubric=rubric,
                            score_first=0.75 if better else 0.25,
                            verdict="A better" if better else "B better",
                            sequence_hash="hash-" + conv_a.rsplit(":", 2)[1],
                        )  # fmt: skip
                    )


def models_yaml(tmp_path: Path, judge_url: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        "settings:\n  retry_max_attempts: 2\n  retry_initial_s: 0.01\n  retry_max_backoff_s: 0.05\n"
        f"models:\n  - name: sim\n    base_url: {json.dumps(judge_url)}\n    model: sim-judge\n"
        "    max_concurrency: 8\n"
    )
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def sim() -> Iterator[SimJudge]:
    with SimJudge(strengths={}) as judge:
        yield judge


def stored_pairwise(shared: Shared) -> list[dict[str, Any]]:
    return list(shared.client[shared.db_name]["pairwise"].find({}))


__all__ = [
    "ResponseRecord",
    "Shared",
    "add_scores",
    "invoke",
    "models_yaml",
    "seed_models",
    "stored_pairwise",
]
