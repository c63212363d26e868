"""How closely each weight format follows float32: the embedded engine's accuracy figures.

Run as ``tollgate bench engine-accuracy`` or ``python -m bench.engine_accuracy``. One prefill
of a fixed text (this repository's README, its first ``--tokens`` tokens) per format; at every
position, is the most likely next token the same as float32's, and how far do the logits move?
Figures are printed, never judged.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

TEXT = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: print top-1 agreement and logit error per format."""
    parser = argparse.ArgumentParser(prog="tollgate bench engine-accuracy", description=__doc__)
    parser.add_argument("--formats", default="bf16,int8", help="formats compared with f32")
    parser.add_argument("--tokens", type=int, default=512, help="prefill length")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from engine import model
    from engine.config import EngineConfig, WeightFormat
    from engine.loading import load_model
    from engine.weights import Params

    reference = load_model(EngineConfig(weight_format="f32"))
    if reference.tokenizer is None:
        raise SystemExit("the model has no tokenizer")
    ids = reference.tokenizer.encode(TEXT.read_text())[: args.tokens]
    tokens = jnp.asarray(np.asarray(ids, np.int32))
    config = reference.config

    @jax.jit
    def logits(params: Params) -> jax.Array:
        hidden, _, _ = model.prefill(config, params, tokens, jnp.int32(len(ids)))
        return model.unembed(config, params, hidden)

    expected = np.asarray(logits(reference.params))
    del reference
    print(f"{len(ids)} positions of {TEXT.name}; reference f32")
    print(f"{'format':6} {'top-1 agreement':>16} {'mean max |Δlogit|':>18}")
    for fmt in args.formats.split(","):
        loaded = load_model(EngineConfig(weight_format=cast(WeightFormat, fmt)))
        got = np.asarray(logits(loaded.params))
        agreement = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
        error = float(np.abs(got - expected).max(-1).mean())
        print(f"{fmt:6} {agreement:16.1%} {error:18.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
