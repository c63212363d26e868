"""Server-sent events: the ``data`` payloads of a ``text/event-stream``, per the WHATWG rules.

Tolerates what real servers send: ``data:`` with or without the space, comment lines used
as keep-alives, ``\\r\\n`` endings, and multi-line data. An event cut off by the end of the
stream (no blank line after it) is dropped, as the spec says, so truncation stays visible.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator


async def sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """Yield the data of each complete event; events with no data field are skipped."""
    parts: list[str] = []
    async for line in lines:
        if not line:
            if parts:
                yield parts[0] if len(parts) == 1 else "\n".join(parts)
                parts = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            parts.append(value.removeprefix(" "))
        # Comments (":"), `event:`, `id:` and `retry:` carry nothing an adapter needs.
