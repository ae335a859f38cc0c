"""What a leaderboard is computed from, read from the whole store, and the checks that keep
one table comparable.

One table = one judge x one rubric version x one prompt set. Scores from two judges or two
rubric versions are not on one scale, and a sequence whose prompts changed is a different
test, so a mix is refused with a message that names it and the option that selects one part.
The conversations are the ones the pairwise comparison uses (evaluator/compare/conversations.py:
each model's latest configuration and generation, complete conversations only), so the rubric
means and the ratings describe the same answers; judgements of superseded conversations are
left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from evaluator.compare.conversations import Conversation, Selection, build_selection, select_conversations
from evaluator.records import EvaluationRecord, PairwiseRecord, RunRecord, stable_hash
from evaluator.store import Store

__all__ = ["Inputs", "LeaderboardError", "gather", "prompt_set_id"]

NEXT_STEPS = (
    "score answers with `storybench-eval judge --latest --judge J` (rubric means) and compare "
    "models with `storybench-eval compare --models A,B --judge J` (pairwise ratings)"
)


class LeaderboardError(Exception):
    """Nothing to show, or a mix that cannot share one table; the message says what to run."""


@dataclass
class Inputs:
    """Everything one leaderboard table is computed from."""

    judge: str
    rubric_version: str
    models: list[str]
    conversations: dict[str, list[Conversation]]  # model -> its conversations
    evaluations: list[EvaluationRecord]  # of those conversations, this judge and rubric version
    pairwise: list[PairwiseRecord]  # between those conversations, this judge and rubric version
    sequences: dict[str, str]  # sequence name -> content hash
    notes: list[str] = field(default_factory=list)
    self_judged: int = 0  # judgements where the judge is the judged model (or one of the pair)
    self_judged_left_out: int = 0  # of those, left out (without --allow-self-judge)

    @property
    def prompt_set(self) -> str:
        return prompt_set_id(self.sequences)


def prompt_set_id(sequences: dict[str, str]) -> str:
    """A short hash of the sequences' names and contents: two tables with the same id were
    computed on the same prompts."""
    return stable_hash(sorted(sequences.items()))[:12]


def _names(values: list[str] | None) -> set[str] | None:
    return set(values) if values else None


def is_self_judged(details: dict[str, object], conv: Conversation) -> bool:
    """The judge is the judged model: the same model id, or the same weights (SHA-256 of the
    model file, as our server reports it for both the judge and the evaluated model)."""
    judge_id, judge_sha = details.get("judge_model_id"), details.get("judge_model_sha256")
    same_id = isinstance(judge_id, str) and bool(judge_id) and judge_id == conv.model_id
    same_weights = isinstance(judge_sha, str) and bool(judge_sha) and judge_sha == conv.model_sha256
    return same_id or same_weights


def _paged_selection(store: Store, models: list[str] | None, sequences: set[str] | None) -> Selection:
    """`select_conversations` over `Store.all_responses` (the selection does not depend on the
    order the turns are read in)."""
    runs: dict[str, RunRecord | None] = {}

    def run_of(run_id: str) -> RunRecord | None:
        if run_id not in runs:
            runs[run_id] = store.get_run(run_id)
        return runs[run_id]

    records = (
        r
        for r in store.all_responses()
        if (models is None or r.model in models) and (sequences is None or r.sequence in sequences)
    )
    return build_selection(records, run_of, models)


def gather(
    store: Store,
    *,
    judge: str | None = None,
    rubric_version: str | None = None,
    models: list[str] | None = None,
    sequences: list[str] | None = None,
    allow_self_judge: bool = False,
    paged: bool = False,
) -> Inputs:
    """Read and check; LeaderboardError when nothing is judged or the data mixes judges,
    rubric versions or sequence contents. `paged` reads every turn, judgement and comparison
    in pages (`Store.all_responses` and the like: the viewer, so the database answers its pages
    meanwhile) and filters here."""
    if paged:
        selection = _paged_selection(store, models, _names(sequences))
        stored_evaluations: Iterable[EvaluationRecord] = store.all_evaluations()
        stored_pairwise: Iterable[PairwiseRecord] = store.all_pairwise()
    else:
        selection = select_conversations(store, models, _names(sequences), with_text=False)
        stored_evaluations = store.judge_evaluations(judge, rubric_version)
        stored_pairwise = store.pairwise(judge, rubric_version, with_text=False)
    convs = {c.id: c for c in selection.all()}
    turn_owner = {turn_id: c.id for c in convs.values() for turn_id in c.turn_ids}

    evaluations = [
        e
        for e in stored_evaluations
        if (e.target_id in convs or e.target_id in turn_owner)
        and (judge is None or e.judge_model == judge)
        and (rubric_version is None or e.rubric_version == rubric_version)
    ]
    pairwise = [
        p
        for p in stored_pairwise
        if p.first_conversation in convs
        and p.second_conversation in convs
        and (judge is None or p.judge_model == judge)
        and (rubric_version is None or p.rubric_version == rubric_version)
    ]
    combos: Counter[tuple[str, str]] = Counter()
    for e in evaluations:
        combos[(e.judge_model, e.rubric_version)] += 1
    for p in pairwise:
        combos[(p.judge_model, p.rubric_version)] += 1
    if not combos:
        where = []
        if judge:
            where.append(f"judge '{judge}'")
        if rubric_version:
            where.append(f"rubric version '{rubric_version}'")
        scope = f" by {' and '.join(where)}" if where else ""
        if not convs:
            raise LeaderboardError(
                "no complete conversations stored"
                + (f" for {', '.join(models)}" if models else "")
                + "; play some with `storybench-eval run`, then "
                + NEXT_STEPS
            )
        raise LeaderboardError(f"no judgements{scope} of the stored conversations yet; {NEXT_STEPS}")
    if len(combos) > 1:
        lines = [
            "the store holds judgements from more than one judge or rubric version; one table "
            "never mixes them (their scores are not on one scale):"
        ]
        for (j, v), n in sorted(combos.items()):
            lines.append(f"  --judge {j} --rubric-version {v}: {n} judgement(s)")
        lines.append("choose one with --judge and/or --rubric-version")
        raise LeaderboardError("\n".join(lines))
    ((chosen_judge, chosen_version),) = combos
    self_evals = [
        e for e in evaluations if is_self_judged(e.details, convs[turn_owner.get(e.target_id, e.target_id)])
    ]
    self_pairs = [
        p
        for p in pairwise
        if is_self_judged(p.details, convs[p.first_conversation])
        or is_self_judged(p.details, convs[p.second_conversation])
    ]
    self_judged = len(self_evals) + len(self_pairs)
    if self_judged and not allow_self_judge:
        left_out_ids = {e.id for e in self_evals} | {p.id for p in self_pairs}
        evaluations = [e for e in evaluations if e.id not in left_out_ids]
        pairwise = [p for p in pairwise if p.id not in left_out_ids]
    judged_convs: set[str] = {p.first_conversation for p in pairwise} | {
        p.second_conversation for p in pairwise
    }
    judged_convs |= {turn_owner.get(e.target_id, e.target_id) for e in evaluations}
    shown = models or sorted({convs[c].model for c in judged_convs})
    conversations = {m: [c for c in selection.of(m)] for m in shown}

    contents: dict[str, dict[str, set[str]]] = {}
    for m, cs in conversations.items():
        for c in cs:
            contents.setdefault(c.sequence, {}).setdefault(c.sequence_hash, set()).add(m)
    mixed = {name: hashes for name, hashes in contents.items() if len(hashes) > 1}
    if mixed:
        lines = ["the models played different contents of the same sequence; one table never mixes them:"]
        for name, hashes in sorted(mixed.items()):
            for h, who in sorted(hashes.items()):
                lines.append(f"  sequence '{name}' content {h[:12]}: {', '.join(sorted(who))}")
        lines.append(
            "re-run the models on the current prompts (`storybench-eval run`), or leave the sequence "
            "out with --sequences, or pick models that share one content with --models"
        )
        raise LeaderboardError("\n".join(lines))
    notes = []
    if self_judged:
        verb = "kept (--allow-self-judge)" if allow_self_judge else "left out (--allow-self-judge keeps them)"
        notes.append(
            f"{self_judged} judgement(s) by {chosen_judge} judge its own model (same model id or "
            f"weights): {verb}"
        )
        if not evaluations and not pairwise:
            raise LeaderboardError(
                f"every judgement by {chosen_judge} judges its own model (the judge is the evaluated model, "
                "by model id or weights); a model grading itself is biased, so these are left out. "
                "Judge with another model, or pass --allow-self-judge to show them, flagged"
            )
    for m in shown:
        if selection.incomplete[m]:
            notes.append(f"{m}: {selection.incomplete[m]} incomplete conversation(s) left out")
    return Inputs(
        judge=chosen_judge,
        rubric_version=chosen_version,
        models=list(shown),
        conversations=conversations,
        evaluations=evaluations,
        pairwise=[p for p in pairwise if p.first_model in shown and p.second_model in shown],
        sequences={name: next(iter(h)) for name, h in sorted(contents.items())},
        notes=notes,
        self_judged=self_judged,
        self_judged_left_out=0 if allow_self_judge else self_judged,
    )
