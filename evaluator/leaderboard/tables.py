"""The leaderboard's tables, format-free: the summary, criteria, text metrics, the facts above
them and the judge-reliability lines. render.py writes them as a terminal table, Markdown or
HTML, so every format shows the same cells."""

from __future__ import annotations

from evaluator.leaderboard.build import Leaderboard, ModelRow
from evaluator.leaderboard.ratings import MeanCI
from evaluator.leaderboard.reliability import JudgeReliability
from evaluator.report.present import Table

__all__ = [
    "TERMINAL_HEADERS",
    "criteria_table",
    "facts",
    "reliability_rows",
    "summary_table",
    "terminal_rows",
    "text_metrics_table",
]

_NONE = "-"


def _num(value: float | None, digits: int = 0) -> str:
    return _NONE if value is None else f"{value:.{digits}f}"


def _ci(ci: tuple[float, float] | None, digits: int = 0) -> str:
    return _NONE if ci is None else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def _rating_ci(board: Leaderboard, row: ModelRow) -> str:
    if row.model == board.anchor and row.rating is not None:
        return "anchor"  # fixed at 1000: its interval has no width by construction
    return _ci(row.rating_ci)


def terminal_rows(board: Leaderboard) -> list[list[str]]:
    """The summary for an 80-column terminal: each interval under its value (two-line cells)."""
    rows = []
    for r in board.rows:
        rating = _num(r.rating) + ("" if r.rating is None else f"\n{_rating_ci(board, r)}")
        rubric = _mean(r.rubric) + (
            "" if r.rubric is None or r.rubric.ci is None else f"\n{_ci(r.rubric.ci, 2)}"
        )
        rows.append(
            [
                _ranks(r),
                r.model,
                rating,
                f"{r.wins}/{r.ties}/{r.losses}",
                rubric,
                str(r.conversations),
                _num(r.answer_tokens),
            ]
        )
    return rows


TERMINAL_HEADERS = ["rank", "model", "rating\n95% CI", "W/T/L", "rubric\n95% CI", "convs", "answer\ntokens"]


def _ranks(row: ModelRow) -> str:
    best, worst = row.rank_range
    return str(best) if best == worst else f"{best}-{worst}"


def _mean(m: MeanCI | None) -> str:
    return _NONE if m is None else f"{m.mean:.2f}"


def summary_table(board: Leaderboard) -> Table:
    headers = [
        "rank", "model", "rating", "95% CI", "W/T/L", "pairs", "rubric", "rubric 95% CI", "convs",
        "answer tokens", "LC rating", "LC 95% CI",
    ]  # fmt: skip
    rows = [
        [
            _ranks(r),
            r.model,
            _num(r.rating),
            _rating_ci(board, r),
            f"{r.wins}/{r.ties}/{r.losses}",
            str(r.pairs),
            _mean(r.rubric),
            _ci(r.rubric.ci if r.rubric else None, 2),
            str(r.conversations),
            _num(r.answer_tokens),
            _num(r.rating_lc),
            "anchor" if r.model == board.anchor and r.rating_lc is not None else _ci(r.rating_lc_ci),
        ]  # fmt: skip
        for r in board.rows
    ]
    numeric = [False, False, True, True, True, True, True, True, True, True, True, True]
    anchor = f"; {board.anchor} fixed at 1000" if board.anchor else ""
    note = (
        f"rating: Bradley-Terry-Davidson on pairwise verdicts (both orders), 1000 + 400 log10 odds{anchor}; "
        f"intervals: 95%, {board.resamples} bootstrap resamples of sequences; "
        "rank: range over the intervals; "
        "LC: the rating at equal length (a length covariate in the fit)"
    )
    return Table(headers, rows, numeric, title="Leaderboard", note=note)


def criteria_table(board: Leaderboard) -> Table | None:
    if not board.criteria:
        return None
    headers = ["model", *board.criteria]
    rows = []
    for r in board.rows:
        cells = []
        for name in board.criteria:
            m = r.criteria.get(name)
            cells.append(_NONE if m is None else f"{m.mean:.2f} ({_ci(m.ci, 2)})")
        rows.append([r.model, *cells])
    return Table(
        headers, rows, [False] + [True] * len(board.criteria), title="Rubric criteria (mean, 95% CI)"
    )


def _pct(m: MeanCI | None) -> str:
    if m is None:
        return "not measured"
    ci = f" (95% CI {max(0.0, m.ci[0]):.0%} to {min(1.0, m.ci[1]):.0%})" if m.ci else ""
    return f"{m.mean:.0%}{ci}, n = {m.n}"


