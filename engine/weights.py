"""Model parameters as a pytree: stacking per-layer tensors, f32/bf16/int8 formats, disk cache."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from engine.config import ModelConfig, WeightFormat

# Matrices are stored [out, in]: contracting on the weight's last axis is the fast path on CPU.
MATRICES = ("q", "k", "v", "o", "gate", "up", "down")
NORMS = ("attn_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm", "q_norm", "k_norm")

Params = dict[str, Any]


class Int8Weight(NamedTuple):
    """A matrix as int8 values with one float32 scale per output channel (row)."""

    values: jax.Array
    scales: jax.Array


def _quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scales = np.abs(w).max(axis=-1) / 127.0
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    values = np.clip(np.rint(w / scales[..., None]), -127, 127).astype(np.int8)
    return values, scales


def convert(tensors: Mapping[str, np.ndarray], fmt: WeightFormat) -> dict[str, np.ndarray]:
    """Flat numpy arrays in the target format; int8 matrices become ``name`` + ``name.scales``."""
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        is_matrix = name == "embed" or name.split(".")[-1] in MATRICES
        if not is_matrix or fmt == "f32":
            out[name] = np.asarray(array, dtype=np.float32)
        elif fmt == "bf16":
            out[name] = np.asarray(array, dtype=np.float32).astype(ml_dtypes.bfloat16)
        else:
            out[name], out[f"{name}.scales"] = _quantize_int8(np.asarray(array, np.float32))
    return out


def to_pytree(flat: Mapping[str, np.ndarray]) -> Params:
    """Flat arrays -> the pytree the model takes: ``layers`` is a list of per-layer dicts.

    Layers stay separate arrays rather than one stacked array per name: slicing a layer out of
    a stacked weight inside a jitted step copies it on XLA:CPU, which cost more than the matmul.
    """
    params: Params = {}
    layers: dict[int, dict[str, Any]] = {}
    for name, array in flat.items():
        if name.endswith(".scales"):
            continue
        value: Any = jnp.asarray(array)
        scales = flat.get(f"{name}.scales")
        if scales is not None:
            value = Int8Weight(value, jnp.asarray(scales))
        if name.startswith("layers."):
            _, index, leaf = name.split(".", 2)
            layers.setdefault(int(index), {})[leaf] = value
        else:
            params[name] = value
    params["layers"] = [_fuse(layers[i]) for i in sorted(layers)]
    return params


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], Int8Weight):
        return Int8Weight(
            jnp.concatenate([p.values for p in parts]), jnp.concatenate([p.scales for p in parts])
        )
    return jnp.concatenate(parts)


def _fuse(layer: dict[str, Any]) -> dict[str, Any]:
    """Matrices that read the same input become one: q|k|v and gate|up (fewer, larger dots)."""
    fused = {k: v for k, v in layer.items() if k not in ("q", "k", "v", "gate", "up")}
    fused["qkv"] = _concat([layer["q"], layer["k"], layer["v"]])
    fused["gate_up"] = _concat([layer["gate"], layer["up"]])
    return fused


def save_flat(directory: Path, flat: Mapping[str, np.ndarray], config: ModelConfig) -> None:
    """Write converted weights (one .npy per array) and the config; atomic by rename."""
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    dtypes: dict[str, str] = {}
    for name, array in flat.items():
        dtypes[name] = str(array.dtype)
        stored = array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array
        np.save(tmp / f"{name}.npy", stored)
    config_dict = {k: getattr(config, k) for k in config.__dataclass_fields__}
    (tmp / "manifest.json").write_text(json.dumps({"config": config_dict, "dtypes": dtypes}))
    tmp.rename(directory)


def load_flat(directory: Path) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """Read what ``save_flat`` wrote (memory-mapped, so only pages used are read)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    raw = manifest["config"]
    raw["local_layers"] = tuple(raw["local_layers"])
    config = ModelConfig(**raw)
    flat: dict[str, np.ndarray] = {}
    for name, dtype in manifest["dtypes"].items():
        array = np.load(directory / f"{name}.npy", mmap_mode="r")
        if dtype == "bfloat16":
            array = array.view(ml_dtypes.bfloat16)
        flat[name] = array
    return flat, config
