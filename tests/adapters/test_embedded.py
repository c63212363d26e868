"""The embedded backend speaks the adapter contract over the in-process engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anyio
import pytest

from adapters import embedded
from adapters.base import (
    Backend,
    BadRequest,
    ChatMessage,
    Delta,
    GenerationRequest,
    Overloaded,
)
from adapters.embedded import EmbeddedBackend
from engine.config import EngineConfig
from engine.errors import QueueFull
from engine.loading import load_tokenizer
from engine.runtime import StartupTimes
from engine.serving import GenerationParams, GenerationServer
from tests.engine.tiny_servers import make_tiny_server, tiny_engine_config


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def tiny() -> Iterator[GenerationServer]:
    server = make_tiny_server(load_tokenizer(EngineConfig()), max_queue=1, decode_slots=2)
    yield server
    server.close()


def backend(server: GenerationServer) -> EmbeddedBackend:
    return EmbeddedBackend("local", tiny_engine_config(), server=server, usd_per_hour=0.05)


def request(**fields: object) -> GenerationRequest:
    base: dict[str, object] = {"request_id": "r1", "model": "gemma-3-270m", "max_tokens": 6}
    base.update(fields)
    return GenerationRequest(**base)  # type: ignore[arg-type]


async def collect(b: EmbeddedBackend, req: GenerationRequest) -> list[Delta]:
    return [delta async for delta in b.generate(req)]


def test_satisfies_the_backend_protocol(tiny: GenerationServer) -> None:
    b = backend(tiny)
    assert isinstance(b, Backend)
    assert b.kind == "embedded" and b.models == {"gemma-3-270m": "gemma-3-270m"}
    caps = b.capabilities
    assert not caps.chat and caps.token_prompts and caps.echo and caps.stop and caps.seed
    assert caps.logprobs == 5 and caps.max_context == 256


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_streams_deltas_with_usage(tiny: GenerationServer) -> None:
    deltas = await collect(backend(tiny), request(prompt="Hello there", temperature=0.0))
    assert sum(d.tokens for d in deltas) == 6
    assert [d.finish_reason for d in deltas][-1] == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    usage = deltas[-1].usage
    assert usage is not None and usage.completion_tokens == 6
    assert usage.prompt_tokens == len(tiny.encode("Hello there"))


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_token_prompts_and_seeds(tiny: GenerationServer) -> None:
    b = backend(tiny)
    ids = tiny.encode("Hello there")
    seeded = request(prompt_token_ids=ids, seed=3, temperature=1.0)
    first = "".join(d.text for d in await collect(b, seeded))
    again = "".join(d.text for d in await collect(b, request(prompt_token_ids=ids, seed=3)))
    assert first == again


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_echo_with_logprobs(tiny: GenerationServer) -> None:
    b = backend(tiny)
    deltas = await collect(b, request(prompt="Hi you", echo=True, logprobs=2, temperature=0))
    echo = deltas[0]
    assert echo.echo and echo.text == "Hi you"
    assert echo.logprobs is not None and echo.logprobs[0].logprob is None
    assert len(echo.logprobs) == len(tiny.encode("Hi you"))
    outputs = [lp for d in deltas[1:] for lp in (d.logprobs or ())]
    assert len(outputs) == 6
    assert all(lp.top_logprobs is not None and len(lp.top_logprobs) <= 2 for lp in outputs)


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_chat_messages_use_gemma_turns(tiny: GenerationServer) -> None:
    deltas = await collect(backend(tiny), request(messages=[ChatMessage("user", "Hi")]))
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.prompt_tokens == len(
        tiny.encode("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    )


@pytest.mark.anyio
async def test_too_long_prompt_is_a_bad_request(tiny: GenerationServer) -> None:
    with pytest.raises(BadRequest) as caught:
        await collect(backend(tiny), request(prompt_token_ids=list(range(3, 400))))
    assert caught.value.param == "prompt"


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_full_queue_is_overloaded(tiny: GenerationServer) -> None:
    long = GenerationParams(max_tokens=200, temperature=0.0)
    # Two requests take the two slots (or one waits), and then the queue (size 1) is full.
    held: list[int] = []
    try:
        while True:
            held.append(tiny.submit("x", long, lambda _: None))
    except QueueFull:
        pass
    try:
        with pytest.raises(Overloaded):
            await collect(backend(tiny), request(prompt="x"))
    finally:
        for request_id in held:
            tiny.cancel(request_id)


@pytest.mark.anyio
async def test_probe_reports_slots(tiny: GenerationServer) -> None:
    snapshot = await backend(tiny).probe()
    assert snapshot.healthy and snapshot.kv_usage is not None and 0 <= snapshot.kv_usage <= 1


@pytest.mark.real_model
@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_default_model_loads_lazily_and_answers() -> None:
    b = EmbeddedBackend.default(decode_slots=2, max_context=512)
    try:
        assert not (await b.probe()).healthy  # loading runs in a thread; the loop stays free
        await b.ready()
        assert (await b.probe()).healthy
        assert b.tokenizer is not None and b.tokenizer.encode("Hi")[0] == 2
        deltas = await collect(
            b, request(prompt="def fibonacci(n):\n", max_tokens=8, temperature=0)
        )
        assert "".join(d.text for d in deltas).startswith("    if n")
    finally:
        await b.aclose()


@pytest.mark.anyio
async def test_start_up_phases_show_in_the_probe(
    tiny: GenerationServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading weights, then compiling, then ready: each phase is what the probe says, so
    ``/readyz`` shows how far a cold start has come rather than a bare "loading"."""

    gates = {"loading weights": threading.Event(), "compiling": threading.Event()}
    entered = {phase: threading.Event() for phase in gates}

    def start_server(config: EngineConfig, *, on_phase: object) -> object:
        for phase, gate in gates.items():
            on_phase(phase)  # type: ignore[operator]
            entered[phase].set()
            gate.wait(10)
        return tiny, StartupTimes(1.0, 2.0)

    monkeypatch.setattr(embedded, "start_server", start_server)
    b = EmbeddedBackend("local", tiny_engine_config(), usd_per_hour=0.05)
    assert b.phase == "not started"
    await b.probe()  # the first probe starts the load
    for phase, gate in gates.items():
        assert await anyio.to_thread.run_sync(entered[phase].wait, 10)
        snapshot = await b.probe()
        assert not snapshot.healthy and snapshot.detail == phase
        gate.set()
    await b.ready()
    assert b.phase == "ready" and (await b.probe()).healthy
    assert b.startup is not None and b.startup.total == 3.0
