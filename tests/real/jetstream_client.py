"""JetStream's own Python client, as ``google-jetstream`` 0.2.2 ships it, asking a server once.

Run with the interpreter of ``.venvs/jetstream``: ``python jetstream_client.py HOST:PORT
MAX_TOKENS PROMPT``. It calls ``HealthCheck`` and one text ``Decode`` through the package's
generated ``OrchestratorStub`` and prints ``{"is_live": ..., "responses": [[{"text",
"token_ids"}, ...], ...]}`` as JSON on stdout.
"""

from __future__ import annotations

import json
import sys

import grpc
from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc


def main(target: str, max_tokens: int, prompt: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = jetstream_pb2_grpc.OrchestratorStub(channel)
        live = stub.HealthCheck(jetstream_pb2.HealthCheckRequest(), timeout=10).is_live
        request = jetstream_pb2.DecodeRequest(
            max_tokens=max_tokens,
            text_content=jetstream_pb2.DecodeRequest.TextContent(text=prompt),
        )
        responses = [
            [{"text": s.text, "token_ids": list(s.token_ids)} for s in r.stream_content.samples]
            for r in stub.Decode(request, timeout=60)
        ]
    print(json.dumps({"is_live": live, "responses": responses}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
