"""The judge-free text metrics on fixed texts, each expected value worked out by hand."""

from __future__ import annotations

import pytest

from evaluator.records import TextMetrics
from evaluator.text_metrics import METRICS_VERSION, distinct, overlap, text_metrics, words

EARLIER = "The keeper climbs the stairs at dusk."
# 12 words, 9 four-grams; 4 of them (positions 1, 2, 8, 9: "the keeper climbs the" and "keeper
# climbs the stairs", twice each) occur in EARLIER.
COPYING = "The keeper climbs the stairs again, then the keeper climbs the stairs."


def test_words_are_lowercased_unicode_words_with_inner_apostrophes() -> None:
    text = "Don\u2019t STOP\u2014the keeper's lamp! 'Quoted' 42 na\u00efve_x, \u706f\u53f0."
    assert words(text) == [
        "don't",
        "stop",
        "the",
        "keeper's",
        "lamp",
        "quoted",
        "42",
        "na\u00efve_x",
        "\u706f\u53f0",
    ]
    assert words("  ...  -- !") == []
    assert words("It's") == words("IT\u2019S") == ["it's"]


def test_distinct_n_is_distinct_ngrams_over_ngrams() -> None:
    tokens = words("the cat saw the cat")
    assert distinct(tokens, 1) == 0.6  # {the, cat, saw} / 5
    assert distinct(tokens, 2) == 0.75  # (the cat) twice, (cat saw), (saw the): 3 / 4
    assert distinct(words("a a b"), 1) == 0.6667  # 2 / 3, rounded to 4 places
    assert distinct(["a"], 2) is None and distinct([], 1) is None


def test_history_overlap_counts_each_copied_fourgram_occurrence() -> None:
    m = text_metrics(COPYING, "Go on.", [EARLIER])
    assert m.words == 12
    assert m.history_overlap == 0.4444  # 4 of 9 occurrences (as a set it would be 2 of 7)
    assert m.distinct_1 == 0.5  # the, keeper, climbs, stairs, again, then: 6 distinct words of 12
    assert m.distinct_2 == 0.6364  # 11 pairs; the keeper, keeper climbs, climbs the, the stairs twice: 7 / 11
    assert m.prompt_overlap == 0.0  # the prompt has fewer than four words: nothing to find


def test_history_is_the_union_of_earlier_answers_but_no_fourgram_spans_two_of_them() -> None:
    assert overlap(words("a b c d"), ["a b", "c d"]) == 0.0
    assert overlap(words("a b c d"), ["x y", "A, B; C. D!"]) == 1.0  # case and punctuation ignored
    assert (
        text_metrics("one two three four five", "", ["x", "two three four five six"]).history_overlap == 0.5
    )


def test_prompt_overlap_is_the_share_repeated_from_this_turns_prompt() -> None:
    # let me retell the | me retell the story | retell the story as | the story as a | story as a ballad
    m = text_metrics("Let me retell the story as a ballad.", "Retell the STORY as a ballad, please.", [])
    assert m.prompt_overlap == 0.6  # the last three of five
    assert m.history_overlap is None  # the first turn has no history


def test_empty_and_short_answers_have_no_ratio_they_cannot_have() -> None:
    empty = text_metrics("", "Write.", ["Earlier answer with many words in it."])
    assert empty == TextMetrics(
        version=METRICS_VERSION,
        words=0,
        distinct_1=None,
        distinct_2=None,
        history_overlap=None,
        prompt_overlap=None,
    )
    short = text_metrics("Yes, yes.", "Yes, yes, yes, yes.", ["Yes, yes, yes, yes."])
    assert (short.words, short.distinct_1, short.distinct_2) == (2, 0.5, 1.0)
    assert short.history_overlap is None and short.prompt_overlap is None  # below four words
    # Four words and an earlier answer without any four-gram: measured, and nothing is copied.
    assert text_metrics("a b c d", "", [""]).history_overlap == 0.0


def test_the_figures_are_deterministic_and_versioned() -> None:
    first = text_metrics(COPYING, "Climb the stairs again.", [EARLIER, "Another answer."])
    again = text_metrics(COPYING, "Climb the stairs again.", [EARLIER, "Another answer."])
    assert first == again and first.version == METRICS_VERSION
    assert TextMetrics.model_validate(first.model_dump()) == first  # round-trips as stored


@pytest.mark.parametrize("answer", ["word " * 3, "word " * 400, "\u00e9t\u00e9 " * 5])
def test_ratios_stay_between_zero_and_one(answer: str) -> None:
    m = text_metrics(answer, answer, [answer])
    for value in (m.distinct_1, m.distinct_2, m.history_overlap, m.prompt_overlap):
        assert value is None or 0.0 <= value <= 1.0
