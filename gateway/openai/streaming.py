"""SSE framing and gateway-side stop sequences, shared by every streamed answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def sse(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_raw(json_bytes: bytes) -> bytes:
    """One server-sent event around JSON that is already serialised."""
    return b"data: " + json_bytes + b"\n\n"


class StopMatcher:
    """Cuts a text stream at the first stop sequence without ever leaking part of one.

    Text that could be the start of a stop sequence is held back until the next piece
    shows whether it is; ``flush`` releases it when the stream ends without a stop.
    """

    __slots__ = ("_held", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of ``text`` that is safe to emit; sets ``stopped`` on a match."""
        if self.stopped:
            return ""
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buf[:cut]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Whatever was held back, at a natural end of the stream."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that begins some stop sequence."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:size]):
                    best = size
                    break
        return best
