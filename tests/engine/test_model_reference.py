"""The JAX Gemma 3 agrees with transformers' Gemma 3 (CPU torch) on the real GGUF weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import model
from engine.config import EngineConfig
from engine.engine import GemmaEngine, SlotSampling
from engine.loading import LoadedModel, load_model

PROMPTS = [
    "def fibonacci(n):\n",
    "The capital of France is",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "1, 2, 3, 4, 5,",
]
LOGIT_ATOL = 2e-3  # float32 both sides; observed max |diff| ~3e-4 on logits of magnitude ~100


def reference_logits(reference_model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(reference_model(torch.tensor([ids])).logits[0].numpy())


def jax_logits(loaded: LoadedModel, ids: list[int]) -> np.ndarray:
    def forward(params: Any, tokens: jax.Array) -> jax.Array:
        hidden, _, _ = model.prefill(loaded.config, params, tokens, jnp.int32(0))
        return model.unembed(loaded.config, params, hidden)

    return np.asarray(jax.jit(forward)(loaded.params, jnp.asarray(ids)))


def greedy_ids(loaded: LoadedModel, ids: list[int], count: int) -> list[int]:
    config = EngineConfig(weight_format="f32", decode_slots=2, compilation_cache=False)
    engine = GemmaEngine(loaded.config, loaded.params, config)
    greedy = SlotSampling(temperature=0.0)
    prefix = engine.prefill(ids)
    first = int(engine.first_token(prefix, greedy, 0).tokens[0])
    state = engine.insert(engine.init_state(), prefix, 0, first, greedy)
    out = [first]
    for _ in range(count - 1):
        state, step = engine.generate(state, full=False)
        out.append(int(step.tokens[0]))
    return out


@pytest.mark.real_model
@pytest.mark.reference
@pytest.mark.timeout(300)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(
    real_f32: LoadedModel, reference_model: Any, prompt: str
) -> None:
    assert real_f32.tokenizer is not None
    ids = real_f32.tokenizer.encode(prompt)
    ours, theirs = jax_logits(real_f32, ids), reference_logits(reference_model, ids)
    np.testing.assert_allclose(ours, theirs, atol=LOGIT_ATOL, rtol=0)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@pytest.mark.real_model
@pytest.mark.reference
@pytest.mark.timeout(300)
@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_first_32_greedy_tokens_match_transformers(
    real_f32: LoadedModel, reference_model: Any, prompt: str
) -> None:
    import torch

    assert real_f32.tokenizer is not None
    ids = real_f32.tokenizer.encode(prompt)
    with torch.no_grad():
        generated = reference_model.generate(
            torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None
        )
    expected = generated[0, len(ids) :].tolist()
    assert greedy_ids(real_f32, ids, 32) == expected


@pytest.mark.real_model
@pytest.mark.timeout(120)
def test_fibonacci_continuation(real_f32: LoadedModel) -> None:
    assert real_f32.tokenizer is not None
    ids = greedy_ids(real_f32, real_f32.tokenizer.encode("def fibonacci(n):\n"), 12)
    assert real_f32.tokenizer.decode(ids).startswith("    if n == 0:\n        return 0")


@pytest.mark.real_model
@pytest.mark.reference
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("fmt", "min_agreement"), [("bf16", 0.95), ("int8", 0.7)])
def test_compact_formats_track_the_reference(
    reference_model: Any, fmt: str, min_agreement: float
) -> None:
    """bf16 and int8 weights: top-1 agreement with the f32 reference on prompt positions.

    int8 quantizes activations per row too (W8A8, for speed), which costs accuracy: ~78% here,
    against ~96% with float activations over the same int8 weights.
    """
    loaded = load_model(EngineConfig(weight_format=fmt))  # type: ignore[arg-type]
    assert loaded.tokenizer is not None
    agree, total = 0, 0
    for prompt in PROMPTS:
        ids = loaded.tokenizer.encode(prompt)
        ours, theirs = jax_logits(loaded, ids), reference_logits(reference_model, ids)
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += len(ids)
    assert agree / total >= min_agreement
    jax.clear_caches()
