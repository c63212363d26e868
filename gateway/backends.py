"""Backends and tokenizers built from configuration (adapters know nothing of config)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from adapters.base import Backend, Timeouts
from gateway.settings import BackendSettings, EngineSettings, Settings
from gateway.tokenizers import SentencePieceTokenizer, TokenCounter, Tokenizer, TokenizerSource

if TYPE_CHECKING:  # the engine (and JAX) load only when an embedded backend is configured
    from engine.config import EngineConfig

# kind -> (module, class) of its adapter; imported only when configured.
ADAPTERS = {
    "vllm": ("adapters.openai_compatible", "OpenAICompatibleBackend"),
    "tgi": ("adapters.tgi", "TGIBackend"),
    "triton": ("adapters.triton", "TritonBackend"),
    "jetstream": ("adapters.jetstream", "JetStreamBackend"),
}


def build_backend(cfg: BackendSettings) -> Backend:
    """The adapter for one configured backend."""
    if cfg.kind == "embedded":
        return _embedded(cfg)
    module, cls_name = ADAPTERS[cfg.kind]
    cls: Any = getattr(importlib.import_module(module), cls_name)
    backend: Backend = cls(
        name=cfg.name,
        url=cfg.url,
        models=cfg.models,
        timeouts=Timeouts(cfg.timeouts.connect_s, cfg.timeouts.first_token_s, cfg.timeouts.total_s),
        api_key=cfg.api_key(),
        tls_ca_file=cfg.tls_ca_file,
        tls_insecure=cfg.tls_insecure,
        metrics_url=cfg.metrics_url,
        options=cfg.options,
    )
    return backend


def engine_config(opts: EngineSettings) -> EngineConfig:
    """The engine's own configuration from a config file's ``engine:`` block."""
    from engine.config import EngineConfig

    return EngineConfig(
        model_path=opts.model_path,
        weight_format=opts.weight_format,
        decode_slots=opts.decode_slots,
        max_context=opts.max_context,
        max_queue=opts.max_queue,
    )


def _embedded(cfg: BackendSettings) -> Backend:
    from adapters.embedded import EmbeddedBackend

    return EmbeddedBackend(cfg.name, engine_config(cfg.engine or EngineSettings()), cfg.models)


def build_backends(settings: Settings) -> list[Backend]:
    """Every configured backend."""
    return [build_backend(cfg) for cfg in settings.backends]


def build_token_counter(settings: Settings, backends: Sequence[Backend]) -> TokenCounter:
    """Tokenizers per model: a sentencepiece file, or the embedded engine's own."""
    counter = TokenCounter()
    for model in settings.models:
        if model.tokenizer == "embedded":
            engine = next(
                (b for b in backends if b.kind == "embedded" and model.id in b.models), None
            )
            if engine is not None:
                counter.add(model.id, _loaded_tokenizer(engine))
        elif model.tokenizer:
            counter.add(model.id, _fixed(SentencePieceTokenizer(model.tokenizer)))
    return counter


def _fixed(tokenizer: Tokenizer) -> TokenizerSource:
    return lambda: tokenizer


def _loaded_tokenizer(engine: Backend) -> TokenizerSource:
    # The engine loads in the background; until then prompt tokens are estimated.
    def source() -> Tokenizer | None:
        tokenizer: Tokenizer | None = getattr(engine, "tokenizer", None)
        return tokenizer

    return source
