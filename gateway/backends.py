"""Backends and tokenizers built from configuration (adapters know nothing of config)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from adapters.base import Backend, Timeouts
from gateway.settings import BackendSettings, Settings
from gateway.tokenizers import SentencePieceTokenizer, TokenCounter, Tokenizer

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
        from adapters.embedded import EmbeddedBackend

        embedded: Backend = EmbeddedBackend.from_settings(
            cfg.name, cfg.models, cfg.engine, cfg.options
        )
        return embedded
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


def build_backends(settings: Settings) -> list[Backend]:
    """Every configured backend."""
    return [build_backend(cfg) for cfg in settings.backends]


def build_token_counter(settings: Settings, backends: Sequence[Backend]) -> TokenCounter:
    """Tokenizers per model: a sentencepiece file, or the embedded engine's own."""
    tokenizers: dict[str, Tokenizer] = {}
    for model in settings.models:
        if model.tokenizer and model.tokenizer != "embedded":
            tokenizers[model.id] = SentencePieceTokenizer(model.tokenizer)
    counter = TokenCounter(tokenizers)
    for backend in backends:
        attach = getattr(backend, "on_tokenizer", None)
        if attach is None:
            continue
        for model in settings.models:
            if model.tokenizer == "embedded" and model.id in backend.models:
                attach(lambda tok, m=model.id: counter.add(m, tok))
    return counter
