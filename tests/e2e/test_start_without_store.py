"""A replica starts while Redis is down and seeds its tenants once Redis answers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from tests.e2e.conftest import ADMIN_KEY, gateway_settings
from tests.gateway.doubles import ScriptedBackend
from tests.live import LiveServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _ready_within(url: str, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:  # /readyz is the only signal a replica gives; it is cheap to ask
        response = httpx.get(f"{url}/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


@pytest.mark.timeout(40)
def test_a_replica_with_seed_tenants_starts_while_redis_is_down(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)  # its port is chosen; nothing listens there yet
    settings = gateway_settings(
        store={"redis_url": f"redis://127.0.0.1:{redis.port}/0", "spool_dir": str(tmp_path)},
        tenants={"seed": [{"id": "team-seed", "requests_per_minute": 5}]},
    )
    app = create_app(settings, backends=[ScriptedBackend("scripted")])
    try:
        with LiveServer(app) as server:
            assert httpx.get(f"{server.url}/healthz").status_code == 200
            waiting = httpx.get(f"{server.url}/readyz")
            assert waiting.status_code == 503
            assert waiting.json()["seed_tenants"] == "pending"

            redis.start()
            ready = _ready_within(server.url, 20)
            assert ready.status_code == 200, ready.text
            assert ready.json()["seed_tenants"] == "created"
            tenant = httpx.get(f"{server.url}/admin/tenants/team-seed",
                               headers={"authorization": f"Bearer {ADMIN_KEY}"})
            assert tenant.status_code == 200
            assert tenant.json()["limits"]["requests_per_minute"] == 5
    finally:
        if redis.process is not None:
            redis.kill()
