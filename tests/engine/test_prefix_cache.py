"""The prefix cache on tiny random Gemmas: reused KV gives the same logits and tokens as none."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import generate_latest

from engine.constraints import Constraint
from engine.engine import GemmaEngine, Prefix
from engine.prefix_cache import PrefixIndex
from engine.runtime import run_to_end
from engine.server.metrics import ServerMetrics
from engine.serving import GenerationParams, GenerationServer
from engine.tiny import tiny_config, tiny_params
from tests.engine.tiny_servers import tiny_engine_config

BLOCK = 16
GREEDY = GenerationParams(max_tokens=12, temperature=0.0)
SYSTEM = "You are a terse assistant. Answer in one short sentence, in plain English. " * 3


def tiny_engine(family: int = 3, cache_tokens: int = 1024) -> GemmaEngine:
    config = tiny_config(family)
    options = tiny_engine_config(prefix_cache_tokens=cache_tokens, prefix_block_tokens=BLOCK)
    return GemmaEngine(config, tiny_params(config), options)


@pytest.fixture(scope="module")
def engine() -> GemmaEngine:
    """One engine (compiled once) for the tests below; each uses prompts of its own."""
    return tiny_engine()


def prompt(seed: int, length: int) -> list[int]:
    return [2, *np.random.default_rng(seed).integers(3, 5000, length - 1).tolist()]


def assert_same_prefill(cached: Prefix, plain: Prefix) -> None:
    """Same last logits and the same KV for every prompt position (float reassociation aside)."""
    n = len(plain.tokens)
    np.testing.assert_allclose(cached.last_logits, plain.last_logits, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(cached.k + cached.v, plain.k + plain.v, strict=True):
        np.testing.assert_allclose(mine[:n], theirs[:n], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", [2, 3])  # 2: sliding window across the cached part, soft-caps
def test_a_reused_prefix_gives_the_logits_of_a_full_prefill(family: int) -> None:
    engine = tiny_engine(family, cache_tokens=256)
    shared = prompt(0, 70)  # 4 whole blocks, then 6 tokens no later prompt shares
    engine.prefill_reusing([*shared, 11, 12, 13])
    second = [*shared, 21, 22, 23, 24]
    cached = engine.prefill_reusing(second)
    assert cached.cached == 64
    assert_same_prefill(cached, engine.prefill(second))
    stats = engine.prefix_stats()
    assert (stats.prompt_tokens, stats.cached_tokens) == (73 + 74, 64)


def test_a_prompt_that_is_exactly_a_cached_prefix_still_computes_its_last_token(
    engine: GemmaEngine,
) -> None:
    exact = prompt(1, 4 * BLOCK)
    engine.prefill_reusing([*exact, *prompt(2, 40)])  # caches these 4 blocks and more
    again = engine.prefill_reusing(exact)
    assert again.cached == 3 * BLOCK  # the last block is computed to get its logits
    assert_same_prefill(again, engine.prefill(exact))
    assert engine.prefill_reusing(exact).cached == 3 * BLOCK


def test_a_small_budget_evicts_the_least_recently_used_prefixes(engine: GemmaEngine) -> None:
    engine.prefix_index = PrefixIndex(4, BLOCK)  # room for four blocks (of the same pool)
    first, second = prompt(3, 3 * BLOCK + 5), prompt(4, 3 * BLOCK + 5)
    engine.prefill_reusing(first)
    engine.prefill_reusing(second)  # needs 3 blocks: two of the first prompt's go
    stats = engine.prefix_stats()
    assert (stats.blocks_used, stats.blocks) == (4, 4)
    # The first prompt's root block survived, its leaves did not.
    again = engine.prefill_reusing(first)
    assert again.cached == BLOCK
    assert_same_prefill(again, engine.prefill(first))
    # That re-cached the first prompt, evicting the second one's leaves in turn.
    assert engine.prefill_reusing(second).cached == BLOCK


def test_prompt_logprobs_skip_the_cache_but_fill_it(engine: GemmaEngine) -> None:
    text = prompt(5, 40)
    full = engine.prefill_reusing(text, reuse=False)
    assert full.cached == 0 and full.hidden.shape[0] >= 40
    assert engine.prefill_reusing(text).cached == 2 * BLOCK


def test_an_engine_without_a_cache_prefills_everything(engine: GemmaEngine) -> None:
    engine.prefix_index = None  # what prefix_cache_tokens=0 builds
    text = prompt(6, 40)
    assert engine.prefill_reusing(text).cached == engine.prefill_reusing(text).cached == 0
    assert engine.prefix_stats().hit_rate == 0.0


def answer(
    server: GenerationServer, ask: str, params: GenerationParams, reuse: bool
) -> tuple[list[int], str]:
    """Greedy token ids and text; ``reuse=False`` asks for prompt logprobs, whose prefill
    computes the whole prompt (the cache is not read)."""
    chunks = run_to_end(server, ask, params if reuse else replace(params, prompt_logprobs=0))
    return [t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks)


def test_greedy_answers_are_the_same_with_and_without_the_cache(
    tiny_server: GenerationServer,
) -> None:
    before = tiny_server.load()
    asks = [f"{SYSTEM}Question {i}: what is {i} plus {i}?" for i in range(4)]
    for ask in asks:
        without = answer(tiny_server, ask, GREEDY, reuse=False)
        assert answer(tiny_server, ask, GREEDY, reuse=True) == without
    after = tiny_server.load()
    block = tiny_server.config.prefix_block_tokens
    system_blocks = len(tiny_server.encode(SYSTEM)) // block * block
    assert after.cached_tokens - before.cached_tokens >= 4 * system_blocks > 0
    assert after.prompt_tokens > before.prompt_tokens


def test_constrained_requests_share_the_cache(tiny_server: GenerationServer) -> None:
    schema = {"enum": ["yes", "no"]}
    params = GenerationParams(max_tokens=8, temperature=0.0, constraint=Constraint(schema))
    ask = f"{SYSTEM}Is the sky blue? Answer yes or no."
    before = tiny_server.load().cached_tokens
    without = answer(tiny_server, ask, params, reuse=False)
    assert answer(tiny_server, ask, params, reuse=True) == without
    assert json.loads(without[1]) in ("yes", "no")
    assert tiny_server.load().cached_tokens > before


def test_the_metrics_report_the_hit_rate(tiny_server: GenerationServer) -> None:
    cached = tiny_server
    run_to_end(cached, f"{SYSTEM}Say hi.", GREEDY)
    body = generate_latest(ServerMetrics(cached.load, host="test").registry).decode()
    load = cached.load()
    assert (
        f'jetstream_prefix_cache_queries_total{{id="test",idx="0"}} {load.prompt_tokens:.1f}'
        in body
    )
    assert (
        f'jetstream_prefix_cache_hits_total{{id="test",idx="0"}} {load.cached_tokens:.1f}' in body
    )
    rate = [
        line for line in body.splitlines() if line.startswith("jetstream_prefix_cache_hit_rate{")
    ]
    assert float(rate[0].rsplit(" ", 1)[1]) == pytest.approx(load.prefix_hit_rate)
    assert 0 < load.prefix_hit_rate < 1
