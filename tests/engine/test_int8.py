"""The int8 format's two refinements: the down projection's finer activation, and the top
logits recomputed from the unrounded hidden state."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from engine import model
from engine.tiny import random_tensors, tiny_config
from engine.weights import Int8Weight, convert, to_pytree


def _int8(w: np.ndarray) -> Int8Weight:
    flat = convert({"embed": w}, "int8")
    return Int8Weight(jnp.asarray(flat["embed"]), jnp.asarray(flat["embed.scales"]))


def _dequantized(w: Int8Weight) -> np.ndarray:
    values = np.asarray(w.values, np.float32)
    scaled: np.ndarray = values * np.asarray(w.scales)[:, None]
    return scaled


def test_fine_activation_leaves_only_the_weights_rounding() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 256)).astype(np.float32)
    x[:, 7] *= 40.0  # an outlier channel, as the gated GeLU has: it coarsens the row's scale
    w = _int8(rng.normal(size=(64, 256)).astype(np.float32))
    exact = x @ _dequantized(w).T
    coarse = np.asarray(model.linear(jnp.asarray(x), w))
    fine = np.asarray(model.linear(jnp.asarray(x), w, fine=True))
    coarse_err = np.abs(coarse - exact).max()
    fine_err = np.abs(fine - exact).max()
    assert fine_err < coarse_err / 50
    np.testing.assert_allclose(fine, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())


def test_top_logits_are_recomputed_from_the_unrounded_hidden_state() -> None:
    config = tiny_config(vocab_size=512)
    params = to_pytree(convert(random_tensors(config), "int8"))
    table = params["embed"]
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, config.d_model)).astype(np.float32)
    hidden[:, 0] *= 30.0
    logits = np.asarray(model.unembed(config, params, jnp.asarray(hidden)))
    exact = hidden @ _dequantized(table).T
    rounded = np.asarray(model.linear(jnp.asarray(hidden), table))
    for row in range(hidden.shape[0]):
        top = np.argsort(-rounded[row], kind="stable")[: model.RESCORED]
        np.testing.assert_allclose(logits[row, top], exact[row, top], rtol=1e-5, atol=1e-4)
        rest = np.setdiff1d(np.arange(config.vocab_size), top)
        np.testing.assert_array_equal(logits[row, rest], rounded[row, rest])
        assert logits[row].argmax() == exact[row].argmax()  # the tiny model's gaps are wide


def test_greedy_tokens_are_the_argmax_of_the_rescored_logits() -> None:
    """The greedy step never builds the rescored row, yet picks what its argmax would."""
    config = tiny_config(vocab_size=8192)
    params = to_pytree(convert(random_tensors(config), "int8"))
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(64, config.d_model)).astype(np.float32)
    hidden[:, :4] *= 30.0  # outlier channels: int8 activations then reorder the top logits
    logits = np.asarray(model.unembed(config, params, jnp.asarray(hidden)))
    tokens = np.asarray(model.greedy_tokens(params, jnp.asarray(hidden)))
    np.testing.assert_array_equal(tokens, logits.argmax(axis=1))
    rounded = np.asarray(model.linear(jnp.asarray(hidden), params["embed"]))
    top = np.argsort(-rounded, axis=1, kind="stable")
    assert (tokens != top[:, 0]).any()  # rescoring changed some choices: the case is exercised
    float_params = to_pytree(convert(random_tensors(config), "f32"))
    float_logits = model.unembed(config, float_params, jnp.asarray(hidden))
    float_tokens = np.asarray(model.greedy_tokens(float_params, jnp.asarray(hidden)))
    np.testing.assert_array_equal(float_tokens, np.asarray(float_logits).argmax(axis=1))
