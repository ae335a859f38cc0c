"""Every summary a user reads in a terminal is readable at 80 columns: no header or figure is cut
to "…", and long model names wrap instead of vanishing. Rendered with rich's recording console
at width 80, as a terminal of that width would show them."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console, RenderableType

from evaluator.judge.judging import KindStats
from evaluator.judge.progress import judge_summary_table
from evaluator.progress import run_summary_table
from evaluator.runner import ModelStats
from evaluator.store import Store, format_run_detail, format_runs_table
from tests.support.documents import make_response, make_run, replaced

LONG = "openrouter-meta-llama-3.3-70b-instruct"


def render(renderable: RenderableType) -> str:
    console = Console(record=True, width=80, color_system=None, force_terminal=False)
    console.print(renderable)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    return text


def column(text: str, header: str, next_header: str) -> str:
    """The cells of one column, read down the table and joined: a folded name reads whole again."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if header in line and next_header in line)
    start, end = lines[at].index(header), lines[at].index(next_header)
    return "".join(line[start:end].strip() for line in lines[at + 2 :] if line.strip())


def stats(**outcomes: int) -> ModelStats:
    s = ModelStats(total=20, done=20, written=sum(outcomes.values()), reused=5)
    s.outcomes = defaultdict(int, outcomes)
    s.completion_tokens, s.generation_s, s.ttfts = 4000, 40.0, [0.25, 0.5]
    s.prompt_tokens, s.cached_tokens, s.cost_usd, s.priced = 10000, 7000, 0.0123, True
    return s


def test_run_summary_shows_every_header_and_figure() -> None:
    text = render(
        run_summary_table({LONG: stats(ok=12, empty=1, context_exhausted=1, error=1), "m2": stats(ok=15)})
    )
    assert "…" not in text
    for header in ("ok", "empty", "ctx full", "errors", "reused", "tok/s", "TTFT p50", "cache reuse", "cost"):
        assert header in text
    assert LONG in column(text, "model", "ok") and LONG in column(text, "model", "tok/s")
    assert "$0.0123" in text and "70%" in text and "100.0" in text
    assert "5 already stored by earlier runs" not in text  # per model: 10 in all
    assert "10 already stored by earlier runs of the same plan were reused" in " ".join(text.split())


def test_runs_table_keeps_model_names_and_counts(store: Store) -> None:
    run = replaced(make_run("20261204-120000-abcdef"), models=[LONG, "smollm2-local-hot"], planned_turns=72)
    store.create_run(run)
    tally = store.run_tallies([run])
    text = render(format_runs_table([run], tally))
    assert "…" not in text
    models = column(text, "models", "plan")
    assert f"{LONG},smollm2-local-hot" in models
    assert "0/72" in text


def test_judge_summary_headers_fit() -> None:
    kinds = {"response": KindStats(judged=120, skipped=30, failed=2, not_judged=4, trimmed=7),
             "sequence": KindStats(judged=24, skipped=6)}  # fmt: skip
    text = render(judge_summary_table(kinds, "Judge summary: gpt-4.1-mini, rubric 2-86e686e5, run 20261204"))
    assert "…" not in text
    for header in ("judged", "earlier", "failed", "not judged", "trimmed"):
        assert header in text


def test_run_detail_facts_say_written_and_reused(store: Store) -> None:
    first = make_run("run-first")
    store.create_run(first)
    for t in range(2):
        store.save_response(make_response(t, run_id="run-first"))
    second = replaced(make_run("run-second"), started_at=first.started_at.replace(year=2027))
    store.create_run(second)
    store.save_response(make_response(2, run_id="run-second"))
    tally = store.run_tallies([second])[second.id]
    text = " ".join(render(format_run_detail(second, store.run_responses(second.id), tally)).split())
    assert "1/3 written, 2 reused" in text
