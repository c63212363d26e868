"""The tiny random Gemma 3 as a Hugging Face checkpoint directory, for processes that load one.

``tollgate engine serve --model-path DIR`` reads it like any safetensors checkpoint, so a
server process starts in seconds with the same weights ``engine.tiny`` gives in-process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from engine.safetensors_loader import config_from_hf
from engine.tiny import random_tensors, tiny_config
from engine.tokenizer import GemmaTokenizer

# canonical per-layer name -> the transformers module it belongs to
_LAYER_NAMES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "q_norm": "self_attn.q_norm",
    "k_norm": "self_attn.k_norm",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "post_attn_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffn_norm": "post_feedforward_layernorm",
}


def _hf_config() -> dict[str, Any]:
    config = tiny_config(3)
    return {
        "model_type": "gemma3_text",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn_dim,
        "rms_norm_eps": config.norm_eps,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "rope_theta": config.rope_base_global,
        "rope_local_base_freq": config.rope_base_local,
        "sliding_window": config.sliding_window,
        "layer_types": [
            "sliding_attention" if local else "full_attention" for local in config.local_layers
        ],
        "max_position_embeddings": config.max_position,
    }


def _hf_name(canonical: str) -> str:
    if canonical == "embed":
        return "model.embed_tokens.weight"
    if canonical == "final_norm":
        return "model.norm.weight"
    _, index, part = canonical.split(".")
    return f"model.layers.{index}.{_LAYER_NAMES[part]}.weight"


def write_tiny_checkpoint(directory: Path, tokenizer: GemmaTokenizer, seed: int = 0) -> Path:
    """``config.json``, ``model.safetensors`` and ``tokenizer.model`` of the tiny Gemma 3."""
    hf = _hf_config()
    assert config_from_hf(hf) == tiny_config(3)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf))
    tensors = {
        # transformers stores Gemma's norm scales without the ``1 +`` the engine folds in.
        _hf_name(name): np.ascontiguousarray(value - 1.0 if name.endswith("norm") else value)
        for name, value in random_tensors(tiny_config(3), seed).items()
    }
    save_file(tensors, str(directory / "model.safetensors"))
    tokenizer.save(directory / "tokenizer.model")
    return directory
