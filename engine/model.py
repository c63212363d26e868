"""The Gemma family (1, 2, 3) in JAX: pure functions of (config, params, inputs).

Layers are unrolled over per-layer weights (a scan over stacked weights copies each layer's
slice on XLA:CPU). Entry points: ``prefill`` (one prompt) and ``decode`` (one token per slot).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp

from engine import kernels, topk
from engine.config import ModelConfig
from engine.weights import Int8Weight, Params

_CONTRACT_LAST = (((1,), (1,)), ((), ()))
RESCORED = 16  # int8 logits recomputed in float per row (see ``_rescore``)
KERNEL_ROWS = 64  # int8 products of at most this many rows (decode steps) run kernels/
_REST_STEPS = 254.0  # the remainder of a rounding (|r| <= 0.5) as int8 steps
_input_taps: list[jax.Array] | None = None  # set while a calibration pass is traced


@contextmanager
def tap_linear_inputs() -> Iterator[list[jax.Array]]:
    """While a function is traced inside this block, each ``linear`` call appends the largest
    |input| per channel (for calibrating int8 smoothing); costs nothing outside it."""
    global _input_taps
    taps: list[jax.Array] = []
    _input_taps = taps
    try:
        yield taps
    finally:
        _input_taps = None


def linear(x: jax.Array, w: Any, *, fine: bool = False) -> jax.Array:
    """``x @ w.T`` for a weight stored [out, in], in float32, bfloat16 or int8 (W8A8).

    ``fine``: an int8 weight meets the activation in two int8 parts (its rounding and the
    rounding's remainder, ~15 bits in all), one dot over twice the rows. The MLP's down
    projection takes it: its input (the gated GeLU) is the one int8 rounds worst, and
    rounding it cost more top-1 agreement with float32 than every other activation together.
    """
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if _input_taps is not None:
        _input_taps.append(jnp.max(jnp.abs(x2), axis=0))
    if isinstance(w, Int8Weight) and x2.shape[0] <= KERNEL_ROWS and kernels.available():
        # The same rounding and sums as below, by hand: XLA's int8 dot carries a fixed cost per
        # call that a decode step's 73 small products add up to, and scales in a second pass.
        y = kernels.int8_matmul(x2, w.values, w.scales, fine=fine)
    elif isinstance(w, Int8Weight):
        # Dynamic per-row activation quantization: an int8 x int8 -> int32 dot is far faster on
        # this CPU than dequantizing the weight to a float type first.
        x_scale = jnp.max(jnp.abs(x2), axis=-1, keepdims=True) / 127.0
        x_scale = jnp.where(x_scale == 0, 1.0, x_scale)
        scaled = x2 / x_scale
        xq = jnp.round(scaled)
        if fine:  # the remainders as extra rows of the same dot: the weight is read once
            xq = jnp.concatenate([xq, jnp.round((scaled - xq) * _REST_STEPS)])
        acc = jax.lax.dot_general(xq.astype(jnp.int8), w.values, _CONTRACT_LAST,
                                  preferred_element_type=jnp.int32).astype(jnp.float32)
        rows = x2.shape[0]
        total = acc[:rows] + acc[rows:] * (1.0 / _REST_STEPS) if fine else acc
        y = total * x_scale * w.scales
    elif w.dtype == jnp.bfloat16:
        y = jax.lax.dot_general(
            x2.astype(jnp.bfloat16),
            w,
            _CONTRACT_LAST,
            preferred_element_type=jnp.float32,
        )
    else:
        y = jax.lax.dot_general(x2, w, _CONTRACT_LAST, preferred_element_type=jnp.float32)
    return y.reshape(*shape[:-1], y.shape[-1])


def uses_kernels(params: Params) -> bool:
    """Whether a decode step's products run ``engine.kernels`` (int8 weights, kernels built)."""
    return isinstance(params["embed"], Int8Weight) and kernels.available()


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm; ``scale`` already includes Gemma's ``1 +``."""
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(variance + eps) * scale


def embed(config: ModelConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """Token embeddings scaled by sqrt(d_model)."""
    table = params["embed"]
    if isinstance(table, Int8Weight):
        rows = table.values[tokens].astype(jnp.float32) * table.scales[tokens][..., None]
    else:
        rows = table[tokens].astype(jnp.float32)
    return rows * jnp.float32(math.sqrt(config.d_model))


def unembed(config: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Final-normed hidden states -> logits through the tied embedding (soft-capped on Gemma 2)."""
    table = params["embed"]
    logits = linear(hidden, table)
    if isinstance(table, Int8Weight):
        logits = _rescore(hidden, table, logits)
    if config.final_softcap is not None:
        logits = jnp.tanh(logits / config.final_softcap) * config.final_softcap
    return logits


def _rescore(hidden: jax.Array, table: Int8Weight, logits: jax.Array) -> jax.Array:
    """The ``RESCORED`` highest int8 logits of each row recomputed from the unrounded hidden
    state: the activation's int8 rounding moves logits by more than the gap between the top
    candidates, where greedy decoding's choice and most of top-k/top-p's mass lie (the rest of
    the row keeps its int8 values)."""
    shape = logits.shape
    # Found, rescored and patched in the tiled shape the top-k reads: were the patch made
    # on the flat row, XLA:CPU would compute the int32 -> float scaling twice (once per shape).
    tiles = topk.tiled(logits.reshape(-1, shape[-1]), topk.block_for(shape[-1], RESCORED))
    ids = topk.top_k_tiles(tiles, RESCORED)[1]
    exact = _exact_logits(hidden, table, ids)
    rows = jnp.arange(tiles.shape[0])[:, None]
    tiles = tiles.at[rows, ids // tiles.shape[2], ids % tiles.shape[2]].set(exact)
    return tiles.reshape(tiles.shape[0], -1)[:, : shape[-1]].reshape(shape)


def _exact_logits(hidden: jax.Array, table: Int8Weight, ids: jax.Array) -> jax.Array:
    """Logits [R, K] of tokens ``ids`` [R, K] from the unrounded hidden states [R, D]."""
    h = hidden.reshape(-1, hidden.shape[-1]).astype(jnp.float32)
    rows = table.values[ids].astype(jnp.float32) * table.scales[ids][..., None]
    return jnp.einsum("rkd,rd->rk", rows, h)


def greedy_tokens(params: Params, hidden: jax.Array) -> jax.Array:
    """``argmax(unembed(hidden))`` per row of final-normed ``hidden`` [R, D], int32 [R],
    without building the full rescored logits: with an int8 table, the argmax of the rescored
    row is the best of its ``RESCORED`` rescored candidates and the next int8 logit (every
    other logit is at most that one). Gemma 2's soft-cap is monotonic, so it is left out."""
    table = params["embed"]
    logits = linear(hidden, table)
    if not isinstance(table, Int8Weight):
        return topk.argmax(logits)
    values, ids = topk.top_k(logits, RESCORED + 1)
    exact = _exact_logits(hidden, table, ids[:, :RESCORED])
    scores = jnp.concatenate([exact, values[:, RESCORED:]], axis=1)
    best = jnp.argmax(scores, axis=1)
    return jnp.take_along_axis(ids, best[:, None], axis=1)[:, 0]


def _rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin for [local, global] bases: shape [2, *positions.shape, head_dim // 2]."""
    half = config.head_dim // 2
    exponents = jnp.arange(half, dtype=jnp.float32) * 2.0 / config.head_dim
    tables = []
    for base, scale in (
        (config.rope_base_local, 1.0),
        (config.rope_base_global, config.rope_scale_global),
    ):
        inv_freq = 1.0 / (base**exponents)
        angles = (positions.astype(jnp.float32) / scale)[..., None] * inv_freq
        tables.append(angles)
    stacked = jnp.stack(tables)
    return jnp.cos(stacked), jnp.sin(stacked)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Split-halves (NeoX) rotation; x [..., heads, head_dim], cos/sin [..., head_dim/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[..., None, :], sin[..., None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def _softcap(scores: jax.Array, cap: float | None) -> jax.Array:
    return scores if cap is None else jnp.tanh(scores / cap) * cap


def _qkv(
    config: ModelConfig, layer: Params, x: jax.Array, cos: jax.Array, sin: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projected, QK-normed and rotated q [..., H, hd], k and v [..., KV, hd]."""
    hd = config.head_dim
    qkv = linear(x, layer["qkv"])
    q_size, kv_size = config.n_heads * hd, config.n_kv_heads * hd
    q = qkv[..., :q_size].reshape(*x.shape[:-1], config.n_heads, hd)
    k = qkv[..., q_size : q_size + kv_size].reshape(*x.shape[:-1], config.n_kv_heads, hd)
    v = qkv[..., q_size + kv_size :].reshape(*x.shape[:-1], config.n_kv_heads, hd)
    if config.qk_norm:
        q = rms_norm(q, layer["q_norm"], config.norm_eps)
        k = rms_norm(k, layer["k_norm"], config.norm_eps)
    q = _apply_rope(q, cos, sin) * (config.query_pre_attn_scalar**-0.5)
    k = _apply_rope(k, cos, sin)
    return q, k, v


def _mlp_and_residual(
    config: ModelConfig, layer: Params, h: jax.Array, attn_out: jax.Array
) -> jax.Array:
    """Attention output projection, residual, then the GeGLU MLP block with its residual."""
    o = linear(attn_out, layer["o"])
    if config.post_norms:
        o = rms_norm(o, layer["post_attn_norm"], config.norm_eps)
    h = h + o
    x = rms_norm(h, layer["ffn_norm"], config.norm_eps)
    gate, up = jnp.split(linear(x, layer["gate_up"]), 2, axis=-1)
    gated = jax.nn.gelu(gate, approximate=True) * up
    y = linear(gated, layer["down"], fine=True)
    if config.post_norms:
        y = rms_norm(y, layer["post_ffn_norm"], config.norm_eps)
    return h + y


def prefill(
    config: ModelConfig, params: Params, tokens: jax.Array, length: jax.Array
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Run one prompt of ``tokens`` [T] (first ``length`` real, the rest padding).

    Returns final-normed hidden states [T, D] and per-layer KV entries k, v [T, KV, hd].
    """
    del length  # padding sits after the real tokens, so causal masking already ignores it
    n = tokens.shape[0]
    positions = jnp.arange(n)
    cos, sin = _rope_tables(config, positions)
    distance = positions[:, None] - positions[None, :]
    causal = distance >= 0
    window = config.sliding_window or n
    local_mask = causal & (distance < window)
    groups = config.n_heads // config.n_kv_heads
    h = embed(config, params, tokens)
    ks: list[jax.Array] = []
    vs: list[jax.Array] = []
    for layer, is_local in zip(params["layers"], config.local_layers, strict=True):
        which = 0 if is_local else 1
        x = rms_norm(h, layer["attn_norm"], config.norm_eps)
        q, k, v = _qkv(config, layer, x, cos[which], sin[which])
        qg = q.reshape(n, config.n_kv_heads, groups, config.head_dim)
        scores = _softcap(jnp.einsum("qkgd,tkd->kgqt", qg, k), config.attn_softcap)
        scores = jnp.where(local_mask if is_local else causal, scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1)
        attn = jnp.einsum("kgqt,tkd->qkgd", probs, v).reshape(n, -1)
        h = _mlp_and_residual(config, layer, h, attn)
        ks.append(k)
        vs.append(v)
    return rms_norm(h, params["final_norm"], config.norm_eps), ks, vs


def store_kv(entries: jax.Array, storage: Any) -> jax.Array:
    """KV entries in the cache's storage type: float32, or bfloat16 kept as its uint16 bits.

    The bits matter on XLA:CPU: it widens bfloat16 arrays to float32 around an update, so an
    in-place write of one entry becomes a copy of the whole cache; integers update in place.
    """
    if storage == jnp.uint16:
        return jax.lax.bitcast_convert_type(entries.astype(jnp.bfloat16), jnp.uint16)
    return entries.astype(storage)


def attention_view(stored: jax.Array) -> jax.Array:
    """Cache entries in the type attention computes in: bfloat16 entries stay bfloat16 (dots
    accumulate in float32; widening the whole cache to float32 every step cost more than the
    dots), float32 entries stay float32."""
    if stored.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(stored, jnp.bfloat16)
    return stored


KEY_POSITIONS = 3  # the positions axis of a decode key cache [S, KV, hd, T]
VALUE_POSITIONS = 1  # ... of a value cache [S, T, KV, hd]


def _write(
    cache: jax.Array, rows: jax.Array, positions: jax.Array, entries: jax.Array, axis: int
) -> jax.Array:
    """One entry [KV, hd] per slot ``rows`` at ``positions`` along the cache's ``axis``."""
    at = (rows, *[slice(None)] * (axis - 1), positions)
    return cache.at[at].set(store_kv(entries, cache.dtype), mode="drop", unique_indices=True)


def decode_hidden(
    config: ModelConfig,
    params: Params,
    k_cache: Sequence[jax.Array],
    v_cache: Sequence[jax.Array],
    tokens: jax.Array,
    positions: jax.Array,
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """One token for each of the first R slots. ``tokens``/``positions`` [R]; per-layer caches
    ([S, KV, hd, T] keys, [S, T, KV, hd] values) with S >= R (slots past R are left alone,
    so a few active slots do not pay for all of them).

    The cache (in its storage type, see ``store_kv``) holds positions < ``positions[s]`` of
    slot s. Keys are held position-last, [S, KV, hd, T]: the order the score dot reads them in
    (held [S, T, KV, hd], as values are, XLA:CPU copied each layer's keys into it every step,
    a copy as large as the context). Returns the final-normed hidden states [R, D] and the
    updated caches (new entries written at ``positions``).
    """
    slots, capacity = tokens.shape[0], v_cache[0].shape[VALUE_POSITIONS]
    cos, sin = _rope_tables(config, positions)
    distance = positions[:, None] - jnp.arange(capacity)[None, :]
    causal = distance > 0  # strictly earlier positions live in the cache
    window = config.sliding_window or (capacity + 1)
    local_mask = causal & (distance < window)
    groups = config.n_heads // config.n_kv_heads
    rows = jnp.arange(slots)
    h = embed(config, params, tokens)
    new_k: list[jax.Array] = []
    new_v: list[jax.Array] = []
    for index, (layer, is_local) in enumerate(
        zip(params["layers"], config.local_layers, strict=True)
    ):
        which = 0 if is_local else 1
        x = rms_norm(h, layer["attn_norm"], config.norm_eps)
        q, k, v = _qkv(config, layer, x, cos[which], sin[which])
        # Write first (one entry per slot, in place), then attend over the cache including
        # this position. Slots whose position fell outside the bucket (inactive) are dropped.
        k_all = _write(k_cache[index], rows, positions, k, KEY_POSITIONS)
        v_all = _write(v_cache[index], rows, positions, v, VALUE_POSITIONS)
        k_past, v_past = attention_view(k_all[:slots]), attention_view(v_all[:slots])
        qg = q.reshape(slots, config.n_kv_heads, groups, config.head_dim).astype(k_past.dtype)
        scores = jnp.einsum("skgd,skdt->skgt", qg, k_past, preferred_element_type=jnp.float32)
        scores = _softcap(scores, config.attn_softcap)
        mask = (local_mask if is_local else causal) | (distance == 0)
        scores = jnp.where(mask[:, None, None, :], scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_past.dtype)
        attn = jnp.einsum("skgt,stkd->skgd", probs, v_past, preferred_element_type=jnp.float32)
        attn = attn.reshape(slots, -1)
        h = _mlp_and_residual(config, layer, h, attn)
        new_k.append(k_all)
        new_v.append(v_all)
    return rms_norm(h, params["final_norm"], config.norm_eps), new_k, new_v
