"""Which slot serves a prompt, and how much of the slot's cache it keeps.

A slot keeps the tokens it evaluated after its request ends, so the next turn of the same
conversation evaluates only what follows. The API carries answers as text, though, and the next
turn's prompt is that text tokenized afresh: a model may generate a token sequence the tokenizer
would not give for its text (SmolLM2 wrote " a" + "day" where the tokenizer says " ad" + "ay"),
and from there the prompt's tokens part from the cache. Everything after, most of the answer and
the new turn, would be evaluated again (the bundled model: 1 of 16 conversations lost 57% of its
history at turn 2).

`text_match` therefore compares the cache and the prompt as text past the first differing token:
where both spell the same bytes up to a boundary of both, the cache's tokens are kept and the
prompt's own tokens follow from there. The model then sees the tokens it produced itself, as it
did while generating them. Control tokens (the chat template's markers) and tokens that spell
nothing match only as themselves, so a template's structure is never re-spelled.

Once kept, the generated spelling stays in the cache, and every later turn re-renders the whole
history as the tokenizer spells it: each of them parts from the cache at that word again. So the
text match also decides the slot (`choose_slot`): token for token, a long story would look like
a new conversation there, sharing less than half of the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar

import llama_cpp

# A slot whose cache shares at least this share of a prompt may serve it even though the
# request does not simply continue its cache (a retried or edited turn).
REUSE_FRACTION = 0.5


class Match(NamedTuple):
    kept: int  # the slot's cached tokens the request keeps
    prompt: list[int]  # the request's prompt, or the same text starting with the cache's tokens


Matcher = Callable[[list[int], list[int]], Match]
Spell = Callable[[int], bytes | None]


class CachedSlot(Protocol):
    cache: list[int]  # tokens whose K/V the sequence holds
    prompt_len: int  # the last request's prompt: cache[:prompt_len]; its answer follows
    last_used: float


S = TypeVar("S", bound=CachedSlot)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix. Slices compared in C, in doubling steps from the
    start, then halving: the work is proportional to the prefix, not to the lists (an admission
    compares the prompt with every idle slot's cache, most of which share little of it)."""
    n = min(len(a), len(b))
    lo, step = 0, 16
    while True:  # a[:lo] == b[:lo]
        if lo == n:
            return n
        hi = min(n, lo + step)
        if a[lo:hi] != b[lo:hi]:
            break
        lo, step = hi, step * 2
    while hi - lo > 1:  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def token_match(cache: list[int], prompt: list[int]) -> Match:
    """The cache's tokens the prompt starts with, token for token."""
    return Match(common_prefix(cache, prompt), prompt)


