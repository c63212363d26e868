"""The hand-written int8 products (engine/kernels) against XLA's dot, on both instruction sets."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import kernels, model
from engine.tiny import random_tensors, tiny_config
from engine.weights import Int8Weight, convert, to_pytree

pytestmark = pytest.mark.skipif(not kernels.available(), reason="no kernels on this machine")


def _weight(rng: np.random.Generator, n: int, k: int) -> Int8Weight:
    flat = convert({"embed": rng.normal(size=(n, k)).astype(np.float32)}, "int8")
    return Int8Weight(jnp.asarray(flat["embed"]), jnp.asarray(flat["embed.scales"]))


def _xla(x: np.ndarray, w: Int8Weight, fine: bool, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        patch.setattr(model, "KERNEL_ROWS", 0)
        return np.asarray(model.linear(jnp.asarray(x), w, fine=fine))


@pytest.mark.parametrize("fine", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 5, 16, 33])
@pytest.mark.parametrize("k", [100, 640])
def test_int8_matmul_equals_xla_dot(
    rows: int, k: int, fine: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same rounding, same integer sums: equal within float32 rounding of the scaling (XLA
    multiplies the two scales in an order of its own; the remainders' sums are scaled before
    they are added here, after in XLA; a remainder on a rounding tie may land one step apart,
    a 1/254 of one activation step)."""
    rng = np.random.default_rng(rows * 1000 + k)
    w = _weight(rng, 72, k)
    x = rng.normal(size=(rows, k)).astype(np.float32)
    x[:, 3] *= 25.0  # an outlier channel: the rounding's remainders matter
    x[rows - 1] = 0.0  # an all-zero row keeps a scale of 1, as in XLA
    expected = _xla(x, w, fine, monkeypatch)
    got = np.asarray(kernels.int8_matmul(jnp.asarray(x), w.values, w.scales, fine=fine))
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-5 * np.abs(expected).max())


def test_linear_takes_the_kernel_for_decode_rows_only() -> None:
    """Decode steps' few rows go to the kernel; a prefill's many rows stay with XLA's dot."""
    w = _weight(np.random.default_rng(1), 32, 64)

    def lowered(rows: int) -> str:
        return jax.jit(lambda x: model.linear(x, w)).lower(jnp.zeros((rows, 64))).as_text()

    small, large = lowered(4), lowered(model.KERNEL_ROWS + 1)
    assert "tollgate_int8_matmul" in small
    assert "tollgate_int8_matmul" not in large


def test_decode_step_with_kernels_matches_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole int8 decode step (every projection and the logits) through the kernels."""
    config = tiny_config(vocab_size=4096, n_layers=2)
    params = to_pytree(convert(random_tensors(config), "int8"))
    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.normal(size=(6, config.d_model)).astype(np.float32))
    with_kernels = np.asarray(model.unembed(config, params, hidden))
    tokens = np.asarray(model.greedy_tokens(params, hidden))
    monkeypatch.setattr(model, "KERNEL_ROWS", 0)
    with_xla = np.asarray(model.unembed(config, params, hidden))
    np.testing.assert_allclose(with_kernels, with_xla, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(tokens, np.asarray(model.greedy_tokens(params, hidden)))


def _run(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip()


def test_avx2_path_equals_xla_dot() -> None:
    """The AVX2 variant (picked where AVX-512 VNNI is absent), forced in a fresh process."""
    code = """
import jax.numpy as jnp, numpy as np
from engine import kernels, model
from engine.weights import Int8Weight, convert
rng = np.random.default_rng(0)
worst = 0.0
for rows, k, fine in [(1, 640, False), (3, 100, True), (16, 96, False), (9, 2048, True)]:
    flat = convert({"embed": rng.normal(size=(40, k)).astype(np.float32)}, "int8")
    w = Int8Weight(jnp.asarray(flat["embed"]), jnp.asarray(flat["embed.scales"]))
    x = jnp.asarray(rng.normal(size=(rows, k)).astype(np.float32))
    got = np.asarray(kernels.int8_matmul(x, w.values, w.scales, fine=fine))
    model.KERNEL_ROWS = 0
    want = np.asarray(model.linear(x, w, fine=fine))
    model.KERNEL_ROWS = 64
    worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
print(kernels.isa(), worst)
"""
    isa, worst = _run(code, TOLLGATE_KERNEL_ISA="avx2").split()
    assert isa == "avx2"
    assert float(worst) < 1e-5


def test_kernels_off_keeps_xla() -> None:
    code = "from engine import kernels; print(kernels.available())"
    assert _run(code, TOLLGATE_KERNELS="off") == "False"
