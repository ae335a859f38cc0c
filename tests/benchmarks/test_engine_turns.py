"""`benchmarks/engine_turns.py` end to end on tiny settings with the bundled model: in-process long
stories whose turns send the whole history. It asserts what the benchmark reports, not speed:
every turn after the first is served from its cache, and the shape-keeping variant holds rows
and keeps each step one micro-batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import engine_turns
from server.bundled import locate
from tests.support.servers import BUNDLED

pytestmark = pytest.mark.integration


def test_engine_turns_reports_each_variants_stories(tmp_path: Path) -> None:
    out = tmp_path / "turns.json"
    variants = "engine-batched-hold-separate,engine-batched-plain"
    args = ["--model", str(locate(BUNDLED)), "--conversations", "2", "--turns", "3", "--gen", "20"]
    args += ["--turn-tokens", "12", "--first-prompt", "24", "--n-ctx", "256", "--threads", "1"]
    assert engine_turns.main([*args, "--variants", variants, "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))["variants"]
    for row in result.values():
        assert 2 * 3 * 15 <= row["tokens"] <= 2 * 3 * 20  # answers of 15 to 20 tokens
        assert len(row["turn_latency_ms_median"]) == 3
        assert min(row["turn_cached_pct_median"][1:]) > 50  # the history came from the cache
    kept, plain = result["engine-batched-hold-separate"], result["engine-batched-plain"]
    assert kept["held_rows"] > 0 and plain["held_rows"] == 0  # the shorter answer's slot was held
    assert kept["micro_batches"] == kept["steps"]  # prompts alone, two consecutive slots


def test_engine_sampled_stories_pick_every_token_in_the_graph(tmp_path: Path) -> None:
    """`engine-sampled`: the whole chain in the decode graph (`graph_tail`), so the tokens were
    picked there, but for a turn's first where llama.cpp split its step (on the CPU a prompt
    shares its step with the other story's row: the CPU finishes that row with the same draw);
    `engine-batched` leaves the chain's tail to the CPU."""
    out = tmp_path / "turns.json"
    args = ["--model", str(locate(BUNDLED)), "--conversations", "2", "--turns", "2", "--gen", "12"]
    args += ["--turn-tokens", "8", "--first-prompt", "16", "--n-ctx", "256", "--threads", "1"]
    args += ["--jitter", "0"]
    assert engine_turns.main([*args, "--variants", "engine-sampled,engine-batched", "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))["variants"]
    sampled, batched = result["engine-sampled"], result["engine-batched"]
    assert sampled["tokens"] == batched["tokens"] == 2 * 2 * 12
    assert sampled["graph_tail_rows"] + sampled["graph_tail_cpu_rows"] == sampled["tokens"]
    assert sampled["graph_tail_cpu_rows"] <= 2 * 2  # at most each turn's first token
    assert batched["graph_tail_rows"] == batched["graph_tail_cpu_rows"] == 0


def test_a_story_that_cannot_fit_its_context_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        engine_turns.main(["--model", str(tmp_path / "none.gguf"), "--turns", "12", "--n-ctx", "1024"])
    assert "a story needs about 7464 tokens of context; --n-ctx is 1024" in capsys.readouterr().err


def test_a_run_cut_short_keeps_the_variants_that_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device call's deadline can stop the run between variants: the file already holds every
    variant that finished, written after each."""
    out = tmp_path / "turns.json"
    real, calls = engine_turns.story_run, []

    def cut_after_one(*args: Any) -> Any:
        calls.append(args)
        if len(calls) > 1:
            raise KeyboardInterrupt  # what the deadline's signal does mid-run, as near as a test gets
        return real(*args)

    monkeypatch.setattr(engine_turns, "story_run", cut_after_one)
    args = ["--model", str(locate(BUNDLED)), "--conversations", "2", "--turns", "2", "--gen", "12"]
    args += ["--turn-tokens", "8", "--first-prompt", "16", "--n-ctx", "256", "--threads", "1"]
    with pytest.raises(KeyboardInterrupt):
        engine_turns.main([*args, "--variants", "engine-batched,engine-batched-plain", "--out", str(out)])
    kept = json.loads(out.read_text(encoding="utf-8"))["variants"]
    assert list(kept) == ["engine-batched"]
    assert kept["engine-batched"]["tokens"] > 0
