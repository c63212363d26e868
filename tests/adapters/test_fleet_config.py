"""The example fleet validates against the config schema and builds every network adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adapters.base import Backend
from gateway.backends import build_backend
from gateway.settings import Settings

FLEET = Path(__file__).resolve().parents[2] / "config" / "fleet.example.yaml"


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
        # The example's CA path does not exist on this machine.
        backend = build_backend(backend_settings.model_copy(update={"tls_ca_file": None}))
        assert isinstance(backend, Backend)
        assert backend.kind == backend_settings.kind
        assert backend.name == backend_settings.name
        await backend.aclose()
