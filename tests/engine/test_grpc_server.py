"""``tollgate engine serve``: the engine behind JetStream's gRPC protocol and metrics.

On the tiny random Gemma 3 (in-process, or a process on a checkpoint of it): the stream's
shape, BOS, samples, cancellation, statuses, health, metrics and the drain on SIGTERM. With
the real Gemma 3 270M (one load, shared with the engine tests): the gateway's JetStream adapter
in front of it answers as the embedded backend does. And JetStream's own client reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from adapters.base import GenerationRequest, Overloaded, Timeouts
from adapters.embedded import EmbeddedBackend
from adapters.jetstream import DECODE, JetStreamBackend, pb
from engine.config import EngineConfig
from engine.errors import QueueFull
from engine.loading import LoadedModel
from engine.runtime import run_to_end, start_server
from engine.serving import Chunk, GenerationParams, GenerationServer
from engine.tokenizer import GemmaTokenizer
from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.engine.model_servers import ServerThread
from tests.engine.tiny_servers import make_tiny_server
from tests.gateway.doubles import PerTokenMeter
from tests.live import LiveServer
from tests.real.engine_server import decode, health, start_engine_server
from tests.real.servers import interpreter

pytestmark = pytest.mark.timeout(60)
PROMPT = "Hello there"
CLIENT = Path(__file__).resolve().parents[1] / "real" / "jetstream_client.py"


@pytest.fixture(scope="module")
def tiny(tokenizer: GemmaTokenizer) -> Iterator[GenerationServer]:
    """Two slots and a queue of one, so a test can fill both."""
    server = make_tiny_server(tokenizer, decode_slots=2, max_queue=1)
    yield server
    server.close()


@pytest.fixture
def served(tiny: GenerationServer) -> Iterator[ServerThread]:
    with ServerThread(lambda: tiny) as server:
        yield server


def _text(text: str) -> Any:
    return pb.DecodeRequest.TextContent(text=text)


def _tokens(ids: list[int]) -> Any:
    return pb.DecodeRequest.TokenContent(token_ids=ids)


def _samples(responses: list[Any]) -> list[list[tuple[str, list[int]]]]:
    return [[(s.text, list(s.token_ids)) for s in r.stream_content.samples] for r in responses]


def _greedy(server: GenerationServer, prompt: str | list[int], n: int) -> list[Chunk]:
    return run_to_end(server, prompt, GenerationParams(max_tokens=n, temperature=0.0))


def _refusal(target: str, **fields: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        decode(target, **fields)
    return caught.value


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- Decode ---------------------------------------------------------------------------------


def test_decode_streams_a_sample_per_step_then_an_empty_one(
    served: ServerThread, tiny: GenerationServer
) -> None:
    responses = decode(served.target, max_tokens=6, text_content=_text(PROMPT))
    steps = _samples(responses)
    assert all(len(step) == 1 for step in steps)
    *tokens, last = [step[0] for step in steps]
    # max_tokens reached: JetStream notices one step later and sends an empty sample.
    assert last == ("", [])
    assert all(ids for _, ids in tokens)
    assert sum(len(ids) for _, ids in tokens) == 6
    chunks = _greedy(tiny, PROMPT, 6)
    assert [i for _, ids in tokens for i in ids] == [i for c in chunks for i in c.token_ids]
    assert "".join(text for text, _ in tokens) == "".join(c.text for c in chunks)


def test_bos_is_added_unless_has_bos_and_token_prompts_get_ids_only(
    served: ServerThread, tiny: GenerationServer
) -> None:
    bare = tiny.tokenizer.encode(PROMPT, add_bos=False)
    with_bos = [tiny.tokenizer.bos_id, *bare]
    expected = [i for c in _greedy(tiny, with_bos, 4) for i in c.token_ids]

    def ids(**fields: Any) -> list[int]:
        steps = _samples(decode(served.target, max_tokens=4, **fields))
        return [i for step in steps for _, sample_ids in step for i in sample_ids]

    assert ids(text_content=_text(PROMPT)) == expected
    assert ids(text_content=_text(f"<bos>{PROMPT}"), has_bos=True) == expected
    assert ids(token_content=_tokens(bare)) == expected
    assert ids(token_content=_tokens(with_bos), has_bos=True) == expected
    # A token prompt is answered with ids only: the client detokenizes (JetStream's rule).
    steps = _samples(decode(served.target, max_tokens=4, token_content=_tokens(bare)))
    assert all(text == "" for step in steps for text, _ in step)


def test_num_samples_decode_side_by_side(served: ServerThread, tiny: GenerationServer) -> None:
    steps = _samples(decode(served.target, max_tokens=3, num_samples=2, text_content=_text("x")))
    assert all(len(step) == 2 for step in steps)
    first, second = ([s[i] for s in steps] for i in (0, 1))
    assert first == second  # greedy: both samples decode alike
    assert first[-1] == ("", [])
    too_many = _refusal(served.target, max_tokens=3, num_samples=3, text_content=_text("x"))
    assert too_many.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "num_samples must be between 1 and 2" in (too_many.details() or "")


def test_cancelling_the_rpc_frees_the_slot(served: ServerThread, tiny: GenerationServer) -> None:
    steps_before = tiny.steps
    with grpc.insecure_channel(served.target) as channel:
        call = channel.unary_stream(
            DECODE,
            request_serializer=pb.DecodeRequest.SerializeToString,
            response_deserializer=pb.DecodeResponse.FromString,
        )(pb.DecodeRequest(max_tokens=240, text_content=_text(PROMPT)), timeout=30)
        next(call)
        assert tiny.load().running == 1
        call.cancel()
    _wait_for(lambda: tiny.load().running == 0)
    assert tiny.steps - steps_before < 239  # it stopped well before its 240 tokens


# -- errors as statuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"token_content": _tokens(list(range(3, 400)))}, "the context holds 256"),
        ({"token_content": _tokens([5, 10**7])}, "outside the vocabulary"),
        ({"text_content": _text("x"), "max_tokens": 0}, "max_tokens must be at least 1"),
        ({}, "has no prompt"),
        ({"text_content": _text("x"), "lora_adapter_id": "a"}, "no LoRA adapters"),
    ],
    ids=["prompt-too-long", "token-outside-vocabulary", "no-max-tokens", "no-prompt", "lora"],
)
def test_bad_requests_are_invalid_argument(
    served: ServerThread, fields: dict[str, Any], says: str
) -> None:
    error = _refusal(served.target, **{"max_tokens": 4, **fields})
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert says in (error.details() or "")


@pytest.mark.anyio
async def test_a_full_queue_is_resource_exhausted_and_shows_in_the_metrics(
    served: ServerThread, tiny: GenerationServer
) -> None:
    held: list[int] = []
    long = GenerationParams(max_tokens=240, temperature=0.0)
    backend = JetStreamBackend(
        "engine",
        served.url,
        {"m": "m"},
        metrics_url=served.metrics_url,
        timeouts=Timeouts(connect=2.0, first_token=10.0, total=20.0),
    )

    def fill() -> bool:  # both slots taken and one request waiting: the queue (1) is full
        load = tiny.load()
        if (load.running, load.waiting) == (2, 1):
            return True
        with contextlib.suppress(QueueFull):
            held.append(tiny.submit("x", long, lambda _: None))
        return False

    try:
        await asyncio.to_thread(_wait_for, fill)
        error = await asyncio.to_thread(
            _refusal, served.target, max_tokens=4, text_content=_text("x")
        )
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("retry-after", "1") in (error.trailing_metadata() or ())
        # What the gateway's adapter makes of it: Overloaded, and the load from the metrics.
        with pytest.raises(Overloaded) as caught:
            async for _ in backend.generate(
                GenerationRequest(request_id="r", model="m", max_tokens=4, prompt="x")
            ):
                pass
        assert caught.value.retry_after == 1.0
        snapshot = await backend.probe()
        assert snapshot.healthy and snapshot.waiting == 1 and snapshot.kv_usage == 1.0
    finally:
        for request_id in held:
            tiny.cancel(request_id)
        await backend.aclose()


# -- health, metrics, lifecycle -------------------------------------------------------------


def test_not_live_and_unavailable_until_the_model_is_loaded(tiny: GenerationServer) -> None:
    release = threading.Event()

    def load() -> GenerationServer:
        release.wait(30)
        return tiny

    with ServerThread(load, wait_loaded=False) as server:
        assert not health(server.target)
        error = _refusal(server.target, max_tokens=2, text_content=_text("x"))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert "loading" in (error.details() or "")
        assert "kv_cache_utilization_perc" not in httpx.get(server.metrics_url).text
        readiness = server.metrics_url.replace("/metrics", "/healthz")  # Kubernetes' probe
        assert httpx.get(readiness).status_code == 503
        release.set()
        _wait_for(lambda: health(server.target))
        assert decode(server.target, max_tokens=2, text_content=_text("x"))
        assert httpx.get(readiness).status_code == 200


def test_metrics_carry_jetstreams_names_and_labels(served: ServerThread) -> None:
    decode(served.target, max_tokens=3, text_content=_text(PROMPT))
    body = httpx.get(served.metrics_url).text
    for name in (
        "jetstream_prefill_backlog_size",
        "num_requests_waiting",
        "kv_cache_utilization_perc",
    ):
        assert _value(body, name) == 0.0
    for name in (
        "jetstream_slots_used_percentage",
        "jetstream_generate_backlog_size",
        "jetstream_transfer_backlog_size",
    ):
        assert _value(body, name, idx=True) == 0.0
    assert _value(body, "jetstream_request_success_count_total") == 1.0
    assert _value(body, "jetstream_request_output_length_sum") == 3.0
    assert _value(body, "jetstream_time_to_first_token_count") == 1.0
    assert _value(body, "jetstream_server_startup_latency") > 0


def _value(body: str, name: str, idx: bool = False) -> float:
    """The one sample of ``name``, whose labels must be JetStream's (``id``, and ``idx``)."""
    lines = [line for line in body.splitlines() if line.startswith(f"{name}{{")]
    assert len(lines) == 1, name
    labels, value = lines[0][len(name) :].rsplit(" ", 1)
    keys = [part.split("=")[0] for part in labels.strip("{}").split(",")]
    assert keys == (["id", "idx"] if idx else ["id"]), labels
    return float(value)


