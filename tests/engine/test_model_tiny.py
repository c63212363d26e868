"""Tiny random Gemma 1/2/3 models: our JAX model vs transformers on the same weights.

The test writes a random transformers checkpoint (safetensors), which also exercises the
safetensors loader. Decoding step by step must reproduce the prefill logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import model
from engine.config import EngineConfig, ModelConfig
from engine.engine import DecodeState, GemmaEngine
from engine.safetensors_loader import read_safetensors_checkpoint
from engine.weights import Params, convert, to_pytree

SEQ = 24  # longer than the sliding window (8), so local masks matter


def hf_model(family: int) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    common: dict[str, Any] = {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "hidden_activation": "gelu_pytorch_tanh",
    }
    if family == 1:
        config = transformers.GemmaConfig(num_key_value_heads=4, **common)  # MHA
        cls = transformers.GemmaForCausalLM
    elif family == 2:
        config = transformers.Gemma2Config(
            num_key_value_heads=2, sliding_window=8, query_pre_attn_scalar=24, **common
        )  # GQA with soft-capping
        cls = transformers.Gemma2ForCausalLM
    else:
        config = transformers.Gemma3TextConfig(
            num_key_value_heads=1,
            sliding_window=8,
            query_pre_attn_scalar=32,
            sliding_window_pattern=2,
            **common,
        )  # MQA, QK-norm, local/global RoPE bases
        cls = transformers.Gemma3ForCausalLM
    torch.manual_seed(family)
    hf = cls(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            std = 1.0 if "embed" in name else (0.3 if "norm" in name else 0.15)
            param.normal_(0.0, std)
    return hf


def load_ours(directory: Path) -> tuple[ModelConfig, Params]:
    checkpoint = read_safetensors_checkpoint(directory)
    flat = convert(checkpoint.tensors, "f32")
    return checkpoint.config, to_pytree(flat)


@pytest.mark.reference
@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", [1, 2, 3])
def test_tiny_random_gemma_matches_transformers(family: int, tmp_path: Path) -> None:
    import torch

    hf = hf_model(family)
    hf.save_pretrained(tmp_path)
    config, params = load_ours(tmp_path)
    assert config.family == family
    tokens = np.random.default_rng(family).integers(0, 512, SEQ)
    with torch.no_grad():
        expected = hf(torch.tensor(tokens[None])).logits[0].numpy()
    hidden, _, _ = model.prefill(config, params, jnp.asarray(tokens), jnp.int32(SEQ))
    ours = np.asarray(model.unembed(config, params, hidden))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, atol=2e-4 * scale, rtol=0)


@pytest.mark.reference
@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", [2, 3])
def test_decode_steps_reproduce_prefill(family: int, tmp_path: Path) -> None:
    hf_model(family).save_pretrained(tmp_path)
    config, params = load_ours(tmp_path)
    tokens = np.random.default_rng(7).integers(0, 512, SEQ).astype(np.int32)
    hidden, _, _ = model.prefill(config, params, jnp.asarray(tokens), jnp.int32(SEQ))
    expected = np.asarray(model.unembed(config, params, hidden))
    engine_config = EngineConfig(
        decode_slots=2,
        max_context=64,
        prefill_buckets=(8, 64),
        kv_buckets=(16, 32, 64),
        compilation_cache=False,
    )
    engine = GemmaEngine(config, params, engine_config)
    state = engine.init_state()
    def step(
        p: Params, s: DecodeState, t: jax.Array, pos: jax.Array
    ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        hidden, k, v = model.decode_hidden(config, p, s.k, s.v, t, pos)
        return model.unembed(config, p, hidden), k, v

    decode = jax.jit(step)
    # Prefill 4 tokens, then feed the rest one at a time through the KV cache (growing buckets).
    prefix = engine.prefill(tokens[:4].tolist())
    from engine.engine import SlotSampling

    state = engine.insert(state, prefix, 1, int(tokens[4]), SlotSampling(temperature=0.0))
    for position in range(4, SEQ):
        state = engine.fit_capacity(state, position + 1)
        step_tokens = jnp.asarray([0, tokens[position]], jnp.int32)
        step_pos = jnp.asarray([0, position], jnp.int32)
        logits, k, v = decode(params, state, step_tokens, step_pos)
        state = state._replace(k=tuple(k), v=tuple(v))
        np.testing.assert_allclose(np.asarray(logits[1]), expected[position], atol=1e-3, rtol=1e-3)
