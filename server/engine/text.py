"""Generated tokens -> text, incrementally: a piece per token, UTF-8 split across tokens, stop
strings that may span tokens. The work per token is bounded by the longest stop string, never
by the length of the answer so far.
"""

from __future__ import annotations

import codecs
import ctypes

import llama_cpp


class Pieces:
    """Each token's bytes (`llama_token_to_piece`, special tokens rendered empty, as
    llama-cpp-python detokenizes answers), cached per token id."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._buf = ctypes.create_string_buffer(256)
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        piece = self._cache.get(token)
        if piece is None:
            piece = self._render(token)
            self._cache[token] = piece
        return piece

    def _render(self, token: int) -> bytes:
        size = len(self._buf)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buf, size, 0, False)
        if n < 0:  # the piece is longer than the buffer: -n is its length
            self._buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buf, -n, 0, False)
        return self._buf.raw[: max(n, 0)]


class StopMatcher:
    """Finds stop strings in streamed text, holding back only a tail that could start one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = sorted({s for s in stops if s}, key=len)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to emit, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        buf = self._pending + text
        first = -1
        for stop in self.stops:
            at = buf.find(stop)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first >= 0:
            self._pending = ""
            return buf[:first], True
        # The longest tail that starts a stop string: it begins with the stop's first character
        # within its last len(stop) - 1 characters, found in C (rarely there at all).
        keep = 0
        for stop in self.stops:
            at = buf.find(stop[0], max(0, len(buf) - len(stop) + 1))
            while at >= 0 and len(buf) - at > keep:
                if stop.startswith(buf[at:]):
                    keep = len(buf) - at
                    break
                at = buf.find(stop[0], at + 1)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """The held-back tail, once no more text will come."""
        pending, self._pending = self._pending, ""
        return pending


class TextStream:
    """Token ids in, text out: bytes decoded as UTF-8 across token boundaries (an incomplete
    character waits for its next bytes; invalid bytes are dropped, as llama-cpp-python does),
    then stop strings."""

    def __init__(self, pieces: Pieces, stops: list[str]) -> None:
        self._pieces = pieces
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._stops = StopMatcher(stops)

    def push(self, token: int) -> tuple[str, bool]:
        return self._stops.feed(self._decoder.decode(self._pieces(token)))

    def finish(self) -> str:
        """What was held back (an incomplete stop-string prefix, undecodable bytes)."""
        text, _ = self._stops.feed(self._decoder.decode(b"", final=True))
        return text + self._stops.flush()
