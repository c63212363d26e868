"""Turn a growing list of token ids into text pieces, holding back partial characters and stops."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[list[int]], str]


class TextAssembler:
    """Incremental detokenizer with stop strings that never leaks a partial stop.

    Text that might be the start of a stop string is held back until it is clear; a UTF-8
    character split across byte tokens is held until complete.
    """

    def __init__(self, decode: Decode, stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = ""  # all decoded text so far
        self._sent = 0  # characters of _text handed out
        self.stopped = False

    def add(self, token: int) -> str:
        """Append one token; return the text now safe to send (may be empty)."""
        self._ids.append(token)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        return self._release()

    def finish(self) -> str:
        """Flush what was held back at the end of the generation."""
        if self.stopped:
            return ""
        full = self._decode(self._ids[self._prefix_offset :])
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        if len(full) > len(prefix):
            self._text += full[len(prefix) :]
        piece = self._text[self._sent :]
        self._sent = len(self._text)
        return piece

    def _release(self) -> str:
        if self.stopped:
            return ""
        text = self._text
        # A stop can only begin in text not yet sent (held-back text covers any partial match).
        earliest = -1
        for stop in self._stop:
            found = text.find(stop, self._sent)
            if found != -1 and (earliest == -1 or found < earliest):
                earliest = found
        if earliest != -1:
            self.stopped = True
            piece = text[self._sent : earliest]
            self._sent = len(text)
            return piece
        safe = len(text) - self._held_back(text)
        piece = text[self._sent : safe]
        self._sent = max(self._sent, safe)
        return piece

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(text) - self._sent), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
