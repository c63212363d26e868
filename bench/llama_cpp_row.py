"""llama.cpp's figures on the same GGUF, for ``tollgate bench engine``'s side-by-side row.

Run by the engine bench with ``.venvs/llama-cpp``'s interpreter (``make real-llama-cpp``), so it
imports only the standard library, numpy and llama_cpp, and prints one JSON line: prefill
tokens/s, single-stream greedy decode tokens/s (llama-cpp-python's own ``generate`` loop, as its
server runs it), and batched greedy decode tokens/s (several sequences per ``llama_decode``
call through the low-level API; llama-cpp-python's high-level API decodes one sequence).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from collections.abc import Sequence
from typing import Any

import llama_cpp  # type: ignore[import-not-found]  # .venvs/llama-cpp only
import numpy as np


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens per stream")
    parser.add_argument("--streams", default="1,16", help="concurrent decode streams")
    parser.add_argument("--prompt-text", required=True, help="text whose tokens are prompts")
    parser.add_argument("--prompt-tokens", type=int, default=512, help="prefill length")
    parser.add_argument("--decode-prompt-tokens", type=int, default=32)
    return parser.parse_args(argv)


def _single(llm: Any, prompt: list[int], tokens: int) -> float:
    """Greedy tokens/s of one stream: from the first token out to the last (prefill excluded)."""
    start = 0.0
    stream = llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)
    for made, _ in enumerate(stream):
        if made == 0:
            start = time.perf_counter()
        if made == tokens:
            break
    return tokens / (time.perf_counter() - start)


def _prefill(llm: Any, prompt: list[int]) -> float:
    best = float("inf")
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        best = min(best, time.perf_counter() - start)
    return len(prompt) / best


def _batched(llm: Any, prompt: list[int], streams: int, tokens: int, threads: int) -> float:
    """Greedy tokens/s in total for ``streams`` sequences decoded in one batch per step."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = streams * (len(prompt) + tokens + 8)
    params.n_batch = max(512, streams * len(prompt))
    params.n_ubatch = 512
    params.n_seq_max = streams
    params.kv_unified = True
    params.n_threads = threads
    params.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    vocab = llm.n_vocab()
    batch = llama_cpp.llama_batch_init(params.n_batch, 0, streams)
    try:

        def step(rows: list[tuple[int, int, int]]) -> np.ndarray:
            """Decode (token, position, sequence) rows; the next greedy token per sequence."""
            batch.n_tokens = len(rows)
            wanted = []
            for i, (token, position, seq) in enumerate(rows):
                batch.token[i], batch.pos[i] = token, position
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
                last = i == len(rows) - 1 or rows[i + 1][2] != seq
                batch.logits[i] = last
                wanted.append(last)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            pointer = llama_cpp.llama_get_logits(ctx)
            logits = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(sum(wanted), vocab)
            )
            return np.asarray(logits.argmax(axis=1), np.int64)

        rows = [(t, p, s) for s in range(streams) for p, t in enumerate(prompt[:-1])]
        for begin in range(0, len(rows), params.n_batch):
            chosen = step(rows[begin : begin + params.n_batch])
        chosen = step([(prompt[-1], len(prompt) - 1, s) for s in range(streams)])
        start = time.perf_counter()
        for k in range(tokens):
            position = len(prompt) + k
            chosen = step([(int(chosen[s]), position, s) for s in range(streams)])
        return streams * tokens / (time.perf_counter() - start)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def main(argv: Sequence[str] | None = None) -> int:
    """Print llama.cpp's prefill and decode figures as one JSON line."""
    args = _parse(argv)
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=args.prompt_tokens + args.tokens + 64,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    ids = llm.tokenize(args.prompt_text.encode() * 40, add_bos=True)
    long_prompt = ids[: args.prompt_tokens]
    short = ids[: args.decode_prompt_tokens]
    decode: dict[str, float] = {}
    for n in (int(s) for s in args.streams.split(",")):
        if n == 1:
            _single(llm, short, 8)  # warm
            decode["1"] = _single(llm, short, args.tokens)
        else:
            decode[str(n)] = _batched(llm, short, n, args.tokens, args.threads)
    result = {
        "format": "llama.cpp",
        "version": llama_cpp.__version__,
        "threads": args.threads,
        "tokens": args.tokens,
        "prefill_tokens": len(long_prompt),
        "prefill_tps": _prefill(llm, long_prompt),
        "decode_tps": decode,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
