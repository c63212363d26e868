"""Merging the output pieces of one read of an upstream stream into one ``Delta``.

A fast upstream often delivers many events per read (always, once the gateway falls behind).
Handing the gateway one delta per read instead of one per event keeps its per-delta work
(stop matching, relaying, accounting) proportional to reads, not tokens; text, token counts
and logprobs are concatenated in order, so nothing a client or the meter sees changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from adapters.base import Delta, TokenLogprob, ToolCallDelta


class DeltaBatch:
    """Output pieces collected since the last ``take``."""

    __slots__ = ("_calls", "_logprobs", "_texts", "_tokens")

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._tokens = 0
        self._logprobs: list[TokenLogprob] | None = None
        self._calls: list[ToolCallDelta] | None = None

    def add(self, text: str, tokens: int, logprobs: Sequence[TokenLogprob] | None = None) -> None:
        """One event's output text, the tokens it carries and their logprobs (if asked)."""
        if text:
            self._texts.append(text)
        self._tokens += tokens
        if logprobs is not None:
            if self._logprobs is None:
                self._logprobs = []
            self._logprobs.extend(logprobs)

    def add_call(self, call: ToolCallDelta) -> None:
        """A piece of a tool call; arguments that continue the previous piece's call join it."""
        if self._calls is None:
            self._calls = [call]
            return
        last = self._calls[-1]
        if last.index == call.index and call.id is None and call.name is None:
            self._calls[-1] = replace(last, arguments=last.arguments + call.arguments)
        else:
            self._calls.append(call)

    def take(self) -> Delta | None:
        """The merged delta (None when nothing was added), and start over."""
        texts, tokens, logprobs, calls = self._texts, self._tokens, self._logprobs, self._calls
        if not texts and not tokens and logprobs is None and calls is None:
            return None
        self._texts, self._tokens, self._logprobs, self._calls = [], 0, None, None
        text = texts[0] if len(texts) == 1 else "".join(texts)
        return Delta(text=text, tokens=tokens, logprobs=logprobs, tool_calls=calls)
