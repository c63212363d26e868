"""One description per protocol, so a single contract suite can drive every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import pytest

from adapters.base import (
    Backend,
    BackendError,
    BadRequest,
    Delta,
    GenerationRequest,
    Overloaded,
    Timeouts,
    Unavailable,
)
from adapters.jetstream import JetStreamBackend
from adapters.openai_compatible import OpenAICompatibleBackend
from adapters.tgi import TGIBackend
from adapters.triton import TritonBackend
from tests.fakes import Failure, FakeJetStream, FakeLlamaCpp, FakeTGI, FakeTriton, FakeVLLM
from tests.fakes._server import FakeUpstream
from tests.real import answers
from tests.real.answers import Answer
from tests.real.engine_server import engine_answer
from tests.real.servers import LLAMA_CPP_MODEL, RealServer

PROMPT = "Say hello to the world"
FAST = Timeouts(connect=2.0, first_token=5.0, total=10.0)


@dataclass(frozen=True)
class Provoked:
    """Request fields that make a real server answer with an error of its own accord."""

    fields: dict[str, Any]


@dataclass
class Harness:
    """How to start one protocol's fake, or reach a real server, and point its adapter at it.

    A real harness (``fixture`` names the session fixture of its server) runs the same
    cases as the fakes: answers are checked against ``reference`` (what the server itself
    says, or computes to), errors are provoked with requests (``Provoked``), and a case
    that needs a failure on cue is skipped, saying so.
    """

    kind: str  # the harness's name; also the backend kind unless ``backend_kind`` says
    make_fake: Callable[..., FakeUpstream]
    make_backend: Callable[[Any, Timeouts, dict[str, Any]], Backend]  # fake or stand-in
    prompt_tokens: int | None  # what the upstream reports for PROMPT (None: not reported)
    eos_tokens: int = 0  # tokens the upstream counts for an EOS ending it does not show
    errors: dict[str, tuple[Failure | Provoked, type[BackendError]]] = field(default_factory=dict)
    mid_stream_error: Failure = field(default_factory=lambda: Failure("error_event", after=2))
    backend_kind: str = ""
    fixture: str = ""  # a real server's session fixture; empty for a fake
    fields: dict[str, Any] = field(default_factory=dict)  # every request of a case carries them
    answer_tokens: int = 16  # max_tokens of a case that wants a whole answer
    timeouts: Timeouts = FAST  # a case's deadlines unless it sets its own
    reference: Callable[[RealServer, GenerationRequest], Answer] | None = None
    server: RealServer | None = None  # the running real server, once bound
    marks: tuple[str, ...] = ()  # a real server's markers beyond ``slow``

    @property
    def config_kind(self) -> str:
        """The ``kind`` a backend of this harness has in config."""
        return self.backend_kind or self.kind

    @property
    def real(self) -> bool:
        return bool(self.fixture)

    def bound(self, server: RealServer) -> Harness:
        """This real harness with its server running."""
        return replace(self, server=server)

    def request(self, max_tokens: int | None = None, **fields: Any) -> GenerationRequest:
        """A case's request: the harness's fields, then the case's."""
        return request(self.answer_tokens if max_tokens is None else max_tokens,
                       **{**self.fields, **fields})

    def provoke(self, case: str) -> tuple[Failure | None, dict[str, Any], type[BackendError]]:
        """The failure a fake is scripted with, or the fields a real server fails on."""
        if case not in self.errors:
            pytest.skip(f"{self.kind}: the server cannot be made to answer {case!r} on cue")
        how, expected = self.errors[case]
        if isinstance(how, Provoked):
            return None, how.fields, expected
        return how, {}, expected

    async def expected(self, req: GenerationRequest, tokens: Sequence[str]) -> Answer:
        """What a whole answer to ``req`` is: the fake's script, or the real server's word."""
        if self.reference is not None and self.server is not None:
            return await asyncio.to_thread(self.reference, self.server, req)
        shown = list(tokens[: req.max_tokens])
        if len(shown) < len(tokens):
            return Answer("".join(shown), "length", len(shown), self.prompt_tokens)
        return Answer("".join(shown), "stop", len(shown) + self.eos_tokens, self.prompt_tokens)

    @asynccontextmanager
    async def running(
        self,
        tokens: Sequence[str] | None = None,
        *,
        failure: Failure | None = None,
        timeouts: Timeouts | None = None,
        **options: Any,
    ) -> AsyncIterator[tuple[Any, Backend]]:
        timeouts = timeouts or self.timeouts
        if self.server is not None:
            if failure is not None:
                pytest.skip(f"{self.kind}: a real server cannot be made to fail on cue")
            backend = self.make_backend(self.server, timeouts, options)
            try:
                yield self.server, backend
            finally:
                await backend.aclose()
            return
        kwargs: dict[str, Any] = {"failure": failure}
        if tokens is not None:
            kwargs["tokens"] = tokens
        async with self.make_fake(**kwargs) as fake:
            backend = self.make_backend(fake, timeouts, options)
            try:
                yield fake, backend
            finally:
                await backend.aclose()


