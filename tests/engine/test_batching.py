"""Continuous batching on a tiny random Gemma: joins, leaves, cancels, seeds, stops, errors."""

from __future__ import annotations

import queue
import time

import anyio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import model
from engine.errors import PromptTooLong, QueueFull
from engine.runtime import run_to_end
from engine.serving import Chunk, GenerationParams, GenerationServer
from engine.tokenizer import GemmaTokenizer
from tests.engine.tiny_servers import make_tiny_server

GREEDY = GenerationParams(max_tokens=24, temperature=0.0)
PROMPTS = [
    "Hello there, how are",
    "def add(a, b):\n",
    "The quick brown fox jumps over the lazy dog and then",
    "1 2 3",
    "A much longer prompt " * 6,
]


def tokens_of(chunks: list[Chunk], index: int = 0) -> list[int]:
    return [t for c in chunks if c.index == index for t in c.token_ids]


def text_of(chunks: list[Chunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


def collect(server: GenerationServer, prompt: str, params: GenerationParams) -> queue.Queue:
    inbox: queue.Queue[Chunk | BaseException] = queue.Queue()
    server.submit(prompt, params, inbox.put)
    return inbox


def wait_idle(server: GenerationServer, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while server.load().running and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.load().running == 0


def drain(inbox: queue.Queue) -> list[Chunk]:
    chunks: list[Chunk] = []
    while True:
        item = inbox.get(timeout=60)
        assert not isinstance(item, BaseException), item
        chunks.append(item)
        if item.finish_reason is not None:
            return chunks


@pytest.mark.timeout(120)
def test_joining_and_leaving_mid_flight_matches_each_alone(tiny_server: GenerationServer) -> None:
    alone = [tokens_of(run_to_end(tiny_server, p, GREEDY)) for p in PROMPTS]
    # Staggered arrivals, different lengths, more requests than slots (4): some wait, some
    # join while others decode, and short ones leave early.
    inboxes = []
    for i, prompt in enumerate(PROMPTS):
        params = GenerationParams(max_tokens=24 - 3 * i, temperature=0.0)
        inboxes.append(collect(tiny_server, prompt, params))
        time.sleep(0.02 * i)
    together = [tokens_of(drain(inbox)) for inbox in inboxes]
    for i, tokens in enumerate(together):
        assert tokens == alone[i][: 24 - 3 * i]
    assert tiny_server.load().running == 0


@pytest.mark.timeout(120)  # six eager prefills of new shapes, and maybe the shared server's start
def test_greedy_matches_the_model_directly(tiny_server: GenerationServer) -> None:
    engine = tiny_server.engine
    ids = tiny_server.encode(PROMPTS[0])
    tokens = tokens_of(
        run_to_end(tiny_server, PROMPTS[0], GenerationParams(max_tokens=6, temperature=0))
    )
    sequence = list(ids)
    for _ in range(6):
        hidden, _, _ = model.prefill(
            engine.config, engine.params, jnp.asarray(sequence), jnp.int32(0)
        )
        logits = model.unembed(engine.config, engine.params, hidden[-1:])
        sequence.append(int(jnp.argmax(logits[0])))
    assert tokens == sequence[len(ids) :]


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_closing_the_stream_cancels_and_frees_the_slot(tokenizer: GemmaTokenizer) -> None:
    server = make_tiny_server(tokenizer, decode_slots=1)
    try:
        stream = server.stream(PROMPTS[0], GenerationParams(max_tokens=200, temperature=0.0))
        received = 0
        async for _chunk in stream:
            received += 1
            if received == 3:
                break
        await stream.aclose()
        assert await anyio.to_thread.run_sync(wait_idle, server)
        # The single slot serves the next request straight away.
        chunks = run_to_end(server, PROMPTS[1], GenerationParams(max_tokens=3, temperature=0.0))
        assert chunks[-1].finish_reason == "length"
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_same_seed_same_output_whatever_the_batch(tiny_server: GenerationServer) -> None:
    params = GenerationParams(max_tokens=16, temperature=1.0, seed=42)
    first = tokens_of(run_to_end(tiny_server, PROMPTS[0], params))
    # Same request again, now sharing the batch with others.
    others = [
        collect(tiny_server, p, GenerationParams(max_tokens=16, seed=i))
        for i, p in enumerate(PROMPTS[1:3])
    ]
    again = tokens_of(run_to_end(tiny_server, PROMPTS[0], params))
    for inbox in others:
        drain(inbox)
    other_seed = tokens_of(
        run_to_end(tiny_server, PROMPTS[0], GenerationParams(max_tokens=16, seed=43))
    )
    assert first == again
    assert first != other_seed


@pytest.mark.timeout(60)
def test_top_k_one_and_tiny_top_p_are_greedy(tiny_server: GenerationServer) -> None:
    greedy = tokens_of(
        run_to_end(tiny_server, PROMPTS[1], GenerationParams(max_tokens=8, temperature=0))
    )
    top_k = GenerationParams(max_tokens=8, temperature=1.5, top_k=1, seed=1)
    top_p = GenerationParams(max_tokens=8, temperature=1.5, top_p=1e-6, seed=2)
    assert tokens_of(run_to_end(tiny_server, PROMPTS[1], top_k)) == greedy
    assert tokens_of(run_to_end(tiny_server, PROMPTS[1], top_p)) == greedy


@pytest.mark.timeout(60)
def test_n_choices_share_a_prefill_and_differ(tiny_server: GenerationServer) -> None:
    chunks = run_to_end(tiny_server, PROMPTS[0], GenerationParams(max_tokens=8, n=3, seed=5))
    choices = [tokens_of(chunks, i) for i in range(3)]
    assert all(len(c) == 8 for c in choices)
    assert len({tuple(c) for c in choices}) == 3


@pytest.mark.timeout(60)
def test_stop_sequence_truncates_and_never_leaks(tiny_server: GenerationServer) -> None:
    full = text_of(run_to_end(tiny_server, PROMPTS[2], GREEDY))
    assert len(full) > 12
    stop = full[6:10]
    cut = full.index(stop)
    chunks = run_to_end(
        tiny_server, PROMPTS[2], GenerationParams(max_tokens=24, temperature=0, stop=(stop,))
    )
    assert text_of(chunks) == full[:cut]
    assert chunks[-1].finish_reason == "stop"
    # Nothing of the stop string ever went out, not even its first character.
    sent = ""
    for chunk in chunks:
        sent += chunk.text
        assert stop not in sent and len(sent) <= cut


@pytest.mark.timeout(60)
def test_stop_token_ends_with_stop(tiny_server: GenerationServer) -> None:
    tokens = tokens_of(run_to_end(tiny_server, PROMPTS[3], GREEDY))
    stop_token = tokens[5]
    params = GenerationParams(max_tokens=24, temperature=0, stop_token_ids=(stop_token,))
    chunks = run_to_end(tiny_server, PROMPTS[3], params)
    assert chunks[-1].finish_reason == "stop"
    assert tokens_of(chunks) == tokens[: tokens.index(stop_token) + 1]
    assert chunks[-1].completion_tokens == tokens.index(stop_token) + 1


@pytest.mark.timeout(60)
def test_max_tokens_and_usage(tiny_server: GenerationServer) -> None:
    chunks = run_to_end(tiny_server, PROMPTS[0], GenerationParams(max_tokens=5, temperature=0))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 5 == sum(len(c.token_ids) for c in chunks)
    assert chunks[-1].prompt_tokens == len(tiny_server.encode(PROMPTS[0]))


@pytest.mark.timeout(60)
def test_prompt_and_output_logprobs(tiny_server: GenerationServer) -> None:
    engine = tiny_server.engine
    params = GenerationParams(max_tokens=3, temperature=0, logprobs=3, prompt_logprobs=2)
    chunks = run_to_end(tiny_server, PROMPTS[1], params)
    ids = tiny_server.encode(PROMPTS[1])
    prompt_info = chunks[0].prompt_logprobs
    assert prompt_info is not None and len(prompt_info) == len(ids)
    assert prompt_info[0].logprob is None
    hidden, _, _ = model.prefill(engine.config, engine.params, jnp.asarray(ids), jnp.int32(0))
    expected = jax.nn.log_softmax(model.unembed(engine.config, engine.params, hidden), axis=-1)
    for position, info in enumerate(prompt_info[1:]):
        assert info.token_id == ids[position + 1]
        assert info.logprob == pytest.approx(float(expected[position, ids[position + 1]]), abs=1e-3)
        assert len(info.top) == 2 and info.top[0][2] >= info.top[1][2]
    outputs = [info for c in chunks for info in (c.logprobs or ())]
    assert len(outputs) == 3
    for info in outputs:  # greedy: the chosen token is the most likely one
        assert len(info.top) == 3 and info.top[0][0] == info.token_id
        assert info.logprob == pytest.approx(info.top[0][2], abs=1e-5)


def test_prompt_longer_than_context_is_refused(tiny_server: GenerationServer) -> None:
    with pytest.raises(PromptTooLong):
        tiny_server.submit(list(range(3, 300)), GREEDY, lambda _: None)


@pytest.mark.timeout(60)
def test_bounded_queue_pushes_back(tokenizer: GemmaTokenizer) -> None:
    server = make_tiny_server(tokenizer, decode_slots=1, max_queue=2)
    try:
        long = GenerationParams(max_tokens=200, temperature=0)
        ids: list[int] = []
        refused = 0
        # Two may wait; one more fits if the loop already took the first into its slot.
        for _ in range(5):
            try:
                ids.append(server.submit(PROMPTS[0], long, lambda _: None))
            except QueueFull:
                refused += 1
        assert 2 <= len(ids) <= 3 and refused == 5 - len(ids)
        for request_id in ids:
            server.cancel(request_id)
    finally:
        server.close()


def test_counting_tokens_uses_the_real_tokenizer(tiny_server: GenerationServer) -> None:
    assert tiny_server.encode("Hello world") == [2, 9259, 1902]
    assert np.all(np.asarray(tiny_server.encode([5, 6, 7])) == [5, 6, 7])


@pytest.mark.timeout(120)
def test_one_slot_serves_one_request_at_a_time_on_two_rows(
    tokenizer: GemmaTokenizer, tiny_server: GenerationServer
) -> None:
    """``decode_slots: 1`` (a baseline without continuous batching) keeps a spare row in its
    state, since a one-row matmul is pathologically slow on XLA:CPU; the answers are the
    batched engine's, one request decoding at a time."""
    single = make_tiny_server(tokenizer, decode_slots=1)
    try:
        assert single.engine.max_slots == 1
        assert single.engine.init_state().tokens.shape[0] == 2
        alone = [tokens_of(run_to_end(tiny_server, p, GREEDY)) for p in PROMPTS[:3]]
        inboxes = [collect(single, p, GREEDY) for p in PROMPTS[:3]]
        assert single.load().running <= 1
        assert [tokens_of(drain(inbox)) for inbox in inboxes] == alone
    finally:
        single.close()
