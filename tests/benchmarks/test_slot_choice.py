"""`benchmarks/slot_choice.py` on tiny settings: it times the slot choice, and the stories it
builds are the case it is about (the text match keeps the whole cache, token for token not)."""

from __future__ import annotations

import json

import pytest

from benchmarks import slot_choice


def test_slot_choice_reports_both_matches(capsys: pytest.CaptureFixture[str]) -> None:
    assert slot_choice.main(["--slots", "4", "--tokens", "500", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"]["kept"] == 503  # BOS, 500 story tokens and " a" + "day"
    assert out["token"]["kept"] <= 301  # at most up to the re-tokenized word
    assert out["token"]["ms_per_admission"] > 0 and out["text"]["ms_per_admission"] > 0
