"""``tollgate engine serve``: the embedded engine as a model server of its own (JetStream's gRPC).

Engine options come from the ``engine:`` block of ``--config`` (the fields of a backend's
``engine:`` block, ``EngineSettings``); flags override them. The gateway reaches the server with
a ``kind: jetstream`` backend.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml
from pydantic import ValidationError

from gateway.settings import EngineSettings, read_config

if TYPE_CHECKING:  # the class is not subscriptable at run time on Python 3.11
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction
# Flags named as the EngineSettings fields they override.
_ENGINE_FLAGS = tuple(EngineSettings.model_fields)  # each has a flag of the same name


def add_subcommands(sub: Subparsers) -> None:
    """Register ``engine serve`` on the ``tollgate`` parser."""
    engine = sub.add_parser("engine", help="the embedded engine on its own")
    commands = engine.add_subparsers(dest="engine_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve the engine over JetStream's gRPC protocol, with Prometheus metrics"
    )
    serve.add_argument("--config", help="YAML file; its `engine:` block holds the engine options")
    serve.add_argument("--host", default="0.0.0.0", help="address of both ports (0.0.0.0)")
    serve.add_argument("--port", type=_port, default=9000, help="gRPC port (9000)")
    serve.add_argument(
        "--metrics-port", type=_port, default=9100, help="Prometheus /metrics port (9100)"
    )
    serve.add_argument("--model-path", help="GGUF file or safetensors directory")
    serve.add_argument("--weight-format", choices=("f32", "bf16", "int8"))
    serve.add_argument("--decode-slots", type=int, help="sequences decoded together")
    serve.add_argument("--max-context", type=int, help="prompt + completion tokens per request")
    serve.add_argument("--max-queue", type=int, help="waiting requests before RESOURCE_EXHAUSTED")
    serve.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running requests may finish before they are cancelled (30)",
    )
    serve.set_defaults(func=_serve)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number")
    return port


def engine_settings(config: str | None, flags: dict[str, Any]) -> EngineSettings:
    """The file's ``engine:`` block with the flags that were given laid over it."""
    block: dict[str, Any] = {}
    if config:
        data = read_config(config)
        unknown = sorted(set(data) - {"engine"})
        if unknown:
            raise ValueError(f"{config}: only an `engine:` block is read here, not {unknown}")
        block = dict(data.get("engine") or {})
    block.update({k: v for k, v in flags.items() if v is not None})
    return EngineSettings.model_validate(block)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = engine_settings(args.config, {k: getattr(args, k) for k in _ENGINE_FLAGS})
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        print(f"tollgate engine serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    import asyncio

    from engine.runtime import start_server
    from engine.server import ModelServer
    from gateway.backends import engine_config

    config = engine_config(settings)
    server = ModelServer(
        lambda: start_server(config)[0],
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        grace_s=args.grace_period,
    )
    try:
        return asyncio.run(server.serve())
    except OSError as exc:  # a port is taken
        print(f"tollgate engine serve: {exc}", file=sys.stderr)
        return 1
