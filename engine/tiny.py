"""Tiny random Gemma models: the test engine that runs batching logic in milliseconds."""

from __future__ import annotations

import numpy as np

from engine.config import ModelConfig, WeightFormat, gemma2_local_layers, gemma3_local_layers
from engine.weights import MATRICES, Params, convert, to_pytree


def tiny_config(family: int = 3, vocab_size: int = 262_144, n_layers: int = 2) -> ModelConfig:
    """A small Gemma ``family`` config with the real vocabulary size (so the tokenizer fits)."""
    local = {
        1: (False,) * n_layers,
        2: gemma2_local_layers(n_layers),
        3: gemma3_local_layers(n_layers, every=2),
    }[family]
    return ModelConfig(
        family=family,
        vocab_size=vocab_size,
        d_model=64,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=1 if family == 3 else (2 if family == 2 else 4),
        head_dim=32,
        ffn_dim=128,
        query_pre_attn_scalar=32.0,
        rope_base_global=1_000_000.0 if family == 3 else 10_000.0,
        sliding_window=8 if family >= 2 else None,
        local_layers=local,
        attn_softcap=50.0 if family == 2 else None,
        final_softcap=30.0 if family == 2 else None,
        max_position=4096,
    )


def random_tensors(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical per-layer tensors with random values; norm scales include Gemma's ``1 +``."""
    rng = np.random.default_rng(seed)
    d, hd = config.d_model, config.head_dim
    shapes = {
        "q": (config.n_heads * hd, d),
        "k": (config.n_kv_heads * hd, d),
        "v": (config.n_kv_heads * hd, d),
        "o": (d, config.n_heads * hd),
        "gate": (config.ffn_dim, d),
        "up": (config.ffn_dim, d),
        "down": (d, config.ffn_dim),
    }
    norms = {"attn_norm": d, "ffn_norm": d}
    if config.post_norms:
        norms |= {"post_attn_norm": d, "post_ffn_norm": d}
    if config.qk_norm:
        norms |= {"q_norm": hd, "k_norm": hd}
    tensors = {
        "embed": rng.normal(0, 0.1, (config.vocab_size, d)).astype(np.float32),
        "final_norm": (1 + rng.normal(0, 0.1, d)).astype(np.float32),
    }
    for i in range(config.n_layers):
        for name, shape in shapes.items():
            scale = 1.0 / np.sqrt(shape[1])
            tensors[f"layers.{i}.{name}"] = rng.normal(0, scale, shape).astype(np.float32)
        for name, size in norms.items():
            tensors[f"layers.{i}.{name}"] = (1 + rng.normal(0, 0.1, size)).astype(np.float32)
    assert set(shapes) == set(MATRICES)
    return tensors


def tiny_params(config: ModelConfig, seed: int = 0, fmt: WeightFormat = "f32") -> Params:
    """Random parameters for ``config`` as the model functions take them."""
    return to_pytree(convert(random_tensors(config, seed), fmt))
