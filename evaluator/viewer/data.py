"""What the viewer's pages show, read from the store: typed values, no markup.

Every read goes through `Store` (evaluator/store/store.py) and is bounded by an index: runs by
`started_at`, turns by experiment key (a conversation id starts with its experiment key), a
turn by its `_id`, judgements by target id. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluator.records import EvaluationRecord, PairwiseRecord, ResponseRecord, RunRecord
from evaluator.report.gather import system_prompts, turns_per_sequence
from evaluator.report.present import judgement_line
from evaluator.store.liveness import RunState, run_state
from evaluator.store.store import RunTally, Store

RUNS_SHOWN = 200
SEARCH_LIMIT = 50
SNIPPET = 80  # characters shown on each side of a search match


@dataclass(frozen=True)
class RunRow:
    run: RunRecord
    state: RunState
    tally: RunTally

    @property
    def done(self) -> int:
        return self.tally.total_written + self.tally.reused


def runs_overview(store: Store, limit: int = RUNS_SHOWN) -> list[RunRow]:
    """Newest runs first, each with its derived status and the turns stored for its plan."""
    runs = store.list_runs(limit=limit)
    tallies = store.run_tallies(runs)
    return [RunRow(r, run_state(r), tallies[r.id]) for r in runs]


@dataclass
class ConversationSummary:
    id: str
    model: str
    sequence: str
    run_index: int
    outcomes: dict[str, int] = field(default_factory=dict)
    first_turn: str | None = None

    @property
    def turns(self) -> int:
        return sum(self.outcomes.values())


def run_conversations(store: Store, run: RunRecord) -> list[ConversationSummary]:
    """The conversations of a run's plan as stored now (turns read without their texts)."""
    out: dict[str, ConversationSummary] = {}
    for key in run.experiment_keys:
        for turn in store.iter_responses(key, with_text=False):
            conv = out.get(turn.conversation_id)
            if conv is None:
                conv = out[turn.conversation_id] = ConversationSummary(
                    turn.conversation_id, turn.model, turn.sequence, turn.run_index, first_turn=turn.id
                )
            conv.outcomes[turn.outcome] = conv.outcomes.get(turn.outcome, 0) + 1
    return sorted(out.values(), key=lambda c: (c.sequence, c.run_index, c.model))


def experiment_of(conversation_id: str) -> str:
    """A conversation id (and a turn id) starts with its experiment key, which has no colon."""
    return conversation_id.split(":", 1)[0]


@dataclass
class Judged:
    """Judgements shown as lines, each flagged when the judge judged itself."""

    lines: list[str]

    @classmethod
    def of(cls, judgements: list[EvaluationRecord], model_id: str | None) -> Judged:
        return cls([judgement_line(j, model_id) for j in judgements])


@dataclass
class ConversationView:
    id: str
    turns: list[ResponseRecord]
    run: RunRecord | None
    system: str | None
    planned: int | None
    judgements: dict[str, list[EvaluationRecord]]  # target id -> judgements (turns and the whole)
    comparisons: list[PairwiseRecord]
    siblings: list[str]  # other conversations of the same run, sequence and run index

    @property
    def model(self) -> str:
        return self.turns[0].model if self.turns else ""

    def judged(self, target_id: str) -> Judged:
        model_id = self.turns[0].model_id if self.turns else None
        return Judged.of(self.judgements.get(target_id, []), model_id)


# Turns looked up by id beyond the planned count, for conversations whose run is not stored.
UNPLANNED_TURNS = 100


def conversation_turns(store: Store, conversation_id: str) -> tuple[list[ResponseRecord], RunRecord | None]:
    """A conversation's stored turns in order, by their deterministic ids (`<conversation>:t<k>`;
    indexed on every backend), and the run that wrote its first turn."""
    first = store.get_response(f"{conversation_id}:t0")
    if first is None:  # no turn 0 stored: the slow path over the whole experiment
        turns = [
            t
            for t in store.iter_responses(experiment_of(conversation_id))
            if t.conversation_id == conversation_id
        ]
        return turns, (store.get_run(turns[0].run_id) if turns else None)
    run = store.get_run(first.run_id)
    planned = turns_per_sequence(run).get(first.sequence) if run else None
    ids = [f"{conversation_id}:t{k}" for k in range(1, planned or UNPLANNED_TURNS)]
    return [first, *store.responses_by_ids(ids)], run


