"""JetStream's own server on its mock engine, as ``google-jetstream`` ships it, on 127.0.0.1.

Run with the interpreter of ``.venvs/jetstream`` (the package pins its own jax and
TensorFlow, so it cannot share the gateway's environment): ``python jetstream_server.py PORT
METRICS_PORT``. It is ``jetstream.core.implementations.mock.server`` with two changes that
only keep it local: both ports listen on 127.0.0.1 (the package binds every interface), and
the Prometheus exporter is on, as ``--prometheus_port`` turns it on in JetStream's real
servers (the mock's own entry point has no such flag).
"""

from __future__ import annotations

import functools
import sys

from jetstream.core import config_lib, server_lib
from prometheus_client import start_http_server


def main(port: int, metrics_port: int) -> None:
    server_lib._HOST = "127.0.0.1"
    server_lib.start_http_server = functools.partial(start_http_server, addr="127.0.0.1")
    server = server_lib.run(
        port=port,
        config=config_lib.InterleavedCPUTestServer,
        devices=server_lib.get_devices(),
        metrics_server_config=config_lib.MetricsServerConfig(port=metrics_port),
    )
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
