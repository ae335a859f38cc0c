"""`benchmarks/story_bound.py`: llama.cpp's own speed at a story run's work, from the run's record,
checked against the same sum worked out by hand on a small run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import story_bound

BENCH = """\
|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    95 |     10 |    2 |    210 |    0.200 |  1000.00 |    0.020 |  1000.00 |    0.220 |  1000.00 |
"""


def record(metric: str, ours: float, native: float, note: str = "") -> dict[str, object]:
    return {
        "benchmark": "multiturn_concurrency", "metric": metric, "concurrency": 2,
        "ours": ours, "reference": native, "note": note,
    }  # fmt: skip


def write_run(folder: Path, turns: dict[int, tuple[int, int]]) -> Path:
    """Two conversations, 10-token answers; `turns`: turn -> (history, cached) per conversation."""
    records = [record(f"aggregate generated tok/s ({max(turns)} turns of 10-token answers)", 200.0, 100.0)]
    for t, (history, cached) in turns.items():
        note = f"per conversation, ours / native: history {history} / {history} tokens (previous prompt + "
        note += f"answer), cached {cached} / 1; least-served conversation 50 / 50 %"
        records.append(record(f"turn {t} history served from cache", 50.0, 50.0, note))
    path = folder / "http.json"
    path.write_text(json.dumps({"records": records}), encoding="utf-8")
    return path


def test_the_bound_is_the_runs_decode_steps_and_prompts_at_llama_cpps_speed(tmp_path: Path) -> None:
    http = write_run(tmp_path, {2: (30, 20), 3: (70, 55)})
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps({"settings": {"slots": 2}, "depths": {"0": {"decode_step_ms": 1.0}}}))
    bench = tmp_path / "bench.txt"
    bench.write_text(BENCH, encoding="utf-8")
    story = story_bound.read_story(http)
    # Prompts 20 and 60 (history less the answer), the third extrapolated: 100.
    assert story.prompts == [20, 60, 100] and story.cached == [0, 20, 55]
    depths, steps = story_bound.decode_steps(cost, [bench], 2)
    assert (depths, steps) == ([0.0, 100.0], [1.0, 2.0])  # batched-bench's row at 95 + 10 / 2
    result = story_bound.bound(story, depths, steps, story_bound.prompt_speed([bench], 2))
    # Steps at depths 25, 65, 105 (past the last point: its time): 1.25 + 1.65 + 2.0 ms, 10
    # each; 2 x (20 + 40 + 45) prompt tokens at 1,000 tok/s; 60 tokens in all.
    assert result["prompt_tokens"] == 210
    assert result["bound_tok_per_s"] == round(60 / (0.049 + 0.21))
    assert result["bound_at_shallowest_tok_per_s"] == round(60 / (0.030 + 0.21))
    assert result["ours_share_of_bound"] == round(200 / (60 / 0.259), 3)
    assert result["bound_over_native"] == round(60 / 0.259 / 100, 2)


def test_a_run_without_every_turns_notes_is_refused(tmp_path: Path) -> None:
    http = write_run(tmp_path, {3: (70, 55)})
    with pytest.raises(ValueError, match="turns 2-3 need their history notes, found \\[3\\]"):
        story_bound.read_story(http)


def test_a_one_turn_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a run of 1 turn has no history notes"):
        story_bound.read_story(write_run(tmp_path, {1: (30, 20)}))


def test_one_depth_is_not_enough(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    http = write_run(tmp_path, {2: (30, 20), 3: (70, 55)})
    bench = tmp_path / "bench.txt"
    bench.write_text(BENCH, encoding="utf-8")
    assert story_bound.main(["--http", str(http), "--bench", str(bench)]) == 2
    assert "need decode steps of 2 rows at two depths or more, have [100.0]" in capsys.readouterr().err


def test_one_batched_bench_file_of_two_prompt_lengths_gives_two_depths(tmp_path: Path) -> None:
    """`device_steps.sh DEEP_NPP=...` runs batched-bench at PROMPT and at the stories' depth in one
    table: both rows count, the deeper one's S_PP is the prompt speed."""
    bench = tmp_path / "bench.txt"
    shallow = (
        "|    15 |     10 |    2 |     50 |    0.050 |   600.00 |    0.010 |  2000.00 |    0.060 |  1000.00 |"
    )
    bench.write_text(BENCH + shallow + "\n", encoding="utf-8")
    assert story_bound.decode_steps(None, [bench], 2) == ([20.0, 100.0], [1.0, 2.0])
    assert story_bound.prompt_speed([bench], 2) == 1000.0
