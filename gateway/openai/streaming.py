"""SSE framing and gateway-side stop sequences, shared by every streamed answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


class EventStream(Response):
    """A ``text/event-stream`` answer: events sent as the body yields them, until the client
    leaves.

    Starlette's ``StreamingResponse`` watches for the client leaving through an anyio task
    group, which cost ~10% of a streamed request's CPU here. One plain task does the same:
    on ``http.disconnect`` it cancels the sending task, which absorbs that cancellation once
    the body generator has run its cleanup (the generator settles the request and cancels
    the upstream call).
    """

    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[bytes, None], headers: Mapping[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self._events = body
        self.init_headers({**headers, "cache-control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        sending, gone = True, False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if sending:  # after the last event, a disconnect is the normal end
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        events = self._events
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            sending = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the client left: not an error, and nobody else is cancelling
        finally:
            sending = False
            watcher.cancel()
            await events.aclose()  # runs the generator's cleanup if the client left mid-stream


def sse(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(name: str, payload: Any) -> bytes:
    """One server-sent event with an ``event:`` name (the Responses API's framing)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


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
