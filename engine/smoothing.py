"""SmoothQuant-style smoothing before int8 conversion: move activation outliers into weights.

The int8 format quantizes each activation row with one scale, so a few channels with large
values (Gemma's MLP has them) crush the rest to a handful of levels. For a matrix ``W`` whose
input ``x`` can be rescaled upstream at no cost, ``W x = (W diag(s)) (x / s)`` exactly; choosing
``s_j = max|x_j|^a / max|W_:,j|^(1-a)`` evens out both operands' ranges before quantizing.

Where the division by ``s`` goes (exact in float32, done once at conversion):
- q|k|v read ``rms_norm(h) * attn_norm``: divide ``attn_norm``;
- gate|up read ``rms_norm(h) * ffn_norm``: divide ``ffn_norm``;
- down reads ``gelu(gate) * up``: divide the rows of ``up``.
The attention output projection is left alone (its int8 error is small). ``max|x_j|`` comes
from one float32 prefill of ``CALIBRATION_TEXT``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine import model
from engine.config import ModelConfig
from engine.weights import Params, convert, to_pytree

ALPHA = 0.5  # how much of the outlier range moves into the weights
CALIBRATION_TEXT = """\
The committee met on Tuesday to review the budget for the coming year. Revenue grew by 4.7 percent,
while costs rose faster than expected, mostly because of energy prices and new hires in support.

def merge_sorted(a: list[int], b: list[int]) -> list[int]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]

<start_of_turn>user
Can you explain why the sky looks blue during the day but red at sunset?<end_of_turn>
<start_of_turn>model
Sunlight is scattered by the molecules of the air, and short (blue) wavelengths scatter the most.
At sunset the light crosses much more air, so most of the blue is scattered away before it
reaches you.

| city | population | area km² |
|------|-----------:|---------:|
| Lyon | 522,250 | 47.87 |
| Graz | 291,072 | 127.6 |

Der schnelle braune Fuchs springt über den faulen Hund. 東京は日本の首都です。
¿Dónde está la estación?
SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;
"""


def input_maxima(
    config: ModelConfig, tensors: Mapping[str, np.ndarray], token_ids: Sequence[int]
) -> list[list[np.ndarray]]:
    """Per layer, the largest |input| per channel of [qkv, o, gate_up, down] over a prefill."""
    params = to_pytree(convert(tensors, "f32"))
    tokens = jnp.asarray(np.asarray(token_ids, np.int32))

    def run(p: Params, t: jax.Array) -> list[jax.Array]:
        with model.tap_linear_inputs() as taps:
            model.prefill(config, p, t, jnp.int32(t.shape[0]))
        return taps

    taps = [np.asarray(t) for t in jax.jit(run)(params, tokens)]
    per_layer = 4  # qkv, o, gate_up, down: the order ``model.prefill`` calls them in
    return [taps[i : i + per_layer] for i in range(0, per_layer * config.n_layers, per_layer)]


def smooth(
    config: ModelConfig,
    tensors: Mapping[str, np.ndarray],
    maxima: Sequence[Sequence[np.ndarray]],
    alpha: float = ALPHA,
) -> dict[str, np.ndarray]:
    """The same model with the smoothing factors folded in (see the module doc); the tensors
    it changes come back as float32, the others as they were."""
    out = dict(tensors)  # untouched tensors (the embedding is most of the bytes) pass through
    for i in range(config.n_layers):
        qkv_in, _, gate_up_in, down_in = maxima[i]
        layer = f"layers.{i}."
        for name in ("attn_norm", "ffn_norm", "q", "k", "v", "gate", "up", "down"):
            out[layer + name] = np.asarray(out[layer + name], np.float32)
        s = _factors(qkv_in, [out[layer + n] for n in ("q", "k", "v")], alpha)
        out[layer + "attn_norm"] = out[layer + "attn_norm"] / s
        for n in ("q", "k", "v"):
            out[layer + n] = out[layer + n] * s[None, :]
        s = _factors(gate_up_in, [out[layer + n] for n in ("gate", "up")], alpha)
        out[layer + "ffn_norm"] = out[layer + "ffn_norm"] / s
        for n in ("gate", "up"):
            out[layer + n] = out[layer + n] * s[None, :]
        s = _factors(down_in, [out[layer + "down"]], alpha)
        out[layer + "up"] = out[layer + "up"] / s[:, None]
        out[layer + "down"] = out[layer + "down"] * s[None, :]
    return out


def _factors(act_max: np.ndarray, weights: Sequence[np.ndarray], alpha: float) -> np.ndarray:
    w_max = np.max([np.abs(w).max(axis=0) for w in weights], axis=0)
    s = np.power(np.maximum(act_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
    return np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)
