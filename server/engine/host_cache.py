"""Conversations' KV cache kept in host memory when their slot goes to another conversation
(`"host_cache_mib"`), so that their next turn restores it instead of evaluating its history again.

A slot holds one conversation's KV cells; when more conversations take turns than there are
slots, admitting one drops another's cache, and that conversation's next turn would evaluate its
whole history afresh. Copying a sequence's cells out (`llama_state_seq_get_data`) and back in
(`llama_state_seq_set_data`) costs a memory copy: on a 2-core VM with the bundled model 4-5 ms
each way for 4,000 tokens (88 MiB), where evaluating them took 13.6 s (BENCHMARKS.md, issue 16,
session 15). Native llama-server does the same with its `--cache-ram`.

Entries are kept least recently used first within a byte limit; one is taken out when a prompt
continues it further than any slot's cache does. The engine thread alone calls these (llama.cpp
state).
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from itertools import count
from typing import Any

import llama_cpp

from server.engine.prefix import Match, Matcher


@dataclass
class Saved:
    tokens: list[int]  # the tokens whose cells `state` holds, in order
    state: ctypes.Array[ctypes.c_uint8]


class HostCache:
    """Saved sequences, at most `limit` bytes of state in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._entries: OrderedDict[int, Saved] = OrderedDict()
        self._ids = count()

    def __len__(self) -> int:
        return len(self._entries)

    def save(self, ctx: Any, seq: int, tokens: list[int]) -> bool:
        """Copy sequence `seq`'s cells (which hold `tokens`) out of the context; False when they
        would not fit the limit on their own or llama.cpp gave none."""
        size = llama_cpp.llama_state_seq_get_size(ctx, seq)
        if size <= 0 or size > self.limit:
            return False
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, state, size, seq) != size:
            return False
        self._entries[next(self._ids)] = Saved(list(tokens), state)
        self.bytes += size
        while self.bytes > self.limit:  # the least recently saved go first
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped.state)
        return True

    def best(self, prompt: list[int], match: Matcher) -> tuple[int, Match] | None:
        """The entry this prompt continues furthest (`match`, as admission matches a slot's cache),
        and that match; None when no entry shares a token with it."""
        found: tuple[int, Match] | None = None
        for key, saved in self._entries.items():
            m = match(saved.tokens, prompt)
            if m.kept > 0 and (found is None or m.kept > found[1].kept):
                found = (key, m)
        return found

    def restore(self, ctx: Any, memory: Any, key: int, seq: int) -> list[int] | None:
        """Put entry `key` into sequence `seq` (whose cells are cleared first) and take it out of
        the cache; the tokens its cells now hold, or None if llama.cpp refused (`seq` is empty)."""
        saved = self._entries.pop(key)
        self.bytes -= len(saved.state)
        llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        if llama_cpp.llama_state_seq_set_data(ctx, saved.state, len(saved.state), seq) == 0:
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
            return None
        return saved.tokens