def test_stopping_lets_running_requests_finish_and_refuses_new_ones(
    tiny: GenerationServer,
) -> None:
    received: list[Any] = []
    with ServerThread(lambda: tiny, grace_s=20.0) as server:
        target = server.target
        reader = threading.Thread(
            target=lambda: received.extend(
                decode(target, max_tokens=60, text_content=_text(PROMPT))
            )
        )
        reader.start()
        _wait_for(lambda: tiny.load().running == 1)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        _wait_for(lambda: not health(target, timeout=0.5))
        reader.join(30)
        stopping.join(30)
    assert sum(len(s.token_ids) for r in received for s in r.stream_content.samples) == 60
    with pytest.raises(grpc.RpcError):
        decode(target, timeout=2, max_tokens=2, text_content=_text("x"))


def test_requests_still_running_after_the_grace_period_are_cancelled(
    tiny: GenerationServer,
) -> None:
    errors: list[grpc.RpcError] = []

    def read(target: str) -> None:
        try:
            decode(target, max_tokens=240, text_content=_text(PROMPT))
        except grpc.RpcError as error:
            errors.append(error)

    with ServerThread(lambda: tiny, grace_s=0.2) as server:
        reader = threading.Thread(target=read, args=(server.target,))
        reader.start()
        _wait_for(lambda: tiny.load().running == 1)
        server.stop()
        reader.join(30)
    assert [e.code() for e in errors] in (
        [grpc.StatusCode.CANCELLED],
        [grpc.StatusCode.UNAVAILABLE],
    )
    _wait_for(lambda: tiny.load().running == 0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_drains_the_process(tmp_path: Path) -> None:
    """The CLI's process: SIGTERM mid-request, the request completes, the process exits 0."""
    server = start_engine_server(tmp_path, grace_s=30.0)
    target = f"127.0.0.1:{server.port}"
    try:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_stream(
                DECODE,
                request_serializer=pb.DecodeRequest.SerializeToString,
                response_deserializer=pb.DecodeResponse.FromString,
            )(pb.DecodeRequest(max_tokens=200, text_content=_text(PROMPT)), timeout=60)
            first = next(call)
            server.process.send_signal(signal.SIGTERM)
            rest = list(call)
        samples = [s for r in (first, *rest) for s in r.stream_content.samples]
        assert sum(len(s.token_ids) for s in samples) == 200
        assert server.process.wait(30) == 0
        log = server.log.read_text()
        assert "draining" in log and "stopped" in log
    finally:
        server.stop()


# -- JetStream's own client -----------------------------------------------------------------


def test_jetstreams_own_client_gets_tokens(served: ServerThread, tiny: GenerationServer) -> None:
    python = interpreter("jetstream", "real-jetstream")
    done = subprocess.run(
        [str(python), str(CLIENT), served.target, "5", PROMPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert answer["is_live"] is True
    samples = [step[0] for step in answer["responses"]]
    chunks = _greedy(tiny, PROMPT, 5)
    assert [i for s in samples for i in s["token_ids"]] == [i for c in chunks for i in c.token_ids]
    assert "".join(s["text"] for s in samples) == "".join(c.text for c in chunks)
    assert samples[-1] == {"text": "", "token_ids": []}


# -- the real Gemma 3 270M, end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def real_engine(real_f32: LoadedModel) -> Iterator[GenerationServer]:
    """The real weights (the session's one load) in a running batch loop."""
    config = EngineConfig(weight_format="f32", decode_slots=2, max_context=512)
    server, _ = start_server(config, real_f32, warm_up=False)
    yield server
    server.close()


@pytest.mark.real_model
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_gateway_through_the_engine_server_answers_as_the_embedded_backend(
    real_engine: GenerationServer,
) -> None:
    prompt = "The three primary colors are"
    models = [{"id": "gemma", "chat_template": "gemma"}]
    price = {"usd_per_hour": 1.0}
    timeouts = {"connect_s": 5, "first_token_s": 120, "total_s": 300}
    answers = []
    with ServerThread(lambda: real_engine) as engine_server:
        remote = gateway_settings(
            models=models,
            backends=[
                {
                    "name": "engine-pod",
                    "kind": "jetstream",
                    "url": engine_server.url,
                    "metrics_url": engine_server.metrics_url,
                    "models": {"gemma": "gemma-3-270m"},
                    "price": price,
                    "timeouts": timeouts,
                }
            ],
        )
        local = gateway_settings(
            models=models,
            backends=[
                {
                    "name": "local",
                    "kind": "embedded",
                    "models": {"gemma": "gemma-3-270m"},
                    "price": price,
                    "timeouts": timeouts,
                }
            ],
        )
        # Last, as its gateway's shutdown closes the engine it was given.
        embedded = EmbeddedBackend(
            "local", real_engine.config, {"gemma": "gemma-3-270m"}, server=real_engine
        )
        for settings, backends in ((remote, None), (local, [embedded])):
            store = MemoryStore()
            key = asyncio.run(store.create_key("team")).secret
            app = create_app(settings, store=store, backends=backends, meter=PerTokenMeter())
            with LiveServer(app) as gateway:
                client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
                answers.append(
                    client.completions.create(
                        model="gemma", prompt=prompt, max_tokens=12, temperature=0
                    )
                )
    through_jetstream, in_process = answers
    assert through_jetstream.choices[0].text == in_process.choices[0].text
    assert through_jetstream.choices[0].text.strip()  # the real model says something
    assert through_jetstream.choices[0].finish_reason == in_process.choices[0].finish_reason
    assert through_jetstream.usage is not None and in_process.usage is not None
    assert through_jetstream.usage.completion_tokens == in_process.usage.completion_tokens
