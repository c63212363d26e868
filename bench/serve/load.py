"""Poisson arrivals, and one streamed request over the OpenAI API timed as vLLM's
benchmark_serving times it.

TTFT is the time to the first chunk with text; inter-token latencies are the gaps between
chunks with text; output tokens come from the final usage chunk (``stream_options:
{include_usage: true}``), else the count of chunks with text. Server-sent events are parsed
here: ``data: {...}`` lines, ended by ``data: [DONE]``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson

from adapters._errors import read_error, said_in
from adapters._sse import sse_data
from bench.serve.dataset import Prompt
from bench.serve.records import Outcome

Endpoint = Literal["completions", "chat"]


def arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Send times in ``[0, duration_s)`` of a Poisson process of ``rate`` requests/s: the first
    at 0, then exponential gaps of mean ``1 / rate``, drawn from ``seed`` alone."""
    rng = random.Random(seed)
    times, t = [], 0.0
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go and how they are shaped."""

    url: str
    model: str
    key: str | None = None
    endpoint: Endpoint = "completions"
    ignore_eos: bool = False

    @property
    def path(self) -> str:
        """The endpoint's path under the base URL."""
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"

    @property
    def headers(self) -> dict[str, str]:
        """Content type, and the bearer key if there is one."""
        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        return headers

    def body(self, prompt: Prompt) -> dict[str, Any]:
        """A streamed request with usage in the last chunk."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": prompt.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.endpoint == "chat":
            body["messages"] = (list(prompt.messages) if prompt.messages is not None
                                else [{"role": "user", "content": prompt.text or ""}])
        else:
            body["prompt"] = prompt.text or ""
        if self.ignore_eos:
            body["ignore_eos"] = True  # a vLLM extra: answers run to max_tokens
        return body


async def send(client: httpx.AsyncClient, target: Target, prompt: Prompt,
               outcome: Outcome) -> None:
    """Send one request and fill ``outcome`` in as its answer streams back; never raises for
    the endpoint's failures (they become ``outcome.error``)."""
    content = orjson.dumps(target.body(prompt))
    start = time.perf_counter()
    try:
        async with client.stream("POST", target.path, content=content,
                                 headers=target.headers) as response:
            outcome.backend = response.headers.get("x-tollgate-backend")
            if response.status_code != 200:
                outcome.error = http_error(response.status_code, await response.aread())
                return
            cost = response.headers.get("x-tollgate-cost-usd")  # only non-streamed answers
            if cost is not None:
                outcome.metered_usd = float(cost)
            await _read_events(response, target.endpoint, outcome, start)
    except httpx.TimeoutException:
        outcome.error = "timeout"
    except (orjson.JSONDecodeError, AttributeError):
        outcome.error = "bad stream event"  # not JSON, or JSON that is not an object
    except httpx.TransportError:
        outcome.error = "connection"
    finally:
        outcome.e2e_s = time.perf_counter() - start


async def _read_events(response: httpx.Response, endpoint: Endpoint, outcome: Outcome,
                       start: float) -> None:
    last = start
    async for data in sse_data(response.aiter_lines()):  # the adapters' SSE decoder
        if data == "[DONE]":
            return
        event = orjson.loads(data)
        if not isinstance(event, dict):
            raise orjson.JSONDecodeError("an event that is not an object", data, 0)
        if "error" in event or event.get("object") == "error":  # nested or flat (old vLLM)
            said = said_in(event)
            outcome.error = f"stream error {said.code or said.type or ''}".rstrip()
            return
        if _text(event, endpoint):
            now = time.perf_counter()
            if outcome.ttft_s is None:
                outcome.ttft_s = now - start
            else:
                outcome.itl_s.append(now - last)
            last = now
            outcome.chunks += 1
        usage = event.get("usage")
        if usage:
            outcome.output_tokens = usage.get("completion_tokens")
            outcome.prompt_tokens = usage.get("prompt_tokens")
            if usage.get("tollgate_cost_usd") is not None:
                outcome.metered_usd = float(usage["tollgate_cost_usd"])
    outcome.error = "stream cut"  # the connection ended without [DONE]


def _text(event: dict[str, Any], endpoint: Endpoint) -> str:
    choices = event.get("choices") or ()
    if not choices:
        return ""
    if endpoint == "chat":
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


def http_error(status: int, body: bytes) -> str:
    """``http STATUS CODE``: the status and the error code (or type) the body names, in any
    shape the adapters read (OpenAI's, old vLLM's flat one, trtllm-serve's, TGI's)."""
    said = read_error(body)
    return f"http {status} {said.code or said.type or ''}".rstrip()


async def describe_server(target: Target) -> dict[str, Any]:
    """What the server says of itself: its ``/v1/models`` entry for the model and, from a
    Tollgate gateway (models ``owned_by: tollgate``), the backends ``/readyz`` lists."""
    info: dict[str, Any] = {"kind": "openai-compatible"}
    async with httpx.AsyncClient(base_url=target.url, timeout=10.0) as client:
        try:
            models = await client.get("/v1/models", headers=target.headers)
            if models.status_code != 200:
                info["models"] = http_error(models.status_code, models.content)
                return info
            entries = models.json().get("data") or []
            entry = next((m for m in entries if m.get("id") == target.model), None)
            info["model"] = entry
            if not any(m.get("owned_by") == "tollgate" for m in entries):
                return info
            info["kind"] = "tollgate"
            ready = await client.get("/readyz")
            info["backends"] = ready.json().get("backends", {})
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            info["error"] = f"{type(exc).__name__}: {exc}"
    return info
