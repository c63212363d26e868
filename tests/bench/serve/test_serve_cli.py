"""``tollgate bench serve`` end to end: a sweep that saturates, the files, ``--compare``, and
the gateway's metered cost and backend split through a real Tollgate."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench.serve.cli import main
from gateway.app import create_app
from gateway.cli import main as tollgate
from gateway.settings import parse_settings
from gateway.tenancy.memory import MemoryStore
from tests.bench.serve.conftest import PacedVLLM
from tests.live import LiveServer

pytestmark = pytest.mark.timeout(30)
SHORT = ["--input-len", "16", "--output-len", "8"]


def _png_ok(path: Path) -> None:
    from matplotlib.image import imread

    pixels = imread(path)  # a readable PNG, as matplotlib drew it
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::97]}) > 5  # not blank


def test_a_sweep_stops_at_the_rate_the_endpoint_cannot_keep_up_with(
    one_at_a_time: PacedVLLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One request at a time, 50 ms each: 20 req/s at most. 80 req/s piles up; 160 is not run.
    code = main(["--url", one_at_a_time.url, "--model", "fake-model", "--rates", "4,80,160",
                 "--duration", "1.5", "--input-len", "16", "--output-len", "4",
                 "--out", str(tmp_path / "sat")])
    assert code == 0
    captured = capsys.readouterr()
    assert "saturated at 80 req/s: requests outstanding rose from" in captured.out
    assert "saturation point: 80 req/s; the highest rate served: 4 req/s" in captured.out
    assert "not run: 160 req/s" in captured.out
    assert "80 req/s: " in captured.err and " done in " in captured.err  # the progress line
    body = orjson.loads((tmp_path / "sat.json").read_bytes())
    assert body["saturated_at"] == 80
    low, high = body["rates"]
    assert not low["saturated"] and low["completed"] == low["sent"] and low["failed"] == 0
    assert high["saturated"] and high["stopped_early"] and high["wall_s"] < 1.5
    assert high["cancelled"] > 0 and high["cancelled"] + high["completed"] == high["sent"]


def test_smoke_writes_json_csv_and_png_and_compare_draws_two_runs(
    paced: PacedVLLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = tollgate(["bench", "serve", "--url", paced.url, "--model", "fake-model", "--rates",
                     "4", "--duration", "0.5", *SHORT, "--usd-per-hour", "2", "--label", "first",
                     "--out", str(tmp_path / "first")])
    assert code == 0
    out = capsys.readouterr().out
    assert f"client machine: {os.cpu_count()} CPUs" in out
    assert "server: OpenAI-compatible; /v1/models lists" in out and "max_model_len" in out
    assert "out tok/$" in out and "measured $" in out
    body = orjson.loads((tmp_path / "first.json").read_bytes())
    assert body["label"] == "first" and body["client_cpus"] == os.cpu_count()
    (rate,) = body["rates"]
    assert rate["rate"] == 4 and rate["completed"] > 0 and rate["output_tokens"] > 0
    assert rate["usd_per_mtok_out"] == pytest.approx(
        2.0 * rate["wall_s"] / 3600 / rate["output_tokens"] * 1e6)
    header, row = (tmp_path / "first.csv").read_text().splitlines()
    assert header.startswith("rate,duration_s,wall_s,") and row.startswith("4.0,0.5,")
    _png_ok(tmp_path / "first.png")
    (tmp_path / "second.json").write_bytes(orjson.dumps({**body, "label": "second"}))
    code = main(["--compare", str(tmp_path / "first.json"), str(tmp_path / "second.json"),
                 "--out", str(tmp_path / "both")])
    assert code == 0
    out = capsys.readouterr().out
    assert "== first (" in out and "== second (" in out and "chart: " in out
    _png_ok(tmp_path / "both.png")


@pytest.fixture
def tollgate_gateway(paced: PacedVLLM) -> Iterator[tuple[str, str]]:
    """A real gateway, priced per token, in front of the paced fake; its URL and a key."""
    settings = parse_settings({
        "models": [{"id": "m"}],
        "backends": [{"name": "paced", "kind": "vllm", "url": paced.url,
                      "models": {"m": "fake-model"},
                      "price": {"usd_per_mtok_input": 1.0, "usd_per_mtok_output": 2.0}}],
        "admin_key": "tg-admin-test",
    }, env={})
    store = MemoryStore()
    key = asyncio.run(store.create_key("bench")).secret
    with LiveServer(create_app(settings, store=store)) as server:
        yield server.url, key


def test_through_tollgate_measured_cost_equals_metered_and_backends_are_split(
    tollgate_gateway: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, key = tollgate_gateway
    code = main(["--url", url, "--model", "m", "--key", key, "--rates", "6", "--duration",
                 "0.5", *SHORT, "--usd-per-mtok-in", "1", "--usd-per-mtok-out", "2",
                 "--out", str(tmp_path / "gw")])
    assert code == 0
    out = capsys.readouterr().out
    assert "server: a Tollgate gateway" in out and "backend paced:" in out
    assert "backends at 6 req/s: paced " in out
    (rate,) = orjson.loads((tmp_path / "gw.json").read_bytes())["rates"]
    assert rate["completed"] > 0 and rate["metered_requests"] == rate["completed"]
    assert rate["measured_usd"] == (rate["prompt_tokens"] * 1 + rate["output_tokens"] * 2) / 1e6
    assert rate["metered_usd"] == pytest.approx(rate["measured_usd"], abs=1e-9)
    assert rate["backends"] == {"paced": {"requests": rate["completed"],
                                          "output_tokens": rate["output_tokens"],
                                          "metered_usd": pytest.approx(rate["metered_usd"])}}


def test_a_gateway_without_the_key_is_refused_with_a_hint(
    tollgate_gateway: tuple[str, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOLLGATE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url, _ = tollgate_gateway
    assert main(["--url", url, "--model", "m", "--rates", "1", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "refused a test request: http 401" in err and "pass --key" in err
