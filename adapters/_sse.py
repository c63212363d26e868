"""Server-sent events: the ``data`` payloads of a ``text/event-stream``, per the WHATWG rules.

Tolerates what real servers send: ``data:`` with or without the space, comment lines used
as keep-alives, ``\\n``, ``\\r\\n`` or lone ``\\r`` line endings, and multi-line data. An event
cut off by the end of the stream (no blank line after it) is dropped, as the spec says, so
truncation stays visible.

``SSEDecoder`` is fed the body's bytes as they arrive, in chunks cut anywhere (inside a
line, inside a UTF-8 sequence, between ``\\r`` and ``\\n``); ``sse_data`` reads lines that
were already split. Both share one line rule.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable


class SSEDecoder:
    """Incremental SSE framing: body bytes in, the data of each completed event out."""

    __slots__ = ("_cr", "_parts", "_tail")

    def __init__(self) -> None:
        self._tail = bytearray()  # the start of a line whose end has not arrived
        self._parts: list[str] = []  # data lines of the event being read
        self._cr = False  # the last chunk ended in "\r": a "\n" opening the next one joins it

    def feed(self, chunk: bytes) -> list[str]:
        """Take the next bytes of the body; return the events they complete (often one)."""
        if self._cr or b"\r" in chunk:
            chunk = self._normalize(chunk)
        end = chunk.rfind(b"\n")
        if end < 0:
            self._tail += chunk
            return []
        tail = self._tail
        if tail:
            tail += chunk[:end]
            text = tail.decode("utf-8", "replace")
            self._tail = bytearray(chunk[end + 1 :])
        else:
            # Lines end in "\n", which never occurs inside a UTF-8 sequence: decoding
            # whole lines never splits a character.
            text = chunk[:end].decode("utf-8", "replace")
            tail += chunk[end + 1 :]
        return self.lines(text.split("\n"))

    def lines(self, lines: Iterable[str]) -> list[str]:
        """Take lines without their endings; return the events they complete."""
        events: list[str] = []
        parts = self._parts
        for line in lines:
            if not line:
                if parts:
                    events.append(parts[0] if len(parts) == 1 else "\n".join(parts))
                    parts = []
            elif line.startswith("data:"):
                parts.append(line[5:].removeprefix(" "))
            # Comments (":"), `event:`, `id:` and `retry:` carry nothing an adapter needs.
        self._parts = parts
        return events

    def _normalize(self, chunk: bytes) -> bytes:
        """``\\r\\n`` and lone ``\\r`` become ``\\n``, also when a chunk ends between the two."""
        if self._cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._cr = chunk[-1:] == b"\r"
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


async def sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """Yield the data of each complete event from lines already split (without endings)."""
    decoder = SSEDecoder()
    async for line in lines:
        for data in decoder.lines((line,)):
            yield data