class Spelling:
    """Each token's bytes (`pieces`), None for control tokens and tokens that spell nothing:
    those match only as themselves. Cached per token id."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, pieces: Callable[[int], bytes]) -> None:
        self._vocab = vocab
        self._pieces = pieces
        self._cache: dict[int, bytes | None] = {}

    def __call__(self, token: int) -> bytes | None:
        try:
            return self._cache[token]
        except KeyError:
            bare = self._pieces(token)
            piece = bare if bare and not llama_cpp.llama_vocab_is_control(self._vocab, token) else None
            self._cache[token] = piece
            return piece


def same_text(a: list[int], b: list[int], start: int, spell: Spell) -> tuple[int, int]:
    """The longest `a[:i]` and `b[:j]` (i, j >= start) that spell the same bytes, given that
    `a[:start] == b[:start]`. Runs of equal tokens are skipped in C; the walk in Python is
    bounded by the tokens that differ."""
    i = j = start
    best = (i, j)
    ahead_a = ahead_b = b""  # bytes one side has read beyond what the other side matched
    while True:
        if not ahead_a and not ahead_b:  # a boundary of both, same text so far
            if i < len(a) and j < len(b) and a[i] == b[j]:
                run = common_prefix(a[i:], b[j:])
                i, j = i + run, j + run
            best = (i, j)
            if i == len(a) or j == len(b):
                return best
            x, y = spell(a[i]), spell(b[j])
            if x is None or y is None:
                return best
            i, j, ahead_a, ahead_b = i + 1, j + 1, x, y
        elif not ahead_a:
            x = spell(a[i]) if i < len(a) else None
            if x is None:
                return best
            i, ahead_a = i + 1, x
        else:
            y = spell(b[j]) if j < len(b) else None
            if y is None:
                return best
            j, ahead_b = j + 1, y
        k = min(len(ahead_a), len(ahead_b))
        if ahead_a[:k] != ahead_b[:k]:
            return best
        ahead_a, ahead_b = ahead_a[k:], ahead_b[k:]


def text_match(spell: Spell, limit: int) -> Matcher:
    """Keep the cache past the first differing token while it spells the prompt's text; the
    spliced prompt must stay within `limit` tokens (a spelling may take more tokens)."""

    def match(cache: list[int], prompt: list[int]) -> Match:
        n = common_prefix(cache, prompt)
        if n == len(cache) or n == len(prompt):
            return Match(n, prompt)
        i, j = same_text(cache, prompt, n, spell)
        if i == n or i + len(prompt) - j > limit:
            return Match(n, prompt)
        return Match(i, cache[:i] + prompt[j:])

    return match


def choose_slot(idle: Sequence[S], prompt: list[int], match: Matcher = token_match) -> tuple[S, Match]:
    """The idle slot for a prompt, how many of its cached tokens it can keep, and the prompt to
    evaluate (the request's, or with `text_match` the same text on the cache's tokens).

    1. a slot whose whole cache starts the prompt (the next turn of its conversation): the
       longest such cache;
    2. a slot whose last prompt starts this one, though the answer after it does not (the next
       turn, with the previous answer re-rendered by the chat template as other tokens than
       were generated, and `match` does not see the same text): the longest shared prefix;
    3. a slot sharing at least half of the prompt: one holding all of it (a retried turn), or
       one that keeps most of its cache, or any when no slot is empty (a long shared system
       prompt);
    4. an empty slot;
    5. the least recently used slot (its conversation loses its cache).
    """
    best: tuple[S, Match] | None = None
    for slot in idle:  # the usual case first, token for token (the ends compared first)
        cache, n = slot.cache, len(slot.cache)
        longer = n and n <= len(prompt) and (best is None or n > best[1].kept)
        if longer and cache[-1] == prompt[n - 1] and common_prefix(cache, prompt) == n:
            best = (slot, Match(n, prompt))
    if best is not None:
        return best
    shared = [(slot, match(slot.cache, prompt)) for slot in idle]
    whole = [(slot, m) for slot, m in shared if slot.cache and m.kept == len(slot.cache)]
    if whole:
        return max(whole, key=lambda s: s[1].kept)
    continued = [(slot, m) for slot, m in shared if slot.prompt_len and m.kept >= slot.prompt_len]
    if continued:
        return max(continued, key=lambda s: s[1].kept)
    slot, m = max(shared, key=lambda s: (s[1].kept, -s[0].last_used))
    empty = [s for s in idle if not s.cache]
    keeps_most = m.kept == len(m.prompt) or m.kept >= REUSE_FRACTION * len(slot.cache)
    if m.kept >= REUSE_FRACTION * len(m.prompt) and (keeps_most or not empty):
        return slot, m
    if empty:
        return empty[0], Match(0, prompt)
    oldest = min(range(len(idle)), key=lambda k: idle[k].last_used)
    return shared[oldest]


def kept_for(idle: Sequence[S], prompt: list[int], match: Matcher = token_match) -> int:
    """The cached tokens the slot `choose_slot` picks for a prompt keeps, when they make that
    slot's engine the place for the prompt: the next turn of the slot's conversation (its whole
    cache, or at least its last prompt, starts this one) or at least half of the prompt shared;
    0 otherwise (a new conversation, or one sharing only an opening such as a system prompt).
    Lanes route by it (`lanes.Lanes.choose`) with the matcher their admission uses: a story whose
    early answer was re-spelled shares, token for token, less than half of its next prompt."""
    if not idle or not prompt:
        return 0
    slot, found = choose_slot(idle, prompt, match)
    continues = bool(slot.cache) and (
        found.kept == len(slot.cache) or (slot.prompt_len > 0 and found.kept >= slot.prompt_len)
    )
    return found.kept if continues or found.kept >= REUSE_FRACTION * len(prompt) else 0
