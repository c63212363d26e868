"""Prefill continuation: a prompt's remaining tokens, attending to KV computed before.

The prompt's KV lives in one buffer per layer, indexed by position: entries before ``start``
are given (from the prefix cache, or an earlier chunk), the new tokens' entries are written at
their positions, and each new token attends to every entry up to its own position. Built from
``engine.model``'s layer pieces, so it computes exactly what ``model.prefill`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from engine import model
from engine.config import ModelConfig
from engine.weights import Params


def prefill_after(
    config: ModelConfig,
    params: Params,
    past_k: Sequence[jax.Array],
    past_v: Sequence[jax.Array],
    tokens: jax.Array,
    start: jax.Array,
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Run ``tokens`` [B] at positions ``start``.. over per-layer buffers [T, KV, hd].

    The buffers (in the cache's storage type) hold positions < ``start``; padding tokens past
    the prompt may fall beyond T and are dropped. Returns final-normed hidden states [B, D] and
    the buffers with the new entries written.
    """
    n, capacity = tokens.shape[0], past_k[0].shape[0]
    positions = start + jnp.arange(n)
    cos, sin = model._rope_tables(config, positions)
    distance = positions[:, None] - jnp.arange(capacity)[None, :]
    causal = distance >= 0
    window = config.sliding_window or (capacity + 1)
    local_mask = causal & (distance < window)
    groups = config.n_heads // config.n_kv_heads
    h = model.embed(config, params, tokens)
    ks: list[jax.Array] = []
    vs: list[jax.Array] = []
    for index, (layer, is_local) in enumerate(
        zip(params["layers"], config.local_layers, strict=True)
    ):
        which = 0 if is_local else 1
        x = model.rms_norm(h, layer["attn_norm"], config.norm_eps)
        q, k, v = model._qkv(config, layer, x, cos[which], sin[which])
        k_all = _write(past_k[index], positions, k)
        v_all = _write(past_v[index], positions, v)
        keys = model.attention_view(k_all).astype(jnp.float32)
        values = model.attention_view(v_all).astype(jnp.float32)
        qg = q.reshape(n, config.n_kv_heads, groups, config.head_dim)
        scores = model._softcap(jnp.einsum("qkgd,tkd->kgqt", qg, keys), config.attn_softcap)
        scores = jnp.where(local_mask if is_local else causal, scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1)
        attn = jnp.einsum("kgqt,tkd->qkgd", probs, values).reshape(n, -1)
        h = model._mlp_and_residual(config, layer, h, attn)
        ks.append(k_all)
        vs.append(v_all)
    return model.rms_norm(h, params["final_norm"], config.norm_eps), ks, vs


def _write(buffer: jax.Array, positions: jax.Array, entries: jax.Array) -> jax.Array:
    return buffer.at[positions].set(
        model.store_kv(entries, buffer.dtype), mode="drop", unique_indices=True
    )
