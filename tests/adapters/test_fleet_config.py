"""The example fleet validates against the config schema and builds every network adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.base import Backend, Timeouts
from adapters.jetstream import JetStreamBackend
from adapters.openai_compatible import OpenAICompatibleBackend
from adapters.tgi import TGIBackend
from adapters.triton import TritonBackend
from gateway.settings import BackendSettings, Settings

FLEET = Path(__file__).resolve().parents[2] / "config" / "fleet.example.yaml"
CLASSES: dict[str, Any] = {
    "vllm": OpenAICompatibleBackend,
    "tgi": TGIBackend,
    "triton": TritonBackend,
    "jetstream": JetStreamBackend,
}


def _adapter(settings: BackendSettings) -> Backend:
    """What the gateway's factory does: plain arguments from the validated settings."""
    assert settings.url is not None
    timeouts = Timeouts(
        connect=settings.timeouts.connect_s,
        first_token=settings.timeouts.first_token_s,
        total=settings.timeouts.total_s,
    )
    backend: Backend = CLASSES[settings.kind](
        settings.name,
        settings.url,
        settings.models,
        timeouts=timeouts,
        api_key="from-env",
        tls_ca_file=None,  # the example's CA path does not exist on this machine
        tls_insecure=settings.tls_insecure,
        metrics_url=settings.metrics_url,
        options=settings.options,
    )
    return backend


def test_example_fleet_is_valid_and_has_one_backend_of_each_kind() -> None:
    settings = Settings.model_validate(yaml.safe_load(FLEET.read_text()))
    kinds = sorted(b.kind for b in settings.backends)
    assert kinds == ["embedded", "jetstream", "tgi", "triton", "vllm"]
    assert all(b.price.usd_per_hour for b in settings.backends)


@pytest.mark.anyio
async def test_every_network_backend_builds_from_its_settings() -> None:
    settings = Settings.model_validate(yaml.safe_load(FLEET.read_text()))
    for backend_settings in settings.backends:
        if backend_settings.kind == "embedded":
            continue
        backend = _adapter(backend_settings)
        assert isinstance(backend, Backend)
        assert backend.kind == backend_settings.kind
        assert backend.name == backend_settings.name
        await backend.aclose()
