"""SIGTERM drains: no new connections, in-flight streams finish, settlement is flushed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fakes.vllm import FakeVLLM

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ADMIN = "tg-admin-drain"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(predicate: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(60)
def test_sigterm_lets_an_in_flight_stream_finish(tmp_path: Path) -> None:
    with FakeVLLM() as fake:
        port = _free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port, "drain_timeout_s": 20},
            "models": [{"id": "m"}],
            "backends": [{"name": "up", "kind": "vllm", "url": fake.url, "models": {"m": "m"},
                          "price": {"usd_per_mtok_input": 1, "usd_per_mtok_output": 2}}],
            "tenants": {"seed": [{"id": "drain", "dev_key": True}]},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "out.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(tmp_path / "c.yaml")],
            env={**os.environ, "TOLLGATE_ADMIN_KEY": ADMIN}, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait(lambda: _ready(url), 30)
            key = re.search(rb"(tg-[A-Za-z0-9_-]{20,})", (tmp_path / "out.log").read_bytes())
            assert key is not None
            hold = fake.gate(3)  # the stream stalls after three tokens
            headers = {"authorization": f"Bearer {key.group(1).decode()}"}
            body = {"model": "m", "prompt": "x", "max_tokens": 6, "stream": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=headers,
                              timeout=30) as response:
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                proc.send_signal(signal.SIGTERM)
                # New connections are refused while the stream is still open.
                _wait(lambda: not _ready(url), 10)
                hold.set()
                rest = [line for line in lines if line.startswith("data:")]
            assert rest[-1] == "data: [DONE]"
            # uvicorn re-raises the signal once shut down, so the exit reads as SIGTERM.
            assert proc.wait(20) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        access = [line for line in (tmp_path / "out.log").read_text().splitlines()
                  if '"path":"/v1/completions"' in line]
        assert access and '"status":200' in access[-1]
        assert '"completion_tokens":6' in access[-1]
