"""Chunked prefill on tiny random Gemmas: the same prompt KV and answers as a whole prefill,
and the running streams keep decoding while a long prompt is prefilled."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from engine.runtime import run_to_end
from engine.serving import Chunk, GenerationParams, GenerationServer
from engine.tokenizer import GemmaTokenizer
from tests.engine.test_prefix_cache import assert_same_prefill, prompt, tiny_engine
from tests.engine.tiny_servers import make_tiny_server

pytestmark = pytest.mark.timeout(120)

CHUNK = 16
GREEDY = GenerationParams(max_tokens=8, temperature=0.0)


@pytest.mark.parametrize("family", [2, 3])  # 2: a sliding window that chunks cross
def test_chunks_give_the_kv_and_logits_of_a_whole_prefill(family: int) -> None:
    engine = tiny_engine(family, cache_tokens=0)
    tokens = prompt(1, 150)
    job = engine.begin_prefill(tokens)
    chunks = 0
    while not job.finished:
        engine.advance(job, CHUNK)
        chunks += 1
    assert chunks == -(-150 // CHUNK)
    assert_same_prefill(engine.finish(job), engine.prefill(tokens))


def test_chunks_start_after_a_cached_prefix_and_fill_the_cache() -> None:
    engine = tiny_engine(3, cache_tokens=512)
    shared = prompt(2, 100)
    engine.prefill_reusing(shared)
    tokens = [*shared, 31, 32, 33]
    job = engine.begin_prefill(tokens)
    assert job.cached == job.done == 96  # six whole blocks of 16
    while not job.finished:
        engine.advance(job, CHUNK)
    assert_same_prefill(engine.finish(job), engine.prefill(tokens))
    again = engine.begin_prefill([*tokens, 41])
    assert again.cached == 96  # its own seventh block was not whole: nothing more to reuse


@pytest.fixture(scope="module")
def chunking_server(tokenizer: GemmaTokenizer) -> Iterator[GenerationServer]:
    server = make_tiny_server(tokenizer, prefill_chunk_tokens=CHUNK, prefix_cache_tokens=0)
    yield server
    server.close()


def test_a_long_prompt_is_prefilled_between_decode_steps(
    chunking_server: GenerationServer,
) -> None:
    server = chunking_server
    long_prompt = prompt(3, 200)
    # The whole-prompt answer (prompt logprobs make the prefill whole), on an idle server.
    whole = run_to_end(server, long_prompt, replace(GREEDY, prompt_logprobs=0))
    # A stream that decodes throughout: no stop token ends it early.
    running: queue.Queue[Chunk | BaseException] = queue.Queue()
    server.submit(prompt(4, 20), GenerationParams(max_tokens=150, temperature=0.0,
                                                   stop_token_ids=()), running.put)
    running.get(timeout=60)  # it holds a slot and decodes
    before = server.steps
    chunked = run_to_end(server, long_prompt, GREEDY)
    # Its prompt took 13 chunks, a decode step of the running stream after each.
    assert server.steps - before >= -(-200 // CHUNK)
    assert [c.token_ids for c in chunked] == [c.token_ids for c in whole[1:]]
    assert "".join(c.text for c in chunked) == "".join(c.text for c in whole)


def test_a_short_prompt_does_not_wait_behind_a_long_one(
    chunking_server: GenerationServer,
) -> None:
    server = chunking_server
    running: queue.Queue[Chunk | BaseException] = queue.Queue()
    stream = server.submit(prompt(8, 20), GenerationParams(max_tokens=150, temperature=0.0,
                                                            stop_token_ids=()), running.put)
    running.get(timeout=60)
    firsts: queue.Queue[str] = queue.Queue()

    def first_of(name: str) -> Callable[[Chunk | BaseException], None]:
        seen: list[bool] = []

        def deliver(item: Chunk | BaseException) -> None:
            if not seen:
                seen.append(True)
                firsts.put(name if isinstance(item, Chunk) else f"{name} failed")

        return deliver

    server.submit(prompt(9, 200), GREEDY, first_of("long"))  # 13 chunks of 16
    server.submit(prompt(10, 12), GREEDY, first_of("short"))
    assert [firsts.get(timeout=60), firsts.get(timeout=60)] == ["short", "long"]
    server.cancel(stream)


def test_a_cancelled_long_prompt_stops_its_prefill(chunking_server: GenerationServer) -> None:
    server = chunking_server
    running: queue.Queue[Chunk | BaseException] = queue.Queue()
    server.submit(prompt(5, 20), GenerationParams(max_tokens=120, temperature=0.0,
                                                   stop_token_ids=()), running.put)
    running.get(timeout=60)
    inbox: queue.Queue[Chunk | BaseException] = queue.Queue()
    request_id = server.submit(prompt(6, 220), GREEDY, inbox.put)
    server.cancel(request_id)
    # The loop goes on: a short request behind it is answered, the cancelled one never is.
    assert run_to_end(server, prompt(7, 10), GREEDY)[-1].finish_reason is not None
    assert inbox.empty()


def test_compiling_the_chunk_shapes_leaves_the_cache_alone() -> None:
    engine = tiny_engine(3, cache_tokens=512)
    engine.compile_chunks(CHUNK)  # buckets 64 and 256 (16 is not longer than a chunk)
    stats = engine.prefix_stats()
    assert (stats.prompt_tokens, stats.cached_tokens) == (0, 0)
    assert engine.begin_prefill([0] * 64).cached == 0
