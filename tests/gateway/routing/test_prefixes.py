"""Prefix-aware routing: the index of what was sent where, and the router's use of it."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from adapters.base import Capabilities, LoadSnapshot
from gateway.routing.policies import Objectives
from gateway.routing.prefixes import BLOCK_CHARS, PrefixIndex, PromptBlocks
from gateway.routing.router import Router
from gateway.settings import BackendSettings, RoutingSettings
from tests.gateway.doubles import ScriptedBackend

pytestmark = pytest.mark.timeout(10)

PRIOR = {"max_concurrency": 4, "ttft_s": 0.2, "tpot_s": 0.01}


def test_blocks_chain_and_leave_the_partial_block_out() -> None:
    text = "a" * BLOCK_CHARS + "b" * BLOCK_CHARS + "c" * 10
    blocks = PromptBlocks.of(text)
    assert len(blocks.hashes) == 2 and blocks.chars == len(text)
    other = PromptBlocks.of("z" * BLOCK_CHARS + "b" * BLOCK_CHARS)
    assert other.hashes[1] != blocks.hashes[1]  # same text, different prefix: not the same block
    assert PromptBlocks.of("short").hashes == ()
    assert blocks.cached_tokens(2, 100) == 100 * 2 * BLOCK_CHARS // len(text)
    assert PromptBlocks.of("a" * BLOCK_CHARS).cached_tokens(1, 100) == 99  # one is computed
    assert blocks.cached_tokens(1, 100) == 100 * BLOCK_CHARS // len(text)
    assert blocks.cached_tokens(1, 0) == 0


def test_index_matches_the_shared_prefix_and_forgets_the_oldest() -> None:
    index = PrefixIndex(capacity=4)
    system = "s" * (2 * BLOCK_CHARS)
    first = PromptBlocks.of(system + "q" * BLOCK_CHARS)
    index.sent("a", first)
    assert index.matched("a", first) == 3
    assert index.matched("b", first) == 0
    assert index.matched("a", PromptBlocks.of(system + "r" * BLOCK_CHARS)) == 2
    index.sent("a", PromptBlocks.of("x" * (2 * BLOCK_CHARS)))  # 5 blocks > 4: the oldest goes
    assert index.matched("a", first) == 0


def _router(policy_prices: dict[str, Any] | None = None) -> Router:
    configs = [
        BackendSettings.model_validate({
            "name": name, "kind": "vllm", "url": "http://x", "models": {"m": "m"},
            "price": policy_prices or {"usd_per_hour": 2.0}, "capacity": PRIOR,
        })
        for name in ("r1", "r2")
    ]  # fmt: skip
    caps = Capabilities(chat=True, prefix_cache=True)
    backends = [ScriptedBackend(c.name, models=c.models, capabilities=caps) for c in configs]
    router = Router(backends, {c.name: c for c in configs}, RoutingSettings(explore_share=0),
                    seed=3)  # fmt: skip
    for b in backends:
        router.observe_load(b.name, LoadSnapshot(healthy=True, running=0, waiting=0))
    return router


def _route(router: Router, policy: str, text: str, *, hold: bool = False) -> str:
    blocks = PromptBlocks.of(text)
    plan = router.plan(router.backends, policy, Objectives(), len(text) // 4, 64, blocks)
    name = plan[0].backend.name
    router.attempt_started(name, retry=False, prompt=blocks)
    if not hold:
        router.finished(name, ok=True, output_tokens=64, decode_s=0.6)
    return name


@pytest.mark.parametrize("policy", ["cost", "latency", "balanced"])
def test_requests_sharing_a_system_prompt_stay_with_one_replica(policy: str) -> None:
    router = _router()
    rng = random.Random(7)
    systems = [f"System prompt {i}: " + "You are a careful assistant. " * 70 for i in range(8)]
    placed: dict[int, Counter[str]] = {i: Counter() for i in range(8)}
    for _ in range(160):
        i = rng.randrange(8)
        placed[i][_route(router, policy, systems[i] + f"User question {rng.random()}")] += 1
    for counts in placed.values():
        assert max(counts.values()) / sum(counts.values()) >= 0.9, placed
    homes = Counter(counts.most_common(1)[0][0] for counts in placed.values())
    assert set(homes) == {"r1", "r2"}, homes  # the prompts spread over both replicas


def test_a_busy_holder_loses_to_an_idle_replica() -> None:
    router = _router()
    system = "Shared instructions. " * 100
    home = _route(router, "latency", system + "first")
    for n in range(6):  # the holder fills past its slots: a wait outweighs the cached prefill
        _route(router, "latency", system + f"held {n}", hold=True)
    assert _route(router, "latency", system + "now") != home


def test_without_blocks_nothing_changes_the_spread() -> None:
    router = _router()
    system = "Shared instructions. " * 100
    seen = Counter()
    for n in range(40):
        plan = router.plan(router.backends, "cost", Objectives(), 500, 64)
        name = plan[0].backend.name
        router.attempt_started(name, retry=False, prompt=PromptBlocks.of(system + str(n)))
        router.finished(name, ok=True, output_tokens=64, decode_s=0.6)
        seen[name] += 1
    assert min(seen.values()) >= 10  # power of two choices still spreads plain requests
