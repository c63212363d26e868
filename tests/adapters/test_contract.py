"""The contract every network adapter keeps, driven against each protocol's fake and against
every real server this machine can run (``tests/real``): the same cases, the real ones
checked against the server's own answers; a case that needs a failure on cue is skipped."""

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
from tests.adapters.harness import (
    Harness,
    collect,
    drain,
    harness_for,
    harness_params,
    request,
    stream_of,
)
from tests.fakes import Failure

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]
TOKENS = ["Hello", ",", " world", "!", " Bye"]


@pytest.fixture(params=harness_params())
def harness(request: pytest.FixtureRequest) -> Harness:
    return harness_for(request)


def _text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas if not d.echo)


async def test_fold_of_the_stream_is_the_whole_answer(harness: Harness) -> None:
    async with harness.running(TOKENS) as (_, backend):
        req = harness.request()
        deltas = await collect(backend, req)
        expected = await harness.expected(req, TOKENS)
    final = deltas[-1]
    if not harness.real:
        assert expected.text == "Hello, world! Bye" and expected.finish == "stop"
    assert _text(deltas) == expected.text
    assert final.finish_reason == expected.finish
    assert final.usage is not None
    assert final.usage.completion_tokens == expected.completion_tokens
    assert final.usage.prompt_tokens == harness.prompt_tokens
    assert sum(d.tokens for d in deltas) == final.usage.completion_tokens
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_deltas_arrive_as_the_upstream_sends_them(harness: Harness) -> None:
    async with harness.running(TOKENS) as (upstream, backend):
        if harness.real:  # no holding a real server back: its tokens come in several reads
            deltas = await collect(backend, harness.request())
            assert sum(1 for d in deltas if d.text) > 1
            return
        gate = upstream.gate(2)
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
        req = harness.request(max_tokens=3)
        deltas = await collect(backend, req)
        expected = await harness.expected(req, TOKENS)
    assert _text(deltas) == expected.text
    assert harness.real or expected.text == "Hello, world"
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 3


async def test_stop_sequences_are_sent_and_honoured(harness: Harness) -> None:
    async with harness.running(TOKENS) as (upstream, backend):
        if not backend.capabilities.stop:
            pytest.skip(f"{harness.kind} has no upstream stop sequences; the gateway applies them")
        if harness.real:  # a stop from the middle of what the server answers unstopped
            whole = (await harness.expected(harness.request(), TOKENS)).text
            stop = whole[len(whole) // 2 :][:3]
            before = whole[: whole.index(stop)]
            deltas = await collect(backend, harness.request(stop=[stop]))
            assert _text(deltas) == before
            assert deltas[-1].finish_reason == "stop"
            return
        deltas = await collect(backend, request(stop=["!"]))
    text = _text(deltas)
    assert text.startswith("Hello, world")  # TGI keeps the "!", the others drop it
    assert " Bye" not in text
    assert deltas[-1].finish_reason == "stop"
    assert "!" in str(upstream.requests[0].body)


@pytest.mark.parametrize("case", ["overloaded", "unavailable", "bad_request"])
async def test_upstream_errors_map_onto_the_taxonomy(harness: Harness, case: str) -> None:
    failure, fields, expected = harness.provoke(case)
    async with harness.running(TOKENS, failure=failure) as (_, backend):
        with pytest.raises(expected) as caught:
            await collect(backend, harness.request(**fields))
    assert type(caught.value) is expected
    assert caught.value.backend == backend.name
    if case == "overloaded" and failure is not None and failure.headers.get("retry-after"):
        assert isinstance(caught.value, Overloaded)
        assert caught.value.retry_after == 7.0


async def test_protocol_specific_errors(harness: Harness) -> None:
    if not harness.errors:
        pytest.skip(f"{harness.kind}: no request makes the server refuse it")
    for case in harness.errors:
        failure, fields, expected = harness.provoke(case)
        async with harness.running(TOKENS, failure=failure) as (_, backend):
            with pytest.raises(BackendError) as caught:
                await collect(backend, harness.request(**fields))
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
    if harness.real:  # a real server's first token is never within a millisecond
        timeouts = Timeouts(connect=5.0, first_token=0.001, total=10.0)
        async with harness.running(timeouts=timeouts) as (_, backend):
            with pytest.raises(Timeout):
                await collect(backend, harness.request(max_tokens=2))
        return
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
    async with harness.running(TOKENS) as (upstream, backend):
        if harness.real:  # left after one delta, the server still answers the next in full
            stream = stream_of(backend, harness.request())
            await anext(stream)
            await stream.aclose()
            req = harness.request(max_tokens=3)
            deltas = await collect(backend, req)
            assert _text(deltas) == (await harness.expected(req, TOKENS)).text
            return
        fake = upstream
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
    if harness.real:
        port = _free_port()
        url = f"{'grpc' if harness.config_kind == 'jetstream' else 'http'}://127.0.0.1:{port}"
    else:
        async with harness.running(TOKENS) as (fake, _):
            url, port = fake.url, fake.port
    closed = _Closed(url, port)
    backend: Backend = harness.make_backend(closed, Timeouts(connect=1.0), {})
    try:
        with pytest.raises(Unavailable):
            await collect(backend, harness.request())
        snapshot = await backend.probe()
        assert not snapshot.healthy
    finally:
        await backend.aclose()


async def test_probe_reports_health_and_load(harness: Harness) -> None:
    async with harness.running(TOKENS) as (upstream, backend):
        snapshot = await backend.probe()
        assert snapshot.healthy
        if harness.real:
            if harness.config_kind == "jetstream":  # the real exporter's gauges, read
                assert snapshot.waiting == 0 and snapshot.kv_usage is not None
            return
        upstream.healthy = False
        assert not (await backend.probe()).healthy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Closed:
    """Stands in for an upstream whose port no longer listens."""

    def __init__(self, url: str, port: int) -> None:
        self.url = url
        self.port = port
        self.host = "127.0.0.1"
        self.metrics_url = None
        # Make sure nothing listens there now.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
