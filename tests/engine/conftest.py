"""Shared, session-scoped fixtures: the real weights and the transformers reference load once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.gguf_loader import default_gguf_path
from engine.loading import LoadedModel, load_model, load_tokenizer
from engine.serving import GenerationServer
from engine.tokenizer import GemmaTokenizer
from tests.engine.tiny_servers import make_tiny_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tokenizer() -> GemmaTokenizer:
    """The real Gemma 3 tokenizer (from the disk cache after the first run)."""
    return load_tokenizer(EngineConfig())


@pytest.fixture(scope="session")
def real_f32() -> LoadedModel:
    """The real Gemma 3 270M in float32 (converted once, then read from the disk cache)."""
    return load_model(EngineConfig(weight_format="f32"))


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the GGUF under a fixed name, as transformers wants it."""
    directory = tmp_path_factory.mktemp("gguf")
    (directory / "model.gguf").symlink_to(default_gguf_path())
    return directory


@pytest.fixture(scope="session")
def reference_model(gguf_dir: Path) -> Any:
    """transformers' Gemma 3 on CPU torch, reading the same GGUF (~35 s, once per session)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.Gemma3ForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file="model.gguf", dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def reference_tokenizer(gguf_dir: Path) -> Any:
    """The tokenizer transformers builds from the same GGUF."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file="model.gguf")


@pytest.fixture(scope="session")
def tiny_server(tokenizer: GemmaTokenizer) -> Iterator[GenerationServer]:
    """One shared tiny server (4 slots) for tests that do not change its configuration."""
    server = make_tiny_server(tokenizer)
    yield server
    server.close()
