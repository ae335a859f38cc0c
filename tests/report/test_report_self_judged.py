"""A judgement whose judge is the judged model is flagged in the run report, in both formats."""

from __future__ import annotations

import io

from evaluator.report.gather import conversations, summarize
from evaluator.report.render_html import render_html
from evaluator.report.render_md import render_md
from evaluator.store import Store
from tests.report.conftest import judgement, seed_run
from tests.support.documents import replaced

FLAG = "self-judged: the judge is this model"  # Markdown escapes the brackets around it


def test_self_judged_scores_are_flagged_and_others_are_not(store: Store) -> None:
    seeded = seed_run(store)
    turn = seeded.turns[("m1", "lighthouse", 0, 0)]
    other = seeded.turns[("m1", "lighthouse", 0, 1)]
    own = replaced(
        judgement(turn.id, "selfie", "v9", {"coherence": 9}), details={"judge_model_id": turn.model_id}
    )
    store.save_evaluation(own)
    store.save_evaluation(
        replaced(judgement(other.id, "selfie", "v9", {"coherence": 3}), details={"judge_model_id": "x"})
    )
    run = store.get_run(seeded.run_id)
    assert run is not None
    for render in (render_html, render_md):
        out = io.StringIO()
        render(summarize(store, run), conversations(store, run), out)
        text = out.getvalue()
        assert text.count(FLAG) == 1, render.__name__
        line = next(line for line in text.splitlines() if FLAG in line)
        assert "coherence 9" in line
