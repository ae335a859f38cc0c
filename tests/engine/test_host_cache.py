"""Conversations' caches kept in host memory when another conversation takes their slot
(`"host_cache_mib"`, `server/engine/host_cache.py`), on the bundled model: the conversation's next
turn gets its cells back instead of evaluating its history, and answers the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_config
from server.engine.scheduler import Engine, Generation
from server.errors import ServerConfigError
from tests.engine.conftest import batched_entry, engine_on
from tests.engine.test_gap_fillers import generate
from tests.support.servers import write_config

STORY = (
    "The lighthouse keeper climbed the spiral stairs at dusk, counting each of the one hundred and "
    "twelve steps as her father had taught her, while the storm gathered over the black water and "
    "the gulls fled inland. She trimmed the wick, wiped the great lens, and listened to the wind."
)
OTHER = (
    "In the market of the desert town, a boy sold oranges from a cart with one bent wheel, calling "
    "to the travellers who came in from the dunes with sand in their hair and stories in their mouths, "
    "and every evening he counted his coins twice before he went home to his grandmother."
)


def three_turns(engine: Engine) -> tuple[Generation, Generation]:
    """A story's first turn, another story in the only slot, then the first story's next turn."""
    model = engine.model
    first = generate(engine, [model.completion_prompt(STORY)], 16)[0]
    generate(engine, [model.completion_prompt(OTHER)], 16)
    again = (
        first.prompt
        + first.tokens
        + model.tokenize(b" Then the lamp went out.", add_bos=False, special=False)
    )
    return first, generate(engine, [again], 16)[0]


@pytest.mark.integration
def test_a_conversation_whose_slot_was_taken_comes_back_from_host_memory(tmp_path: Path) -> None:
    (tmp_path / "off").mkdir()
    with engine_on(tmp_path / "off", n_ctx=512, n_parallel=1) as engine:
        _, plain = three_turns(engine)
        assert plain.cache_n == 0  # the other story's cache was all the slot had
        assert engine.stats.host_cache_saves == engine.stats.host_cache_restores == 0
    (tmp_path / "on").mkdir()
    with engine_on(tmp_path / "on", n_ctx=512, n_parallel=1, host_cache_mib=64) as engine:
        first, back = three_turns(engine)
        stats = engine.stats
        assert stats.host_cache_saves == 2  # the first story when the other came, then the other
        assert stats.host_cache_restores == 1
        assert back.cache_n >= len(first.prompt) + len(first.tokens) - 1
        assert stats.host_cache_tokens == back.cache_n
        assert len(engine._saved or []) == 1  # the other story's, for its next turn
    assert back.tokens == plain.tokens  # the same greedy answer from restored cells


def test_host_copies_and_a_shared_pool_are_refused_together(tmp_path: Path) -> None:
    """The pool's admission counts the cells in use (`_make_room`): put-back cells would escape it."""
    entry = batched_entry(n_ctx=512, n_parallel=2, kv_unified=True, kv_pool=1024, host_cache_mib=64)
    with pytest.raises(ServerConfigError, match='field "host_cache_mib": conversations cannot be put back'):
        load_config(write_config(tmp_path / "c.json", [entry]))