def request(max_tokens: int = 16, **fields: Any) -> GenerationRequest:
    fields.setdefault("prompt", PROMPT)
    fields.setdefault("model", "upstream-model")
    return GenerationRequest(request_id="req-1", max_tokens=max_tokens, **fields)


def stream_of(backend: Backend, req: GenerationRequest) -> AsyncGenerator[Delta, None]:
    """The adapter's iterator with ``aclose`` visible to the type checker."""
    return cast(AsyncGenerator[Delta, None], backend.generate(req))


async def collect(backend: Backend, req: GenerationRequest) -> list[Delta]:
    return [delta async for delta in backend.generate(req)]


async def drain(backend: Backend, req: GenerationRequest, received: list[Delta]) -> None:
    """Read the whole stream into ``received``, which keeps what came before a failure."""
    async for delta in backend.generate(req):
        received.append(delta)


HTTP_ERRORS: dict[str, tuple[Failure, type[BackendError]]] = {
    "overloaded": (Failure("status", 429, headers={"retry-after": "7"}), Overloaded),
    "unavailable": (Failure("status", 500), Unavailable),
    "bad_request": (Failure("status", 400, message="max_tokens is too large"), BadRequest),
}


LLAMA_CPP_CONTEXT_ERROR = (
    b'{"error": {"message": "This model\'s maximum context length is 32 tokens. However, you '
    b'requested 57 tokens (41 in the messages, 16 in the completion).", "type": '
    b'"invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}'
)
LLAMA_CPP_VALIDATION = (
    b'{"error": {"message": "1 validation error:\\n  {\'type\': \'int_parsing\', \'loc\': '
    b"('body', 'top_k'), 'msg': 'Input should be a valid integer', 'input': 'x'}\\n  File "
    b'\\"/srv/llama_cpp/server/app.py\\", line 337, in create_completion", "type": '
    b'"internal_server_error", "param": null, "code": null}}'
)


def _vllm_backend(fake: FakeUpstream, timeouts: Timeouts, options: dict[str, Any]) -> Backend:
    return OpenAICompatibleBackend(
        "vllm-test", fake.url, {"m": "upstream-model"}, timeouts=timeouts, options=options
    )


def _tgi_backend(fake: FakeUpstream, timeouts: Timeouts, options: dict[str, Any]) -> Backend:
    return TGIBackend(
        "tgi-test", fake.url, {"m": "upstream-model"}, timeouts=timeouts, options=options
    )


def _triton_backend(fake: FakeUpstream, timeouts: Timeouts, options: dict[str, Any]) -> Backend:
    return TritonBackend(
        "triton-test", fake.url, {"m": "upstream-model"}, timeouts=timeouts, options=options
    )


