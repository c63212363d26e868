"""Tiny random-Gemma servers for batching and adapter tests (the engine's test double)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.loading import LoadedModel
from engine.runtime import start_server
from engine.serving import GenerationServer
from engine.tiny import tiny_config, tiny_params
from engine.tokenizer import GemmaTokenizer


def tiny_engine_config(**overrides: Any) -> EngineConfig:
    """Small buckets so the tiny model compiles few, small shapes."""
    options: dict[str, Any] = {
        "decode_slots": 4,
        "max_context": 256,
        "prefill_buckets": (16, 64, 256),
        "kv_buckets": (32, 64, 128, 256),
        "max_queue": 8,
        "max_top_logprobs": 5,
        "compilation_cache": False,
    }
    options.update(overrides)
    return EngineConfig(**options)


def make_tiny_server(
    tokenizer: GemmaTokenizer, family: int = 3, **overrides: Any
) -> GenerationServer:
    """A running batch loop over a random tiny Gemma with the real tokenizer."""
    config = tiny_config(family)
    loaded = LoadedModel(config, tiny_params(config), None, Path("tiny"), 0.0)
    server, _ = start_server(tiny_engine_config(**overrides), loaded, tokenizer, warm_up=False)
    return server