def _rho(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def reliability_rows(rel: JudgeReliability) -> list[tuple[str, str, str]]:
    """(figure, value, how to read it): what the HTML, Markdown and terminal show above the tables."""
    spread = [
        f"{name} sd {sd:.2f}, changed {rel.rejudge_changed.get(name) or 0:.0%}"
        for name, sd in rel.rejudge_sd.items()
        if sd is not None
    ]
    agreement = []
    for other, by_crit in rel.judge_agreement.items():
        overall = by_crit.get("overall")
        if overall is not None:
            agreement.append(
                f"with {other}: rho {_rho(overall.spearman)}, alpha {_rho(overall.krippendorff_alpha)} "
                f"over {overall.targets} targets; tables rho {_rho(rel.leaderboard_spearman.get(other))}"
            )
    self_judged = "no"
    if rel.self_judged:
        self_judged = (
            f"yes: {rel.self_judged_left_out} judgement(s) left out (--allow-self-judge shows them)"
            if rel.self_judged_left_out
            else "yes: shown because of --allow-self-judge, flagged"
        )
    beta = "" if rel.length_beta is None else f"; length coefficient {rel.length_beta:+.2f}"
    return [
        ("position flips", _pct(rel.position_flip_rate),
         "pairs whose two orders disagree (each counts as a tie); 0% for a judge that reads only "
         "the content"),
        ("first shown wins", _pct(rel.first_position_win_rate),
         "decided verdicts won by the conversation shown first; 50% means no position bias"),
        ("re-judge spread",
         "; ".join(spread) if spread else "not measured (judge or compare with --repeat K)",
         "how far a score moves when the same target is judged again (sd, share changed); small is stable"),
        ("judge agreement", "; ".join(agreement) if agreement else "not measured (one judge: --judge J1,J2)",
         "Spearman's rho and Krippendorff's alpha between judges: 1 full agreement, 0 none"),
        ("length and score", f"rho {_rho(rel.length_score_spearman)} ({rel.length_unit})",
         "rank correlation of a conversation's length with its rubric score; near 0: length buys no score"),
        ("longer wins", _pct(rel.longer_wins_rate) + beta,
         "decided pairs won by the longer conversation; 50% means no length preference "
         "(the LC rating removes it)"),
        ("self-judging", self_judged,
         "a judge grading its own model (same model id or weights) favours itself"),
    ]  # fmt: skip


def text_metrics_table(board: Leaderboard) -> Table | None:
    rows = [r for r in board.rows if r.text_metrics]
    if not rows:
        return None
    names = ["words", "distinct_2", "history_overlap", "prompt_overlap"]
    body = []
    for r in rows:
        cells = []
        for name in names:
            value = r.text_metrics.get(name)
            cells.append(_NONE if value is None else (f"{value:.0f}" if name == "words" else f"{value:.3f}"))
        body.append([r.model, *cells, str(r.text_metrics_turns)])
    return Table(
        ["model", "words", "distinct-2", "history", "prompt", "answers"],
        body,
        [False, True, True, True, True, True],
        title="Text metrics (no judge; mean per answer)",
        note="words: per answer; history: share of an answer's 4-grams already in the model's earlier "
        "answers of the conversation (copying its history); prompt: share taken from the turn's prompt; "
        "answers: those with metrics (`storybench-eval metrics --all` computes the missing ones)",
    )


def facts(board: Leaderboard) -> list[tuple[str, str]]:
    stats = board.pair_stats
    flips = (
        f"{stats.position_flips} of {stats.pairs} pairs ({stats.flip_rate:.0%})"
        if stats.flip_rate is not None
        else _NONE
    )
    return [
        ("judge", board.judge),
        ("rubric version", board.rubric_version),
        (
            "prompt set",
            f"{board.prompt_set} ({len(board.sequences)} sequences: {', '.join(board.sequences)})",
        ),
        ("position flips", flips),
        (
            "left out",
            f"{stats.one_order_only} pair(s) with one order judged, {stats.failed} failed comparison(s)",
        ),
        ("judge cost", _judge_cost(board)),
    ]


def _judge_cost(board: Leaderboard) -> str:
    """The judge's bill for this table: every judgement and comparison behind it."""
    cost = board.judge_cost
    if cost.cost_usd is None:
        return f"{_NONE} (no judge prices set)" if cost.items else _NONE
    text = f"${cost.cost_usd:.4f}"
    if cost.priced < cost.items:
        text += f" ({cost.priced} of {cost.items} judgements and comparisons priced)"
    return text


# ---- charts -------------------------------------------------------------------------------
