"""``tollgate bench engine --profile``: where one decode step's time goes, per XLA thunk.

The engine's greedy step is traced with ``jax.profiler`` over a few steps at each stream count.
Every thunk the trace shows is matched to its instruction in the compiled step (its output
shape and the JAX operation it came from) and summed into parts: the vocabulary-wide logits
dot, the layers' weight dots, top-k and sorting, and the rest of the device work (attention's
dots among it: XLA fuses them without naming the operation); what the step took beyond its
thunks is spent between them (dispatch, waits, the copy of the chosen tokens back). Thunks that
run at once on two threads can sum past the step's time, which then shows no time between.
Measure this before optimising the step: the split moves with the machine and the batch.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ")
_OP_NAME = re.compile(r"op_name=\"([^\"]+)\"")
_SHAPE = re.compile(r"^\(?[a-z0-9]+\[([\d,]*)\]")
PARTS = ("logits dot", "layer dots", "top-k", "other device work", "between thunks")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--profile`` options of ``tollgate bench engine``."""
    group = parser.add_argument_group("--profile")
    group.add_argument("--profile", action="store_true", help="split a decode step's time")
    group.add_argument("--profile-format", default="int8", help="weight format for it")
    group.add_argument("--profile-streams", default="1,16", help="greedy streams, comma-separated")
    group.add_argument("--profile-steps", type=int, default=20, help="traced steps per point")


def instructions(hlo_text: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each instruction of a compiled module's text: its output dimensions and the JAX op it
    came from ("" for one XLA added itself)."""
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        name, shape = match.groups()
        dims = _SHAPE.match(shape)
        sizes = tuple(int(d) for d in dims.group(1).split(",") if d) if dims else ()
        op = _OP_NAME.search(line)  # none on what XLA added itself (copies, bitcasts)
        found[name] = (sizes, op.group(1).rsplit("/", 1)[-1] if op else "")
    return found


def split(
    events: Iterable[Mapping[str, Any]],
    hlo: Mapping[str, tuple[tuple[int, ...], str]],
    vocab: int,
    steps: int,
    wall_s: float,
) -> dict[str, float]:
    """Milliseconds per step in each of ``PARTS``, from a trace's complete events."""
    parts: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") != "X":
            continue
        name = event.get("name", "")
        ms = float(event.get("dur", 0.0)) / 1000.0
        if name not in hlo:
            continue
        sizes, op = hlo[name]
        if op in ("dot_general", "ffi_call"):  # XLA's dots, or engine.kernels' int8 products
            parts["logits dot" if sizes and sizes[-1] == vocab else "layer dots"] += ms
        elif op in ("top_k", "sort"):
            parts["top-k"] += ms
        else:
            parts["other device work"] += ms
    per_step = {part: parts[part] / steps for part in PARTS[:-1]}
    per_step["between thunks"] = max(0.0, wall_s * 1000.0 / steps - sum(per_step.values()))
    return per_step


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The split at each stream count; returns it (also printed)."""
    import jax

    from engine.config import EngineConfig
    from engine.engine import SlotSampling
    from engine.runtime import start_server

    streams = [int(s) for s in args.profile_streams.split(",")]
    options: dict[str, Any] = {
        "weight_format": args.profile_format,
        "decode_slots": max(streams),
        "max_context": args.max_context,
    }
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    server, _ = start_server(EngineConfig(**options))
    engine, tokenizer = server.engine, server.tokenizer
    server.close()  # the engine is driven directly from here on
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)[:32]
    prefix = engine.prefill(prompt)
    results: dict[str, Any] = {"format": args.profile_format, "split_ms": {}}
    for n in streams:
        state = engine.init_state()
        for slot in range(n):
            state = engine.insert(state, prefix, slot, prompt[-1], SlotSampling(temperature=0.0))
        for _ in range(3):  # compiled and warm
            state, _ = engine.generate(state, full=False)
        hlo = instructions(engine.compiled_step_text(state))
        with tempfile.TemporaryDirectory() as folder:
            jax.profiler.start_trace(folder, create_perfetto_trace=True)
            began = time.perf_counter()
            for _ in range(args.profile_steps):
                state, _ = engine.generate(state, full=False)
            wall = time.perf_counter() - began
            jax.profiler.stop_trace()
            (path,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
            with gzip.open(path) as trace:
                events = json.load(trace)["traceEvents"]
        results["split_ms"][n] = {
            "step": wall * 1000.0 / args.profile_steps,
            **split(events, hlo, engine.config.vocab_size, args.profile_steps, wall),
        }
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"decode step split ({results['format']}, greedy, traced): ms per step")
    print(f"{'streams':>8} {'step':>7} " + " ".join(f"{p:>18}" for p in PARTS))
    for n, split_ms in results["split_ms"].items():
        print(f"{n:>8} {split_ms['step']:7.2f} " + " ".join(f"{split_ms[p]:18.2f}" for p in PARTS))
    print(
        "(traced steps run a little slower than untraced ones; 'between thunks' is the "
        "step's wall time less its thunks')"
    )
