"""``tollgate engine serve``: options from the config's ``engine:`` block, flags over them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli_engine import engine_settings


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "engine.yaml"
    path.write_text(text)
    return str(path)


def test_flags_override_the_engine_block(tmp_path: Path) -> None:
    config = _config(tmp_path, "engine:\n  decode_slots: 8\n  max_context: 1024\n")
    settings = engine_settings(config, {"decode_slots": 4, "weight_format": None})
    assert (settings.decode_slots, settings.max_context) == (4, 1024)
    assert settings.weight_format == "int8"  # EngineSettings' default, as for a backend


def test_without_a_file_the_defaults_and_flags_apply() -> None:
    settings = engine_settings(None, {"weight_format": "bf16"})
    assert settings.weight_format == "bf16" and settings.decode_slots == 16


def test_other_top_level_keys_are_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, "engine: {}\nbackends: []\n")
    with pytest.raises(ValueError, match="only an `engine:` block"):
        engine_settings(config, {})


def test_an_invalid_engine_block_exits_2_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "engine:\n  decode_slots: 0\n")
    assert main(["engine", "serve", "--config", config]) == 2
    assert "decode_slots" in capsys.readouterr().err


def test_a_port_out_of_range_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["engine", "serve", "--port", "70000"])
    assert caught.value.code == 2


@pytest.mark.parametrize("taken", ["--port", "--metrics-port"])
def test_a_taken_port_exits_1_saying_so(taken: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"--port": "0", "--metrics-port": "0", taken: str(busy.getsockname()[1])}
        argv = ["engine", "serve", "--host", "127.0.0.1", *(x for p in ports.items() for x in p)]
        assert main(argv) == 1
    said = capsys.readouterr().err
    assert "Address already in use" in said or "cannot listen on 127.0.0.1:" in said


def test_a_model_that_fails_to_load_exits_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["engine", "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"]
    assert main([*argv, "--model-path", str(tmp_path / "missing.gguf")]) == 1
    assert "the model failed to load" in caplog.text
