"""Read a Hugging Face Gemma 1/2/3 checkpoint directory (config.json + *.safetensors)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from engine.config import ModelConfig, gemma2_local_layers, gemma3_local_layers
from engine.gguf_loader import Checkpoint

_DTYPES: dict[str, Any] = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F64": np.float64,
}

_LAYER_NAMES = {
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "self_attn.q_norm": "q_norm",
    "self_attn.k_norm": "k_norm",
    "mlp.gate_proj": "gate",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
    "input_layernorm": "attn_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffn_norm",
}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)\.weight$")


def read_safetensors_file(path: Path) -> dict[str, np.ndarray]:
    """Parse one .safetensors file (8-byte header size, JSON header, raw little-endian data)."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    header_size = int(np.frombuffer(raw[:8].tobytes(), dtype="<u8")[0])
    header = json.loads(raw[8 : 8 + header_size].tobytes())
    base = 8 + header_size
    tensors: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"{path.name}: unsupported dtype {spec['dtype']} for {name}")
        start, end = spec["data_offsets"]
        data = np.frombuffer(raw[base + start : base + end].tobytes(), dtype=dtype)
        tensors[name] = data.reshape(spec["shape"])
    return tensors


def _rope_theta(hf: dict[str, Any], kind: str, default: float) -> tuple[float, float]:
    """(base, linear scale) for 'full_attention' or 'sliding_attention' layers."""
    params = hf.get("rope_parameters") or {}
    entry = params.get(kind, params) if isinstance(params, dict) else {}
    base = entry.get("rope_theta")
    if base is None:
        legacy = "rope_local_base_freq" if kind == "sliding_attention" else "rope_theta"
        base = hf.get(legacy, default)
    scaling = entry if entry.get("rope_type") == "linear" else hf.get("rope_scaling") or {}
    scale = float(scaling.get("factor", 1.0)) if kind == "full_attention" else 1.0
    return float(base), scale


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Map a transformers Gemma/Gemma2/Gemma3(text) config.json onto ``ModelConfig``."""
    if "text_config" in hf:
        hf = {**hf["text_config"]}
    model_type = hf.get("model_type", "gemma")
    family = {"gemma": 1, "gemma2": 2, "gemma3": 3, "gemma3_text": 3}.get(model_type)
    if family is None:
        raise ValueError(f"unsupported model_type {model_type!r}")
    n_layers = int(hf["num_hidden_layers"])
    layer_types = hf.get("layer_types")
    if layer_types:
        local = tuple(t == "sliding_attention" for t in layer_types)
    elif family == 3:
        local = gemma3_local_layers(n_layers, int(hf.get("sliding_window_pattern", 6)))
    elif family == 2:
        local = gemma2_local_layers(n_layers)
    else:
        local = (False,) * n_layers
    head_dim = int(hf.get("head_dim", 256))
    global_base, global_scale = _rope_theta(hf, "full_attention", 10_000.0)
    local_base, _ = _rope_theta(hf, "sliding_attention", 10_000.0)
    return ModelConfig(
        family=family,
        vocab_size=int(hf["vocab_size"]),
        d_model=int(hf["hidden_size"]),
        n_layers=n_layers,
        n_heads=int(hf["num_attention_heads"]),
        n_kv_heads=int(hf.get("num_key_value_heads", hf["num_attention_heads"])),
        head_dim=head_dim,
        ffn_dim=int(hf["intermediate_size"]),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or head_dim),
        rope_base_global=global_base,
        rope_base_local=local_base if family == 3 else global_base,
        rope_scale_global=global_scale,
        sliding_window=hf.get("sliding_window") if family >= 2 else None,
        local_layers=local,
        attn_softcap=hf.get("attn_logit_softcapping") if family >= 2 else None,
        final_softcap=hf.get("final_logit_softcapping") if family >= 2 else None,
        max_position=int(hf.get("max_position_embeddings", 8192)),
    )


def _canonical(name: str, family: int) -> str | None:
    if name.endswith("embed_tokens.weight"):
        return "embed"
    match = _LAYER_RE.search(name)
    if match:
        index, part = match.groups()
        if part == "post_attention_layernorm":
            # Gemma 1 has no post-norms: its post_attention_layernorm is the pre-MLP norm.
            return f"layers.{index}.{'ffn_norm' if family == 1 else 'post_attn_norm'}"
        canonical = _LAYER_NAMES.get(part)
        return f"layers.{index}.{canonical}" if canonical else None
    if name.endswith("norm.weight") and "layers." not in name:
        return "final_norm"
    return None


def read_safetensors_checkpoint(directory: str | Path) -> Checkpoint:
    """Config and float32 tensors in canonical names; norms get Gemma's ``1 +`` folded in."""
    directory = Path(directory)
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    tensors: dict[str, np.ndarray] = {}
    for file in sorted(directory.glob("*.safetensors")):
        for name, array in read_safetensors_file(file).items():
            canonical = _canonical(name, config.family)
            if canonical is None:
                continue
            value = np.asarray(array, dtype=np.float32)
            if canonical.endswith("norm"):
                value = value + 1.0
            tensors[canonical] = value
    if "embed" not in tensors:
        raise ValueError(f"{directory}: no embed_tokens weight found")
    return Checkpoint(config=config, tensors=tensors)
