"""Start-up as an operator watches it: ``/readyz`` names the phase, and the development key is
printed once the gateway can answer with it, not before."""

from __future__ import annotations

import httpx
import pytest

from gateway.app import create_app
from gateway.tenancy.memory import MemoryStore
from tests.e2e.conftest import gateway_settings
from tests.e2e.test_replicas_http import wait_until
from tests.gateway.doubles import PerTokenMeter, ScriptedBackend
from tests.live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]


def test_readyz_names_the_phase_and_the_dev_key_waits_for_the_backends(
    capfd: pytest.CaptureFixture[str],
) -> None:
    backend = ScriptedBackend(healthy=False)  # a model still loading
    settings = gateway_settings(
        routing={"probe_interval_s": 0.05},
        tenants={"seed": [{"id": "dev", "dev_key": True}]},
    )
    app = create_app(settings, store=MemoryStore(), backends=[backend], meter=PerTokenMeter())
    with LiveServer(app) as server:
        waiting = httpx.get(f"{server.url}/readyz")
        assert waiting.status_code == 503
        assert waiting.json()["phase"] == "loading backends"
        assert "development key" not in capfd.readouterr().out  # it would only get a 503
        backend.healthy = True
        state = app.state.tollgate
        wait_until(state.router.became_ready.is_set, 10.0, "a probe to find the backend up")
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200 and ready.json()["phase"] == "ready"

        def printed() -> bool:
            out.append(capfd.readouterr().out)
            return "development key for tenant 'dev'" in "".join(out)

        out: list[str] = []
        wait_until(printed, 10.0, "the ready line and the development key")
        text = "".join(out)
        assert text.index("tollgate: ready in") < text.index("development key")
        assert "curl -s http://" in text

