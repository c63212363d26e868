"""The engine as its own model server: JetStream's gRPC protocol and Prometheus metrics.

``ModelServer`` (``model_server``) owns the ports and the lifecycle, ``Orchestrator``
(``orchestrator``) answers ``jetstream_proto.Orchestrator``, ``samples`` shapes the stream as
JetStream does, ``metrics`` exports JetStream's metric names. ``tollgate engine serve`` runs it.
"""

from engine.server.model_server import ModelServer
from engine.server.orchestrator import Orchestrator

__all__ = ["ModelServer", "Orchestrator"]
