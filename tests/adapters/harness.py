"""One description per protocol, so a single contract suite can drive every adapter."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

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

PROMPT = "Say hello to the world"
FAST = Timeouts(connect=2.0, first_token=5.0, total=10.0)


@dataclass
class Harness:
    """How to start one protocol's fake (or real server) and point its adapter at it."""

    kind: str  # the harness's name; also the backend kind unless ``backend_kind`` says
    make_fake: Callable[..., FakeUpstream]
    make_backend: Callable[[Any, Timeouts, dict[str, Any]], Backend]  # fake or stand-in
    prompt_tokens: int | None  # what the upstream reports for PROMPT (None: not reported)
    eos_tokens: int = 0  # tokens the upstream counts for an EOS ending it does not show
    errors: dict[str, tuple[Failure, type[BackendError]]] = field(default_factory=dict)
    mid_stream_error: Failure = field(default_factory=lambda: Failure("error_event", after=2))
    backend_kind: str = ""

    @property
    def config_kind(self) -> str:
        """The ``kind`` a backend of this harness has in config."""
        return self.backend_kind or self.kind

    @asynccontextmanager
    async def running(
        self,
        tokens: Sequence[str] | None = None,
        *,
        failure: Failure | None = None,
        timeouts: Timeouts = FAST,
        **options: Any,
    ) -> AsyncIterator[tuple[Any, Backend]]:
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
    return GenerationRequest(
        request_id="req-1", model="upstream-model", max_tokens=max_tokens, **fields
    )


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
