"""`benchmarks/story_cache.py` (`make bench-stories`) end to end on tiny settings: our server with
the bundled model, conversations that send their full history every turn. It asserts what the
benchmark reports, not speed: a real model's answers re-tokenize to what it generated, so nearly
all of each turn's history must come from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import story_cache

pytestmark = pytest.mark.integration


def test_story_cache_reports_each_turns_share_of_history_served_from_cache(tmp_path: Path) -> None:
    out = tmp_path / "story.json"
    args = ["--conversations", "2", "--turns", "3", "--answer", "16", "--turn-tokens", "30", "--ctx", "1024"]
    assert story_cache.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    figures = result["figures"]
    assert {"cache2", "cache3", "history3", "lowest3"} <= figures.keys()
    assert figures["history3"] > figures["history2"] > 0  # the stories grew
    assert result["lowest_turn_share"] == min(figures["cache2"], figures["cache3"]) >= 90.0
    assert isinstance(result["prompts_respelled"], int)  # read back from the server's stats
    assert result["warnings"] == []  # every answer had its full length (end of generation banned)
