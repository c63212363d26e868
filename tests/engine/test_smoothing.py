"""Smoothing before int8: exact in float32, and it narrows the int8 error on outlier channels."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from engine import model, smoothing
from engine.tiny import random_tensors, tiny_config
from engine.weights import Int8Weight, convert, to_pytree

TOKENS = list(range(5, 69))


def _logits(config: model.ModelConfig, tensors: dict[str, np.ndarray], fmt: str) -> np.ndarray:
    params = to_pytree(convert(tensors, fmt))  # type: ignore[arg-type]
    hidden, _, _ = model.prefill(config, params, jnp.asarray(TOKENS), jnp.int32(len(TOKENS)))
    return np.asarray(model.unembed(config, params, hidden))


def test_maxima_cover_every_matrix_input_of_every_layer() -> None:
    config = tiny_config(vocab_size=512)
    maxima = smoothing.input_maxima(config, random_tensors(config), TOKENS)
    assert len(maxima) == config.n_layers
    qkv, o, gate_up, down = maxima[0]
    assert qkv.shape == gate_up.shape == (config.d_model,)
    assert o.shape == (config.n_heads * config.head_dim,)
    assert down.shape == (config.ffn_dim,)
    assert all((m >= 0).all() and m.max() > 0 for layer in maxima for m in layer)


def test_smoothing_leaves_the_float_model_unchanged() -> None:
    config = tiny_config(vocab_size=512)
    tensors = random_tensors(config)
    maxima = smoothing.input_maxima(config, tensors, TOKENS)
    smoothed = smoothing.smooth(config, tensors, maxima)
    assert not np.allclose(smoothed["layers.0.up"], tensors["layers.0.up"])
    np.testing.assert_allclose(
        _logits(config, smoothed, "f32"), _logits(config, tensors, "f32"), rtol=1e-4, atol=1e-4
    )


def _int8(w: np.ndarray) -> Int8Weight:
    flat = convert({"embed": w}, "int8")
    return Int8Weight(jnp.asarray(flat["embed"]), jnp.asarray(flat["embed.scales"]))


def test_smoothing_narrows_int8_error_on_outlier_channels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (16, 256)).astype(np.float32)
    x[:, :4] *= 60.0  # a few huge channels, as Gemma's MLP activations have
    w = rng.normal(0, 0.05, (128, 256)).astype(np.float32)
    exact = x @ w.T
    plain = np.abs(np.asarray(model.linear(jnp.asarray(x), _int8(w))) - exact).mean()
    s = smoothing._factors(np.abs(x).max(axis=0), [w], smoothing.ALPHA)
    smoothed = np.asarray(model.linear(jnp.asarray(x / s), _int8(w * s)))
    assert np.abs(smoothed - exact).mean() < 0.5 * plain
