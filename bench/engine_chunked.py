"""``tollgate bench engine --long-prompt``: how long a long prompt stalls the running streams,
with chunked prefill on and off, in one run.

Streams decode steadily (greedy, no stop token) when one long prompt arrives. Whole, its prefill
runs between two decode steps and every stream waits for all of it; chunked, a decode step runs
after each chunk. Printed: the streams' usual gap between tokens, their longest gap while the
long prompt was prefilled, its time to first token (what chunking costs it), and that of a
short prompt sent right behind it (which, chunked, need not wait for all of it).
"""

from __future__ import annotations

import argparse
import queue
import time
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--long-prompt`` options of ``tollgate bench engine``."""
    group = parser.add_argument_group("--long-prompt workload")
    group.add_argument(
        "--long-prompt", action="store_true", help="decode stalls with chunked prefill on/off"
    )
    group.add_argument("--long-format", default="int8", help="weight format for it")
    group.add_argument("--long-tokens", type=int, default=1536, help="the long prompt's tokens")
    group.add_argument("--long-streams", type=int, default=4, help="streams decoding meanwhile")
    group.add_argument("--long-chunk", type=int, default=256, help="chunk size when chunked")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both modes on one weight format; returns the figures (also printed)."""
    from engine.config import EngineConfig
    from engine.runtime import start_server

    results: dict[str, Any] = {"format": args.long_format}
    for mode, chunk in (("chunked", args.long_chunk), ("whole", 0)):
        options: dict[str, Any] = {
            "weight_format": args.long_format,
            "decode_slots": args.long_streams + 2,  # the long prompt and the short one
            "max_context": max(args.max_context, args.long_tokens + 64),
            "prefill_chunk_tokens": chunk,
            "prefix_cache_tokens": 0,  # every prompt is computed in full
        }
        if args.cache_dir is not None:
            options["cache_dir"] = args.cache_dir
        server, _ = start_server(EngineConfig(**options))
        try:
            _measure(server, args, seed=1)  # compiles the shapes; not timed
            results[mode] = _measure(server, args, seed=2)
        finally:
            server.close()
    _print(results, args)
    return results


def _measure(server: Any, args: argparse.Namespace, seed: int) -> dict[str, float]:
    from engine.serving import GenerationParams

    rng = np.random.default_rng(seed)
    vocab = server.engine.config.vocab_size
    stream_params = GenerationParams(max_tokens=10_000, temperature=0.0, stop_token_ids=())
    arrivals: list[list[float]] = [[] for _ in range(args.long_streams)]
    ids: list[int] = []
    for times in arrivals:
        prompt = [server.tokenizer.bos_id, *rng.integers(1000, vocab - 1000, 31).tolist()]
        ids.append(server.submit(prompt, stream_params,
                                 lambda _item, times=times: times.append(time.perf_counter())))
    while min(len(a) for a in arrivals) < 24:  # every stream decodes at its steady pace
        time.sleep(0.01)
    long_prompt = [server.tokenizer.bos_id,
                   *rng.integers(1000, vocab - 1000, args.long_tokens - 1).tolist()]
    short_prompt = [server.tokenizer.bos_id, *rng.integers(1000, vocab - 1000, 31).tolist()]
    firsts: dict[str, float] = {}
    done: queue.Queue[Any] = queue.Queue()

    def deliver_to(name: str) -> Any:
        def deliver(item: Any) -> None:
            firsts.setdefault(name, time.perf_counter())
            if isinstance(item, BaseException) or item.finish_reason is not None:
                done.put(item)

        return deliver

    answer = GenerationParams(max_tokens=4, temperature=0.0)
    sent = time.perf_counter()
    server.submit(long_prompt, answer, deliver_to("long"))
    server.submit(short_prompt, answer, deliver_to("short"))  # right behind it
    done.get()
    done.get()
    ttft = firsts["long"] - sent
    for request_id in ids:
        server.cancel(request_id)
    before, during = [], []
    for times in arrivals:
        gaps = np.diff(times)
        ends = np.asarray(times[1:])
        before += gaps[ends < sent].tolist()
        during += gaps[(ends > sent) & (ends - gaps < sent + ttft)].tolist()
    return {
        "gap_ms": 1e3 * float(np.median(before[-64:])),
        "worst_gap_ms": 1e3 * max(during, default=0.0),
        "ttft_ms": 1e3 * ttft,
        "short_ttft_ms": 1e3 * (firsts["short"] - sent),
    }


def _print(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"long prompt ({results['format']}): {args.long_tokens} tokens arrive while"
        f" {args.long_streams} greedy streams decode; chunks of {args.long_chunk}"
    )
    print(f"{'mode':8} {'usual gap ms':>13} {'worst gap ms':>13} {'long TTFT ms':>13}"
          f" {'short TTFT ms':>14}")
    for mode in ("chunked", "whole"):
        r = results[mode]
        print(f"{mode:8} {r['gap_ms']:13.1f} {r['worst_gap_ms']:13.1f} {r['ttft_ms']:13.0f}"
              f" {r['short_ttft_ms']:14.0f}")
