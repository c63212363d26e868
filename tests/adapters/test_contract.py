"""The contract every network adapter keeps, driven against each protocol's fake."""

from __future__ import annotations

import socket

import anyio
import pytest

from adapters.base import (
    Backend,
    BackendError,
    Delta,
    Overloaded,
    Timeout,
    Timeouts,
    Unavailable,
    UpstreamProtocolError,
)
from tests.adapters.harness import HARNESSES, Harness, collect, drain, request, stream_of
from tests.fakes import Failure

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!", " Bye"]


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]


def _text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if not d.echo)


async def test_fold_of_the_stream_is_the_whole_answer(harness: Harness) -> None:
    async with harness.running(TOKENS) as (_, backend):
        deltas = await collect(backend, request(max_tokens=16))
    final = deltas[-1]
    assert _text(deltas) == "Hello, world! Bye"
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == len(TOKENS) + harness.eos_tokens
    assert final.usage.prompt_tokens == harness.prompt_tokens
    assert sum(d.tokens for d in deltas) == final.usage.completion_tokens
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_deltas_arrive_as_the_upstream_sends_them(harness: Harness) -> None:
    async with harness.running(TOKENS) as (fake, backend):
        gate = fake.gate(2)
        stream = stream_of(backend, request())
        first = [await anext(stream)]
        while _text(first) != "Hello,":  # one delta per read: the two tokens may come as one
            first.append(await anext(stream))
        # read while token 2 is still held back upstream
        gate.set()
        rest = [delta async for delta in stream]
    assert _text(first + rest) == "Hello, world! Bye"


async def test_max_tokens_reached_is_length(harness: Harness) -> None:
    async with harness.running(TOKENS) as (_, backend):
        deltas = await collect(backend, request(max_tokens=3))
    assert _text(deltas) == "Hello, world"
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3


async def test_stop_sequences_are_sent_and_honoured(harness: Harness) -> None:
    async with harness.running(TOKENS) as (fake, backend):
        if not backend.capabilities.stop:
            pytest.skip(f"{harness.kind} has no upstream stop sequences; the gateway applies them")
        deltas = await collect(backend, request(stop=["!"]))
    text = _text(deltas)
    assert text.startswith("Hello, world")  # TGI keeps the "!", the others drop it
    assert " Bye" not in text
    assert deltas[-1].finish_reason == "stop"
    assert "!" in str(fake.requests[0].body)


@pytest.mark.parametrize("case", ["overloaded", "unavailable", "bad_request"])
async def test_upstream_errors_map_onto_the_taxonomy(harness: Harness, case: str) -> None:
    failure, expected = harness.errors[case]
    async with harness.running(TOKENS, failure=failure) as (_, backend):
        with pytest.raises(expected) as caught:
            await collect(backend, request())
    assert type(caught.value) is expected
    assert caught.value.backend == backend.name
    if case == "overloaded" and failure.headers.get("retry-after"):
        assert isinstance(caught.value, Overloaded)
        assert caught.value.retry_after == 7.0


async def test_protocol_specific_errors(harness: Harness) -> None:
    for case, (failure, expected) in harness.errors.items():
        async with harness.running(TOKENS, failure=failure) as (_, backend):
            with pytest.raises(BackendError) as caught:
                await collect(backend, request())
        assert type(caught.value) is expected, case


async def test_failure_mid_stream_keeps_what_arrived(harness: Harness) -> None:
    async with harness.running(TOKENS, failure=harness.mid_stream_error) as (_, backend):
        received: list[Delta] = []
        with pytest.raises(BackendError):
            await drain(backend, request(), received)
    assert _text(received) == "Hello,"
    assert sum(d.tokens for d in received) == 2


async def test_connection_cut_mid_stream_is_a_protocol_error(harness: Harness) -> None:
    async with harness.running(TOKENS, failure=Failure("drop", after=2)) as (_, backend):
        received: list[Delta] = []
        with pytest.raises((UpstreamProtocolError, Unavailable)):
            await drain(backend, request(), received)
    assert _text(received) == "Hello,"


@pytest.mark.parametrize("after", [0, 1])
async def test_malformed_upstream_answer_is_a_protocol_error(harness: Harness, after: int) -> None:
    async with harness.running(TOKENS, failure=Failure("malformed", after=after)) as (_, backend):
        with pytest.raises(UpstreamProtocolError):
            await collect(backend, request())


async def test_upstream_silent_past_first_token_deadline(harness: Harness) -> None:
    timeouts = Timeouts(connect=2.0, first_token=0.3, total=10.0)
    async with harness.running(TOKENS, failure=Failure("hang"), timeouts=timeouts) as (
        fake,
        backend,
    ):
        with pytest.raises(Timeout):
            await collect(backend, request())
        with anyio.fail_after(5):
            await fake.cancelled.wait()


async def test_upstream_stalling_past_total_deadline(harness: Harness) -> None:
    timeouts = Timeouts(connect=2.0, first_token=5.0, total=0.5)
    async with harness.running(TOKENS, failure=Failure("hang", after=2), timeouts=timeouts) as (
        fake,
        backend,
    ):
        received: list[Delta] = []
        with pytest.raises(Timeout):
            await drain(backend, request(), received)
        assert _text(received) == "Hello,"
        with anyio.fail_after(5):
            await fake.cancelled.wait()


async def test_closing_the_iterator_cancels_upstream(harness: Harness) -> None:
    async with harness.running(TOKENS) as (fake, backend):
        fake.gate(2)  # never released: the upstream is mid-generation when we leave
        stream = stream_of(backend, request())
        received = [await anext(stream)]
        while _text(received) != "Hello,":  # one delta per read: the two may come as one
            received.append(await anext(stream))
        await stream.aclose()
        with anyio.fail_after(5):
            await fake.cancelled.wait()
        assert not fake.completed.is_set()


async def test_unreachable_upstream_is_unavailable(harness: Harness) -> None:
    async with harness.running(TOKENS) as (fake, _):
        url = fake.url
    backend: Backend = harness.make_backend(_Closed(url, fake.port), Timeouts(connect=1.0), {})
    try:
        with pytest.raises(Unavailable):
            await collect(backend, request())
        snapshot = await backend.probe()
        assert not snapshot.healthy
    finally:
        await backend.aclose()


async def test_probe_reports_health_and_load(harness: Harness) -> None:
    async with harness.running(TOKENS) as (fake, backend):
        snapshot = await backend.probe()
        assert snapshot.healthy
        fake.healthy = False
        assert not (await backend.probe()).healthy


class _Closed:
    """Stands in for a fake whose port no longer listens."""

    def __init__(self, url: str, port: int) -> None:
        self.url = url
        self.port = port
        self.host = "127.0.0.1"
        # Make sure nothing listens there now.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
