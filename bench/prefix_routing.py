"""``tollgate bench prefix-routing``: two engine replicas, shared system prompts, and the router.

Requests open with one of a few long system prompts and end with a question of their own.
The same requests go to two fresh embedded-engine replicas twice: once placed by the router
(which remembers which prompt blocks it sent where, ``gateway/routing/prefixes.py``) and once
round-robin. Each replica's prefix cache serves what it holds; the bench prints TTFT and the
prompt tokens the replicas prefilled and took from their caches.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.base import GenerationRequest
from adapters.embedded import EmbeddedBackend
from engine.config import EngineConfig
from gateway.routing.policies import Objectives
from gateway.routing.prefixes import PromptBlocks
from gateway.routing.router import Router
from gateway.settings import BackendSettings, RoutingSettings

MODEL = "gemma-3-270m"
_WARM_UP = "Warm-up: " + "a few words of a prompt that nothing else shares. " * 30
TOPICS = ("a travel agency", "a bank's help desk", "a cooking school", "a bicycle shop",
          "a public library", "a weather service", "a law firm", "a train operator")  # fmt: skip


@dataclass
class Outcome:
    """One placement mode's figures."""

    mode: str
    ttft_s: list[float]
    prompt_tokens: int
    cached_tokens: int
    placed: dict[str, int]

    def row(self) -> str:
        p50 = statistics.median(self.ttft_s) * 1000
        p90 = statistics.quantiles(self.ttft_s, n=10)[-1] * 1000
        computed = self.prompt_tokens - self.cached_tokens
        share = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        spread = "/".join(str(n) for n in self.placed.values())
        return (f"{self.mode:<14}{p50:>9.0f}{p90:>9.0f}{self.prompt_tokens:>10}{computed:>10}"
                f"{self.cached_tokens:>10}{share:>8.0%}   {spread}")  # fmt: skip


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tollgate bench prefix-routing", description=__doc__)
    parser.add_argument("--systems", type=int, default=4, help="distinct system prompts")
    parser.add_argument("--system-words", type=int, default=300, help="words per system prompt")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=4, help="output tokens per request")
    parser.add_argument("--weight-format", default="int8")
    parser.add_argument(
        "--cache-tokens", type=int, default=2048,
        help="each replica's prefix cache (tokens): smaller than all the system prompts together, "
        "as a busy server's cache is",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _workload(args: argparse.Namespace) -> list[str]:
    rng = random.Random(args.seed)
    words = ("please", "always", "answer", "politely", "customers", "questions", "about",
             "orders", "refunds", "opening", "hours", "and", "never", "share", "private",
             "details", "keep", "replies", "short", "clear")  # fmt: skip
    systems = [
        f"You are the assistant of {TOPICS[i % len(TOPICS)]} (desk {i}). "
        + " ".join(rng.choice(words) for _ in range(args.system_words))
        for i in range(args.systems)
    ]
    return [
        f"{rng.choice(systems)}\n\nQuestion {n}: what about item {rng.randrange(10_000)}?"
        for n in range(args.requests)
    ]


def _router(backends: list[EmbeddedBackend]) -> Router:
    configs = {
        b.name: BackendSettings.model_validate({
            "name": b.name, "kind": "embedded", "models": {MODEL: MODEL},
            "price": {"usd_per_hour": 0.1},
        })
        for b in backends
    }  # fmt: skip
    return Router(backends, configs, RoutingSettings(explore_share=0), seed=0)


async def _run(mode: str, prompts: list[str], args: argparse.Namespace) -> Outcome:
    config = EngineConfig(weight_format=args.weight_format, prefix_cache_tokens=args.cache_tokens)
    replicas = [EmbeddedBackend(f"replica-{i}", config) for i in range(2)]
    servers = await asyncio.gather(*(r.ready() for r in replicas))
    for replica in replicas:  # compile the shapes a cached prefix is continued with, unmeasured
        for _ in range(2):
            warm = GenerationRequest(request_id="w", model=MODEL, prompt=_WARM_UP, max_tokens=2)
            async for _delta in replica.generate(warm):
                pass
    before = [server.load() for server in servers]
    router = _router(replicas)
    turns = itertools.cycle(replicas)
    ttfts: list[float] = []
    placed = {r.name: 0 for r in replicas}
    tokenizer = replicas[0].tokenizer
    assert tokenizer is not None

    async def one(text: str) -> None:
        blocks = PromptBlocks.of(text)
        prompt_tokens = len(tokenizer.encode(text))
        if mode == "round-robin":
            backend = next(turns)
        else:
            plan = router.plan(replicas, "cost", Objectives(), prompt_tokens, args.max_tokens,
                               blocks)  # fmt: skip
            backend = plan[0].backend  # type: ignore[assignment]
        placed[backend.name] += 1
        router.attempt_started(backend.name, retry=False, prompt=blocks)
        request = GenerationRequest(request_id="b", model=MODEL, prompt=text,
                                    max_tokens=args.max_tokens, temperature=0.0)  # fmt: skip
        began = time.perf_counter()
        first: float | None = None
        out = 0
        async for delta in backend.generate(request):
            if first is None:
                first = time.perf_counter() - began
                router.first_token(backend.name, first)
            out += delta.tokens
        ttfts.append(first or 0.0)
        router.finished(backend.name, ok=True, output_tokens=out,
                        decode_s=time.perf_counter() - began - (first or 0.0))  # fmt: skip

    lanes = asyncio.Semaphore(args.concurrency)

    async def lane(text: str) -> None:
        async with lanes:
            await one(text)

    await asyncio.gather(*(lane(text) for text in prompts))
    after = [server.load() for server in servers]
    pairs = list(zip(after, before, strict=True))
    prompt_tokens = sum(x.prompt_tokens - b.prompt_tokens for x, b in pairs)
    cached_tokens = sum(x.cached_tokens - b.cached_tokens for x, b in pairs)
    for r in replicas:
        await r.aclose()
    return Outcome(mode, ttfts, prompt_tokens, cached_tokens, placed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both placements on the same requests and print their figures."""
    args = _parse(argv)
    prompts = _workload(args)
    print(f"{args.requests} requests, {args.systems} system prompts of ~{args.system_words} "
          f"words, {args.concurrency} in flight, two {args.weight_format} replicas per mode",
          flush=True)  # fmt: skip
    outcomes: list[Any] = []
    for mode in ("prefix-aware", "round-robin"):
        print(f"  running {mode} (loading two replicas) ...", flush=True)
        outcomes.append(asyncio.run(_run(mode, prompts, args)))
    print(f"{'placement':<14}{'ttft p50':>9}{'ttft p90':>9}{'prompt':>10}{'prefilled':>10}"
          f"{'cached':>10}{'hit':>8}   requests per replica")  # fmt: skip
    print("                    (ms)     (ms)  (tokens)  (tokens)  (tokens)")
    for outcome in outcomes:
        print(outcome.row())
    aware, rr = outcomes
    saved = (rr.prompt_tokens - rr.cached_tokens) - (aware.prompt_tokens - aware.cached_tokens)
    print(f"prefix-aware placement prefilled {saved} fewer prompt tokens; TTFT p50 "
          f"{statistics.median(aware.ttft_s) / statistics.median(rr.ttft_s):.2f}x round-robin's")
    return 0
