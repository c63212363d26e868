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

    Text that could be the start of a stop sequence is held back until the next piece shows
    whether it is. The cut is where the earliest-starting stop sequence begins, whatever the
    chunking: a stop that completes is not acted on while an earlier-starting one might still
    complete. ``flush`` resolves what is held when the stream ends.
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
        cut = self._first_match(buf)
        pending = self._first_partial(buf)
        if cut >= 0 and (pending < 0 or cut <= pending):
            self._held = ""
            self.stopped = True
            return buf[:cut]
        if pending >= 0:
            self._held = buf[pending:]
            return buf[:pending]
        self._held = ""
        return buf

    def flush(self) -> str:
        """Whatever was held back, at the end of the stream (cut if it holds a stop)."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = self._first_match(held)
        if cut >= 0:
            self.stopped = True
            return held[:cut]
        return held

    def _first_match(self, buf: str) -> int:
        return min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)

    def _first_partial(self, buf: str) -> int:
        """Where the earliest stop sequence that ``buf`` ends in the middle of begins."""
        first = -1
        end = len(buf)
        for stop in self._stops:
            for start in range(max(0, end - len(stop) + 1), end):
                if first >= 0 and start >= first:
                    break
                if stop.startswith(buf[start:]):
                    first = start
                    break
        return first
