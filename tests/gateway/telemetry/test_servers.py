"""A backend's ``server.address`` and ``server.port``, read once from its configured url."""

from __future__ import annotations

import pytest

from gateway.telemetry.servers import Server, server_of


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("http://10.0.0.20:8000", Server("10.0.0.20", 8000)),
        ("http://vllm.internal", Server("vllm.internal", 80)),
        ("https://api.example.com/v1", Server("api.example.com", 443)),
        ("grpc://10.0.0.10:9000", Server("10.0.0.10", 9000)),
        ("grpcs://jetstream.internal", Server("jetstream.internal", 443)),
        ("jetstream.internal:9000", Server("jetstream.internal", 9000)),  # gRPC style
        ("[::1]:9000", Server("::1", 9000)),
        ("http://[fd00::2]/v1", Server("fd00::2", 80)),
        ("jetstream.internal", Server("jetstream.internal", None)),  # no scheme, no port
        ("http://vllm.internal:port", Server("vllm.internal", None)),  # not a port
        ("", None),
    ],
)
def test_host_and_port_from_a_backend_url(url: str, server: Server | None) -> None:
    assert server_of(url) == server
