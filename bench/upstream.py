"""A bare ASGI upstream that speaks vLLM's completions protocol as fast as it can.

No framework, canned bodies, so that in the overhead benchmark it is never the bottleneck.
Run: ``python -m bench.upstream PORT [CHUNKS]``.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import uvicorn

MODEL = "bench-upstream"
USAGE = {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}


def _bodies(chunks: int) -> tuple[bytes, list[bytes]]:
    text = "".join(f" t{i}" for i in range(chunks))
    full = orjson.dumps(
        {
            "id": "cmpl-bench",
            "object": "text_completion",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}],
            "usage": {**USAGE, "completion_tokens": chunks, "total_tokens": 8 + chunks},
        }
    )
    events = []
    for i in range(chunks):
        finish = "length" if i == chunks - 1 else None
        events.append(
            b"data: "
            + orjson.dumps(
                {
                    "id": "cmpl-bench",
                    "object": "text_completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [
                        {"index": 0, "text": f" t{i}", "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": None,
                }
            )
            + b"\n\n"
        )
    events.append(
        b"data: "
        + orjson.dumps(
            {
                "id": "cmpl-bench",
                "object": "text_completion",
                "created": 0,
                "model": MODEL,
                "choices": [],
                "usage": {**USAGE, "completion_tokens": chunks, "total_tokens": 8 + chunks},
            }
        )
        + b"\n\n"
    )
    events.append(b"data: [DONE]\n\n")
    return full, events


class Upstream:
    """The ASGI callable: reads the body, answers JSON or SSE as the request asks."""

    def __init__(self, chunks: int) -> None:
        self.full, self.events = _bodies(chunks)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"].endswith("/metrics") or scope["path"] == "/health":
            await _send(send, 200, b"text/plain", b"")
            return
        if b'"stream":true' in body.replace(b" ", b""):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send(send, 200, b"application/json", self.full)


async def read_body(receive: Any) -> bytes:
    """The whole request body of an ASGI ``http`` request."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _send(send: Any, status: int, ctype: bytes, body: bytes) -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve on 127.0.0.1:PORT."""
    port = int(sys.argv[1])
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    uvicorn.run(
        Upstream(chunks),
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
