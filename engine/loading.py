"""Load a model for serving: checkpoint -> converted weights and tokenizer, cached on disk."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine import smoothing
from engine.config import EngineConfig, ModelConfig
from engine.gguf_loader import default_gguf_path, read_gguf
from engine.safetensors_loader import read_safetensors_checkpoint
from engine.tokenizer import GemmaTokenizer
from engine.weights import (
    Params,
    convert,
    load_flat,
    save_flat,
    to_pytree,
)

_CACHE_VERSION = "7"  # bump when the on-disk conversion changes


@dataclass
class LoadedModel:
    """Everything the engine needs from a checkpoint."""

    config: ModelConfig
    params: Params
    tokenizer: GemmaTokenizer | None
    source: Path
    seconds: float


def _source(engine_config: EngineConfig) -> Path:
    return Path(engine_config.model_path) if engine_config.model_path else default_gguf_path()


def _fingerprint(source: Path) -> str:
    files = sorted(source.glob("*")) if source.is_dir() else [source]
    digest = hashlib.sha256(_CACHE_VERSION.encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_model(engine_config: EngineConfig) -> LoadedModel:
    """Load weights in ``engine_config.weight_format``, converting once and caching the result."""
    started = time.perf_counter()
    source = _source(engine_config)
    root = engine_config.cache_dir / "models" / f"{source.stem}-{_fingerprint(source)}"
    weights_dir = root / engine_config.weight_format
    tokenizer_file = root / "tokenizer.model"
    if weights_dir.exists() and (tokenizer_file.exists() or source.is_dir()):
        flat, config = load_flat(weights_dir)
        tokenizer = _cached_tokenizer(source, tokenizer_file)
    else:
        checkpoint = (
            read_gguf(source) if not source.is_dir() else read_safetensors_checkpoint(source)
        )
        config = checkpoint.config
        root.mkdir(parents=True, exist_ok=True)
        if checkpoint.vocabulary is not None:
            tokenizer = GemmaTokenizer.from_vocabulary(checkpoint.vocabulary)
            _atomic_write(tokenizer_file, tokenizer.model_proto)
        else:
            tokenizer = _cached_tokenizer(source, tokenizer_file)
        tensors = checkpoint.tensors
        if engine_config.weight_format == "int8" and tokenizer is not None:
            # Calibrate once on the float weights, then fold the smoothing in (exact in f32).
            calibration = tokenizer.encode(smoothing.CALIBRATION_TEXT)
            maxima = smoothing.input_maxima(config, tensors, calibration)
            tensors = smoothing.smooth(config, tensors, maxima)
        flat = convert(tensors, engine_config.weight_format)
        if not weights_dir.exists():
            save_flat(weights_dir, flat, config)
    params = to_pytree(flat)
    return LoadedModel(config, params, tokenizer, source, time.perf_counter() - started)


def _cached_tokenizer(source: Path, tokenizer_file: Path) -> GemmaTokenizer | None:
    candidates = (
        [tokenizer_file, source / "tokenizer.model"] if source.is_dir() else [tokenizer_file]
    )
    for candidate in candidates:
        if candidate.exists():
            return GemmaTokenizer.from_file(candidate)
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def load_tokenizer(engine_config: EngineConfig) -> GemmaTokenizer:
    """The tokenizer alone: from the disk cache, else rebuilt from the GGUF metadata."""
    source = _source(engine_config)
    root = engine_config.cache_dir / "models" / f"{source.stem}-{_fingerprint(source)}"
    cached = root / "tokenizer.model"
    if cached.exists():
        return GemmaTokenizer.from_file(cached)
    if source.is_dir():
        return GemmaTokenizer.from_file(source / "tokenizer.model")
    import gguf

    from engine.gguf_loader import read_vocabulary

    tokenizer = GemmaTokenizer.from_vocabulary(read_vocabulary(gguf.GGUFReader(str(source))))
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(cached, tokenizer.model_proto)
    return tokenizer
