"""Judge-free figures of one answer: length, lexical variety, and how much of it is copied.

Deterministic functions of stored text, so a turn stored before they existed gets exactly the
figures a new turn gets (`storybench-eval metrics` backfills them) and two models compare
without any judge. The figures, as `evaluator.records.TextMetrics` stores them:

- Tokenisation (the one definition every figure uses): the text is lowercased, the
  typographic apostrophe (U+2019) becomes `'`, and a word is a run of Unicode word characters
  (`\\w`: letters, digits, underscore, any script) with apostrophes kept inside it
  (`don't`, `keeper's` are one word; a leading or trailing quote is not part of the word).
  Punctuation and whitespace only separate words. No stemming, no stop words.
- `words`: the number of words.
- `distinct_1` / `distinct_2`: distinct words / words and distinct adjacent word pairs / word
  pairs (None when the answer has fewer than 1 / 2 words). Low means repetitive.
- `history_overlap`: the share of the answer's word 4-grams, counted per position (a 4-gram the
  answer repeats counts each time), that occur anywhere in the conversation's earlier answers
  (each earlier answer's 4-grams, never spanning two answers). None on the first turn (no
  earlier answers) or below four words. High means the model copies its own history, the
  failure a long creative conversation drifts into.
- `prompt_overlap`: the same share against this turn's user prompt (None below four words).

Values are rounded to 4 decimals so a stored figure is stable across platforms and re-runs.
`<think>` blocks are already removed from the answer (`ResponseRecord.response_text`).
Bump METRICS_VERSION whenever any definition here changes: the backfill recomputes every turn
stored with an older version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from evaluator.records import TextMetrics

METRICS_VERSION = 1
OVERLAP_N = 4  # word n-gram length of the overlap figures
PLACES = 4  # decimals kept

_WORD = re.compile(r"\w+(?:'\w+)*")


def words(text: str) -> list[str]:
    """The text's words under the module's tokenisation."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Adjacent n-grams in order (empty when there are fewer than n tokens)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _rounded(value: float) -> float:
    return round(value, PLACES)


def distinct(tokens: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / n-grams; None when there is no n-gram."""
    grams = ngrams(tokens, n)
    return _rounded(len(set(grams)) / len(grams)) if grams else None


def overlap(tokens: Sequence[str], sources: Iterable[str], n: int = OVERLAP_N) -> float | None:
    """Share of the answer's n-gram occurrences found among the sources' n-grams (each source
    tokenised on its own); None when the answer has no n-gram."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    seen: set[tuple[str, ...]] = set()
    for source in sources:
        seen.update(ngrams(words(source), n))
    return _rounded(sum(g in seen for g in grams) / len(grams))


def text_metrics(answer: str, prompt: str, earlier_answers: list[str]) -> TextMetrics:
    """The figures of `answer`, given this turn's prompt and the conversation's earlier answers
    (oldest first; empty on the first turn)."""
    tokens = words(answer)
    return TextMetrics(
        version=METRICS_VERSION,
        words=len(tokens),
        distinct_1=distinct(tokens, 1),
        distinct_2=distinct(tokens, 2),
        history_overlap=overlap(tokens, earlier_answers) if earlier_answers else None,
        prompt_overlap=overlap(tokens, [prompt]),
    )
