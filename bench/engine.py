"""Benchmark the embedded engine: start-up, prefill and decode throughput, memory, per format.

Run as ``tollgate bench engine`` or ``python -m bench.engine``. Each weight format runs in its
own process so peak memory and start-up are measured cleanly. Figures are printed, never judged.
Structured output is measured side by side: the same chat requests through the batch loop, with
and without a JSON schema constraint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import engine_chunked, engine_prefix, engine_profile

LLAMA_CPP_ENV = Path(__file__).resolve().parent.parent / ".venvs" / "llama-cpp"
SAMPLE_TEXT = (
    "The history of computing is a story of ideas that took decades to become practical. "
    "Early machines filled rooms, consumed enormous power and were programmed by hand. "
)
JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 40},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
        "role": {"enum": ["engineer", "designer", "manager"]},
        "remote": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "skills", "role", "remote"],
    "additionalProperties": False,
}
JSON_ASK = "Describe a fictional employee as JSON with name, age, city, skills, role and remote."


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tollgate bench engine", description=__doc__)
    parser.add_argument("--formats", default="f32,bf16,int8", help="comma-separated formats")
    parser.add_argument("--streams", default="1,8,16,32", help="concurrent decode streams")
    parser.add_argument("--sampled-streams", type=int, default=16, help="streams for sampling")
    parser.add_argument("--steps", type=int, default=32, help="timed decode steps per point")
    parser.add_argument(
        "--json-streams", type=int, default=8, help="concurrent requests, with and without schema"
    )
    parser.add_argument(
        "--json-tokens", type=int, default=512, help="completion tokens timed per schema mode"
    )
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prefill prompt length")
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--cold", action="store_true", help="start from an empty cache dir")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument(
        "--llama-streams", default="1,16", help="llama.cpp's streams (its row; '' for none)"
    )
    parser.add_argument("--llama-tokens", type=int, default=128, help="llama.cpp greedy tokens")
    parser.add_argument("--llama-threads", type=int, default=2)
    engine_prefix.add_arguments(parser)
    engine_chunked.add_arguments(parser)
    engine_profile.add_arguments(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def memory_bandwidth_gbs() -> float:
    """Read bandwidth of this machine (bytes per second, one reader per core, best of five),
    for the roofline: a decode step reads its weights and writes little. (A copy's figure
    halved, as this used, put the roofline under what the int8 kernels then ran at.)"""
    data = np.ones(64 * 1024 * 1024, dtype=np.float32)  # 256 MiB
    parts = np.array_split(data, os.cpu_count() or 1)
    best = float("inf")
    for _ in range(5):
        readers = [threading.Thread(target=np.max, args=(part,)) for part in parts]
        start = time.perf_counter()
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def _param_bytes(params: Any) -> int:
    import jax

    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(params))


def _measure(fmt: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything for one weight format, in this process."""
    import resource

    import jax

    from engine.config import EngineConfig
    from engine.engine import SlotSampling
    from engine.runtime import start_server

    streams = [int(s) for s in args.streams.split(",")]
    options: dict[str, Any] = {
        "weight_format": fmt,
        "decode_slots": max(*streams, args.sampled_streams),  # the sampled ones' slots too
        "max_context": args.max_context,
    }
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    config = EngineConfig(**options)
    started = time.perf_counter()
    server, times = start_server(config)
    ready = time.perf_counter() - started
    engine, tokenizer = server.engine, server.tokenizer
    structured = _structured(server, args.json_streams, args.json_tokens)
    server.close()  # drive the engine API directly from here on

    ids = tokenizer.encode(SAMPLE_TEXT * 40)[: args.prompt_tokens]
    jax.block_until_ready(engine.prefill(ids).k)  # compile this bucket
    start = time.perf_counter()
    reps = 3
    for _ in range(reps):
        jax.block_until_ready(engine.prefill(ids).k)
    prefill_tps = reps * len(ids) / (time.perf_counter() - start)

    short = tokenizer.encode(SAMPLE_TEXT)[:32]
    prefix = engine.prefill(short)
    greedy = SlotSampling(temperature=0.0)
    decode: dict[int, float] = {}
    for n in streams:
        state = engine.init_state()
        for slot in range(n):
            state = engine.insert(state, prefix, slot, short[-1], greedy)
        for _ in range(2):  # compile and warm this shape
            state, _ = engine.generate(state, full=False)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, _ = engine.generate(state, full=False)
        decode[n] = n * args.steps / (time.perf_counter() - start)
    # Sampled decoding (temperature 1, the OpenAI default) takes the full selection path.
    sampled = SlotSampling(temperature=1.0, key=(0, 1))
    n = args.sampled_streams
    state = engine.init_state()
    for slot in range(n):
        state = engine.insert(state, prefix, slot, short[-1], sampled)
    for _ in range(2):
        state, _ = engine.generate(state, full=True)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, _ = engine.generate(state, full=True)
    sampled_tps = n * args.steps / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "format": fmt,
        "ready_s": ready,
        "load_s": times.load,
        "warmup_compile_s": times.compile,
        "prefill_tokens": len(ids),
        "prefill_tps": prefill_tps,
        "decode_tps": decode,
        "sampled_tps": sampled_tps,
        **structured,
        "weights_mib": _param_bytes(engine.params) / 2**20,
        "peak_rss_mib": peak,
    }


