"""Real upstream servers as session fixtures: each a process on 127.0.0.1 and free ports.

Each server runs from its own environment under ``.venvs/`` (its pins clash with the
gateway's), built by ``make``: ``.venvs/jetstream`` (``make real-jetstream``, part of ``make
test``) and ``.venvs/llama-cpp`` (``make real-llama-cpp``, a source build of several minutes,
so only ``make test-real-llama-cpp`` builds it). A test that asks for a server whose
environment is absent is skipped, saying which target builds it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".venvs"
HOST = "127.0.0.1"
LLAMA_CPP_MODEL = "gemma-3-270m"  # the alias llama.cpp serves the GGUF under
LLAMA_CPP_CONTEXT = 512


@dataclass
class RealServer:
    """A server process this test session started, and where it listens."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    metrics_url: str | None = None
    models: dict[str, str] = field(default_factory=dict)  # client id -> upstream name

    @property
    def host(self) -> str:
        return HOST

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in text if " DEBUG " not in line)[-4000:] or "(empty)"

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def interpreter(env: str, target: str) -> Path:
    """The python of ``.venvs/ENV``, or a skip naming the make target that builds it."""
    python = VENVS / env / "bin" / "python"
    if not (VENVS / env / ".installed").exists() or not python.exists():
        pytest.skip(f"the real server's environment .venvs/{env} is not built: `make {target}`")
    return python


def spawn(
    name: str, argv: Sequence[str], log: Path, url: str, port: int,
    env: Mapping[str, str] | None = None, **details: Any,
) -> RealServer:
    """Start ``argv`` in a process group of its own, its output to ``log``."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=ROOT, env=env, start_new_session=True,  # its own group: stop() ends its children
        )
    return RealServer(name, url, port, process, log, **details)


def wait_until(server: RealServer, ready: str | Callable[[], bool], timeout: float) -> None:
    """Until ``ready`` holds: an HTTP url answers 200, the port accepts (``tcp``), or a check
    of the caller's returns True."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited at start-up:\n{server.log_tail()}")
        if callable(ready):
            if ready():
                return
        elif ready == "tcp":
            with socket.socket() as sock:
                if sock.connect_ex((HOST, server.port)) == 0:
                    return
        else:
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


def start_jetstream(log_dir: Path) -> RealServer:
    """JetStream 0.2.2's own server on its mock engine (``tests/real/jetstream_server.py``)."""
    python = interpreter("jetstream", "real-jetstream")
    port, metrics_port = free_port(), free_port()
    script = Path(__file__).with_name("jetstream_server.py")
    server = spawn(
        "JetStream 0.2.2", [str(python), str(script), str(port), str(metrics_port)],
        log_dir / "jetstream.log", f"grpc://{HOST}:{port}", port,
    )
    server.metrics_url = f"http://{HOST}:{metrics_port}/metrics"
    server.models = {"test-model": "mock"}  # JetStream serves one model and ignores names
    # The gRPC port opens once the engine is loaded and the orchestrator runs.
    wait_until(server, "tcp", timeout=180)
    return server


def start_llama_cpp(log_dir: Path, gguf: Path) -> RealServer:
    """llama-cpp-python's OpenAI-compatible server on the Gemma 3 270M GGUF."""
    python = interpreter("llama-cpp", "real-llama-cpp")
    port = free_port()
    argv = [
        str(python), "-m", "llama_cpp.server", "--model", str(gguf),
        "--model_alias", LLAMA_CPP_MODEL, "--host", HOST, "--port", str(port),
        "--n_ctx", str(LLAMA_CPP_CONTEXT), "--logits_all", "true", "--verbose", "false",
    ]
    server = spawn(
        "llama-cpp-python 0.3.36", argv, log_dir / "llama-cpp.log", f"http://{HOST}:{port}", port
    )
    server.models = {"test-model": LLAMA_CPP_MODEL}
    wait_until(server, f"{server.url}/openapi.json", timeout=120)
    return server


@pytest.fixture(scope="session")
def real_jetstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """JetStream's own server, started once per session (``slow``: ~20 s to start)."""
    server = start_jetstream(tmp_path_factory.mktemp("jetstream"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_llama_cpp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """llama-cpp-python's server on the real Gemma 3 270M, started once per session."""
    interpreter("llama-cpp", "real-llama-cpp")  # skip before assembling the GGUF
    from engine.gguf_loader import default_gguf_path

    server = start_llama_cpp(tmp_path_factory.mktemp("llama-cpp"), default_gguf_path())
    try:
        yield server
    finally:
        server.stop()

