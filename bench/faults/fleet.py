"""The processes of a chaos run, each on its own 127.0.0.1 port: a private redis-server (AOF,
fsync always, so a ``kill -9`` loses nothing it acknowledged), the upstreams, the replicas."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODEL = "chaos-model"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)  # nothing here offers a readiness signal but answering


@dataclass
class RedisServer:
    """A redis-server of the run's own, killed and restarted on the same port and files."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its URL for the replicas and the bench."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) it and wait until it answers PING with its data loaded."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:  # refused, or still loading its append-only file
                return False

        try:
            _wait(up, 10.0, "redis-server")
        finally:
            client.close()

    def kill(self) -> None:
        """``kill -9``."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Child:
    """A Python module run as a subprocess, its output in ``log``."""

    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *self.args], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def alive(self) -> bool:
        """Whether it is running."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """``kill -9``: no drain, no goodbye."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        stop_all([self])

    def wait_answering(self, url: str, seconds: float = 30.0) -> None:
        """Wait until ``url`` answers 200; fail at once if the process exited."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.args} exited:\n{self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url, timeout=1.0).status_code == 200
            return False

        _wait(ready, seconds, url)


def stop_all(children: list[Child]) -> None:
    """SIGTERM every child at once, then wait for each (SIGKILL after 10 s)."""
    running = [c.process for c in children if c.alive() and c.process is not None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Replica(Child):
    """One ``tollgate serve`` process."""

    url: str = ""

    def start_ready(self) -> None:
        """Start it and wait for ``/readyz``."""
        self.start()
        self.wait_answering(f"{self.url}/readyz")


def upstream(name: str, directory: Path, faults: dict[str, float], token_s: float,
             seed: int) -> tuple[Child, str]:  # fmt: skip
    """A ``bench.faults.upstream`` child and its URL (not started)."""
    port = free_port()
    args = ["bench.faults.upstream", str(port), "--name", name, "--token-s", str(token_s),
            "--seed", str(seed), *(f"--{k}={v}" for k, v in faults.items())]  # fmt: skip
    return Child(args, directory / f"{name}.log"), f"http://127.0.0.1:{port}"


def replica_config(
    directory: Path, index: int, prefix: str, upstreams: dict[str, str], lease_ttl_s: float,
    window_s: float,
) -> Path:  # fmt: skip
    """One replica's YAML: a cheap flaky backend preferred, a dearer steady one to fall back on.

    Redis comes from the environment, as in production. Keys stay trusted through an outage
    (``outage_trust_s``) so that the outage exercises the per-replica shares, not 503s.
    """
    timeouts = {"connect_s": 1.0, "first_token_s": 3.0, "inter_token_s": 1.0,
                "give_up_floor_s": 0.5, "total_s": 30.0}  # fmt: skip
    backends = [
        {"name": name, "kind": "vllm", "url": url, "models": {MODEL: "chaos"},
         "price": {"usd_per_mtok_input": price / 4, "usd_per_mtok_output": price},
         "timeouts": timeouts, "capacity": {"ttft_s": 0.05, "tpot_s": 0.02}}
        for (name, url), price in zip(upstreams.items(), (100.0, 300.0), strict=True)
    ]  # fmt: skip
    config = {
        "server": {"host": "127.0.0.1", "access_log": False, "drain_timeout_s": 1},
        "store": {"key_prefix": prefix, "lease_ttl_s": lease_ttl_s, "limit_window_s": window_s,
                  "outage_trust_s": 300, "spool_dir": str(directory / f"spool-{index}")},
        "models": [{"id": MODEL}],
        "backends": backends,
        "telemetry": {"prometheus": False},
    }  # fmt: skip
    path = directory / f"replica-{index}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