def _structured(server: Any, streams: int, tokens: int) -> dict[str, float]:
    """Greedy chat requests, ``streams`` at a time, with then without the JSON schema.

    A finished request is replaced at once (a closed loop). The plain requests are given the
    constrained answers' mean length (no stop token), so both modes do the same prefill and
    decode work and differ only by the constraint. Two alternating rounds; the best of each.
    """
    from dataclasses import replace

    from engine.chat import render_gemma_chat
    from engine.constraints import Constraint
    from engine.serving import GenerationParams

    prompt = render_gemma_chat([_Message("user", JSON_ASK)])
    constrained = GenerationParams(
        max_tokens=96, temperature=0.0, constraint=Constraint(JSON_SCHEMA)
    )
    _closed_loop(server, prompt, constrained, streams, streams * 8)  # compile these shapes
    steps, seconds = server.constrained_steps, server.mask_seconds
    json_tps, answer_tokens = _closed_loop(server, prompt, constrained, streams, tokens)
    masked = max(server.constrained_steps - steps, 1)
    plain = replace(
        constrained, constraint=None, max_tokens=round(answer_tokens), stop_token_ids=()
    )
    _closed_loop(server, prompt, plain, streams, streams * 8)
    plain_tps, _ = _closed_loop(server, prompt, plain, streams, tokens)
    json_tps = max(json_tps, _closed_loop(server, prompt, constrained, streams, tokens)[0])
    plain_tps = max(plain_tps, _closed_loop(server, prompt, plain, streams, tokens)[0])
    return {
        "plain_tps": plain_tps,
        "json_tps": json_tps,
        "json_answer_tokens": answer_tokens,
        "mask_ms_per_step": 1e3 * (server.mask_seconds - seconds) / masked,
        "json_streams": streams,
    }


class _Message:
    def __init__(self, role: str, content: str) -> None:
        self.role = role
        self.content = content


def _closed_loop(
    server: Any, prompt: str, params: Any, streams: int, tokens: int
) -> tuple[float, float]:
    """Completion tokens per second, and per request, while ``streams`` requests run."""
    from engine.runtime import run_to_end

    lock = threading.Lock()
    made: list[int] = []

    def lane() -> None:
        while True:
            with lock:
                if sum(made) >= tokens:
                    return
            chunks = run_to_end(server, prompt, params)
            with lock:
                made.append(chunks[-1].completion_tokens)

    lanes = [threading.Thread(target=lane) for _ in range(streams)]
    start = time.perf_counter()
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    return sum(made) / (time.perf_counter() - start), sum(made) / max(len(made), 1)


