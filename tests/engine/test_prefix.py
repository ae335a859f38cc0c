"""A conversation keeps its cache when its previous answer comes back re-tokenized
(`server/engine/prefix.py`): the prompt is compared with the cache as text past the first
differing token, and the cache's tokens are kept where both spell the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.engine.prefix import Match, choose_slot, common_prefix, same_text, text_match, token_match
from server.engine.scheduler import Engine, Slot
from tests.engine.conftest import engine_on
from tests.engine.test_backend_sampling import Job, greedy

BOS, END = 1, 2  # control tokens
VOCAB: dict[int, bytes] = {
    10: b" a",
    11: b"day",
    12: b" ad",
    13: b"ay",
    14: b" day",
    15: b" the",
    16: b" dragon",
    17: b" d",
    20: b" once",
    21: b" aday",
    22: b"ax",
    30: b"",  # spells nothing: matches only as itself
    40: b"<|im_end|>",  # the marker's text, as ordinary tokens would spell it
    **{t: f" w{t}".encode() for t in range(100, 1000)},
}


def spell(token: int) -> bytes | None:
    return VOCAB.get(token) or None


@pytest.mark.parametrize(
    ("cache", "prompt", "expected"),
    [
        # " a" + "day" against " ad" + "ay": the same text, the cache is kept whole
        ([BOS, 20, 10, 11, 15], [BOS, 20, 12, 13, 15, 16], Match(5, [BOS, 20, 10, 11, 15, 16])),
        # ...through the template's end marker, which matches as a token
        ([BOS, 20, 10, 11, END], [BOS, 20, 12, 13, END, 15], Match(5, [BOS, 20, 10, 11, END, 15])),
        # another text (" a" + "day" against " a" + " day"): only the shared tokens
        ([BOS, 20, 10, 11, 15], [BOS, 20, 10, 14], Match(3, [BOS, 20, 10, 14])),
        # other text between two shared boundaries (" adax" against " aday")
        ([BOS, 20, 10, 11, 15], [BOS, 20, 12, 22, 15], Match(2, [BOS, 20, 12, 22, 15])),
        # a stop string the answer generated but the API left out: kept up to where texts part
        ([BOS, 20, 10, 11, 16, 17], [BOS, 20, 12, 13, 16, END, 15], Match(5, [BOS, 20, 10, 11, 16, END, 15])),
        # the marker's text spelled by ordinary tokens is not the marker
        ([BOS, 20, 12, 13, 40], [BOS, 20, 10, 11, END], Match(4, [BOS, 20, 12, 13, END])),
        # a token that spells nothing is not skipped
        ([BOS, 20, 10, 30, 11], [BOS, 20, 12, 13], Match(2, [BOS, 20, 12, 13])),
        # the whole prompt in the cache, spelled otherwise (a retried turn)
        ([BOS, 20, 10, 11, 15, 16], [BOS, 20, 12, 13, 15], Match(5, [BOS, 20, 10, 11, 15])),
    ],
)
def test_text_match(cache: list[int], prompt: list[int], expected: Match) -> None:
    assert text_match(spell, limit=100)(cache, prompt) == expected


PIECES: dict[bytes, int] = {}


def tokens_of(text: bytes, cuts: set[int]) -> list[int]:
    """`text` cut into tokens at `cuts`, each distinct piece its own token id (from 2000)."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    return [PIECES.setdefault(p, 2000 + len(PIECES)) for p in pieces]


def spell_any(token: int) -> bytes | None:
    return next((p for p, t in PIECES.items() if t == token), None) or spell(token)


def spelled(tokens: list[int]) -> bytes:
    return b"".join(spell_any(t) or b"?" for t in tokens)


@given(
    text=st.text(alphabet="ab ", min_size=1, max_size=30).map(str.encode),
    extra=st.text(alphabet="ab ", max_size=5).map(str.encode),
    end=st.integers(0, 30),
    cache_cuts=st.sets(st.integers(1, 35), max_size=12),
    prompt_cuts=st.sets(st.integers(1, 35), max_size=12),
    typo=st.none() | st.integers(0, 29),
)
def test_text_match_keeps_the_text_and_every_shared_boundary(
    text: bytes, extra: bytes, end: int, cache_cuts: set[int], prompt_cuts: set[int], typo: int | None
) -> None:
    """Any two spellings of a story: the cache spells its first `end` bytes (or with a typo),
    the prompt all of it and more. The prompt to evaluate spells the prompt's text, and without
    a typo the cache is kept whole whenever the prompt's spelling also has a boundary where the
    cache ends."""
    end = min(end, len(text))
    cached = bytearray(text[:end])
    if typo is not None and typo < end:
        cached[typo] = ord("b") if cached[typo] == ord("a") else ord("a")
    cache = tokens_of(bytes(cached), cache_cuts)
    prompt = tokens_of(text + extra, prompt_cuts | {len(text)})
    found = text_match(spell_any, limit=1000)(cache, prompt)
    assert spelled(found.prompt) == spelled(prompt)
    assert found.prompt[: found.kept] == cache[: found.kept]
    assert found.kept >= common_prefix(cache, prompt)
    if (typo is None or typo >= end) and end in prompt_cuts | {0, len(text)} and end < len(text + extra):
        assert found.kept == len(cache)


