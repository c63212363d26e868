"""Plausible random fleets, drawn from a seed: the economics checked on fleets nobody tuned for.

Each fleet serves one model from 2-5 accelerator backends and a per-token API. Prices, slot
counts, decode curves, prefill speeds and boot times come from ranges around today's GPUs and
TPUs; each backend is reserved or an elastic pool (with or without a warm floor). What the
operator types is wrong the way operators are: every ``capacity`` prior field is off by
x0.5..x2, and the list price a peer gateway would use is off by x0.5..x2 of the true filled
$/1M tokens. The objectives leave every fleet feasible (the API always meets them).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.settings import Settings, parse_settings

MODEL = "model"


@dataclass(frozen=True, slots=True)
class Accelerator:
    """A kind of instance: price per hour, decode slots, speeds (ranges to draw from)."""

    name: str
    kind: str
    usd_per_hour: tuple[float, float]
    slots: tuple[int, ...]
    step_1_s: tuple[float, float]  # decode step at batch 1
    growth: tuple[float, float]  # decode step at full batch over batch 1
    prefill_tokens_per_s: tuple[float, float]


CATALOGUE = (
    Accelerator("l4", "tgi", (0.7, 1.0), (8, 16, 32), (0.022, 0.035), (1.5, 3.0), (5e3, 1.2e4)),
    Accelerator("a10g", "vllm", (1.0, 1.5), (16, 32, 64), (0.018, 0.030), (1.8, 3.5),
                (8e3, 2e4)),
    Accelerator("a100", "vllm", (3.0, 4.5), (64, 128, 256), (0.010, 0.020), (2.0, 4.5),
                (2e4, 5e4)),
    Accelerator("h100", "triton", (6.0, 12.0), (128, 256), (0.008, 0.014), (2.5, 5.0),
                (4e4, 8e4)),
    Accelerator("v5e-8", "jetstream", (4.0, 10.0), (64, 128, 256), (0.010, 0.018),
                (2.0, 4.0), (2e4, 4e4)),
)


def _misstated(rng: random.Random, value: float) -> float:
    """``value`` off by a factor between 0.5 and 2 (log-uniform), as an operator types it."""
    return value * math.exp(rng.uniform(math.log(0.5), math.log(2.0)))


def _backend(rng: random.Random, index: int) -> dict[str, Any]:
    acc = rng.choice(CATALOGUE)
    slots = rng.choice(acc.slots)
    step_1 = rng.uniform(*acc.step_1_s)
    step_full = step_1 * rng.uniform(*acc.growth)
    steps = {1: round(step_1, 4), max(2, slots // 2): round((step_1 + step_full) / 2, 4),
             slots: round(step_full, 4)}
    prefill = rng.uniform(*acc.prefill_tokens_per_s)
    usd_per_hour = round(rng.uniform(*acc.usd_per_hour), 2)
    filled_tps = slots / step_full
    name = f"{acc.name}-{index}"
    if rng.random() < 0.35:
        pool: dict[str, Any] = {"billing": "reserved", "instances": rng.randint(1, 4)}
    else:
        pool = {"billing": "elastic", "min_instances": rng.choice((0, 0, 1, 2)),
                "max_instances": rng.randint(4, 40),
                "scale_up_s": round(rng.uniform(30, 180)),
                "scale_down_s": round(rng.uniform(60, 300))}
        if rng.random() < 0.5:
            pool["discovery"] = f"k8s://fleet/{name}"
    overhead = rng.uniform(0.005, 0.05)
    return {
        "name": name,
        "kind": acc.kind,
        "url": f"http://{name}.fleet:8000",
        "models": {MODEL: MODEL},
        "price": {"usd_per_hour": usd_per_hour},
        "timeouts": {"first_token_s": 30},
        "capacity": {
            "output_tokens_per_s": round(_misstated(rng, filled_tps), 1),
            "ttft_s": round(_misstated(rng, overhead + 1024 / prefill), 4),
            "tpot_s": round(_misstated(rng, step_1), 4),
            "max_concurrency": max(1, round(_misstated(rng, slots))),
        },
        "pool": pool,
        "simulate": {
            "slots": slots,
            "prefill_tokens_per_s": round(prefill),
            "decode_step_s": steps,
            "max_queue": slots,
            "ttft_overhead_s": round(overhead, 4),
            "list_price_usd_per_mtok": round(
                _misstated(rng, usd_per_hour / 3600 / filled_tps * 1e6), 3),
        },
    }


def _api(rng: random.Random, max_ttft_s: float, max_tpot_s: float) -> dict[str, Any]:
    out = round(rng.uniform(0.5, 15.0), 2)
    inp = round(rng.uniform(0.1, 2.0), 2)
    tpot = min(rng.uniform(0.008, 0.03), 0.6 * max_tpot_s)
    overhead = min(rng.uniform(0.1, 0.4), 0.5 * max_ttft_s)
    return {
        "name": "api",
        "kind": "vllm",
        "url": "https://api.example.com/v1",
        "models": {MODEL: MODEL},
        "price": {"usd_per_mtok_input": inp, "usd_per_mtok_output": out},
        "timeouts": {"first_token_s": 30},
        "capacity": {"output_tokens_per_s": 1e7, "ttft_s": round(_misstated(rng, overhead), 3),
                     "tpot_s": round(_misstated(rng, tpot), 4), "max_concurrency": 100_000},
        "simulate": {"slots": 1, "prefill_tokens_per_s": 100_000,
                     "decode_step_s": {1: round(tpot, 4)}, "ttft_overhead_s": round(overhead, 3),
                     "list_price_usd_per_mtok": round(out + inp, 2)},
    }


def random_fleet(seed: int) -> dict[str, Any]:
    """One fleet file's contents (a Tollgate config with ``simulate:`` blocks), from ``seed``."""
    rng = random.Random(f"fleet-{seed}")
    max_ttft_s = rng.uniform(0.5, 2.0)
    max_tpot_s = rng.uniform(0.05, 0.15)
    backends = [_backend(rng, i) for i in range(rng.randint(2, 5))]
    backends.append(_api(rng, max_ttft_s, max_tpot_s))
    return {
        "models": [{"id": MODEL}],
        "routing": {"default_policy": "cost", "max_ttft_ms": round(max_ttft_s * 1000),
                    "max_tpot_ms": round(max_tpot_s * 1000), "retry_budget_ratio": 0.2,
                    "max_attempts": 3, "probe_interval_s": 2},
        "backends": backends,
    }


def random_settings(seed: int) -> Settings:
    """A random fleet, validated."""
    return parse_settings(random_fleet(seed), env={})


def dump(seed: int, directory: Path) -> Path:
    """Write fleet ``seed`` as YAML into ``directory``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fleet-{seed}.yaml"
    path.write_text(f"# tollgate bench fleet --random: fleet {seed}\n"
                    + yaml.safe_dump(random_fleet(seed), sort_keys=False))
    return path
