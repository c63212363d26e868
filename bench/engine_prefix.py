"""``tollgate bench engine --shared-prefix``: TTFT with the prefix cache on and off, in one run.

The workload: K shared system prompts (a few hundred tokens each) with short distinct user
suffixes, ``streams`` requests at a time through the batch loop. The same requests run on an
engine with the prefix cache and on one without; each engine is warmed on other system prompts
of the same length first, so compilation is not timed and the measured prompts start uncached.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from typing import Any

import numpy as np

TOPICS = (
    "the weather tomorrow", "a good book", "sorting a list", "the capital of France",
    "a birthday present", "learning to cook", "a train timetable", "saving money",
)  # fmt: skip
SYSTEM_TEXT = (
    "You are assistant number {k} of a travel company. Be precise and polite, answer in short "
    "paragraphs, never invent prices, and ask a clarifying question when a request is vague. "
    "Company policy: refunds within 30 days, changes free until 48 hours before departure, "
    "pets allowed on trains but not on coaches, and every booking includes seat reservation. "
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--shared-prefix`` options of ``tollgate bench engine``."""
    group = parser.add_argument_group("--shared-prefix workload")
    group.add_argument(
        "--shared-prefix", action="store_true", help="TTFT with the prefix cache on and off"
    )
    group.add_argument("--prefix-format", default="int8", help="weight format for it")
    group.add_argument("--prefix-systems", type=int, default=4, help="shared system prompts")
    group.add_argument("--prefix-tokens", type=int, default=400, help="tokens per system prompt")
    group.add_argument("--prefix-requests", type=int, default=32, help="requests per mode")
    group.add_argument("--prefix-streams", type=int, default=4, help="requests at a time")
    group.add_argument("--prefix-max-tokens", type=int, default=16, help="completion tokens")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both modes on one weight format; returns the figures (also printed)."""
    from engine.config import EngineConfig
    from engine.runtime import start_server

    results: dict[str, Any] = {"format": args.prefix_format, "systems": args.prefix_systems}
    for mode, cache_tokens in (("cache on", EngineConfig().prefix_cache_tokens), ("cache off", 0)):
        options: dict[str, Any] = {
            "weight_format": args.prefix_format,
            "decode_slots": max(args.prefix_streams, 2),
            "max_context": args.max_context,
            "prefix_cache_tokens": cache_tokens,
        }
        if args.cache_dir is not None:
            options["cache_dir"] = args.cache_dir
        server, _ = start_server(EngineConfig(**options))
        try:
            warm = _requests(server, args, first_system=100, count=2 * args.prefix_systems)
            _measure(server, args, warm)
            measured = _requests(server, args, first_system=0, count=args.prefix_requests)
            results[mode] = _measure(server, args, measured)
        finally:
            server.close()
    _print(results, args)
    return results


def _requests(
    server: Any, args: argparse.Namespace, first_system: int, count: int
) -> list[list[int]]:
    """Token prompts: system prompt ``i % K`` (from ``first_system``) + a distinct question."""
    tokenizer = server.tokenizer
    systems = []
    for k in range(first_system, first_system + args.prefix_systems):
        ids = tokenizer.encode(SYSTEM_TEXT.format(k=k) * 8)[: args.prefix_tokens]
        systems.append(ids)
    prompts = []
    for i in range(count):
        question = f"\nUser {i}: what about {TOPICS[i % len(TOPICS)]}, case {i * 37 % 101}?\n"
        prompts.append(systems[i % len(systems)] + tokenizer.encode(question)[1:])  # no BOS
    return prompts


def _measure(server: Any, args: argparse.Namespace, prompts: list[list[int]]) -> dict[str, Any]:
    """TTFT per request with ``--prefix-streams`` in flight, and the prefill tokens it took."""
    from engine.serving import GenerationParams

    params = GenerationParams(max_tokens=args.prefix_max_tokens, temperature=0.0)
    before = server.load()
    work: queue.Queue[list[int]] = queue.Queue()
    for p in prompts:
        work.put(p)
    ttft: list[float] = []
    lock = threading.Lock()

    def lane() -> None:
        while True:
            try:
                prompt = work.get_nowait()
            except queue.Empty:
                return
            inbox: queue.Queue[Any] = queue.Queue()
            started = time.perf_counter()
            server.submit(prompt, params, inbox.put)
            first = None
            while True:
                item = inbox.get()
                if isinstance(item, BaseException):
                    raise item
                if first is None:
                    first = time.perf_counter() - started
                if item.finish_reason is not None:
                    break
            with lock:
                ttft.append(first)

    lanes = [threading.Thread(target=lane) for _ in range(args.prefix_streams)]
    began = time.perf_counter()
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    seconds = time.perf_counter() - began
    after = server.load()
    prompt_tokens = sum(len(p) for p in prompts)
    saved = after.cached_tokens - before.cached_tokens
    return {
        "requests": len(prompts),
        "prompt_tokens": prompt_tokens,
        "prefill_computed": prompt_tokens - saved,
        "prefill_saved": saved,
        "hit_rate": saved / prompt_tokens,
        "ttft_p50_ms": 1e3 * float(np.percentile(ttft, 50)),
        "ttft_p90_ms": 1e3 * float(np.percentile(ttft, 90)),
        "seconds": seconds,
    }


def _print(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"shared prefix ({results['format']}): {args.prefix_systems} system prompts x"
        f" {args.prefix_tokens} tokens, distinct questions, {args.prefix_requests} requests,"
        f" {args.prefix_streams} at a time, {args.prefix_max_tokens} greedy tokens each"
    )
    head = f"{'mode':10} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'prefill computed':>17}"
    print(head + f" {'prefill saved':>14} {'hit rate':>9} {'wall s':>7}")
    for mode in ("cache on", "cache off"):
        r = results[mode]
        row = f"{mode:10} {r['ttft_p50_ms']:12.0f} {r['ttft_p90_ms']:12.0f}"
        row += f" {r['prefill_computed']:17d} {r['prefill_saved']:14d} {r['hit_rate']:9.1%}"
        print(row + f" {r['seconds']:7.1f}")
