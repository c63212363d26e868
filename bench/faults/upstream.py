"""A vLLM-speaking upstream that fails on purpose, and remembers every token it sent.

The chaos bench tags each prompt with ``t=TENANT r=REPLICA id=RID s=0|1`` (tenant, the replica
the client asked, the client's request id, whether the client streams). Each generation is
answered in full, one token every ``--token-s``, or, at the rates given, hangs before its first
token, stalls after a few tokens, or dies after a few (the connection closed mid-body).
``GET /chaos/attempts`` returns every attempt: its tags, the fault, when it started and ended,
how it ended (``done``, ``died``, ``gone``: the gateway went away) and each token's send time.
Run: ``python -m bench.faults.upstream PORT [--hang P] [--stall P] [--die P] [--seed N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvicorn

from bench.upstream import read_body

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
TAGS = re.compile(r"t=(\S+) r=(\d+) id=(\S+) s=([01])")
MODEL = "chaos"


@dataclass(slots=True)
class Attempt:
    """One generation request as this upstream saw it."""

    rid: str
    tenant: str
    replica: int
    stream: bool  # whether the *client* streams (the gateway always streams upstream)
    backend: str
    fault: str  # "", "hang", "stall" or "die"
    cut: int  # the token before which a stall or death happens
    start: float
    end: float = 0.0
    ended: str = ""  # "done", "died" or "gone"
    times: list[float] = field(default_factory=list)  # wall-clock send time of each token


class FaultyUpstream:
    """The ASGI app: ``/v1/completions`` (streamed), ``/health``, ``/v1/models``, records."""

    def __init__(self, name: str, rates: dict[str, float], token_s: float, seed: int) -> None:
        self.name = name
        self.rates = rates
        self.token_s = token_s
        self.rng = random.Random(seed)
        self.attempts: list[Attempt] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        path = scope["path"]
        if scope["method"] == "GET":
            await self._get(path, send)
        elif path == "/v1/completions":
            await self._completion(orjson.loads(body), receive, send)
        else:
            await _send(send, 404, {"error": {"message": f"no route {path}", "code": 404}})

    async def _get(self, path: str, send: Send) -> None:
        if path == "/health":
            await _send(send, 200, {})
        elif path == "/v1/models":
            card = {"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 4096}
            await _send(send, 200, {"object": "list", "data": [card]})
        elif path == "/chaos/attempts":
            await _send(send, 200, [asdict(a) for a in self.attempts])
        else:
            await _send(send, 404, {"error": {"message": "not found", "code": 404}})

    async def _completion(self, body: dict[str, Any], receive: Receive, send: Send) -> None:
        prompt = str(body.get("prompt", ""))
        count = int(body.get("max_tokens") or 16)
        attempt = self._attempt(prompt, count)
        self.attempts.append(attempt)
        work = asyncio.ensure_future(self._generate(attempt, len(prompt.split()), count, send))
        watch = asyncio.ensure_future(_disconnect(receive))
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the gateway went away first
            work.cancel()
            attempt.ended = "gone"
        watch.cancel()
        attempt.end = attempt.end or time.time()

    def _attempt(self, prompt: str, count: int) -> Attempt:
        tags = TAGS.search(prompt)
        tenant, replica, rid, stream = tags.groups() if tags else ("", "-1", "", "0")
        draw = self.rng.random()
        fault, edge = "", 0.0
        for kind in ("hang", "stall", "die"):
            edge += self.rates.get(kind, 0.0)
            if draw < edge and (kind == "hang" or count >= 2):
                fault = kind
                break
        cut = self.rng.randint(1, min(count - 1, 8)) if fault in ("stall", "die") else 0
        return Attempt(rid, tenant, int(replica), stream == "1", self.name, fault, cut,
                       time.time())  # fmt: skip

    async def _generate(self, attempt: Attempt, prompt_tokens: int, count: int, send: Send) -> None:
        await asyncio.sleep(self.token_s)
        if attempt.fault == "hang":
            await asyncio.Event().wait()  # until the gateway gives up on it
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        for i in range(count):
            if i == attempt.cut and attempt.fault == "stall":
                await asyncio.Event().wait()  # until the gateway's inter-token timeout
            if i == attempt.cut and attempt.fault == "die":
                attempt.ended, attempt.end = "died", time.time()
                return  # returning mid-body makes uvicorn close the connection
            if i:
                await asyncio.sleep(self.token_s)
            attempt.times.append(time.time())
            finish = "length" if i == count - 1 else None
            await _event(send, [{"index": 0, "text": f" w{i}", "logprobs": None,
                                 "finish_reason": finish}], None)  # fmt: skip
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count,
                 "total_tokens": prompt_tokens + count}  # fmt: skip
        await _event(send, [], usage)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        # Taken before this task yields: before the gateway can have read the end, settled and
        # admitted the next request.
        attempt.ended, attempt.end = "done", time.time()


async def _event(send: Send, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> None:
    chunk = {"id": "cmpl-chaos", "object": "text_completion", "created": 0, "model": MODEL,
             "choices": choices, "usage": usage}  # fmt: skip
    payload = b"data: " + orjson.dumps(chunk) + b"\n\n"
    await send({"type": "http.response.body", "body": payload, "more_body": True})


async def _send(send: Send, status: int, body: Any) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """Serve on 127.0.0.1:PORT until terminated."""
    parser = argparse.ArgumentParser(prog="python -m bench.faults.upstream")
    parser.add_argument("port", type=int)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--hang", type=float, default=0.0, help="share hung before any token")
    parser.add_argument("--stall", type=float, default=0.0, help="share stalled mid-stream")
    parser.add_argument("--die", type=float, default=0.0, help="share cut off mid-stream")
    parser.add_argument("--token-s", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = {"hang": args.hang, "stall": args.stall, "die": args.die}
    app = FaultyUpstream(args.name, rates, args.token_s, args.seed)
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop",
                log_level="critical", access_log=False, lifespan="off")  # fmt: skip


if __name__ == "__main__":
    main()