def _run_child(fmt: str, argv: Sequence[str]) -> dict[str, Any]:
    code = "import sys; from bench.engine import main; main(sys.argv[1:])"
    out = subprocess.run(
        [sys.executable, "-c", code, *argv, "--child", fmt],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _llama_cpp(args: argparse.Namespace) -> dict[str, Any] | None:
    """llama.cpp's row on the same GGUF, from ``.venvs/llama-cpp`` (None when it is absent)."""
    python = LLAMA_CPP_ENV / "bin" / "python"
    if not args.llama_streams or not python.exists():
        return None
    from engine.gguf_loader import default_gguf_path

    print("bench engine: llama.cpp: measuring the same GGUF ...", file=sys.stderr, flush=True)
    argv = [
        str(python), str(Path(__file__).with_name("llama_cpp_row.py")),
        "--model", str(default_gguf_path()), "--threads", str(args.llama_threads),
        "--tokens", str(args.llama_tokens), "--streams", args.llama_streams,
        "--prompt-text", SAMPLE_TEXT, "--prompt-tokens", str(args.prompt_tokens),
    ]  # fmt: skip
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _print_table(results: list[dict[str, Any]], bandwidth: float) -> None:
    streams = sorted({int(n) for r in results for n in r["decode_tps"]})
    print(f"memory read bandwidth: {bandwidth:.1f} GB/s; 'str' = concurrent greedy streams;")
    print("'sampled' = temperature-1 streams (--sampled-streams); 'ready' = start to warm engine")
    print(
        "'plain'/'json' = greedy chat requests through the batch loop, --json-streams at a time,"
        " without/with a JSON schema, plain ones as long as the JSON answers ('json len');"
        " 'mask ms' = host time per step for the constrained rows' masks"
    )
    head = f"{'format':6} {'ready s':>8} {'load s':>7} {'warm s':>7} {'prefill t/s':>12}"
    head += "".join(f" {f'{n} str t/s':>11}" for n in streams)
    head += f" {'sampled t/s':>12} {'plain t/s':>10} {'json t/s':>9} {'json len':>9}"
    head += f" {'mask ms':>8}"
    head += f" {'weights MiB':>12} {'peak MiB':>9}"
    print(head)
    for r in results:
        if r["format"] == "llama.cpp":
            print(_llama_cpp_row(r, streams))
            continue
        row = f"{r['format']:6} {r['ready_s']:8.1f} {r['load_s']:7.1f} {r['warmup_compile_s']:7.1f}"
        row += f" {r['prefill_tps']:12.0f}"
        # llama.cpp's row may hold stream counts this run's formats were not measured at
        row += "".join(_tps(r["decode_tps"].get(str(n))) for n in streams)
        row += f" {r['sampled_tps']:12.1f} {r['plain_tps']:10.1f} {r['json_tps']:9.1f}"
        row += f" {r['json_answer_tokens']:9.1f} {r['mask_ms_per_step']:8.2f}"
        row += f" {r['weights_mib']:12.0f} {r['peak_rss_mib']:9.0f}"
        print(row)
    llama = [r for r in results if r["format"] == "llama.cpp"]
    if llama:
        r = llama[0]
        print(
            f"llama.cpp: llama-cpp-python {r['version']}, {r['threads']} threads, greedy,"
            f" {r['tokens']} tokens per stream (1 stream: its generate loop; more: one"
            " llama_decode per step over all streams); '-' = not measured"
        )
    elif not (LLAMA_CPP_ENV / "bin" / "python").exists():
        print(f"llama.cpp: not installed ({LLAMA_CPP_ENV} is absent); `make real-llama-cpp`"
              " builds it (8-20 min) and adds its row on the same GGUF")  # fmt: skip
    print("roofline (decode, weights read once per step, KV ignored): tokens/s <= streams x")
    for r in results:
        if r["format"] == "llama.cpp":
            continue
        steps = bandwidth * 1e9 / (r["weights_mib"] * 2**20)
        print(f"  {r['format']}: {steps:.0f} steps/s -> 1 stream <= {steps:.0f} tok/s")


def _tps(value: float | None) -> str:
    return f" {value:11.1f}" if value is not None else f" {'-':>11}"


def _llama_cpp_row(r: dict[str, Any], streams: list[int]) -> str:
    row = f"{'llama':6} {'-':>8} {'-':>7} {'-':>7} {r['prefill_tps']:12.0f}"
    for n in streams:
        tps = r["decode_tps"].get(str(n))
        row += f" {tps:11.1f}" if tps is not None else f" {'-':>11}"
    return row


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``tollgate bench engine``."""
    args = _parse(argv)
    if args.shared_prefix:
        engine_prefix.run(args)
        return 0
    if args.long_prompt:
        engine_chunked.run(args)
        return 0
    if args.profile:
        engine_profile.run(args)
        return 0
    if args.child:
        result = _measure(args.child, args)
        result["decode_tps"] = {str(k): v for k, v in result["decode_tps"].items()}
        print(json.dumps(result))
        return 0
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    results = []
    with tempfile.TemporaryDirectory() as cold_dir:
        for fmt in args.formats.split(","):
            child_args = list(passthrough)
            if args.cold and args.cache_dir is None:
                child_args += ["--cache-dir", str(Path(cold_dir) / fmt)]
            # Each format runs in a process of its own for tens of seconds: say so.
            print(f"bench engine: {fmt}: loading, compiling, measuring prefill and decode ...",
                  file=sys.stderr, flush=True)  # fmt: skip
            began = time.perf_counter()
            results.append(_run_child(fmt, child_args))
            print(f"bench engine: {fmt}: done in {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    llama = _llama_cpp(args)
    if llama is not None:
        results.append(llama)
    bandwidth = memory_bandwidth_gbs()
    if args.json:
        print(json.dumps({"bandwidth_gbs": bandwidth, "results": results}, indent=2))
    else:
        _print_table(results, bandwidth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
