"""The clients of a chaos run: tenants' workers sending streamed and whole completions to
random replicas, some leaving at random, each request's fate written down as an ``Outcome``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.faults.fleet import MODEL

LONG_SHARE = 0.12  # answers of a few seconds, so that a killed replica has some to checkpoint
STREAM_LEAVE_SHARE = 0.12  # streamed clients that go away after a few chunks
WHOLE_LEAVE_SHARE = 0.06  # non-streamed clients that give up before the answer


@dataclass(slots=True)
class Outcome:
    """What one client request saw. ``how``: ``ok``, ``error`` (an answer other than 200),
    ``left`` (the client went away), ``error_event`` (a stream ended by an error event),
    ``broken`` (a 200 whose connection broke), ``refused`` (no replica listening), ``cut`` (no
    answer: the connection broke)."""

    rid: str
    tenant: str
    replica: int
    stream: bool
    sent: float
    answered: float | None = None  # response headers received
    ended: float = 0.0
    status: int | None = None
    code: str = ""  # the error envelope's code, or an error event's
    how: str = ""
    tokens: int = 0  # completion chunks the client received


@dataclass(slots=True)
class Load:
    """Where the clients send, and everything they saw."""

    urls: list[str]
    keys: dict[str, str]  # tenant -> API key
    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self, workers: dict[str, int], until: float) -> None:
        """``workers[tenant]`` clients per tenant, each sending until ``until`` (wall clock)."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
            await asyncio.gather(*(
                self._worker(http, tenant, random.Random(f"{self.seed}-{tenant}-{i}"), until)
                for tenant, count in workers.items() for i in range(count)
            ))  # fmt: skip

    async def _worker(
        self, http: httpx.AsyncClient, tenant: str, rng: random.Random, until: float
    ) -> None:
        while time.time() < until:
            outcome = await self.one(http, tenant, rng)
            self.outcomes.append(outcome)
            if outcome.status != 200:  # a refusal: back off a little, as a client would
                await asyncio.sleep(rng.uniform(0.05, 0.25))

    async def one(self, http: httpx.AsyncClient, tenant: str, rng: random.Random) -> Outcome:
        """Send one request to a random replica and follow it to its end."""
        replica = rng.randrange(len(self.urls))
        stream = rng.random() < 0.5
        rid = f"{tenant}-{next(self._ids)}"
        long = rng.random() < LONG_SHARE
        max_tokens = rng.randint(100, 200) if long else rng.randint(4, 32)
        prompt = f"chaos t={tenant} r={replica} id={rid} s={int(stream)} go on"
        body = {"model": MODEL, "max_tokens": max_tokens, "stream": stream, "prompt": prompt}
        if stream:
            body["stream_options"] = {"include_usage": True}
        out = Outcome(rid, tenant, replica, stream, time.time())
        request = http.build_request(
            "POST", f"{self.urls[replica]}/v1/completions", json=body,
            headers={"Authorization": f"Bearer {self.keys[tenant]}", "x-request-id": rid},
        )  # fmt: skip
        try:
            if stream:
                leave = rng.randint(1, 6) if rng.random() < STREAM_LEAVE_SHARE else None
                await self._stream(http, request, out, leave)
            else:
                patience = rng.uniform(0.05, 0.5) if rng.random() < WHOLE_LEAVE_SHARE else None
                await self._whole(http, request, out, patience)
        except httpx.ConnectError:
            out.how = "refused"
        except httpx.TransportError:
            out.how = "broken" if out.status == 200 else "cut"
        out.ended = time.time()
        return out

    async def _whole(
        self, http: httpx.AsyncClient, request: httpx.Request, out: Outcome, patience: float | None
    ) -> None:
        try:
            async with asyncio.timeout(patience):
                reply = await http.send(request)
        except TimeoutError:
            out.how = "left"
            return
        out.answered, out.status = time.time(), reply.status_code
        data = _json(reply.content)
        if reply.status_code == 200:
            out.tokens = int(data.get("usage", {}).get("completion_tokens", 0))
            out.how = "ok"
        else:
            out.code, out.how = _code(data), "error"

    async def _stream(
        self, http: httpx.AsyncClient, request: httpx.Request, out: Outcome, leave: int | None
    ) -> None:
        reply = await http.send(request, stream=True)
        try:
            out.answered, out.status = time.time(), reply.status_code
            if reply.status_code != 200:
                out.code, out.how = _code(_json(await reply.aread())), "error"
                return
            async for line in reply.aiter_lines():
                if line == "data: [DONE]":
                    out.how = "ok"
                    return
                if not line.startswith("data: "):
                    continue
                event = _json(line[6:].encode())
                if "error" in event:
                    out.code, out.how = _code(event), "error_event"
                    return
                if event.get("choices"):
                    out.tokens += 1
                    if leave is not None and out.tokens >= leave:
                        out.how = "left"
                        return
            out.how = "broken"  # the body ended without [DONE] or an error event
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await reply.aclose()  # before the end: closes the connection, as a leaver does


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _code(data: dict[str, Any]) -> str:
    error = data.get("error")
    return str(error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""
