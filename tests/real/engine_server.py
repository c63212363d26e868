"""``tollgate engine serve`` as a process, on the tiny random Gemma 3: a real JetStream-protocol
server for the contract suites, and what it answers, asked over plain gRPC (no adapter).

The tiny model says nothing sensible, but the protocol, the stream's shape, the statuses and
the metrics are the server's own; the real weights' answers are checked in
``tests/engine/test_grpc_server.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.jetstream import DECODE, HEALTH_CHECK, _raw, pb
from tests.real.answers import Answer
from tests.real.servers import HOST, RealServer, free_port, spawn, wait_until

TINY_MODEL = "gemma-3-tiny"  # the upstream model name the contract's backends map to
# Small enough that a 600-word prompt is refused, large enough for every contract case.
TINY_OPTIONS = ("--weight-format", "f32", "--decode-slots", "2", "--max-context", "256")


def start_engine_server(
    work: Path, *, extra: Sequence[str] = (), grace_s: float = 30.0, timeout: float = 120.0
) -> RealServer:
    """``python -m gateway.cli engine serve`` on a tiny checkpoint written under ``work``."""
    from engine.config import EngineConfig
    from engine.loading import load_tokenizer
    from tests.engine.tiny_checkpoint import write_tiny_checkpoint

    checkpoint = work / "tiny-gemma3"
    if not (checkpoint / "config.json").exists():
        write_tiny_checkpoint(checkpoint, load_tokenizer(EngineConfig()))
    port, metrics_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "gateway.cli",
        "engine",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--model-path",
        str(checkpoint),
        *TINY_OPTIONS,
        "--grace-period",
        str(grace_s),
        *extra,
    ]
    log = work / f"engine-serve-{port}.log"
    env = {**os.environ, "TOLLGATE_CACHE_DIR": str(work / "cache")}
    server = spawn(
        "tollgate engine serve (tiny)", argv, log, f"grpc://{HOST}:{port}", port, env,
        metrics_url=f"http://{HOST}:{metrics_port}/metrics", models={"test-model": TINY_MODEL},
    )  # fmt: skip
    # The port opens before the model is loaded: live is when ``HealthCheck`` says so.
    wait_until(server, lambda: health(f"{HOST}:{port}"), timeout)
    return server


def health(target: str, timeout: float = 2.0) -> bool:
    """``HealthCheck.is_live``; False when the server does not answer."""
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            HEALTH_CHECK, request_serializer=_raw, response_deserializer=_raw
        )
        try:
            raw = check(pb.HealthCheckRequest().SerializeToString(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(pb.HealthCheckResponse.FromString(raw).is_live)


def decode(target: str, timeout: float = 60.0, **fields: Any) -> list[Any]:
    """Every ``DecodeResponse`` of one ``Decode`` call, read to the end."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream(
            DECODE,
            request_serializer=pb.DecodeRequest.SerializeToString,
            response_deserializer=pb.DecodeResponse.FromString,
        )
        return list(call(pb.DecodeRequest(**fields), timeout=timeout))


def engine_answer(server: RealServer, prompt: str, max_tokens: int) -> Answer:
    """The server's own answer: its samples folded; JetStream ends a stream that reached
    ``max_tokens`` with an empty sample, one that sampled a stop token with that token's."""
    responses = decode(
        f"{HOST}:{server.port}",
        max_tokens=max_tokens,
        text_content=pb.DecodeRequest.TextContent(text=prompt),
    )
    samples = [r.stream_content.samples[0] for r in responses]
    text = "".join(s.text for s in samples)
    tokens = sum(len(s.token_ids) for s in samples)
    finish = "length" if not samples[-1].token_ids else "stop"
    return Answer(text, finish, tokens)


@pytest.fixture(scope="session")
def engine_serve_tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """``tollgate engine serve`` on the tiny Gemma 3, started once per session (~10 s)."""
    server = start_engine_server(tmp_path_factory.mktemp("engine-serve"))
    try:
        yield server
    finally:
        server.stop()