def test_same_text_resynchronises_at_every_respelled_word() -> None:
    words = list(range(100, 400))
    cache = [BOS] + words[:100] + [10, 11] + words[100:200] + [10, 11] + words[200:]
    prompt = [BOS] + words[:100] + [12, 13] + words[100:200] + [21] + words[200:] + [500, 501]
    assert same_text(cache, prompt, 101, spell) == (len(cache), len(cache) - 1)


def test_a_spelling_with_more_tokens_must_leave_room_for_the_answer() -> None:
    cache, prompt = [BOS, 20, 10, 11], [BOS, 20, 21, 15]  # " a" + "day" is one token longer
    assert text_match(spell, limit=5)(cache, prompt) == Match(4, [BOS, 20, 10, 11, 15])
    assert text_match(spell, limit=4)(cache, prompt) == Match(2, prompt)


def test_a_long_story_keeps_its_slot_when_an_early_answer_was_respelled() -> None:
    """Every turn re-renders the whole history, so an answer respelled at turn 1 makes every
    later prompt part from the cache there: token for token, a 12-turn story would then look
    like a new conversation (it shares less than half of the prompt) and lose its whole cache."""
    words = list(range(100, 900))
    cache = [BOS] + words[:50] + [10, 11] + words[50:600]
    prompt = [BOS] + words[:50] + [12, 13] + words[50:]
    mine = Slot(seq=0, cache=cache, prompt_len=400, last_used=0.0)
    empty = Slot(seq=1)
    assert choose_slot([empty, mine], prompt, token_match) == (empty, Match(0, prompt))
    slot, found = choose_slot([empty, mine], prompt, text_match(spell, limit=2000))
    assert (slot, found.kept) == (mine, len(cache))
    assert found.prompt == cache + words[600:]


@pytest.mark.integration
def test_the_engine_keeps_the_tokens_it_was_given(engine: Engine, tmp_path: Path) -> None:
    """The bundled model's tokenizer spells " aday" as " ad" + "ay"; a first request holds
    " a" + "day" (as a generated answer can). The next request, the same text tokenized afresh
    plus more, keeps the whole cache and starts with the first request's tokens; with
    `"retokenize_answers": true` it keeps only what precedes " a"."""
    model = engine.model
    head = model.completion_prompt("Once upon a time, one")
    first = head + [253, 1222] + model.tokenize(b" the dragon said", add_bos=False, special=False)
    assert model.detokenize(first[len(head) :]) == b" aday the dragon said"
    answer = Job(engine, first, 8, greedy(engine)).wait()
    text = "Once upon a time, one aday the dragon said" + answer.text + " Then they"
    assert model.completion_prompt(text)[len(head) : len(head) + 2] == [493, 341]  # " ad" + "ay"
    stats = engine.stats
    before = stats.prompts_respelled, stats.tokens_respelled
    second = Job(engine, text, 4, greedy(engine)).wait()
    assert second.gen.prompt[: len(first)] == first
    assert second.gen.cache_n == len(first) + len(answer.gen.tokens) - 1  # all but the unfed last token
    assert model.detokenize(second.gen.prompt) == model.detokenize(model.completion_prompt(text))
    assert stats.prompts_respelled == before[0] + 1
    assert stats.tokens_respelled == before[1] + second.gen.cache_n - len(head)

    with engine_on(tmp_path, n_ctx=512, n_parallel=2, retokenize_answers=True) as afresh:
        Job(afresh, first, 8, greedy(afresh)).wait()
        again = Job(afresh, text, 4, greedy(afresh)).wait()
        assert again.gen.prompt == model.completion_prompt(text)
        assert again.gen.cache_n <= len(head)
        assert afresh.stats.prompts_respelled == 0