def _jetstream_backend(fake: FakeUpstream, timeouts: Timeouts, options: dict[str, Any]) -> Backend:
    return JetStreamBackend(
        "jetstream-test", fake.url, {"m": "upstream-model"}, timeouts=timeouts, options=options
    )


def _grpc(code: str, **kwargs: Any) -> Failure:
    return Failure("status", error_type=code, **kwargs)


HARNESSES = {
    "vllm": Harness(
        kind="vllm",
        make_fake=FakeVLLM,
        make_backend=_vllm_backend,
        prompt_tokens=5,
        errors={
            **HTTP_ERRORS,
            "overloaded_503": (Failure("status", 503), Overloaded),
            "not_found": (Failure("status", 404, message="model does not exist"), BadRequest),
        },
    ),
    "llama_cpp": Harness(
        kind="llama_cpp",
        backend_kind="vllm",
        make_fake=FakeLlamaCpp,
        make_backend=_vllm_backend,
        prompt_tokens=None,  # streams carry no usage: the gateway counts the prompt
        errors={
            # It never refuses for load itself; a proxy in front of it may.
            "overloaded": (Failure("status", 503, headers={"retry-after": "7"}), Overloaded),
            "unavailable": (Failure("status", 500, message="llama_decode: -1"), Unavailable),
            "bad_request": (Failure("status", 400, body=LLAMA_CPP_CONTEXT_ERROR), BadRequest),
            "validation_as_500": (Failure("status", 500, body=LLAMA_CPP_VALIDATION), BadRequest),
        },
    ),
    "tgi": Harness(
        kind="tgi",
        make_fake=FakeTGI,
        make_backend=_tgi_backend,
        prompt_tokens=5,
        eos_tokens=1,
        # TGI's errors on /generate_stream come in a 200 body, as events with an error_type.
        errors={
            "overloaded": (Failure("status", 429, message="Model is overloaded"), Overloaded),
            "unavailable": (
                Failure("status", 424, message="Request failed during generation: CUDA OOM"),
                Unavailable,
            ),
            "bad_request": (
                Failure("status", 422, message="Input validation error: `inputs` cannot be empty"),
                BadRequest,
            ),
            "server_error": (Failure("status", 500, message="Incomplete generation"), Unavailable),
        },
    ),
    "triton": Harness(
        kind="triton",
        make_fake=partial(FakeTriton, model="upstream-model"),
        make_backend=_triton_backend,
        prompt_tokens=5,
        errors={
            **HTTP_ERRORS,
            "overloaded_503": (
                Failure("status", 503, message="Exceeds maximum queue size"),
                Overloaded,
            ),
        },
    ),
    "jetstream": Harness(
        kind="jetstream",
        make_fake=FakeJetStream,
        make_backend=_jetstream_backend,
        prompt_tokens=None,
        errors={
            "overloaded": (
                _grpc(
                    "RESOURCE_EXHAUSTED",
                    message="prefill queue is full",
                    headers={"retry-after": "7"},
                ),
                Overloaded,
            ),
            "unavailable": (_grpc("UNAVAILABLE", message="server shutting down"), Unavailable),
            "bad_request": (_grpc("INVALID_ARGUMENT", message="max_tokens too large"), BadRequest),
            "internal": (_grpc("INTERNAL", message="engine failure"), Unavailable),
        },
        mid_stream_error=Failure("error_event", after=2, error_type="INTERNAL"),
    ),
}


# -- real servers --------------------------------------------------------------------------


def _real_jetstream_backend(
    server: RealServer, timeouts: Timeouts, options: dict[str, Any]
) -> Backend:
    return JetStreamBackend(
        "jetstream-real", server.url, {"m": "upstream-model"}, timeouts=timeouts,
        metrics_url=server.metrics_url, options=options,
    )


def _real_llama_cpp_backend(
    server: RealServer, timeouts: Timeouts, options: dict[str, Any]
) -> Backend:
    return OpenAICompatibleBackend(
        "llama-cpp-real", server.url, {"m": LLAMA_CPP_MODEL}, timeouts=timeouts, options=options
    )


