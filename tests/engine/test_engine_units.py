"""The engine's pure parts, without a model: stop strings, UTF-8 across tokens, slot choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.engine.prefix import choose_slot, common_prefix
from server.engine.scheduler import Slot
from server.engine.text import StopMatcher, TextStream


def feed_all(matcher: StopMatcher, parts: list[str]) -> tuple[str, bool]:
    out = ""
    for part in parts:
        text, stopped = matcher.feed(part)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize(
    ("parts", "stops", "expected"),
    [
        (["Hello", " wor", "ld.", " More"], ["."], ("Hello world", True)),
        (["The E", "ND is", " near"], ["END"], ("The ", True)),  # a stop split across tokens
        (["a<", "|im_", "end|>b"], ["<|im_end|>"], ("a", True)),
        (["a<", "b"], ["<|im_end|>"], ("a<b", False)),  # a false start is released
        (["abc"], [], ("abc", False)),
        (["xyz", "STOP"], ["TOP", "STOP"], ("xyz", True)),  # the earliest match wins
    ],
)
def test_stop_strings(parts: list[str], stops: list[str], expected: tuple[str, bool]) -> None:
    assert feed_all(StopMatcher(stops), parts) == expected


@given(
    parts=st.lists(st.text(alphabet="ab<|>", max_size=6), max_size=12),
    stops=st.lists(st.text(alphabet="ab<|>", min_size=1, max_size=5), max_size=3),
)
def test_stop_strings_against_the_whole_text(parts: list[str], stops: list[str]) -> None:
    """Fed in any pieces: after each piece the text so far is searched; at the first piece
    that completes a stop string, everything before its earliest start is the answer."""
    seen = ""
    for part in parts:
        seen += part
        found = [at for at in (seen.find(stop) for stop in stops) if at >= 0]
        if found:
            expected = (seen[: min(found)], True)
            break
    else:
        expected = (seen, False)
    assert feed_all(StopMatcher(stops), parts) == expected


def test_stop_matcher_holds_back_only_a_possible_prefix() -> None:
    matcher = StopMatcher(["\n\nUser:"])
    assert matcher.feed("Once upon\n") == ("Once upon", False)
    assert matcher.feed("\nUs") == ("", False)
    assert matcher.feed("ually") == ("\n\nUsually", False)


def test_text_stream_joins_utf8_split_across_tokens() -> None:
    snowman = "☃".encode()
    pieces = {1: b"a" + snowman[:1], 2: snowman[1:], 3: b"b"}
    stream = TextStream(lambda t: pieces[t], [])  # type: ignore[arg-type]
    out = [stream.push(t)[0] for t in (1, 2, 3)]
    assert out == ["a", "☃", "b"]
    assert stream.finish() == ""


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([1, 2, 3], [1, 2, 4], 2), ([], [1], 0), ([1, 2], [1, 2, 3], 2), ([5] * 100, [5] * 99 + [6], 99)],
)
def test_common_prefix(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix(a, b) == n


def chosen(idle: list[Slot], prompt: list[int]) -> tuple[Slot, int]:
    slot, match = choose_slot(idle, prompt)
    assert match.prompt == prompt  # token for token: the request's own prompt
    return slot, match.kept


def test_choose_slot_prefers_the_conversation_it_continues() -> None:
    system = [1, 2, 3]
    mine = Slot(seq=0, cache=system + [10, 11, 12], last_used=1.0)
    other = Slot(seq=1, cache=system + [20, 21], last_used=0.0)
    empty = Slot(seq=2)
    assert chosen([other, empty, mine], system + [10, 11, 12, 13, 14]) == (mine, 6)


def test_choose_slot_keeps_other_conversations_for_a_new_one() -> None:
    system = [1, 2, 3]
    other = Slot(seq=0, cache=system + list(range(10, 40)), last_used=1.0)
    empty = Slot(seq=1)
    # A new conversation shares only the system prompt: it takes the empty slot...
    assert chosen([other, empty], system + [50, 51]) == (empty, 0)
    # ...and without one, the least recently used slot.
    older = Slot(seq=2, cache=[7, 8, 9], last_used=0.5)
    assert chosen([other, older], system + list(range(50, 60))) == (older, 0)
    # When the shared system prompt is most of the prompt, the least recently used of the
    # slots sharing it.
    oldest = Slot(seq=3, cache=system + [60, 61], last_used=0.1)
    assert chosen([other, older, oldest], system + [50]) == (oldest, 3)


def test_choose_slot_follows_a_conversation_whose_answer_was_re_rendered() -> None:
    """The template re-renders the previous answer as other tokens than were generated: the
    slot holding the previous prompt still wins over an empty one, even when that prompt is
    less than half of the new one (the second turn of a conversation with a long answer)."""
    first = list(range(100))
    mine = Slot(seq=0, cache=first + list(range(500, 700)), last_used=0.5, prompt_len=100)
    other = Slot(seq=1, cache=[0, 1, 2] + list(range(900, 1000)), last_used=1.0, prompt_len=50)
    empty = Slot(seq=2)
    second = first + [501, 502] + list(range(2000, 2300))  # the re-rendered answer differs at once
    assert chosen([empty, other, mine], second) == (mine, 100)
    # A slot that shares only part of its last prompt is not this conversation's.
    assert chosen([empty, other], second) == (empty, 0)


def test_choose_slot_reuses_a_retried_turn() -> None:
    prompt = list(range(100))
    answered = Slot(seq=0, cache=prompt + [500, 501], last_used=1.0)  # prompt + old answer
    empty = Slot(seq=1)
    assert chosen([empty, answered], prompt) == (answered, 100)
