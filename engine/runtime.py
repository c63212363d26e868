"""Start an engine end to end: load weights, build the batch loop, warm the compiled shapes."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax

from engine.config import EngineConfig
from engine.constraints import Constraint
from engine.engine import GemmaEngine
from engine.loading import LoadedModel, load_model
from engine.serving import Chunk, GenerationParams, GenerationServer
from engine.tokenizer import GemmaTokenizer


@dataclass
class StartupTimes:
    """Where start-up time went, in seconds."""

    load: float
    compile: float

    @property
    def total(self) -> float:
        """Load plus warm-up compilation."""
        return self.load + self.compile


def enable_compilation_cache(engine_config: EngineConfig) -> None:
    """Point JAX's persistent compilation cache under the engine's cache dir (process-wide)."""
    if not engine_config.compilation_cache:
        return
    directory = engine_config.cache_dir / "jax"
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def start_server(
    engine_config: EngineConfig,
    loaded: LoadedModel | None = None,
    tokenizer: GemmaTokenizer | None = None,
    warm_up: bool = True,
    on_phase: Callable[[str], None] = lambda _: None,
) -> tuple[GenerationServer, StartupTimes]:
    """Load (unless given), start the batch loop and compile the common shapes by using them.

    ``on_phase`` hears each phase as it begins ("loading weights", "compiling"), for progress.
    """
    enable_compilation_cache(engine_config)
    started = time.perf_counter()
    on_phase("loading weights")
    loaded = loaded or load_model(engine_config)
    tokenizer = tokenizer or loaded.tokenizer
    if tokenizer is None:
        raise ValueError(f"{loaded.source}: no tokenizer found next to the weights")
    engine = GemmaEngine(loaded.config, loaded.params, engine_config)
    server = GenerationServer(engine, tokenizer, engine_config)
    load_seconds = time.perf_counter() - started
    if warm_up:
        on_phase("compiling")
        if engine_config.prefill_chunk_tokens:  # before the loop starts: nothing shares it yet
            engine.compile_chunks(engine_config.prefill_chunk_tokens)
    server.start()
    if warm_up:
        run_to_end(server, [tokenizer.bos_id, 2], GenerationParams(max_tokens=3, temperature=0.0))
        run_to_end(server, [tokenizer.bos_id, 2], GenerationParams(max_tokens=2, seed=0))
        # Builds the grammar vocabulary (~1.5 s) and the masked step, so that the first
        # structured-output request does not stall the batch.
        json_answer = GenerationParams(max_tokens=2, temperature=0.0, constraint=Constraint())
        run_to_end(server, [tokenizer.bos_id, 2], json_answer)
    return server, StartupTimes(load_seconds, time.perf_counter() - started - load_seconds)


def run_to_end(
    server: GenerationServer, prompt: str | list[int], params: GenerationParams
) -> list[Chunk]:
    """Submit and block until every choice finished (for warm-up, benchmarks and tests)."""
    inbox: queue.Queue[Chunk | BaseException] = queue.Queue()
    server.submit(prompt, params, inbox.put)
    chunks: list[Chunk] = []
    remaining = params.n
    while remaining:
        item = inbox.get()
        if isinstance(item, BaseException):
            raise item
        chunks.append(item)
        if item.finish_reason is not None:
            remaining -= 1
    return chunks
