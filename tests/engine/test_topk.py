"""The two-level top-k and argmax equal XLA's own, ties and ragged widths included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import topk


@pytest.mark.parametrize("width", [8192, 8192 + 77, 300])
@pytest.mark.parametrize("k", [1, 16, 17, 64])
def test_top_k_equals_lax_top_k(width: int, k: int) -> None:
    rng = np.random.default_rng(width * 100 + k)
    x = jnp.asarray(rng.standard_normal((3, width)), jnp.float32)
    values, ids = jax.jit(lambda a: topk.top_k(a, k, block=32))(x)
    want_values, want_ids = jax.lax.top_k(x, k)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want_values))
    assert ids.dtype == jnp.int32


def test_ties_keep_the_lower_index_first() -> None:
    """Equal values, across blocks and inside them, come out lowest index first, as TopK's."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 4, (4, 4096)).astype(np.float32)  # four values, ties everywhere
    x[1, :] = -np.inf  # a row masked out entirely (a constrained step with nothing allowed)
    x[2, 4000:] = 9.0  # the best values all in the last blocks
    for k in (1, 5, 40):
        ids = topk.top_k(jnp.asarray(x), k, block=64)[1]
        np.testing.assert_array_equal(np.asarray(ids), np.asarray(jax.lax.top_k(x, k)[1]))


def test_argmax_equals_numpy() -> None:
    x = np.random.default_rng(3).standard_normal((5, 262_144)).astype(np.float32)
    x[4, 17] = x[4, 200_000] = 99.0  # a tie: the first wins
    got = np.asarray(jax.jit(topk.argmax)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=1))