def conversation(
    store: Store, conversation_id: str, *, with_comparisons: bool = True
) -> ConversationView | None:
    """One conversation, its turns in order with their judgements; None when nothing is stored."""
    turns, run = conversation_turns(store, conversation_id)
    if not turns:
        return None
    system = system_prompts(run).get(turns[0].sequence) if run else None
    planned = turns_per_sequence(run).get(turns[0].sequence) if run else None
    judgements: dict[str, list[EvaluationRecord]] = {}
    for j in store.evaluations([conversation_id, *(t.id for t in turns)]):
        judgements.setdefault(j.target_id, []).append(j)
    comparisons = store.pairwise_of([conversation_id]) if with_comparisons else []
    siblings = []
    if run is not None:
        first = turns[0]
        for entry in run.experiments:
            if entry.sequence == first.sequence and entry.model != first.model:
                siblings.append(f"{entry.experiment_key}:{entry.model}:{entry.sequence}:r{first.run_index}")
    return ConversationView(conversation_id, turns, run, system, planned, judgements, comparisons, siblings)


@dataclass
class TurnView:
    turn: ResponseRecord
    messages: list[tuple[str, str]]  # (role, content) as sent
    judged: Judged


def turn_view(store: Store, response_id: str) -> TurnView | None:
    """One turn with the messages it was sent, rebuilt like the runner builds them: the system
    prompt, every earlier user turn and the model's own earlier (cleaned) answers, this prompt."""
    turn = store.get_response(response_id)
    if turn is None:
        return None
    run = store.get_run(turn.run_id)
    messages: list[tuple[str, str]] = []
    system = system_prompts(run).get(turn.sequence) if run else None
    if system:
        messages.append(("system", system))
    earlier_ids = [f"{turn.conversation_id}:t{k}" for k in range(turn.turn_index)]
    for earlier in store.responses_by_ids(earlier_ids):
        messages += [("user", earlier.prompt), ("assistant", earlier.response_text)]
    messages.append(("user", turn.prompt))
    return TurnView(turn, messages, Judged.of(store.evaluations([turn.id]), turn.model_id))


@dataclass
class SideBySide:
    a: ConversationView
    b: ConversationView
    rows: list[tuple[ResponseRecord | None, ResponseRecord | None]]
    verdicts: list[PairwiseRecord]


def side_by_side(store: Store, a_id: str, b_id: str) -> SideBySide | None:
    """Two conversations turn by turn, with the stored verdicts that compared exactly them."""
    a = conversation(store, a_id, with_comparisons=False)
    b = conversation(store, b_id, with_comparisons=False)
    if a is None or b is None:
        return None
    by_a = {t.turn_index: t for t in a.turns}
    by_b = {t.turn_index: t for t in b.turns}
    rows = [(by_a.get(i), by_b.get(i)) for i in sorted(by_a.keys() | by_b.keys())]
    pair = {a_id, b_id}
    verdicts = [
        p for p in store.pairwise_of([a_id, b_id]) if {p.first_conversation, p.second_conversation} == pair
    ]
    return SideBySide(a, b, rows, verdicts)


@dataclass(frozen=True)
class Hit:
    turn: ResponseRecord
    before: str
    match: str
    after: str


def search(store: Store, text: str, limit: int = SEARCH_LIMIT) -> list[Hit]:
    """Answers containing `text` (case-insensitive) by a scan of the store (`$regex`): what the
    viewer's search index (search_index.py) must agree with; the tests compare the two."""
    return hits(store.search_answers(text, limit), text)


def hits(turns: list[ResponseRecord], text: str) -> list[Hit]:
    """Each turn's answer around its first match of `text` (case-insensitive)."""
    out = []
    for turn in turns:
        answer = turn.response_text
        at = answer.lower().find(text.lower())
        if at < 0:  # the server folded case differently; show the start
            out.append(Hit(turn, "", "", answer[: 2 * SNIPPET]))
            continue
        end = at + len(text)
        out.append(Hit(turn, answer[max(0, at - SNIPPET) : at], answer[at:end], answer[end : end + SNIPPET]))
    return out


def runs_overview_one(store: Store, run: RunRecord) -> RunRow:
    """The runs page's row of one run."""
    return RunRow(run, run_state(run), store.run_tallies([run])[run.id])