def _jetstream_reference(server: RealServer, req: GenerationRequest) -> Answer:
    return answers.jetstream_mock(req.prompt or "", req.max_tokens)


def _llama_cpp_reference(server: RealServer, req: GenerationRequest) -> Answer:
    body: dict[str, Any] = {
        "model": req.model, "prompt": req.prompt, "max_tokens": req.max_tokens,
        "temperature": req.temperature,
    }
    if req.stop:
        body["stop"] = list(req.stop)
    return answers.llama_cpp(server.url, body)


def _engine_reference(server: RealServer, req: GenerationRequest) -> Answer:
    return engine_answer(server, req.prompt or "", req.max_tokens)


def _no_fake(**_: Any) -> FakeUpstream:
    raise AssertionError("a real harness starts no fake")


REAL_HARNESSES = {
    "jetstream_real": Harness(
        kind="jetstream_real",
        backend_kind="jetstream",
        fixture="real_jetstream",
        make_fake=_no_fake,
        make_backend=_real_jetstream_backend,
        prompt_tokens=None,
        # Its mock engine's tokens grow x1.5 a step; past U+10FFFF its detokenizer dies.
        answer_tokens=4,
        reference=_jetstream_reference,
        timeouts=Timeouts(connect=5.0, first_token=60.0, total=120.0),
        # 0.2.2 refuses nothing: its prefill queue is unbounded, an over-long prompt is cut.
        errors={},
    ),
    "engine_serve": Harness(
        kind="engine_serve",
        backend_kind="jetstream",
        fixture="engine_serve_tiny",  # `tollgate engine serve` on the tiny random Gemma 3
        make_fake=_no_fake,
        make_backend=_real_jetstream_backend,
        prompt_tokens=None,
        reference=_engine_reference,
        timeouts=Timeouts(connect=5.0, first_token=30.0, total=60.0),
        # Past its context it refuses (INVALID_ARGUMENT); a full queue (RESOURCE_EXHAUSTED)
        # and loading or draining (UNAVAILABLE) come on no request's cue: those are
        # tests/engine/test_grpc_server.py's.
        errors={"bad_request": (Provoked({"prompt": "word " * 600}), BadRequest)},
    ),
    "llama_cpp_real": Harness(
        kind="llama_cpp_real",
        backend_kind="vllm",
        fixture="real_llama_cpp",
        make_fake=_no_fake,
        make_backend=_real_llama_cpp_backend,
        prompt_tokens=None,  # streams carry no usage
        fields={"model": LLAMA_CPP_MODEL, "temperature": 0.0},
        reference=_llama_cpp_reference,
        timeouts=Timeouts(connect=5.0, first_token=30.0, total=60.0),
        marks=("real_model",),  # the Gemma 3 270M GGUF
        errors={
            # past its n_ctx: an empty 200 stream
            "bad_request": (Provoked({"prompt": "word " * 600}), BadRequest),
            # FastAPI's validation error, answered 500
            "validation_as_500": (Provoked({"extra": {"top_k": "x"}}), BadRequest),
        },
    ),
}


def harness_params() -> list[Any]:
    """Every fake, then every real server (``slow``; skipped where its env is not built)."""
    real = [
        pytest.param(name, marks=[
            pytest.mark.slow, pytest.mark.timeout(300),
            *(getattr(pytest.mark, mark) for mark in REAL_HARNESSES[name].marks),
        ])
        for name in sorted(REAL_HARNESSES)
    ]
    return [*sorted(HARNESSES), *real]


def harness_for(request: pytest.FixtureRequest) -> Harness:
    """The harness a parametrised fixture names, its real server started if it has one."""
    name: str = request.param
    if name in HARNESSES:
        return HARNESSES[name]
    harness = REAL_HARNESSES[name]
    server: RealServer = request.getfixturevalue(harness.fixture)
    return harness.bound(server)
